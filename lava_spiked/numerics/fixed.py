"""Integer arithmetic of the ``fixed_pt`` models: the one definition.

The ``fixed_pt`` ProcessModels call these functions step by step, and the
integer golden model (:func:`run_layer`) calls the same functions over a
whole window, so there is exactly one definition of every rounding.

Number formats
--------------
state
    Membranes hold ``v = round(A / sigma * 2**STATE_FRAC_BITS)`` as signed
    24-bit integers: one unit of the neuron's own scale ``sigma`` is 65536
    LSBs and the headroom is 128 sigma. Every write saturates to
    ``[-STATE_MAX, STATE_MAX]`` (symmetric, so negating all inputs negates all
    outputs) and the number of saturated elements is counted, never wrapped.
accumulator
    During the input window a neuron sums ``a_in * G_j`` exactly in a 48-bit
    dendritic accumulator (two 24-bit words, saturating, counted); when the
    window closes, the accumulator is rounded once into the membrane
    (:func:`close_window`). One rounding per layer keeps the membrane a
    function of ``W @ (sign * G[step])``, which a batched engine computes
    with one matrix product. A Loihi 2 conformant layer
    (:func:`lava_spiked.plan.loihi2.conform`) sums in 24 bits with gains of
    fewer bits (:func:`layer_gains`), chosen so that no window can
    saturate it.
weights
    8-bit signed mantissas ``k`` in ``[-127, 127]`` with an exponent ``e``
    per output channel of a synapse (:func:`quantize_rows`): the weight in
    state units is ``k * 2**(e+1)``.
    Lava's ``Dense`` in MIXED sign mode keeps 8-bit weights with the LSB
    dropped, so Dense holds ``2k`` (an even number) and computes ``2k . s``
    exactly. The postsynaptic neuron applies the smallest ``e`` of its
    inputs; each connection's own ``weight_exp`` adds its rows' ``e`` above
    that under ``fixed_pt`` (its ``floating_pt`` model ignores
    ``weight_exp``, so there the weights carry it).
gains
    The integration weight ``B**-j`` of input step ``j`` is the 12-bit
    fraction ``G_j = round(B**-j * 4096)`` (Loihi's decay convention).
thresholds
    ``theta_m = max(1, round(c_B * B**-m * 2**16))``. Where ``c_B * B**-m``
    drops below one LSB the table stays at 1, so the integer neuron resolves
    only :func:`resolvable_steps` of the T steps (all of them for the
    usual (B, T) = (1.15, 40) or (1.4, 16); fewer for e.g. B = 2, T = 64).

Rounding
--------
:func:`round_shift` divides by a power of two rounding half away from zero.
Products are formed in int64 before the shift; only the shifted result is
stored in 24-bit state.
"""
import typing as ty

import numpy as np

from lava_spiked.numerics.phase import threshold_factor
from lava_spiked.validation import check_base, check_finite, check_steps

STATE_BITS = 24
STATE_MAX = (1 << (STATE_BITS - 1)) - 1
STATE_FRAC_BITS = 16
ACC_BITS = 48  # dendritic accumulator: two 24-bit words
ACC_MAX = (1 << (ACC_BITS - 1)) - 1
GAIN_FRAC_BITS = 12
WEIGHT_MANT_MAX = 127
SPIKE_PAYLOAD_BITS = 2  # graded spike payload: the sign, -1 or +1
# activation stage: knots every 2**KNOT_SHIFT state units over one sigma_pre
# each way (see :func:`activation`)
KNOT_SHIFT = 8
KNOTS = (2 << STATE_FRAC_BITS >> KNOT_SHIFT) + 1
# LayerNorm stage: sums of n squared 25-bit deviations stay below 2**62
NORM_MAX_CHANNELS = 1 << 12
MEAN_FRAC_BITS = 8


def round_shift(x: ty.Any, n: int) -> np.ndarray:
    """Return ``x / 2**n`` rounded half away from zero (``x * 2**-n`` for
    ``n <= 0``, which is exact)."""
    x = np.asarray(x, dtype=np.int64)
    if n <= 0:
        return x << -n
    magnitude = (np.abs(x) + (1 << (n - 1))) >> n
    return np.sign(x) * magnitude


