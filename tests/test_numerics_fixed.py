"""Integer arithmetic of the fixed_pt models against hand-checked values and
against the float golden model."""
import numpy as np
import pytest
from lava.utils.weightutils import SignMode, clip_weights, truncate_weights

from lava_spiked.numerics import fixed, phase


def test_round_shift_half_away_from_zero():
    x = np.array([5, -5, 4, -4, 6, -6, 1, -1])
    np.testing.assert_array_equal(fixed.round_shift(x, 1),
                                  [3, -3, 2, -2, 3, -3, 1, -1])
    np.testing.assert_array_equal(fixed.round_shift([3, -3], -2), [12, -12])


def test_saturate_counts():
    out, n = fixed.saturate([fixed.STATE_MAX + 5, -fixed.STATE_MAX - 1, 7])
    assert out.tolist() == [fixed.STATE_MAX, -fixed.STATE_MAX, 7]
    assert n == 2
    assert fixed.STATE_MAX == 2 ** 23 - 1


def test_tables_hand_values():
    assert fixed.gain_table(2.0, 4).tolist() == [4096, 2048, 1024, 512]
    # c_B = 0.75 for B = 2: 0.75 * 65536 = 49152, halving each step.
    assert fixed.threshold_table(2.0, 3).tolist() == [49152, 24576, 12288]
    # B = 1.15: round(4096 / 1.15) = round(3561.74) = 3562
    assert fixed.gain_table(1.15, 2).tolist() == [4096, 3562]
    # round(0.934782608 * 65536 / 1.15) = round(53270.7) = 53271
    assert fixed.threshold_table(1.15, 2).tolist() == [61262, 53271]


def test_resolvable_steps():
    assert fixed.resolvable_steps(1.15, 40) == 40
    assert fixed.resolvable_steps(1.4, 16) == 16
    # 0.75 * 2**16 * 2**-m >= 1 up to m = 15; the table bottoms out at 1.
    assert fixed.resolvable_steps(2.0, 64) == 17
    assert fixed.threshold_table(2.0, 64)[16:].tolist() == [1] * 48


def test_usable_steps_and_window_limit():
    # a gain round(4096 B**-j) is 0 once B**-j < 1/8192:
    # 1.4**-27 = 1.14e-4 < 1.22e-4 <= 1.4**-26; 2**-14 < 1/8192 = 2**-13
    assert fixed.usable_steps(1.4, 40) == 27
    assert fixed.usable_steps(2.0, 64) == 14
    assert fixed.usable_steps(1.15, 40) == 40
    with pytest.raises(ValueError, match="T must be an integer in"):
        fixed.gain_table(1.15, 10 ** 6)


def test_to_state():
    state, n = fixed.to_state([1.0, -0.5, 1e-6, 200.0, 1e300])
    assert state.tolist() == [65536, -32768, 0, fixed.STATE_MAX,
                              fixed.STATE_MAX]
    assert n == 2


def test_quantize_weights_hand_example():
    # 1.0 -> 65536 state LSBs; 65536 / 127 = 516 -> 2**10 per k -> e = 9.
    (dense,), exp = fixed.quantize_weights(np.array([[1.0, -0.5, 0.001]]))
    assert exp == 9
    assert dense.tolist() == [[128, -64, 0]]
    np.testing.assert_allclose(fixed.dequantize_weights(dense, exp),
                               [[1.0, -0.5, 0.0]])


def test_quantize_weights_shared_exponent_and_bound():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (5, 7)), rng.normal(0, 0.01, (5, 3))
    (da, db), exp = fixed.quantize_weights(a, b)
    assert np.abs(da).max() // 2 <= 127 and np.abs(da).max() // 2 >= 64
    step = 2.0 ** (exp + 1 - fixed.STATE_FRAC_BITS)  # one mantissa unit
    for w, d in ((a, da), (b, db)):
        err = np.abs(fixed.dequantize_weights(d, exp) - w)
        assert err.max() <= step / 2 + 1e-15


def test_quantize_rows_groups_rows_within_a_factor_4():
    """Rows 1.0 and 0.3 share 1.0's exponent (9, within 4x); 0.01 gets its
    own (2: 0.01 * 65536 = 655.4 needs 655.4 / 2**3 = 81.9 -> k = 82,
    mantissa 164); a zero row takes the smallest exponent."""
    w = np.array([[1.0, -0.5], [0.3, 0.0], [0.01, -0.002], [0.0, 0.0]])
    dense, exp = fixed.quantize_rows(w)
    assert exp.tolist() == [9, 9, 2, 2]
    assert dense.tolist() == [[128, -64], [38, 0], [164, -32], [0, 0]]
    err = np.abs(fixed.dequantize_weights(dense, exp[:, None]) - w)
    # half a mantissa unit of each row's own exponent
    assert np.all(err <= 2.0 ** (exp[:, None] - fixed.STATE_FRAC_BITS) + 1e-15)


def test_quantize_rows_keeps_five_bits_on_every_row():
    """A group's largest mantissa is above 63.5 (else a smaller exponent
    would fit), and its rows reach a quarter of it: >= 16."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (40, 30)) * np.logspace(0, -6, 40)[:, None]
    dense, exp = fixed.quantize_rows(w)
    assert (np.abs(dense).max(1) // 2 >= 16).all()
    assert len(np.unique(exp)) <= 10


@pytest.mark.parametrize("seed", range(3))
def test_weights_pass_lava_dense_unchanged(seed):
    """Dense (MIXED, 8 bits) clips and drops the LSB: our even mantissas
    must come out of Lava's own weight utilities untouched."""
    w = np.random.default_rng(seed).normal(0, 1, (6, 9))
    (dense,), _ = fixed.quantize_weights(w)
    clipped = clip_weights(dense, SignMode.MIXED, num_bits=8)
    np.testing.assert_array_equal(
        truncate_weights(clipped, SignMode.MIXED, 8), dense)


