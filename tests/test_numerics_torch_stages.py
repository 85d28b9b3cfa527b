"""The torch stages equal the numpy definitions: bit for bit in fixed
mode (every membrane value of a table; hypothesis rows of LayerNorm),
to float rounding in float mode."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lava_spiked.numerics import fixed, nonlinear, torch_stages

ONE = 1 << fixed.STATE_FRAC_BITS


def test_every_activation_has_a_torch_form():
    assert set(torch_stages.FLOAT) == set(nonlinear.ACTIVATIONS)


@pytest.mark.parametrize("fn", sorted(nonlinear.ACTIVATIONS))
def test_activation_fixed_equals_numpy_on_every_membrane(fn):
    """Three neurons with their own scales, every membrane from beyond
    -sigma_pre to beyond +sigma_pre (clipped there)."""
    pre, scale = np.array([0.5, 3.0, 7.5]), np.array([0.4, 2.0, 0.05])
    knots, row = nonlinear.knot_table(fn, pre, scale)
    v = np.arange(-ONE - 40, ONE + 41, dtype=np.int64)[:, None].repeat(3, 1)
    want, _ = fixed.activation(v, knots, row)
    got = torch_stages.activation_fixed(
        torch.from_numpy(v), torch.from_numpy(knots.astype(np.int64).ravel()),
        torch.from_numpy(row.astype(np.int64) * fixed.KNOTS))
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("fn", sorted(nonlinear.ACTIVATIONS))
def test_activation_float_equals_numpy(fn):
    rng = np.random.default_rng(0)
    v = rng.uniform(-1.5, 1.5, (64, 5))
    pre, scale = rng.uniform(0.1, 8, 5), rng.uniform(0.05, 3, 5)
    want = nonlinear.activation_float(v, fn, pre, scale)
    got = torch_stages.activation_float(torch.from_numpy(v), fn,
                                        torch.from_numpy(pre),
                                        torch.from_numpy(scale))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-13, atol=1e-15)


def _norm_case(draw_values, n, eps, pre, seed):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 4.0, n)
    const = nonlinear.layer_norm_constants(n, eps, pre, scale)
    return np.asarray(draw_values, np.int64).reshape(-1, n), const


def _check_norm(v, const):
    want, want_sat = fixed.layer_norm(v, const.eps_state, const.gain,
                                      const.gain_shift)
    got, got_sat = torch_stages.layer_norm_fixed(
        torch.from_numpy(v), const.eps_state, torch.from_numpy(const.gain),
        const.gain_shift)
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(got_sat.numpy(), want_sat)


@settings(max_examples=60)
@given(st.integers(0, 2 ** 20), st.sampled_from([1, 2, 7, 384]),
       st.sampled_from([0.0, 1e-12, 1e-5, 0.1]),
       st.sampled_from([1e-3, 0.3, 5.0, 300.0]),
       st.sampled_from([3, 2 ** 10, 2 ** 18, fixed.STATE_MAX]))
def test_layer_norm_fixed_equals_numpy(seed, n, eps, pre, spread):
    """Rows of n membranes, from nearly constant to spanning the 24-bit
    state, with every eps and membrane scale: outputs and saturation
    counts equal."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(-spread, spread + 1, (4, n))
    rows[0] = rows[0, 0]  # a constant row: D is n * eps_state (or 1)
    rows[1] += rng.integers(-fixed.STATE_MAX, fixed.STATE_MAX)
    rows = rows.clip(-fixed.STATE_MAX, fixed.STATE_MAX)
    v, const = _norm_case(rows, n, eps, pre, seed)
    _check_norm(v, const)


def test_layer_norm_fixed_equals_numpy_at_the_extremes():
    """Saturating gains (a tiny output scale), one outlier channel, the
    largest membranes of both signs, batched leading axes."""
    n = 384
    v = np.zeros((2, 3, n), np.int64)
    v[0, 0, 5] = fixed.STATE_MAX
    v[0, 1] = np.where(np.arange(n) % 2, fixed.STATE_MAX, -fixed.STATE_MAX)
    v[0, 2] = np.arange(n) - n // 2
    v[1] = np.random.default_rng(1).integers(-5, 6, (3, n))
    scale = np.full(n, 0.01)  # z up to sqrt(n) / 0.01: saturates
    const = nonlinear.layer_norm_constants(n, 1e-5, 2.0, scale)
    _check_norm(v, const)
    want, sat = fixed.layer_norm(v, const.eps_state, const.gain,
                                 const.gain_shift)
    assert sat.sum() > 0  # the case saturates


def test_layer_norm_float_equals_numpy():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 1, (8, 3, 384)) * rng.uniform(0.01, 10, (8, 3, 1))
    v[0, 0] = 0.25  # constant row, eps 0: gives 0
    scale = rng.uniform(0.5, 4.0, 384)
    for eps in (0.0, 1e-5):
        want = nonlinear.layer_norm_float(v, eps, scale)
        got = torch_stages.layer_norm_float(torch.from_numpy(v), eps,
                                            torch.from_numpy(scale))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12,
                                   atol=1e-12)