def saturate(x: ty.Any, limit: int = STATE_MAX) -> ty.Tuple[np.ndarray, int]:
    """Clip ``x`` to ``[-limit, limit]`` (default: the signed 24-bit state).

    Returns
    -------
    clipped : numpy.ndarray of int64
    n_saturated : int
        How many elements were out of range.
    """
    x = np.asarray(x, dtype=np.int64)
    out = np.clip(x, -limit, limit)
    return out, int(np.count_nonzero(out != x))


def to_state(x_norm: ty.Any) -> ty.Tuple[np.ndarray, int]:
    """Convert values in units of sigma to saturated state integers."""
    x = check_finite("x", x_norm) * (1 << STATE_FRAC_BITS)
    # Clip before the integer cast so huge inputs count as saturated instead
    # of overflowing int64.
    limit = float(STATE_MAX + 1)
    rounded = np.sign(x) * np.floor(np.abs(np.clip(x, -limit, limit)) + 0.5)
    return saturate(rounded.astype(np.int64))


def gain_table(B: float, T: int) -> np.ndarray:
    """Return ``G_j = round(B**-j * 2**GAIN_FRAC_BITS)`` for ``j < T``."""
    B, T = check_base(B), check_steps(T)
    g = B ** -np.arange(T, dtype=np.float64) * (1 << GAIN_FRAC_BITS)
    return np.floor(g + 0.5).astype(np.int64)


def layer_gains(B: float, T: int, bits: int = GAIN_FRAC_BITS) -> np.ndarray:
    """The integration gains of a layer with ``bits``-bit gains: the 12-bit
    table rounded to ``bits`` bits, ``round_shift(G_j, 12 - bits)`` (a
    function of ``G_j``, so a trace maps to its gain one to one)."""
    if not 0 < bits <= GAIN_FRAC_BITS:
        raise ValueError(f"gain bits must lie in 1..{GAIN_FRAC_BITS}, got "
                         f"{bits}")
    return round_shift(gain_table(B, T), GAIN_FRAC_BITS - bits)


def threshold_table(B: float, T: int) -> np.ndarray:
    """Return ``theta_m = max(1, round(c_B * B**-m * 2**STATE_FRAC_BITS))``."""
    B, T = check_base(B), check_steps(T)
    th = threshold_factor(B) * B ** -np.arange(T, dtype=np.float64) \
        * (1 << STATE_FRAC_BITS)
    return np.maximum(1, np.floor(th + 0.5)).astype(np.int64)


def resolvable_steps(B: float, T: int) -> int:
    """Number of fire steps the integer neuron can tell apart (<= T)."""
    return int(np.unique(threshold_table(B, T)).size)


def usable_steps(B: float, T: int) -> int:
    """Leading steps that the integer tables keep: the gain of a later
    step rounds to 0 (its spikes carry nothing) or its threshold equals an
    earlier one. E.g. 27 at B = 1.4 and 14 at B = 2 (gains)."""
    return min(int(np.count_nonzero(gain_table(B, T))),
               resolvable_steps(B, T))


def quantize_weights(*weights: ty.Any) -> ty.Tuple[ty.List[np.ndarray], int]:
    """Quantise weight matrices that feed one layer to 8-bit mantissas.

    Parameters
    ----------
    *weights : array_like
        Matrices in normalised units: the value a +1 spike adds to the
        postsynaptic ``A / sigma_post`` (presynaptic sigma already folded in).
        All matrices feeding one layer share one exponent, because the
        postsynaptic neuron applies it to their summed current.

    Returns
    -------
    dense_weights : list of numpy.ndarray of int32
        ``2k`` for Lava's Dense, one per input matrix.
    weight_exp : int
        Exponent ``e``: weight (normalised) = ``2k * 2**(e - STATE_FRAC_BITS)``.
    """
    mats = [check_finite("weights", w) * (1 << STATE_FRAC_BITS)
            for w in weights]
    largest = max((float(np.abs(m).max(initial=0.0)) for m in mats),
                  default=0.0)
    # Smallest e with largest / 2**(e+1) <= 127, so no mantissa clips.
    exp = 0 if largest == 0 else \
        int(np.ceil(np.log2(largest / WEIGHT_MANT_MAX))) - 1
    while largest / 2.0 ** (exp + 1) > WEIGHT_MANT_MAX:  # log2 rounding
        exp += 1
    dense = []
    for m in mats:
        k = m / 2.0 ** (exp + 1)
        k = np.sign(k) * np.floor(np.abs(k) + 0.5)
        dense.append((2 * np.clip(k, -WEIGHT_MANT_MAX, WEIGHT_MANT_MAX))
                     .astype(np.int32))
    return dense, exp


