"""Activation and LayerNorm stages against torch's own functions (the
golden values come from torch, not from lava_spiked.numerics.nonlinear)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lava_spiked import Engine, convert
from lava_spiked.golden.models import golden_float
from lava_spiked.numerics import fixed, nonlinear, phase

TORCH = {"gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
         "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
ONE = 1 << fixed.STATE_FRAC_BITS


@pytest.mark.parametrize("fn", sorted(TORCH))
def test_activation_table_is_within_its_documented_bound(fn):
    """Every integer membrane in one pre-activation scale, for scale pairs
    from tiny to large: |fixed - torch f| <= activation_error_bound."""
    pre = np.array([0.05, 0.7, 4.0, 12.0, 60.0])
    out = np.array([0.02, 0.6, 3.0, 12.0, 50.0])
    knots, row = nonlinear.knot_table(fn, pre, out)
    v = np.arange(-ONE - 300, ONE + 301, 3)[:, None].repeat(5, 1)
    got, n_sat = fixed.activation(v, knots, row)
    a = torch.from_numpy(np.clip(v, -ONE, ONE) / ONE * pre)
    want = (TORCH[fn](a) / torch.from_numpy(out) * ONE).numpy()
    err = np.abs(got - want).max(0)
    bound = nonlinear.activation_error_bound(fn, pre, out)
    assert n_sat == 0 and (err <= bound).all(), (err, bound)
    # the bound is tight enough to mean something: within 3x of the error
    # where interpolation dominates (the largest pre-activation scale)
    assert bound[-1] < 3 * err[-1] + 1
    np.testing.assert_allclose(
        nonlinear.activation_float(v / ONE, fn, pre, out) * ONE, want,
        rtol=1e-12, atol=1e-9)


def test_activation_interpolates_hand_values():
    """Two neurons on two knot rows (y = 10 i and y = -3 i**2), values
    worked by hand: between knots, the half-way rounding (away from 0),
    clipping at one sigma_pre both ways, and the last knot of the first
    row (whose right neighbour would be the next row's first knot)."""
    i = np.arange(fixed.KNOTS)
    knots = np.stack([10 * i, -3 * i * i])
    v = np.array([0, 100, -ONE - 5, ONE + 9, -ONE + 128])[:, None]
    got, n_sat = fixed.activation(v.repeat(2, 1), knots, [0, 1])
    want = [[2560, -196608],  # knot 256 exactly
            [2564, -197209],  # offset 100: 3.906 -> 4, -601.17 -> -601
            [0, 0],  # clipped to knot 0
            [5120, -786432],  # clipped to knot 512, the last
            [5, -2]]  # offset 128: 1280/256 = 5, -384/256 = -1.5 -> -2
    np.testing.assert_array_equal(got, want)
    assert n_sat == 0


def test_gelu_negative_dip_fires_negative_spikes():
    """GELU is not monotone: its minimum, -0.17 at x = -0.75, is a
    negative spike of the right size; far below, the output is 0."""
    B, T, pre, out = 1.15, 40, 4.0, 3.0
    x = np.array([-0.7518, -3.9, 2.0])
    knots, row = nonlinear.knot_table("gelu", pre, np.full(3, out))
    y, _ = fixed.activation(fixed.to_state(x / pre)[0], knots, row)
    step, sign = fixed.first_spike(y, fixed.threshold_table(B, T), False)
    want = phase.quantize(F.gelu(torch.tensor(x)).numpy(), B, T, out)
    np.testing.assert_array_equal(sign, want.sign)
    np.testing.assert_array_equal(step, want.step)
    assert sign[0] == -1 and abs(want.value[0] + 0.17) < 0.02


def test_isqrt_is_exact():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(0, 2 ** 52, 20000),
                        np.arange(2 ** 24 - 5, 2 ** 24 + 5) ** 2 + np.array(
                            [-1, 0, 1] * 3 + [0]),
                        [0, 1, 2, 3, 4, 2 ** 52 - 1]])
    want = np.array([math.isqrt(int(v)) for v in x])
    np.testing.assert_array_equal(fixed.isqrt(x), want)


