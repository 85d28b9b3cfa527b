"""Spike-driven self-attention: golden models and the Lava composite.

``SpikingSelfAttention`` wires, for h heads of N tokens and head size d::

    Q, K, V  PhaseNeuron (h, N, d)          integrate [s, s+T), fire [s+T, s+2T)
    QK       TraceMatMul(Q, K), 1/sqrt(d) and scales folded into its weights
    logits   PhaseNeuron (h, N, N) + bias    integrate [s+T+1, s+2T+1)
    softmax  WOSSSoftmax (h, N, N) + mask    integrate [s+2T+1, s+3T+1)
    AV       TraceMatMul(P, V), V latched since its own window
    out      NormalizedPhaseNeuron (h, N, d) integrate [s+3T+2, s+4T+2),
             divided by the row sum R, fires [s+4T+2, s+5T+2)

Each TraceMatMul adds one step of latency, like Lava's Dense; the softmax
reads the logit spikes directly. V needs no delay line: its traces stay
latched until the softmax spikes read them, and the product of a softmax
spike at step m with a latched V trace is weighted ``B**-m`` by the output
integrator, which is exactly ``p * v_hat``.

The golden models compute the same pipeline in closed form
(:meth:`SpikingSelfAttention.golden_float`) or with the integer functions of
:mod:`lava_spiked.fixed` step by step (:meth:`golden_fixed`), from the
rules of docs/semantics.md (sections "Trace-driven spike × spike products"
and "WOSS softmax") rather than from the Process code.
"""
import typing as ty

import numpy as np