ROW_GROUP_BITS = 2


def quantize_rows(weight: ty.Any) -> ty.Tuple[np.ndarray, np.ndarray]:
    """Quantise one synapse's (C, K) weights to 8-bit mantissas with an
    exponent per output channel (row), shared within row groups.

    A row's largest weight sets the exponent it needs. Rows join the group
    of the largest remaining row while they are within a factor
    ``2**ROW_GROUP_BITS`` of it: the largest mantissa of a group is above
    63.5 (or a smaller exponent would hold it), so every row's largest is
    at least 16 of 127, and a synapse has few distinct exponents (Lava
    realises each as one connection). All-zero rows take the smallest
    exponent.

    Parameters
    ----------
    weight : array_like
        (C, K) in normalised units (see :func:`quantize_weights`).

    Returns
    -------
    dense_weights : numpy.ndarray of int32
        (C, K) mantissas ``2k``.
    weight_exp : numpy.ndarray of int64
        (C,) exponent of each row.

    Examples
    --------
    A row 100x smaller than the other keeps its own exponent (2, not 9),
    so its mantissa is 164 instead of 0 (weights are normalised: 1.0 is
    2**16 state units, and Dense holds ``2k``):

    >>> dense, exp = quantize_rows([[1.0, -0.5], [0.01, 0.0]])
    >>> dense.tolist(), exp.tolist()
    ([[128, -64], [164, 0]], [9, 2])
    """
    w = check_finite("weights", weight)
    dense = np.zeros(w.shape, np.int32)
    exp = np.zeros(len(w), np.int64)
    top = np.abs(w).max(axis=1, initial=0.0)
    left = top > 0
    while left.any():
        group = left & (top >= top[left].max() / (1 << ROW_GROUP_BITS))
        (dense[group],), exp[group] = quantize_weights(w[group])
        left &= ~group
    if (top > 0).any():
        exp[top == 0] = exp[top > 0].min()
    return dense, exp


def dequantize_weights(dense_weights: ty.Any, weight_exp: ty.Any
                       ) -> np.ndarray:
    """Normalised weights that the quantised mantissas stand for
    (``weight_exp`` broadcasts: one per row as ``exp[:, None]``)."""
    return np.asarray(dense_weights, dtype=np.float64) * \
        2.0 ** (weight_exp - STATE_FRAC_BITS)


def dense_current(dense_weights: np.ndarray, spikes: np.ndarray) -> np.ndarray:
    """Synaptic current of Lava's Dense (weight_exp 0): ``W . s``."""
    return np.asarray(dense_weights, dtype=np.int64) @ \
        np.asarray(spikes, dtype=np.int64)


def accumulate(acc: np.ndarray, a_in: ty.Any, gain: int,
               limit: int = ACC_MAX) -> ty.Tuple[np.ndarray, int]:
    """One input-window step of the dendritic accumulator:
    ``acc + a_in * G_j``, exact, saturating at ``limit`` (48 bits, or 24
    in a Loihi 2 conformant layer).

    Returns the accumulator and the number of saturated elements.
    """
    a_in = np.asarray(a_in, dtype=np.int64)
    return saturate(np.asarray(acc, dtype=np.int64) + a_in * gain, limit)


def close_window(acc: np.ndarray, bias_norm: ty.Any, weight_exp: int,
                 gain_bits: int = GAIN_FRAC_BITS) -> ty.Tuple[np.ndarray, int]:
    """Membrane at the end of the input window:
    ``to_state(bias) + round(acc * 2**e / 2**gain_bits)``, saturated to 24
    bits.

    This is the only rounding of a layer's integration, so the membrane is a
    function of the summed (not the per-step) input: ``acc`` equals
    ``W @ (sign * G[step])`` exactly.
    """
    bias, n_bias = to_state(np.broadcast_to(bias_norm, np.shape(acc)))
    v, n_sat = saturate(bias + round_shift(acc, gain_bits - weight_exp))
    return v, n_bias + n_sat


