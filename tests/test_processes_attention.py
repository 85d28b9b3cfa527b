"""The attention processes in Lava: TraceMatMul, the WOSS softmax and the
NormalizedPhaseNeuron, against their golden models."""
import numpy as np
import pytest
from lava.proc.io.sink import RingBuffer

from conftest import TAGS, run
from lava_spiked.golden.attention import woss, woss_fixed
from lava_spiked.numerics import fixed, phase
from lava_spiked.processes import (NormalizedPhaseNeuron, PhaseEncoder,
                                   PhaseNeuron, TraceMatMul, WOSSSoftmax)


def trace_product(tag, x, y, B, T, y_transposed=False, y_start=0,
                  x_start=0):
    """Encoders -> TraceMatMul -> readout PhaseNeuron; returns the readout
    state, the quantised weight and its exponent."""
    h, n, k = x.shape
    m = y.shape[2] if y_transposed else y.shape[1]
    (w,), exp = fixed.quantize_weights(np.full((h, n, m), 1.0 / k))
    ex = PhaseEncoder(data=x, B=B, T=T, start=x_start)
    ey = PhaseEncoder(data=y, B=B, T=T, start=y_start)
    mm = TraceMatMul(x_shape=x.shape, y_shape=y.shape, weights=w, B=B, T=T,
                     x_start=x_start, y_start=y_start,
                     y_transposed=y_transposed)
    start = max(x_start, y_start) + 1
    out = PhaseNeuron(shape=(h, n, m), B=B, T=T, start=start,
                      weight_exp=exp - fixed.GAIN_FRAC_BITS, readout=True)
    sink = RingBuffer(shape=(h, n, m), buffer=start + T + 1)
    ex.s_out.connect(mm.x_in)
    ey.s_out.connect(mm.y_in)
    mm.a_out.connect(out.a_in)
    out.s_out.connect(sink.a_in)
    trace = run(ex, start + T + 1, tag, sink.data.get)
    return trace[..., start + T], w, exp


def golden_trace_product(x, y, w, exp, B, T, y_transposed, same_window):
    """Integer golden model: per-step currents from latched traces."""
    G = fixed.trace(B, T)
    cx, cy = phase.quantize(x, B, T), phase.quantize(y, B, T)

    def latched(c, upto):
        return np.where((c.step >= 0) & (c.step <= upto),
                        c.sign * G[np.maximum(c.step, 0)], 0)

    acc = np.zeros(w.shape, np.int64)
    for j in range(T):
        if same_window:
            raw = fixed.product_current(
                np.where(cx.step == j, cx.sign, 0), latched(cy, j),
                latched(cx, j - 1), np.where(cy.step == j, cy.sign, 0),
                y_transposed)
        else:  # y fired in an earlier window: all its traces are latched
            raw = fixed.product_current(
                np.where(cx.step == j, cx.sign, 0), latched(cy, T),
                np.zeros(x.shape), np.zeros(y.shape), y_transposed)
        acc, _ = fixed.accumulate(acc, w * raw,
                                  int(fixed.gain_table(B, T)[j]))
    return fixed.close_window(acc, 0.0, exp - fixed.GAIN_FRAC_BITS)[0]


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("y_transposed", [False, True])
def test_trace_matmul_equals_product(rng, tag, y_transposed):
    B, T = 1.2, 10
    x = rng.uniform(-1, 1, (2, 3, 4))
    y = rng.uniform(-1, 1, (2, 4, 5) if y_transposed else (2, 5, 4))
    state, w, exp = trace_product(tag, x, y, B, T, y_transposed)
    xh, yh = phase.quantize(x, B, T).value, phase.quantize(y, B, T).value
    spec = "hik,hkj->hij" if y_transposed else "hik,hjk->hij"
    exact = np.einsum(spec, xh, yh) * fixed.dequantize_weights(w, exp)
    if tag == "floating_pt":
        np.testing.assert_allclose(state / 2 ** 16, exact, rtol=1e-9,
                                   atol=1e-12)
    else:
        np.testing.assert_array_equal(
            state, golden_trace_product(x, y, w, exp, B, T, y_transposed,
                                        same_window=True))
        np.testing.assert_allclose(state / 2 ** 16, exact, atol=2e-3)


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("sx, sy", [(1, 1), (-1, 1), (1, -1), (-1, -1)])
def test_same_step_pair_counted_once_with_its_sign(tag, sx, sy):
    """The reference code counted a same-step pair with s_q = -1 as -3x its
    value; here every sign combination gives exactly x_hat * y_hat."""
    B, T = 1.5, 6
    x = np.array([[[0.8 * sx]]])   # both fire at step 1 (levels 1, 2/3)
    y = np.array([[[0.7 * sy]]])
    assert phase.quantize(x, B, T).step.item() == \
        phase.quantize(y, B, T).step.item() == 1
    state, w, exp = trace_product(tag, x, y, B, T)
    expected = sx * sy * (2 / 3) ** 2 * fixed.dequantize_weights(w, exp)
    np.testing.assert_allclose(state.ravel() / 2 ** 16, expected.ravel(),
                               rtol=1e-9 if tag == "floating_pt" else 1e-3)


