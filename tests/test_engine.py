"""The batched torch engine against Lava (every population's spikes and the
logits) and against the integer and float golden models."""
import numpy as np
import pytest
import torch
from lava.magma.core.run_configs import Loihi2SimCfg

from conftest import TAGS
from lava_spiked.engine import Engine
from lava_spiked.models import DigitsViT, digits_splits, load_default
from lava_spiked.network import convert

MODES = {"fixed_pt": "fixed", "floating_pt": "float"}


def _small_net(record=False):
    torch.manual_seed(3)
    model = DigitsViT(dim=8, heads=2, mlp=16).eval()
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 1, (36, 1, 8, 8)).astype(np.float32)
    return convert(model, data[:32], T=10, B=1.3, progress=False,
                   record=record), data[32:]


@pytest.mark.parametrize("tag", TAGS)
def test_engine_equals_lava_layer_by_layer(tag):
    net, x = _small_net(record=True)
    with net:
        lava = net.infer(x[:2], Loihi2SimCfg(select_tag=tag), progress=False)
    res = Engine(net, MODES[tag])(x[:2])
    assert set(net.recorded[0]) <= set(res.steps)
    for i in range(2):
        for name, (step, sign) in net.recorded[i].items():
            np.testing.assert_array_equal(res.steps[name][i].numpy(), step,
                                          err_msg=name)
            np.testing.assert_array_equal(res.signs[name][i].numpy(), sign,
                                          err_msg=name)
    if tag == "fixed_pt":
        np.testing.assert_array_equal(res.logits.numpy(), lava)
    else:
        np.testing.assert_allclose(res.logits.numpy(), lava, rtol=1e-6,
                                   atol=1e-9)


def test_engine_equals_golden_models_on_the_default_model():
    splits = digits_splits()
    net = convert(load_default(), splits["calibration"][0], progress=False)
    x = splits["test"][0][:40]
    fx, fl = Engine(net, "fixed")(x), Engine(net, "float")(x)
    for i in range(len(x)):
        np.testing.assert_array_equal(fx.logits[i].numpy(),
                                      net.golden_fixed(x[i]))
        np.testing.assert_allclose(fl.logits[i].numpy(),
                                   net.golden_float(x[i]), rtol=1e-9,
                                   atol=1e-12)


def test_engine_rejects_bad_input_and_unprovable_networks():
    net, x = _small_net()
    with pytest.raises(ValueError, match="mode must be"):
        Engine(net, "int8")
    eng = Engine(net, "fixed")
    with pytest.raises(ValueError, match="x must be"):
        eng(x[:, :, :4])
    with pytest.raises(ValueError, match="NaN or inf"):
        eng(np.full((1, 1, 8, 8), np.nan))
    op = net.graph.attention[0]
    net.sigmas[op.logit_node] = net.sigmas[op.logit_node] * 0 + 100.0
    with pytest.raises(ValueError, match="logit scales of 64"):
        Engine(net, "fixed")