def fire(v: np.ndarray, threshold: int, unipolar: bool) -> np.ndarray:
    """Spike signs (-1, 0, +1) of state ``v`` against one threshold."""
    v = np.asarray(v, dtype=np.int64)
    up = v >= threshold
    if unipolar:
        return up.astype(np.int64)
    return up.astype(np.int64) - (v <= -threshold).astype(np.int64)


def first_spike(v: np.ndarray, thresholds: np.ndarray,
                unipolar: bool) -> ty.Tuple[np.ndarray, np.ndarray]:
    """Fire step (-1 if silent) and sign of a membrane held through a fire
    window, applying :func:`fire` at every step."""
    step = np.full(np.shape(v), -1, dtype=np.int64)
    sign = np.zeros(np.shape(v), dtype=np.int64)
    for m, threshold in enumerate(thresholds):
        s = fire(v, int(threshold), unipolar) * (step < 0)
        step[s != 0] = m
        sign += s
    return step, sign


class IntegerLayer(ty.NamedTuple):
    """Result of :func:`run_layer`: final state, spikes, saturation count."""

    v: np.ndarray
    step: np.ndarray
    sign: np.ndarray
    n_saturated: int


def run_layer(in_steps: ty.Sequence[np.ndarray],
              in_signs: ty.Sequence[np.ndarray],
              dense_weights: ty.Sequence[np.ndarray], weight_exp: int,
              bias_norm: ty.Any, B: float, T: int,
              unipolar: bool = False) -> IntegerLayer:
    """Integer golden model of one phase layer over its two windows.

    Parameters
    ----------
    in_steps, in_signs : sequence of numpy.ndarray
        For each input population, spike steps relative to this layer's input
        window (-1 = none) and signs.
    dense_weights : sequence of numpy.ndarray
        Dense mantissas ``2k`` from :func:`quantize_weights`, one per input.
    weight_exp : int
        Their shared exponent.
    bias_norm : array_like
        Bias in units of this layer's sigma.
    B, T : float, int
        Code parameters.
    unipolar : bool
        ReLU neuron.
    """
    def current(j: int) -> np.ndarray:
        return sum(dense_current(w, s * (m == j))
                   for w, m, s in zip(dense_weights, in_steps, in_signs))

    return integrate_layer(current, np.shape(dense_weights[0])[0], weight_exp,
                           bias_norm, B, T, unipolar)


def integrate_layer(current: ty.Callable[[int], np.ndarray], size: int,
                    weight_exp: int, bias_norm: ty.Any, B: float, T: int,
                    unipolar: bool = False,
                    stage: ty.Optional[ty.Callable] = None,
                    gain_bits: int = GAIN_FRAC_BITS,
                    acc_bits: int = ACC_BITS) -> IntegerLayer:
    """Integer golden model of one phase layer whose Dense current at input
    step ``j`` is ``current(j)`` (int64, (size,)); see :func:`run_layer`.
    ``stage(v) -> (v, n_saturated)`` transforms the closed membrane before
    it fires (:func:`activation`, :func:`layer_norm`); ``v`` in the result
    is what fired. ``gain_bits`` and ``acc_bits``: the layer's gains
    (:func:`layer_gains`) and accumulator width."""
    gains, thresholds = layer_gains(B, T, gain_bits), threshold_table(B, T)
    acc, n_sat = np.zeros(size, np.int64), 0
    for j in range(T):
        acc, n = accumulate(acc, current(j), int(gains[j]),
                            (1 << (acc_bits - 1)) - 1)
        n_sat += n
    v, n = close_window(acc, bias_norm, weight_exp, gain_bits)
    n_sat += n
    if stage is not None:
        v, n = stage(v)
        n_sat += n
    step, sign = first_spike(v, thresholds, unipolar)
    return IntegerLayer(v, step, sign, n_sat)