def test_accumulate_and_close_window_hand_values():
    acc, n = fixed.accumulate(np.array([100, -7]), [10, -10], 3562)
    assert acc.tolist() == [35720, -35627] and n == 0
    # e = 9: 35720 * 2**9 / 4096 = 4465 exactly; -35627 / 8 = -4453.375
    v, n = fixed.close_window(acc, [0.0, 0.0], 9)
    assert v.tolist() == [4465, -4453] and n == 0
    # bias 0.5 sigma = 32768 state LSBs, added after the rounding
    v, _ = fixed.close_window(np.array([3]), [0.5], 11)  # 3 / 2 -> 2
    assert v.tolist() == [32768 + 2]
    big, n = fixed.accumulate(np.array([fixed.ACC_MAX]), [1], 1)
    assert big.tolist() == [fixed.ACC_MAX] and n == 1
    v, n = fixed.close_window(np.array([fixed.ACC_MAX]), [0.0], 12)
    assert v.tolist() == [fixed.STATE_MAX] and n == 1


def test_layer_gains_and_24_bit_accumulator_hand_values():
    """Gains of fewer bits are the 12-bit table rounded half away from
    zero; a 24-bit accumulator saturates at 2**23 - 1; the close divides
    by 2**gain_bits."""
    # B = 1.15: 4096, 3562, 3097 (round(4096 / 1.3225) = round(3097.2));
    # 9 bits: /8 -> 512, 445.25 -> 445, 387.1 -> 387
    assert fixed.layer_gains(1.15, 3, 9).tolist() == [512, 445, 387]
    # B = 2: 4096, 2048, 1024, 512 at 2 bits: 4, 2, 1, 0.5 -> 1 (half up)
    assert fixed.layer_gains(2.0, 4, 2).tolist() == [4, 2, 1, 1]
    assert fixed.layer_gains(2.0, 4).tolist() == [4096, 2048, 1024, 512]
    with pytest.raises(ValueError, match="gain bits"):
        fixed.layer_gains(2.0, 4, 0)
    limit = (1 << 23) - 1
    acc, n = fixed.accumulate(np.array([limit - 5, 7]), [3, -2], 2, limit)
    assert acc.tolist() == [limit, 3] and n == 1
    # e = 5, 9-bit gains: 1000 * 2**5 / 2**9 = 62.5 -> 63
    v, n = fixed.close_window(np.array([1000, -1000]), [0.0, 0.0], 5, 9)
    assert v.tolist() == [63, -63] and n == 0


def test_fire_rules():
    v = np.array([10, -10, 9, -9])
    assert fixed.fire(v, 10, unipolar=False).tolist() == [1, -1, 0, 0]
    assert fixed.fire(v, 10, unipolar=True).tolist() == [1, 0, 0, 0]


def _random_layer(seed, n_in=12, n_out=7, B=1.2, T=16):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n_in)
    code = phase.quantize(x, B, T)
    w = rng.normal(0, 0.3, (n_out, n_in))
    (dense,), exp = fixed.quantize_weights(w)
    bias = rng.normal(0, 0.1, n_out)
    return code, dense, exp, bias


@pytest.mark.parametrize("seed", range(5))
def test_integer_layer_tracks_float_layer(seed):
    B, T = 1.2, 16
    code, dense, exp, bias = _random_layer(seed, B=B, T=T)
    layer = fixed.run_layer([code.step], [code.sign], [dense], exp, bias,
                            B, T)
    exact = phase.layer(code.value, fixed.dequantize_weights(dense, exp),
                        bias)
    # Two roundings of at most half an LSB (bias, accumulator), plus the
    # gain-table error of each spike (< 0.5/G_j relative).
    lsb = 2.0 ** -fixed.STATE_FRAC_BITS
    gain_err = np.abs(fixed.dequantize_weights(dense, exp)) @ (
        np.abs(code.value) * 0.5 / fixed.gain_table(B, T)[
            np.maximum(code.step, 0)])
    assert np.all(np.abs(layer.v * lsb - exact) <= lsb + gain_err)
    assert layer.n_saturated == 0


def test_integer_layer_is_sign_symmetric():
    code, dense, exp, bias = _random_layer(7)
    pos = fixed.run_layer([code.step], [code.sign], [dense], exp, bias,
                          1.2, 16)
    neg = fixed.run_layer([code.step], [code.sign], [-dense], exp, -bias,
                          1.2, 16)
    np.testing.assert_array_equal(pos.v, -neg.v)
    np.testing.assert_array_equal(pos.step, neg.step)
    np.testing.assert_array_equal(pos.sign, -neg.sign)


def test_integer_layer_saturates_and_counts():
    layer = fixed.run_layer([np.array([0])], [np.array([1])],
                            [np.array([[254]])], 20, [0.0], 1.2, 4)
    # 254 * 2**20 is far above the 24-bit range
    assert layer.v.tolist() == [fixed.STATE_MAX]
    assert layer.n_saturated == 1
    assert layer.step.tolist() == [0]
