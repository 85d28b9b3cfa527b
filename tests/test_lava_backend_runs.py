"""Converted networks run in Lava (:mod:`lava_spiked.lava_backend.runs`)
against their golden models, the engine and the ANN: one sample at a time,
streamed, and after a failure."""
import numpy as np
import pytest
import torch
from lava.magma.core.process.variable import Var
from lava.magma.core.run_configs import Loihi2SimCfg
from torch import nn

from conftest import TAGS, lava_children
from lava_spiked.bundled.digits_vit import digits_splits, load_default
from lava_spiked.conversion import convert
from lava_spiked.engine import Engine
from toy_models import MLP, MHABlock, randomize_norms


def _assert_lava_equals_golden(net, samples, tag):
    """Run ``samples`` through Lava under ``tag``: fixed_pt logits equal
    ``golden_fixed`` exactly, floating_pt ones ``golden_float`` to 1e-6."""
    with net:
        got = net.infer(samples, Loihi2SimCfg(select_tag=tag),
                        progress=False)
    for x, out in zip(samples, got):
        if tag == "fixed_pt":
            np.testing.assert_array_equal(out, net.golden_fixed(x))
        else:
            np.testing.assert_allclose(out, net.golden_float(x), rtol=1e-6,
                                       atol=1e-9)
    return got


@pytest.mark.parametrize("tag", TAGS)
def test_one_block_model_equals_golden_in_lava(small_vit, tag):
    model, calib, test = small_vit
    net = convert(model, calib, T=12, B=1.25, progress=False)
    _assert_lava_equals_golden(net, test[:2], tag)
    assert lava_children() == []


def test_failed_inference_leaves_no_process(small_vit, monkeypatch):
    model, calib, test = small_vit
    net = convert(model, calib, T=6, B=1.3, progress=False)
    with pytest.raises(ValueError, match="NaN or inf"):
        net.infer(np.full((1, 1, 8, 8), np.nan), Loihi2SimCfg())
    with pytest.raises(ValueError, match="samples must be \\(n, 1, 8, 8\\)"):
        net.infer(test[:, :, :4], Loihi2SimCfg())

    def broken(self):
        raise RuntimeError("reading failed")

    monkeypatch.setattr(Var, "get", broken)
    with pytest.raises(RuntimeError, match="reading failed"):
        with net:
            net.infer(test[:1], Loihi2SimCfg(select_tag="fixed_pt"),
                      progress=False)
    assert lava_children() == []


@pytest.mark.slow
def test_default_model_agrees_with_ann_in_lava():
    """The bundled ViT at T = 40, B = 1.15: 20 test images through Lava
    (fixed_pt) equal the integer golden model and agree with the ANN."""
    splits = digits_splits()
    model = load_default()
    net = convert(model, splits["calibration"][0], progress=False)
    x = splits["test"][0][:20]
    with net:
        snn = net.infer(x, Loihi2SimCfg(select_tag="fixed_pt"),
                        progress=False)
    with torch.no_grad():
        ann = model(torch.from_numpy(x)).numpy()
    assert (snn.argmax(1) == ann.argmax(1)).mean() >= 0.95
    for i in (0, 7):
        np.testing.assert_array_equal(snn[i], net.golden_fixed(x[i]))


@pytest.mark.parametrize("tag", TAGS)
def test_multihead_attention_model_in_lava_equals_golden(tag):
    torch.manual_seed(6)
    model = MHABlock().eval()
    data = np.random.default_rng(4).normal(0, 1, (22, 5, 8)) \
        .astype(np.float32)
    net = convert(model, data[:20], T=10, B=1.3, progress=False)
    got = _assert_lava_equals_golden(net, data[20:], tag)
    mode = "fixed" if tag == "fixed_pt" else "float"
    want = Engine(net, mode)(data[20:]).logits.numpy()
    if tag == "fixed_pt":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("tag", TAGS)
