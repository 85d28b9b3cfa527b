"""Spike-driven self-attention, golden models: the WOSS softmax and one
attention in closed form (:func:`attention_float`) and with the integer
functions of :mod:`lava_spiked.numerics.fixed` step by step
(:func:`attention_fixed`), from the rules of docs/semantics.md (sections
"Trace-driven spike × spike products" and "WOSS softmax") rather than from
the Process code. The Lava composite that they model is
:class:`lava_spiked.lava_backend.self_attention.SpikingSelfAttention`.
"""
import typing as ty

import numpy as np

from lava_spiked.numerics import fixed, phase
from lava_spiked.validation import check_base, check_steps


def woss(z_hat: ty.Any, B: float, T: int,
         mask: ty.Any = None) -> ty.Tuple[np.ndarray, np.ndarray]:
    """Closed form of the WOSS softmax on decoded logits.

    Per row, ``z_max`` is the largest positive unmasked logit (0 shift if
    there is none); entry c fires at the first m with
    ``z_c - z_max >= -(m + 1/2) ln B`` and means ``p_c = B**-m``.

    Returns
    -------
    p : numpy.ndarray
        Unnormalised probabilities ``B**-m*`` (0 where silent or masked).
    step : numpy.ndarray
        Fire steps, -1 where silent.
    """
    B, T = check_base(B), check_steps(T)
    z = np.asarray(z_hat, dtype=np.float64)
    mask = np.zeros(z.shape, bool) if mask is None else \
        np.broadcast_to(np.asarray(mask, bool), z.shape)
    positive = (z > 0) & ~mask
    z_max = np.where(positive, z, 0.0).max(-1, keepdims=True)
    d = z - z_max
    thresholds = -(np.arange(T) + 0.5) * np.log(B)
    step = np.sum(d[..., None] < thresholds, axis=-1)
    silent = (step == T) | mask
    step = np.where(silent, -1, step)
    p = np.where(silent, 0.0, B ** -np.where(silent, 0, step).astype(float))
    return p, step


def woss_fixed(step: np.ndarray, sign: np.ndarray, scale: ty.Any, B: float,
               T: int, mask: ty.Any = None, bits: int = fixed.GAIN_FRAC_BITS
               ) -> ty.Tuple[np.ndarray, np.ndarray, int]:
    """Integer WOSS from the logit spikes (fire steps and signs).

    Logits are ``s * round(round(scale * 2**16) * G_m / 2**bits)``
    (2**-16 units, ``bits``-bit trace G, :func:`lava_spiked.numerics.fixed.
    layer_gains`); the shift subtracts the largest positive unmasked one
    per row; entry c fires at the first m with
    ``z_c - z_max >= -round((m + 1/2) ln B 2**16)``.

    Returns
    -------
    p_step : numpy.ndarray
        Fire steps (-1 = silent).
    row_sum : numpy.ndarray
        ``sum_c G[p_step_c] * 2**(12 - bits)`` per row (12-bit trace
        units).
    n_saturated : int
    """
    G = fixed.layer_gains(B, T, bits)
    step, sign = np.asarray(step), np.asarray(sign)
    mask = np.zeros(step.shape, bool) if mask is None else \
        np.broadcast_to(np.asarray(mask, bool), step.shape)
    fired = (step >= 0) & ~mask
    unit = fixed.to_state(np.broadcast_to(scale, step.shape))[0]
    z = fixed.woss_logit(sign * fired, unit, G[np.maximum(step, 0)], bits)
    positive = fired & (sign > 0)
    z_max = np.where(positive, z, 0).max(-1, keepdims=True)
    z, n_sat = fixed.saturate(z - z_max)
    never = np.iinfo(np.int64).min // 2  # masked entries never fire
    p_step, _ = fixed.first_spike(np.where(mask, never, z),
                                  fixed.woss_thresholds(B, T), unipolar=True)
    row_unit = G << (fixed.GAIN_FRAC_BITS - bits)
    row_sum = np.where(p_step >= 0, row_unit[np.maximum(p_step, 0)],
                       0).sum(-1)
    return p_step, row_sum, n_sat