@pytest.mark.parametrize("mean", [0.0, 50.0, -300.0])
def test_integer_layer_norm_matches_torch_at_d384(mean):
    """Inputs whose token mean lies far from 0 (the case an 8-bit (I - 1/n)
    weight gets wrong): the integer stage equals nn.LayerNorm up to the
    membrane's resolution."""
    n, eps = 384, 1e-5
    rng = np.random.default_rng(1)
    x = rng.normal(mean, 1.0, (16, n)) * rng.uniform(0.5, 2, (16, 1))
    x[:, 7] += 8.0  # an outlier channel, as BERT's hidden states have
    pre = float(np.abs(x).max())
    sigma = np.full(n, 3.0)
    sigma[7] = 12.0
    const = nonlinear.layer_norm_constants(n, eps, pre, sigma)
    v, _ = fixed.to_state(x / pre)
    got, n_sat = fixed.layer_norm(v, const.eps_state, const.gain,
                                  const.gain_shift)
    z = nn.LayerNorm(n, eps=eps, elementwise_affine=False).double()(
        torch.from_numpy(x)).detach().numpy()
    lsb = pre / ONE  # membrane resolution, real units
    std = x.std(-1, keepdims=True)
    # rounding of v and of the mean moves c by <= 1 lsb and the std by
    # <= 1 lsb; the output rounds to one unit of its own scale
    bound = (1 + np.abs(z)) * lsb / std / sigma * ONE + 1.5
    assert (np.abs(got - z / sigma * ONE) <= bound).all()
    assert not n_sat.any()
    # without the mean removed the result would be off by mean / std
    assert np.abs(got / ONE * sigma).mean() < 2


def test_layer_norm_of_a_constant_token_is_zero():
    v = np.full((2, 8), 12345)
    const = nonlinear.layer_norm_constants(8, 0.0, 1.0, np.ones(8))
    out, _ = fixed.layer_norm(v, 0, const.gain, const.gain_shift)
    assert not out.any()
    assert not nonlinear.layer_norm_float(v, 0.0, 1.0).any()


def test_layer_norm_constants_refuse_bad_sizes():
    with pytest.raises(ValueError, match="channels"):
        nonlinear.layer_norm_constants(fixed.NORM_MAX_CHANNELS + 1, 1e-5, 1.0,
                                       1.0)
    with pytest.raises(ValueError, match="eps"):
        nonlinear.layer_norm_constants(8, 1.0, 1e-12, 1.0)
    with pytest.raises(ValueError, match="unknown activation"):
        nonlinear.knot_table("elu", 1.0, 1.0)


class Block(nn.Module):
    """Linear -> LayerNorm (mean far from 0) -> Linear -> GELU -> Linear."""

    def __init__(self, act):
        super().__init__()
        self.fc1, self.norm = nn.Linear(6, 32), nn.LayerNorm(32)
        self.fc2, self.act, self.head = nn.Linear(32, 16), act, \
            nn.Linear(16, 3)
        with torch.no_grad():
            self.fc1.bias += 20.0
            self.norm.weight.uniform_(0.5, 2.0)
            self.norm.bias.uniform_(-1.0, 1.0)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.norm(self.fc1(x)))))


@pytest.mark.parametrize("act", [nn.GELU(), nn.GELU("tanh"), nn.SiLU(),
                                 nn.Tanh(), nn.Sigmoid()],
                         ids=lambda a: type(a).__name__ + getattr(
                             a, "approximate", ""))
