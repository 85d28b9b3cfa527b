"""Golden float model of the phase code against hand-computed values."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lava_spiked.numerics import phase


def test_threshold_factor_hand_values():
    assert phase.threshold_factor(2.0) == 0.75
    assert phase.threshold_factor(1.15) == pytest.approx(0.9347826087)
    assert phase.quantization_bound(1.15) == pytest.approx(0.0697674419)
    assert phase.quantization_bound(1.4) == pytest.approx(1 / 6)


def test_quantize_hand_values_base_2():
    # B = 2, T = 4: levels 1, 1/2, 1/4, 1/8; decision points 3/4, 3/8, 3/16,
    # 3/32. Ties go to the larger level.
    x = np.array([0.8, 0.75, 0.74, 0.375, 0.2, 3 / 32, 0.09, -0.3, 0.0, 7.0])
    code = phase.quantize(x, B=2.0, T=4)
    np.testing.assert_array_equal(code.step, [0, 0, 1, 1, 2, 3, -1, 2, -1, 0])
    np.testing.assert_array_equal(code.sign, [1, 1, 1, 1, 1, 1, 0, -1, 0, 1])
    np.testing.assert_allclose(
        code.value, [1, 1, .5, .5, .25, .125, 0, -.25, 0, 1])


def test_quantize_scale_and_unipolar():
    code = phase.quantize([3.0, -3.0], B=2.0, T=4, sigma=4.0)
    np.testing.assert_allclose(code.value, [4.0, -4.0])  # 0.75 of sigma
    relu = phase.quantize([3.0, -3.0], B=2.0, T=4, sigma=4.0, unipolar=True)
    np.testing.assert_allclose(relu.value, [4.0, 0.0])
    assert relu.step.tolist() == [0, -1]


def test_dead_zone_and_clipping():
    B, T, sigma = 1.15, 40, 2.0
    edge = phase.dead_zone(B, T, sigma)
    assert edge == pytest.approx(0.9347826087 * 2.0 * 1.15 ** -39)
    code = phase.quantize([edge, edge * (1 - 1e-9), 10 * sigma], B, T, sigma)
    assert code.step.tolist() == [T - 1, -1, 0]
    assert code.value[2] == sigma


@settings(max_examples=200, deadline=None)
@given(B=st.floats(1.01, 2.0), T=st.integers(2, 64),
       u=st.floats(0.0, 1.0), sign=st.sampled_from([-1.0, 1.0]))
def test_rounding_error_within_bound(B, T, u, sign):
    sigma = 3.0
    low = phase.dead_zone(B, T, sigma)
    low *= 1 + 1e-9  # the edge itself is a float tie
    x = sign * (low + u * (sigma - low))  # inside the coded range
    code = phase.quantize(x, B, T, sigma)
    assert abs(code.value - x) <= phase.quantization_bound(B) * abs(x) * \
        (1 + 1e-12)
    assert np.sign(code.value) == sign


def test_decode_closed_form():
    np.testing.assert_allclose(
        phase.decode([0, 2, -1], [1, -1, 1], B=1.5, sigma=2.0),
        [2.0, -2.0 / 2.25, 0.0])


def test_layer_closed_form():
    w = np.array([[1.0, -2.0], [0.5, 0.25]])
    np.testing.assert_allclose(phase.layer([1.0, 0.5], w, [0.1, 0.0]),
                               [0.1, 0.625])


@pytest.mark.parametrize("B", [1.0, 0.5, 2.5, float("nan"), "x"])
def test_bad_base(B):
    with pytest.raises(ValueError, match="B must be"):
        phase.quantize([0.5], B=B, T=8)


@pytest.mark.parametrize("T", [1, 0, -3, 2.5, True])
def test_bad_steps(T):
    with pytest.raises(ValueError, match="T must be"):
        phase.quantize([0.5], B=1.2, T=T)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(bad):
    with pytest.raises(ValueError, match="x contains 1 NaN or infinite"):
        phase.quantize([0.5, bad], B=1.2, T=8)


def test_bad_sigma():
    with pytest.raises(ValueError, match="sigma must be > 0"):
        phase.quantize([0.5], B=1.2, T=8, sigma=0.0)