def softmax_attention(q: ty.Any, k: ty.Any, v: ty.Any,
                      bias: ty.Any = 0.0, mask: ty.Any = None) -> np.ndarray:
    """Exact ``softmax(q k^T / sqrt(d) + bias) v`` per head (masked keys
    excluded; a fully masked row gives zeros)."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    z = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]) + bias
    if mask is not None:
        z = np.where(mask, -np.inf, z)
    z_max = z.max(-1, keepdims=True)
    e = np.exp(z - np.where(np.isfinite(z_max), z_max, 0.0))
    total = e.sum(-1, keepdims=True)
    return np.where(total > 0, (e / np.where(total > 0, total, 1.0)) @ v, 0.0)


class FloatAttention(ty.NamedTuple):
    """Result of :func:`attention_float`: the logit code, the softmax fire
    steps, the row sums R, the output code, and the logit and output
    membranes in units of their scales (what the two codes quantise)."""

    logit: phase.PhaseCode
    p_step: np.ndarray
    row_sum: np.ndarray
    out: phase.PhaseCode
    logit_membrane: np.ndarray
    out_membrane: np.ndarray


def attention_float(x, y, v, qk, logit_bias, logit_scale, mask, av,
                    out_scale, B, T) -> FloatAttention:
    """Closed form of one attention operation on spike values.

    ``x`` (h, N, K), ``y`` (h, K, M) and ``v`` (h, M, d) are decoded operand
    values divided by their scales (spikes carry sign and phase only; the
    scales live in the weights ``qk`` and ``av``)::

        logits = Q(qk * (x @ y) * logit_scale + logit_bias)
        p      = WOSS(logits),  R = sum(p)
        out    = Q(av * (p @ v) / R * out_scale)   (0 where R = 0)

    Parameters
    ----------
    x, y, v : numpy.ndarray
        Operands in units of their scales, shapes above.
    qk : numpy.ndarray
        (h, N, M) logit weights (dequantised: 1/sqrt(d), the operand
        scales and 1/logit_scale folded in).
    logit_bias : numpy.ndarray
        (h, N, M) in real units.
    logit_scale : numpy.ndarray
        sigma of the logits, broadcast to (h, N, M).
    mask : numpy.ndarray of bool
        (h, N, M), True where a key is masked (it never fires).
    av : numpy.ndarray
        (h, N, d) output weights (dequantised: sigma_v / sigma_out).
    out_scale : numpy.ndarray
        sigma of the output, broadcast to (h, N, d).
    B, T : float, int
        Code parameters.

    Returns
    -------
    FloatAttention
    """
    z = qk * (x @ y) * logit_scale + logit_bias
    logit = phase.quantize(z, B, T, logit_scale)
    p, p_step = woss(logit.value, B, T, mask)
    row_sum = p.sum(-1)
    a = av * (p @ v)
    r = row_sum[..., None]
    a = np.where(r > 0, a / np.where(r > 0, r, 1.0), 0.0)
    out = phase.quantize(a * out_scale, B, T, out_scale)
    return FloatAttention(logit, p_step, row_sum, out, z / logit_scale, a)


class IntegerAttention(ty.NamedTuple):
    """Result of :func:`attention_fixed`; ``logit_state`` is the logit
    membrane when its window closes (24-bit state units)."""

    logit_state: np.ndarray
    logit_step: np.ndarray
    logit_sign: np.ndarray
    p_step: np.ndarray
    row_sum: np.ndarray
    out_state: np.ndarray
    n_saturated: int


def attention_fixed(x_step, x_sign, y_step, y_sign, v_step, v_sign,
                    qk_weights, qk_exp, logit_bias_norm, logit_scale, mask,
                    av_weights, av_exp, B, T, y_transposed: bool,
                    qk_bits: int = fixed.GAIN_FRAC_BITS,
                    v_bits: int = fixed.GAIN_FRAC_BITS,
                    out_gain_bits: int = fixed.GAIN_FRAC_BITS,
                    acc_bits: int = fixed.ACC_BITS,
                    woss_bits: int = fixed.GAIN_FRAC_BITS
                    ) -> IntegerAttention:
    """Integer golden model of one attention operation, step by step.

    X and Y fire in one window, so a pair's current lands at the later of
    their steps; the logit neuron integrates it; WOSS follows
    :func:`woss_fixed`; V fired in an earlier window, so each softmax spike
    reads all of V's latched traces; the output state is divided by the row
    sum (:func:`lava_spiked.numerics.fixed.normalize`). Returns the output
    state before its fire window.

    Parameters
    ----------
    x_step, x_sign, y_step, y_sign, v_step, v_sign : numpy.ndarray
        Fire steps (-1: silent) and signs of the operands, (h, N, K) for x,
        (h, K, M) for y (or (h, M, K) with ``y_transposed``) and (h, M, d)
        for v.
    qk_weights, qk_exp : numpy.ndarray, int
        (h, N, M) logit mantissas (Dense form ``2k``) and their exponent.
    logit_bias_norm : numpy.ndarray
        (h, N, M) logit bias in units of ``logit_scale``.
    logit_scale : numpy.ndarray
        sigma of the logits, broadcast to (h, N, M) (the WOSS shift).
    mask : numpy.ndarray of bool
        (h, N, M), True where a key is masked.
    av_weights, av_exp : numpy.ndarray, int
        (h, N, d) output mantissas and their exponent.
    B, T : float, int
        Code parameters.
    y_transposed : bool
        Whether y is given as (h, M, K).
    qk_bits, v_bits, out_gain_bits, acc_bits, woss_bits : int
        ``fixed_pt`` formats (:class:`lava_spiked.plan.LoweredAttention`):
        operand traces and logit gains, V's traces, the output's gains,
        the accumulators' width and the softmax's traces.

    Returns
    -------
    IntegerAttention
    """
    thresholds = fixed.threshold_table(B, T)
    qk_table = fixed.layer_gains(B, T, qk_bits)
    limit = (1 << (acc_bits - 1)) - 1

    def latched(step, sign, upto, table=qk_table):
        return np.where((step >= 0) & (step <= upto),
                        sign * table[np.maximum(step, 0)], 0)

    def now(step, sign, j):
        return np.where(step == j, sign, 0)

    acc, sat = np.zeros(np.shape(qk_weights), np.int64), 0
    for j in range(T):
        raw = fixed.product_current(
            now(x_step, x_sign, j), latched(y_step, y_sign, j),
            latched(x_step, x_sign, j - 1), now(y_step, y_sign, j),
            y_transposed)
        acc, n = fixed.accumulate(acc, qk_weights * raw, int(qk_table[j]),
                                  limit)
        sat += n
    v_log, n = fixed.close_window(acc, logit_bias_norm, qk_exp - qk_bits,
                                  qk_bits)
    sat += n
    l_step, l_sign = fixed.first_spike(v_log, thresholds, unipolar=False)
    p_step, row_sum, n = woss_fixed(l_step, l_sign, logit_scale, B, T, mask,
                                    woss_bits)
    sat += n
    v_all = latched(np.asarray(v_step), np.asarray(v_sign), T,
                    fixed.layer_gains(B, T, v_bits))
    gains = fixed.layer_gains(B, T, out_gain_bits)
    out_shape = p_step.shape[:-1] + v_all.shape[-1:]
    acc = np.zeros(out_shape, np.int64)
    for j in range(T):
        raw = fixed.product_current(np.where(p_step == j, 1, 0), v_all,
                                    np.zeros(p_step.shape),
                                    np.zeros(v_all.shape), y_transposed=True)
        acc, n = fixed.accumulate(acc, av_weights * raw, int(gains[j]),
                                  limit)
        sat += n
    v_out, n = fixed.close_window(acc, 0.0, av_exp - v_bits, out_gain_bits)
    sat += n
    return IntegerAttention(v_log, l_step, l_sign, p_step, row_sum,
                            fixed.normalize(v_out, row_sum), sat)