def activation(v: ty.Any, knots: np.ndarray,
               row: ty.Any) -> ty.Tuple[np.ndarray, int]:
    """Activation stage: ``f`` of closed membranes by integer knots.

    ``v`` (state units of ``sigma_pre``, shape (..., size)) is clipped to
    one ``sigma_pre``, ``[-2**16, 2**16]``; ``u = v + 2**16`` then lies
    between knots ``i = u >> KNOT_SHIFT`` and ``i + 1`` at offset ``u mod
    2**KNOT_SHIFT``, and the result (state units of ``sigma``) is
    ``y_i + round_shift((y_{i+1} - y_i) * offset, KNOT_SHIFT)``, exact
    integers throughout. ``knots`` and each neuron's ``row`` of it come
    from :func:`lava_spiked.numerics.nonlinear.knot_table`; the error bound is
    :func:`lava_spiked.numerics.nonlinear.activation_error_bound`.

    Returns the values and the number of saturated elements (always 0: the
    knots are saturated when they are made, and interpolation stays
    between two of them).
    """
    one = 1 << STATE_FRAC_BITS
    u = np.clip(np.asarray(v, dtype=np.int64), -one, one) + one
    # flat indices: one take each is about twice as fast as knots[row, i]
    flat = np.asarray(knots, dtype=np.int64).ravel()
    at = (u >> KNOT_SHIFT) + np.asarray(row, dtype=np.int64) * KNOTS
    y0 = flat.take(at)
    # the last knot of a row has offset 0: whatever follows it is unused
    y1 = flat.take(np.minimum(at + 1, flat.size - 1))
    offset = u & ((1 << KNOT_SHIFT) - 1)
    return y0 + round_shift((y1 - y0) * offset, KNOT_SHIFT), 0


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Bits of positive int64 ``x`` (exact: the float estimate is
    corrected both ways)."""
    b = np.floor(np.log2(x.astype(np.float64))).astype(np.int64) + 1
    b = b - ((x >> np.maximum(b - 1, 0)) == 0)
    return b + ((x >> np.minimum(b, 62)) != 0)


def isqrt(x: ty.Any) -> np.ndarray:
    """``floor(sqrt(x))`` of int64 ``0 <= x < 2**52``, exact (the float64
    root corrected by one comparison each way)."""
    x = np.asarray(x, dtype=np.int64)
    s = np.floor(np.sqrt(x.astype(np.float64))).astype(np.int64)
    s = s - (s * s > x)
    return s + ((s + 1) * (s + 1) <= x)


def layer_norm(v: ty.Any, eps_state: int, gain: ty.Any,
               gain_shift: int) -> ty.Tuple[np.ndarray, int]:
    """LayerNorm stage: normalise closed membranes over their last axis.

    A non-spike operation (docs/semantics.md, "Non-spike operations"). For
    each token of ``n`` membranes ``v`` (int, state units of the one
    ``sigma_pre``):

    1. exact integer sum ``S``; the deviations ``c = v - mu`` with the
       mean ``mu = round(S / n)`` (half away from zero) for the variance,
       and with ``MEAN_FRAC_BITS`` more bits of the mean for the
       numerator, ``cf = v * 2**8 - round(S * 2**8 / n)`` (a whole unit of
       mean error, times ``sqrt(n) / std``, would cost several output
       units: the std of a token is often a few percent of its range);
    2. ``D = sum(c**2) + n * eps_state`` (int64; ``eps_state`` is eps in
       units of ``(sigma_pre * 2**-16)**2``), so that
       ``z = c * sqrt(n) / sqrt(D)``;
    3. inverse square root as a 24-bit mantissa: ``D`` is shifted by an
       even ``k`` into ``[2**46, 2**48)`` (right shifts floor),
       ``s = isqrt(D * 2**k)`` (24 bits), ``r = round(2**47 / s)``;
    4. ``u = round(cf * r * 2**(k/2 - 32))``, which is ``z / sqrt(n)`` in
       units of 2**-23 (``|z| <= sqrt(n)``);
    5. ``out = round(u * gain * 2**-(gain_shift + 7))``: ``z / sigma`` in
       state units, ``gain = round(sqrt(n) / sigma * 2**gain_shift)``
       (:func:`lava_spiked.numerics.nonlinear.layer_norm_constants`),
       saturated.

    Each rounding is relative 2**-23 or finer, so ``|out - exact| <= 1 +
    |exact| * 2**-20`` (tested). A token with ``D = 0`` (all equal,
    eps 0) gives 0.

    Returns
    -------
    out : numpy.ndarray of int64
    n_saturated : numpy.ndarray of int64
        Saturated elements per token, shaped ``v.shape[:-1]`` (a batched
        caller counts per sample).
    """
    v = np.asarray(v, dtype=np.int64)
    n = v.shape[-1]
    total = v.sum(-1, keepdims=True)

    def mean(bits: int) -> np.ndarray:
        num = np.abs(total) << bits
        return np.sign(total) * ((2 * num + n) // (2 * n))

    c = v - mean(0)
    cf = (v << MEAN_FRAC_BITS) - mean(MEAN_FRAC_BITS)
    d = np.maximum((c * c).sum(-1, keepdims=True) + n * int(eps_state), 1)
    k = 48 - _bit_length(d)
    k = k - (k & 1)  # even, rounding down: D * 2**k in [2**46, 2**48)
    d = np.where(k >= 0, d << np.maximum(k, 0), d >> np.maximum(-k, 0))
    s = isqrt(d)
    r = ((1 << 48) // s + 1) >> 1  # round(2**47 / s), 24 bits
    shift = 24 + MEAN_FRAC_BITS - k // 2  # 9..40
    prod = cf * r  # < 2**57
    u = np.sign(prod) * ((np.abs(prod) + (1 << (shift - 1))) >> shift)
    out = round_shift(u * np.asarray(gain, dtype=np.int64), gain_shift + 7)
    clipped = np.clip(out, -STATE_MAX, STATE_MAX)
    return clipped, np.count_nonzero(clipped != out, axis=-1)


def trace(B: float, T: int) -> np.ndarray:
    """Global trace ``B**-m`` as 12-bit fractions: the same table as the
    integration gains (:func:`gain_table`)."""
    return gain_table(B, T)


def product_current(x_now: np.ndarray, y_latched: np.ndarray,
                    x_before: np.ndarray, y_now: np.ndarray,
                    y_transposed: bool) -> np.ndarray:
    """Per-step current of a trace-driven product (unweighted).

    ``x_now``/``y_now`` are the spike signs of this step, ``y_latched`` the
    latched traces including this step and ``x_before`` those up to the
    previous step, so a pair that fires in the same step is counted once, by
    the first term. Shapes: x (h, N, K); y (h, M, K), or (h, K, M) when
    ``y_transposed``. Exact for integer inputs (no rounding).
    """
    spec = "hik,hkj->hij" if y_transposed else "hik,hjk->hij"
    return np.einsum(spec, x_now, y_latched) + \
        np.einsum(spec, x_before, y_now)


def normalize(v: np.ndarray, row_sum: np.ndarray) -> np.ndarray:
    """Divide state ``v`` (rows x last axis) by a row sum in 12-bit trace
    units, ``round(v * 4096 / row_sum)`` half away from zero; rows whose sum
    is 0 (no softmax spike) give 0, never a division by zero."""
    v = np.asarray(v, dtype=np.int64)
    r = np.asarray(row_sum, dtype=np.int64)[..., None]
    num = np.abs(v) << GAIN_FRAC_BITS
    safe = np.where(r > 0, r, 1)
    q = (2 * num + safe) // (2 * safe)  # round half up on magnitudes
    return np.where(r > 0, np.sign(v) * q, 0)


def woss_thresholds(B: float, T: int) -> np.ndarray:
    """WOSS thresholds ``-(m + 1/2) * ln B`` in state units (2**-16)."""
    B, T = check_base(B), check_steps(T)
    th = (np.arange(T) + 0.5) * np.log(B) * (1 << STATE_FRAC_BITS)
    return -np.floor(th + 0.5).astype(np.int64)


def woss_logit(spikes: np.ndarray, unit: np.ndarray, trace_value: ty.Any,
               bits: int = GAIN_FRAC_BITS) -> np.ndarray:
    """Decoded logit of WOSS input spikes in 2**-16 units,
    ``s * round(unit * G / 2**bits)`` for a ``bits``-bit trace ``G``, where
    ``unit = to_state(scale)`` is the logit scale in state units."""
    return np.asarray(spikes, dtype=np.int64) * \
        round_shift(np.asarray(unit, dtype=np.int64) * trace_value, bits)