@pytest.mark.parametrize("tag", TAGS)
def test_trace_matmul_with_operand_from_earlier_window(rng, tag):
    """V fires two windows before the softmax: its latched traces are read
    when the other operand spikes, with no delay line."""
    B, T = 1.3, 8
    x = rng.uniform(0, 1, (1, 2, 3))
    y = rng.uniform(-1, 1, (1, 3, 4))
    state, w, exp = trace_product(tag, x, y, B, T, y_transposed=True,
                                  y_start=0, x_start=2 * T)
    xh, yh = phase.quantize(x, B, T).value, phase.quantize(y, B, T).value
    exact = (xh @ yh) * fixed.dequantize_weights(w, exp)
    if tag == "floating_pt":
        np.testing.assert_allclose(state / 2 ** 16, exact, rtol=1e-9,
                                   atol=1e-12)
    else:
        np.testing.assert_array_equal(state, golden_trace_product(
            x, y, w, exp, B, T, True, same_window=False))


def run_woss(tag, z, sigma, B, T, mask=None):
    """Logit encoder -> WOSS; returns p steps and row sums."""
    enc = PhaseEncoder(data=z, scale=sigma, B=B, T=T)
    soft = WOSSSoftmax(shape=z.shape, B=B, T=T, start=0, scale=sigma,
                       mask=mask)
    sink = RingBuffer(shape=z.shape, buffer=2 * T + 1)
    enc.s_out.connect(soft.s_in)
    soft.s_out.connect(sink.a_in)
    trace, row_sum = run(enc, 2 * T + 1, tag,
                         lambda: (sink.data.get(), soft.row_sum.get()))
    window = trace[..., T:2 * T] != 0
    assert (window.sum(-1) <= 1).all()
    return np.where(window.any(-1), window.argmax(-1), -1), row_sum


@pytest.mark.parametrize("tag", TAGS)
def test_woss_matches_golden_and_edge_cases(tag):
    B, T, sigma = 1.25, 12, 3.0
    mask = np.zeros((1, 5, 4), bool)
    z = np.array([[[2.0, 1.0, -0.5, 0.3],     # ordinary row
                   [-0.4, -1.2, -2.5, -0.9],  # all negative: no shift
                   [2.5, 2.5, 0.1, -3.0],     # tie between winners
                   [1.0, 0.5, 0.2, 0.1],      # fully masked below
                   [0.0, 0.0, 0.0, 0.0]]])    # no logit spike at all
    mask[0, 3] = True
    mask[0, 0, 2] = True                       # one masked key
    step, row_sum = run_woss(tag, z, sigma, B, T, mask)
    code = phase.quantize(z, B, T, sigma)
    if tag == "floating_pt":
        p, want = woss(code.value, B, T, mask)
        np.testing.assert_allclose(row_sum, p.sum(-1), rtol=1e-12)
    else:
        want, want_sum, _ = woss_fixed(code.step, code.sign, sigma, B, T,
                                       mask)
        np.testing.assert_array_equal(row_sum, want_sum)
    np.testing.assert_array_equal(step, want)
    assert step[0, 0, 0] == 0 and step[0, 0, 2] == -1    # winner; masked
    assert (step[0, 2, :2] == 0).all()                    # both winners
    assert (step[0, 3] == -1).all() and row_sum[0, 3] == 0
    # silent logits are 0, all equal: a uniform softmax, p = 1 each
    assert (step[0, 4] == 0).all()
    assert row_sum[0, 4] == 4 * (4096 if tag == "fixed_pt" else 1)
    # all-negative row: not shifted, so its largest logit fires late
    d = -code.value[0, 1, 0] / np.log(B)
    assert step[0, 1, 0] == np.ceil(d - 0.5)


@pytest.mark.parametrize("tag", TAGS)
def test_normalized_neuron_divides_by_row_sum(tag):
    """Constant inputs into a NormalizedPhaseNeuron through its r_in: the
    output is Q(A / R), and R = 0 gives zeros."""
    B, T = 1.2, 6
    x = np.array([[0.9, -0.9], [0.9, 0.9]])
    neuron = NormalizedPhaseNeuron(shape=(2, 2), B=B, T=T, start=0,
                                   weight_exp=16, readout=True)
    enc = PhaseEncoder(data=x, B=B, T=T)
    r = PhaseEncoder(data=np.array([0.9, 0.0]), B=B, T=T)  # R = 1, 0
    enc.s_out.connect(neuron.a_in)
    r.s_out.connect(neuron.r_in)
    sink = RingBuffer(shape=(2, 2), buffer=T + 1)
    neuron.s_out.connect(sink.a_in)
    state, count = run(enc, T + 1, tag, lambda: (
        sink.data.get()[..., T], neuron.norm_count.get()[0]))
    # Row 0 receives one +1 spike on r_in: R = 1 (float), or 1/4096 in the
    # 12-bit trace units of fixed_pt. Row 1 receives none: R = 0.
    xh = phase.quantize(x, B, T).value
    gain = 4096 if tag == "fixed_pt" else 1
    np.testing.assert_allclose(state[0], xh[0] * 2 ** 16 * gain, rtol=1e-4)
    assert (state[1] == 0).all()
    assert np.isfinite(state).all() and count == 4
