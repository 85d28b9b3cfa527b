"""The model zoo matrix (tests/zoo.py): stock vision transformers from
torchvision, timm and Hugging Face, in small random configurations.

For each model that converts: the captured graph evaluated exactly (no
spikes) equals the model's output, which checks capture apart from
quantisation, and the converted network runs on the engine in both modes.
Each refused model is refused by one UnsupportedModelError that names what
it lacks. The README's table is this matrix."""
import pathlib

import numpy as np
import pytest
import torch

from lava_spiked import convert
from lava_spiked.capture import UnsupportedModelError, capture, evaluate
from lava_spiked.engine import Engine
from zoo import SHAPE, ZOO, build, table


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model(name):
    entry, model = ZOO[name], build(name)
    if entry.refused:
        with pytest.raises(UnsupportedModelError) as err:
            capture(model, SHAPE)
        for part in entry.refused:
            assert part in str(err.value)
        return
    g = torch.Generator().manual_seed(1)
    x = torch.randn((40,) + SHAPE, generator=g)
    want = _logits(model, x[32:]).double()
    got = evaluate(capture(model, SHAPE), x[32:]).reshape(want.shape)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    net = convert(model, x[:32], progress=False)
    fixed, real = (np.asarray(Engine(net, mode)(x[32:].numpy(),
                                                warn=False).logits)
                   for mode in ("fixed", "float"))
    assert fixed.shape == real.shape == tuple(want.shape)
    # the integer and the float engine compute one code, up to rounding
    # that deep random models amplify (how closely either follows the ANN
    # at T = 40 depends on the model: tests of accuracy use trained ones)
    assert np.isfinite(fixed).all() and np.isfinite(real).all()
    assert np.corrcoef(fixed.ravel(), real.ravel())[0, 1] > 0.9


def test_readme_table_is_the_matrix():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    assert table() in readme, "regenerate with: python tests/zoo.py"


@pytest.mark.slow
def test_tiny_swin_runs_in_lava_as_on_the_engine():
    """A torchvision Swin with shifted windows, the -100 mask, relative
    position bias and a patch merging runs in Lava (fixed_pt, fused
    blocks) bit for bit as on the engine."""
    from torchvision.models.swin_transformer import SwinTransformer

    from lava_spiked.lava_build import Loihi2SimCfg

    torch.manual_seed(0)
    model = SwinTransformer([2, 2], 8, [2, 1], [1, 2], [2, 2],
                            num_classes=3).eval()
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(34, 3, 8, 8)
    net = convert(model, x[:32], T=12, B=1.4, progress=False)
    assert any(op.mask.any() for op in net.plan.attention)  # -100: masks
    with net:
        got = net.infer(x[32:].numpy(), Loihi2SimCfg(select_tag="fixed_pt"),
                        progress=False)
    want = Engine(net, "fixed")(x[32:].numpy(), warn=False).logits.numpy()
    np.testing.assert_array_equal(got, want)