def test_staged_layers_fire_q_of_torch_values(act):
    """In the float golden model each staged layer fires Q of torch's
    LayerNorm / activation of its own integrated input, computed here from
    the decoded spikes of its source; the fixed engine stays within the
    phase code's error of the float one."""
    torch.manual_seed(0)
    model = Block(act).double().eval()
    data = torch.randn(128, 6, dtype=torch.float64)
    net = convert(model, data, progress=False)
    plan = net.plan
    norm, actl = plan["norm"], plan[[layer.name for layer in plan.layers
                                     if layer.kind == "activation"][0]]
    x = data[:4]
    for i in range(4):
        gold = golden_float(plan, x[i].numpy())
        for layer, fn in ((norm, lambda a: F.layer_norm(a, (32,), eps=1e-5)),
                          (actl, act)):
            (syn,) = layer.synapses
            w = fixed.dequantize_weights(syn.weight, layer.weight_exp +
                                         syn.shift[:, None])
            src = plan[syn.src]
            xhat = phase.decode(*gold.spikes[syn.src], plan.B, src.scale)
            a = (w @ (xhat / src.scale) + layer.bias) * \
                layer.membrane_scale  # real units
            if layer is actl:
                pre = layer.stage.pre_scale
                a = np.clip(a, -pre, pre)
            y = fn(torch.from_numpy(a)).numpy()
            want = phase.quantize(y, plan.B, plan.T, layer.scale)
            step, sign = gold.spikes[layer.name]
            # a value within rounding of a decision level may land either
            # side: at most one neuron, one step apart
            assert np.count_nonzero(step != want.step) <= 1
            assert np.abs(step - want.step).max() <= 1
    fixed_logits = Engine(net, "fixed")(x, warn=False).logits.numpy()
    float_logits = Engine(net, "float")(x, warn=False).logits.numpy()
    with torch.no_grad():
        ann = model(x).numpy()
    scale = np.abs(ann).max()
    assert np.abs(fixed_logits - float_logits).max() < 0.05 * scale
    assert np.abs(float_logits - ann).max() < 0.3 * scale


def test_torchvision_vit_runs_in_lava_as_on_the_engine():
    """An unmodified torchvision ViT (LayerNorm, GELU) in Lava: fixed_pt
    equals the engine bit for bit, floating_pt the float engine."""
    from torchvision.models import VisionTransformer

    from lava_spiked.lava_backend.imports import Loihi2SimCfg

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=16, patch_size=8, num_layers=1,
                            num_heads=2, hidden_dim=8, mlp_dim=16,
                            num_classes=3).double().eval()
    nn.init.normal_(vit.heads.head.weight)
    nn.init.normal_(vit.heads.head.bias)
    net = convert(vit, torch.randn(64, 3, 16, 16, dtype=torch.float64),
                  T=16, B=1.4, progress=False)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    for tag, mode in (("fixed_pt", "fixed"), ("floating_pt", "float")):
        with net:
            got = net.infer(x.numpy(), Loihi2SimCfg(select_tag=tag),
                            progress=False)
        want = Engine(net, mode)(x, warn=False).logits.numpy()
        if mode == "fixed":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_staged_processes_refuse_unipolar_and_readout():
    from lava_spiked.processes import (ActivationPhaseNeuron,
                                       LayerNormPhaseNeuron)

    with pytest.raises(ValueError, match="unipolar and readout"):
        ActivationPhaseNeuron(shape=(4,), B=1.15, T=8, start=0, fn="gelu",
                              pre_scale=1.0, unipolar=True)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        LayerNormPhaseNeuron(shape=(2, 4), B=1.15, T=8, start=0, eps=-1.0,
                             pre_scale=1.0)
    with pytest.raises(ValueError, match="unknown activation"):
        ActivationPhaseNeuron(shape=(4,), B=1.15, T=8, start=0, fn="relu6",
                              pre_scale=1.0)


def test_energy_counts_the_stages_as_macs():
    from lava_spiked.energy import NORM_MAC_PER_ELEMENT, energy

    torch.manual_seed(0)
    model = Block(nn.GELU()).double().eval()
    data = torch.randn(64, 6, dtype=torch.float64)
    net = convert(model, data, progress=False)
    report = energy(net, Engine(net, "fixed")(data[:4], warn=False))
    macs = {layer.name: layer.mac for layer in report.layers}
    # beyond their input gains (<= T per neuron with input)
    assert macs["norm"] >= NORM_MAC_PER_ELEMENT * 32
    assert macs["act"] >= 16
