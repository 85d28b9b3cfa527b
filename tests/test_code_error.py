"""The code's error on the readout (:mod:`lava_spiked.code_error`) and the
base it chooses: ``convert(..., B="auto")``, ``recode(B="auto")``."""
import numpy as np
import pytest
import torch
from torch import nn

from lava_spiked import code_error
from lava_spiked.code_error import (AUTO_B, choose_base, first_samples,
                                    readout_error)
from lava_spiked.conversion import convert
from lava_spiked.numerics import fixed
from lava_spiked.plan import CodeChoice


class TakesMask(nn.Module):
    """Attention over 6 tokens with Hugging Face's additive mask (1 = real
    token), first token pooled."""

    def __init__(self):
        super().__init__()
        self.qkv, self.o = nn.Linear(8, 24), nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x, mask):
        q, k, v = self.qkv(x).chunk(3, -1)
        z = q @ k.transpose(1, 2) / 8 ** 0.5
        z = z + (1.0 - mask[:, None, :].float()) * -1e4
        return self.head(self.o(z.softmax(-1) @ v)[:, 0])


@pytest.fixture(scope="module")
def auto_net(small_vit):
    model, calib, test = small_vit
    return convert(model, calib, B="auto", T=16, progress=False)


def test_readout_error_is_that_of_the_golden_float_model(small_vit):
    """By hand, sample by sample: the closed form of floating_pt
    (golden_float) against the captured graph."""
    model, calib, test = small_vit
    net = convert(model, calib, B=1.25, T=16, progress=False)
    got = np.stack([net.golden_float(s).ravel() for s in test])
    ref = np.stack([net.ann(s[None]).ravel() for s in test])
    want = ((got - ref) ** 2).sum() / (ref ** 2).sum()
    assert want > 0
    np.testing.assert_allclose(readout_error(net, test), want, rtol=1e-9)
    np.testing.assert_allclose(
        readout_error(net, test, reference=net.ann(test)), want, rtol=1e-9)


def test_auto_chooses_the_least_recorded_error(small_vit, auto_net):
    model, calib, test = small_vit
    choice = auto_net.plan.code_choice
    assert choice.grid == AUTO_B  # all keep T = 16 steps
    assert choice.samples == len(calib)
    assert choice.chosen == choice.grid[int(np.argmin(choice.errors))]
    assert auto_net.B == auto_net.plan.B == choice.chosen
    # each recorded error is the network's at that B
    for b, err in zip(choice.grid, choice.errors):
        np.testing.assert_allclose(readout_error(auto_net.recode(B=b), calib),
                                   err, rtol=1e-12)
    # the same by recode, and a given B records nothing
    again = auto_net.recode(B="auto", calibration_data=calib, progress=False)
    assert again.plan.code_choice == choice
    assert auto_net.recode(B=1.3).plan.code_choice is None
    assert convert(model, calib, B=1.3, T=16,
                   progress=False).plan.code_choice is None


def test_a_grid_of_candidates(small_vit, auto_net):
    """A sequence is the grid; bases whose fixed_pt tables keep fewer than
    T steps are left out."""
    model, calib, _ = small_vit
    assert fixed.usable_steps(1.5, 24) < 24 <= fixed.usable_steps(1.4, 24)
    net = auto_net.recode(B=[1.5, 1.4], T=24, calibration_data=calib,
                          progress=False)
    assert net.plan.code_choice.grid == (1.4,) and net.B == 1.4
    assert net.T == 24
    with pytest.raises(ValueError, match="no candidate base"):
        auto_net.recode(B=(1.6, 1.8), T=24, calibration_data=calib)


@pytest.mark.parametrize("B, match", [
    ("foo", "'auto' or a sequence"), ((1.2, 2.5), r"B must be in \(1, 2\]"),
    ((), "empty"), ([1.2, "x"], "B must be a number")])
def test_bad_bases_are_refused(small_vit, B, match):
    model, calib, _ = small_vit
    with pytest.raises(ValueError, match=match):
        convert(model, calib, B=B, T=16, progress=False)


def test_recode_auto_needs_calibration_data(auto_net):
    with pytest.raises(ValueError, match="calibration_data="):
        auto_net.recode(B="auto")


def test_first_samples_caps_the_samples():
    data = [np.full((3, 2), i, np.float32) for i in range(4)]
    x, mask = first_samples(data, (2,), 7)
    assert x.shape == (7, 2) and mask is None
    np.testing.assert_array_equal(x[:, 0], [0, 0, 0, 1, 1, 1, 2])
    x, mask = first_samples(np.arange(20.0).reshape(10, 2), (2,), 4,
                            np.ones((10, 3)))
    assert x.shape == (4, 2) and mask.shape == (4, 3)
    assert code_error.AUTO_SAMPLES == 256


def test_auto_with_a_token_mask():
    """A model over padded tokens: the error is measured with the masks,
    as both the graph and the engine take them."""
    torch.manual_seed(0)
    model = TakesMask().eval()
    x = torch.randn(24, 6, 8).numpy()
    real = (np.arange(6)[None, :] <
            np.random.default_rng(0).integers(1, 7, 24)[:, None]).astype(int)
    net = convert(model, x, attention_mask=real, B=(1.2, 1.3), T=16,
                  progress=False)
    choice = net.plan.code_choice
    assert choice.samples == 24 and net.B == choice.chosen
    np.testing.assert_allclose(readout_error(net, x, real),
                               min(choice.errors), rtol=1e-12)
    plan = choose_base(net.graph, net.sigmas, 16, x, (net.B,), real,
                       progress=False)
    assert plan.code_choice.errors == (min(choice.errors),)


def test_code_choice_is_checked():
    with pytest.raises(ValueError, match="one error per candidate"):
        CodeChoice((1.2, 1.3), (0.1,), 4)
    with pytest.raises(ValueError, match="finite"):
        CodeChoice((1.2,), (float("nan"),), 4)
    with pytest.raises(ValueError, match="samples"):
        CodeChoice((1.2,), (0.1,), 0)
    assert CodeChoice((1.2, 1.3, 1.4), (0.2, 0.1, 0.1), 4).chosen == 1.3


def test_a_plan_holds_the_b_its_choice_chose(auto_net):
    import dataclasses
    choice = auto_net.plan.code_choice
    other = next(b for b in choice.grid if b != choice.chosen)
    with pytest.raises(ValueError, match="the Plan has B"):
        dataclasses.replace(auto_net.recode(B=other).plan,
                            code_choice=choice)