from lava_spiked import fixed, phase
from lava_spiked.validation import (broadcast, check_base, check_finite,
                                    check_scale, check_start, check_steps)


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
    (2**-16 units, ``bits``-bit trace G, :func:`lava_spiked.fixed.
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


class AttentionResult(ty.NamedTuple):
    """Spikes of every stage of one attention sample (steps are relative to
    each stage's fire window, -1 = silent).

    ``output`` is the decoded output (h, N, d) in real units; ``row_sum``
    the softmax row sums R = sum of B**-m per (head, query): a real number
    from :meth:`SpikingSelfAttention.run` (both tags) and
    :meth:`~SpikingSelfAttention.golden_float`, and in 12-bit trace units
    (4096 times that) from :meth:`~SpikingSelfAttention.golden_fixed`,
    whose integers they are; ``saturated`` counts saturation events.
    """

    q_step: np.ndarray
    k_step: np.ndarray
    v_step: np.ndarray
    logit_step: np.ndarray
    logit_sign: np.ndarray
    p_step: np.ndarray
    out_step: np.ndarray
    out_sign: np.ndarray
    output: np.ndarray
    row_sum: np.ndarray
    saturated: int


class SpikingSelfAttention:
    """One spiking self-attention block as Lava processes.

    Parameters
    ----------
    heads, tokens, head_dim : int
        h, N and d.
    B, T : float, int
        Code parameters.
    start : int
        0-based step at which the Q, K, V neurons open their input window.
    q_scale, k_scale : array_like
        sigma of Q and K, one per (head, token): broadcast to (h, N, 1).
        (The contracted axis d shares one scale.)
    v_scale : array_like
        sigma of V, one per (head, channel): broadcast to (h, 1, d).
    logit_scale : array_like
        sigma of the logits, one per (head, query): broadcast to (h, N, 1).
    out_scale : array_like
        sigma of the output, broadcast to (h, N, d).
    qkv_weight_exp : sequence of 3 int, optional
        Exponents of the weights that feed Q, K and V. The default, 16,
        makes a +1 spike worth exactly one sigma: the unit weight of spikes
        fed straight from encoders of the same scale (:meth:`run`).
    logit_bias : array_like, optional
        Added to the logits (relative position bias), (h, N, N).
    mask : array_like of bool, optional
        True where a key is masked for a query, (h, N, N).
    period : int, optional
        0 for one sample, else windows repeat every ``period`` steps.

    Attributes
    ----------
    q, k, v, qk, logits, softmax, av, out
        The Lava processes (``processes`` lists them), for wiring the block
        to other processes.
    qk_weights, qk_exp : numpy.ndarray, int
        Mantissas (Dense form ``2k``, (h, N, N)) and their one exponent of
        the Q K^T product: 1/sqrt(d) and the scales folded in
        (:func:`lava_spiked.fixed.dequantize_weights` gives the values).
    av_weights, av_exp : numpy.ndarray, int
        The same for the P V product, (h, N, d).
    schedule : dict
        Stage -> (input window opens, fire window opens).
    num_steps : int
        Steps of one sample.
    """

    def __init__(self, *, heads: int, tokens: int, head_dim: int, B: float,
                 T: int, start: int, q_scale: ty.Any, k_scale: ty.Any,
                 v_scale: ty.Any, logit_scale: ty.Any, out_scale: ty.Any,
                 qkv_weight_exp: ty.Sequence[int] = (fixed.STATE_FRAC_BITS,) * 3,
                 logit_bias: ty.Any = 0.0, mask: ty.Any = None,
                 period: int = 0) -> None:
        self.B, self.T = check_base(B), check_steps(T)
        self.start = check_start(start)
        h, n, d = heads, tokens, head_dim
        self.qkv_shape, self.logit_shape = (h, n, d), (h, n, n)
        self.q_scale = check_scale("q_scale", q_scale, (h, n, 1))
        self.k_scale = check_scale("k_scale", k_scale, (h, n, 1))
        self.v_scale = check_scale("v_scale", v_scale, (h, 1, d))
        self.logit_scale = check_scale("logit_scale", logit_scale, (h, n, 1))
        self.out_scale = check_scale("out_scale", out_scale, (h, n, d))
        self.logit_bias = broadcast("logit_bias",
                                    check_finite("logit_bias", logit_bias),
                                    self.logit_shape)
        self.mask = np.zeros(self.logit_shape, bool) if mask is None else \
            broadcast("mask", np.asarray(mask, bool), self.logit_shape) != 0
        # QK weight of output (h, i, j): 1/sqrt(d) sigma_q[i] sigma_k[j] /
        # sigma_logit[i]; AV weight of (h, i, c): sigma_v[c] / sigma_out[i,c].
        qk = self.q_scale * np.swapaxes(self.k_scale, 1, 2) / \
            (np.sqrt(d) * self.logit_scale)
        (self.qk_weights,), self.qk_exp = fixed.quantize_weights(qk)
        av = self.v_scale / self.out_scale
        (self.av_weights,), self.av_exp = fixed.quantize_weights(av)

        s, T = self.start, self.T
        self.schedule = {  # stage: (input window opens, fire window opens)
            "qkv": (s, s + T),
            "logits": (s + T + 1, s + 2 * T + 1),
            "softmax": (s + 2 * T + 1, s + 3 * T + 1),
            "out": (s + 3 * T + 2, s + 4 * T + 2),
        }
        self.num_steps = s + 5 * T + 2
        from lava_spiked import lava_build  # Lava is needed from here on
        kw = dict(B=self.B, T=T, period=period)
        self.q, self.k, self.v = (
            lava_build.PhaseNeuron(shape=self.qkv_shape, start=s,
                                   weight_exp=e, scale=sc, **kw)
            for e, sc in zip(qkv_weight_exp,
                             (self.q_scale, self.k_scale, self.v_scale)))
        stages = lava_build.wire_attention(
            self.q, self.k, self.v, x_fire=s + T, v_fire=s + T,
            logit_start=self.schedule["logits"][0],
            out_start=self.schedule["out"][0], qk=self.qk_weights,
            qk_exp=self.qk_exp, logit_bias=self.logit_bias,
            logit_scale=self.logit_scale, mask=self.mask,
            av=self.av_weights, av_exp=self.av_exp, out_scale=self.out_scale,
            y_transposed=False, **kw)
        self.qk, self.logits, self.softmax, self.av, self.out = (
            stages[k] for k in ("qk", "logits", "softmax", "av", "out"))

    def connect_inputs(self, q: ty.Any, k: ty.Any,
                       v: ty.Any) -> ty.List[ty.Any]:
        """Phase-encode q, k, v (h, N, d) with the block's scales and feed
        the spikes straight into its Q, K, V neurons (unit weight, so the
        block needs the default ``qkv_weight_exp``)."""
        from lava_spiked.lava_build import PhaseEncoder
        encoders = []
        for name, x, sigma, neuron in (("q", q, self.q_scale, self.q),
                                       ("k", k, self.k_scale, self.k),
                                       ("v", v, self.v_scale, self.v)):
            x = check_finite(name, x)
            if x.shape != self.qkv_shape:
                raise ValueError(f"{name} has shape {x.shape}, the block "
                                 f"expects {self.qkv_shape}")
            encoders.append(PhaseEncoder(data=x, scale=sigma, B=self.B,
                                         T=self.T, start=self.start))
            encoders[-1].s_out.connect(neuron.a_in)
        return encoders

    def run(self, q: ty.Any, k: ty.Any, v: ty.Any,
            tag: str) -> AttentionResult:
        """Encode q, k, v (h, N, d), run the block once under ``tag`` and
        decode every stage. Needs the default ``qkv_weight_exp``; the
        processes are stopped afterwards (a block runs once).
        """
        from lava_spiked import lava_build
        self.connect_inputs(q, k, v)
        stages = [self.q, self.k, self.v, self.logits, self.softmax,
                  self.out]
        sinks = []
        for proc in stages:
            sinks.append(lava_build.RingBuffer(shape=proc.shape,
                                               buffer=self.num_steps))
            proc.s_out.connect(sinks[-1].a_in)
        runner = lava_build.Runner(self.q)
        try:
            runner.run(lava_build.RunSteps(num_steps=self.num_steps),
                       lava_build.Loihi2SimCfg(select_tag=tag))
            traces = [sink.data.get() for sink in sinks]
            saturated = sum(lava_build.count_events(dict(enumerate(
                self.processes)))["sat_count"].values())
            row_sum = self.out.row_sum.get()
        finally:
            runner.stop()
        fire = [self.schedule[k][1] for k in
                ("qkv", "qkv", "qkv", "logits", "softmax", "out")]
        decoded = [phase.first_spikes(tr, f, self.T)
                   for tr, f in zip(traces, fire)]
        (qs, _), (ks, _), (vs, _), (ls, lg), (ps, _), (os_, og) = decoded
        if tag == "fixed_pt":
            row_sum = row_sum / 2.0 ** fixed.GAIN_FRAC_BITS
        return AttentionResult(qs, ks, vs, ls, lg, ps, os_, og,
                               phase.decode(os_, og, self.B, self.out_scale),
                               row_sum, saturated)

    @property
    def processes(self) -> ty.List[ty.Any]:
        """The Lava processes of the block."""
        return [self.q, self.k, self.v, self.qk, self.logits, self.softmax,
                self.av, self.out]

    # --------------------------------------------------------- golden models
    def golden_float(self, q_hat: ty.Any, k_hat: ty.Any,
                     v_hat: ty.Any) -> AttentionResult:
        """Closed form, from the decoded Q, K, V values.

        logits = Q(c_qk * (q_hat/sigma_q)(k_hat/sigma_k)^T * sigma_logit + bias),
        p = WOSS(logits), out = Q(c_av * (p @ v_hat / sigma_v) / R * sigma_out)
        with the quantised weights c of the TraceMatMuls.
        """
        B, T = self.B, self.T
        logit, p_step, row_sum, out, _, _ = attention_float(
            q_hat / self.q_scale, np.swapaxes(k_hat / self.k_scale, 1, 2),
            v_hat / self.v_scale,
            fixed.dequantize_weights(self.qk_weights, self.qk_exp),
            self.logit_bias, self.logit_scale, self.mask,
            fixed.dequantize_weights(self.av_weights, self.av_exp),
            self.out_scale, B, T)
        codes = [phase.quantize(x, B, T, sc) for x, sc in
                 ((q_hat, self.q_scale), (k_hat, self.k_scale),
                  (v_hat, self.v_scale))]
        return AttentionResult(*(c.step for c in codes), logit.step,
                               logit.sign, p_step, out.step, out.sign,
                               out.value, row_sum, 0)

    def golden_fixed(self, q_step, q_sign, k_step, k_sign, v_step,
                     v_sign) -> AttentionResult:
        """Integer golden model from the spikes of Q, K and V (fire steps and
        signs), with :func:`attention_fixed`."""
        res = attention_fixed(
            q_step, q_sign, k_step, k_sign, v_step, v_sign, self.qk_weights,
            self.qk_exp, self.logit_bias / self.logit_scale,
            self.logit_scale, self.mask, self.av_weights, self.av_exp,
            self.B, self.T, y_transposed=False)
        o_step, o_sign = fixed.first_spike(
            res.out_state, fixed.threshold_table(self.B, self.T),
            unipolar=False)
        output = phase.decode(o_step, o_sign, self.B, self.out_scale)
        return AttentionResult(q_step, k_step, v_step, res.logit_step,
                               res.logit_sign, res.p_step, o_step, o_sign,
                               output, res.row_sum, res.n_saturated)


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
    sum (:func:`lava_spiked.fixed.normalize`). Returns the output state
    before its fire window.

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
        ``fixed_pt`` formats (:class:`lava_spiked.plan.Attention`):
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