def test_shallow_mlp_in_lava_equals_golden(tag):
    """Two layers only: the sample period is set by the 2T window rule."""
    torch.manual_seed(4)
    model = randomize_norms(MLP())
    data = np.random.default_rng(2).normal(0, 1, (24, 6)).astype(np.float32)
    net = convert(model, data[:20], T=8, B=1.3, progress=False)
    assert net.num_steps == max(net.plan[net.plan.output].window.fire + 1,
                                16)
    _assert_lava_equals_golden(net, data[20:], tag)


@pytest.mark.parametrize("tag", TAGS)
def test_single_linear_and_relu_ending_models_in_lava(tag):
    """A readout fed by the encoder (the 2T period wins over the readout's
    report step) and a model whose output is already a ReLU population."""
    torch.manual_seed(5)
    data = np.random.default_rng(3).normal(0, 1, (12, 4)).astype(np.float32)
    for model in (nn.Linear(4, 3), nn.Sequential(nn.Linear(4, 3),
                                                 nn.ReLU())):
        net = convert(model.eval(), data[:10], T=8, B=1.3, progress=False)
        names = [p.name for p in net.graph.populations]
        assert len(names) == len(set(names))
        got = _assert_lava_equals_golden(net, data[10:], tag)
        assert np.abs(got).max() > 0


@pytest.mark.parametrize("tag", TAGS)
def test_outlier_channel_keeps_the_other_rows(tag):
    """One channel into a LayerNorm 1000x larger than the rest (MiniLM's
    outlier features; the LayerNorm membrane has one scale): its row gets
    its own exponent, the other rows keep their mantissas, Lava realises
    the two exponents as two connections, and Lava, the golden models and
    the engine agree."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight[0] *= 1000.0
        model[0].bias[0] *= 1000.0
    model = model.double().eval()
    data = torch.randn(64, 6, dtype=torch.float64)
    net = convert(model, data, progress=False)
    (syn,) = net.plan[net.plan.layers[1].name].synapses
    assert syn.shift[0] >= 8 and (syn.shift[1:] <= 2).all()
    assert np.count_nonzero(syn.weight[1:]) > 0.9 * syn.weight[1:].size
    assert len(syn.split()) >= 2
    res = Engine(net, "fixed")(data[:2], warn=False)
    got = _assert_lava_equals_golden(net, data[:2].numpy(), tag)
    if tag == "fixed_pt":
        np.testing.assert_array_equal(np.stack(got), res.logits.numpy())


@pytest.mark.slow
def test_samples_stream_through_lava(small_vit):
    """A new sample enters every stream_period (3T + 1 here: V's traces
    wait for the softmax) steps: 3 samples take 2 periods plus the
    readout's latency, not 3 whole sample lengths, and give the golden
    model's logits, also after a run of another length; with probes,
    samples go one at a time and agree."""
    from lava.magma.core.run_conditions import RunSteps

    from lava_spiked.network import SpikingNetwork
    model, calib, test = small_vit
    net = convert(model, calib, T=12, B=1.25, progress=False)
    period, fire = net.plan.stream_period, \
        net.plan[net.plan.output].window.fire
    assert period == 3 * 12 + 1 < net.num_steps
    x = test[:3]
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    with net:
        got = net.infer(x, cfg, progress=False)
        # to the last readout, and on until every process has finished
        # the last sample (its event counters are read then)
        assert 2 * period + fire + 1 <= net.lava("fixed_pt").steps < \
            3 * period + fire + 1
        again = net.infer(x[2:], cfg, progress=False)  # after a stream
        net.run(RunSteps(num_steps=5), cfg)  # a user's run of odd length
        last = net.infer(x[:1], cfg, progress=False)
    for out, sample in zip(got, x):
        np.testing.assert_array_equal(out, net.golden_fixed(sample))
    np.testing.assert_array_equal(again[0], got[2])
    np.testing.assert_array_equal(last[0], got[0])
    probed = SpikingNetwork(net.plan, record=True)
    with probed:
        np.testing.assert_array_equal(
            probed.infer(x, cfg, progress=False), got)
    assert not probed.lava("fixed_pt").streams and len(probed.recorded) == 3
