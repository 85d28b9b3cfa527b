"""Spike-driven self-attention as a Lava composite, with its golden models.

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
:mod:`lava_spiked.numerics.fixed` step by step (:meth:`golden_fixed`), from the
rules of docs/semantics.md (sections "Trace-driven spike × spike products"
and "WOSS softmax") rather than from the Process code.
"""
import typing as ty

import numpy as np

from lava_spiked.golden.attention import attention_fixed, attention_float
from lava_spiked.numerics import fixed, phase
from lava_spiked.validation import (broadcast, check_base, check_finite,
                                    check_scale, check_start, check_steps)


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
        (:func:`lava_spiked.numerics.fixed.dequantize_weights` gives the
        values).
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
        # Lava is needed from here on
        from lava_spiked.lava_backend.build import wire_attention
        from lava_spiked.lava_backend.imports import PhaseNeuron
        kw = dict(B=self.B, T=T, period=period)
        self.q, self.k, self.v = (
            PhaseNeuron(shape=self.qkv_shape, start=s, weight_exp=e,
                        scale=sc, **kw)
            for e, sc in zip(qkv_weight_exp,
                             (self.q_scale, self.k_scale, self.v_scale)))
        stages = wire_attention(
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
        from lava_spiked.lava_backend.imports import PhaseEncoder
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
        from lava_spiked.lava_backend.imports import (Loihi2SimCfg,
                                                      RingBuffer, RunSteps)
        from lava_spiked.lava_backend.lifecycle import Runner
        from lava_spiked.lava_backend.runs import count_events
        self.connect_inputs(q, k, v)
        stages = [self.q, self.k, self.v, self.logits, self.softmax,
                  self.out]
        sinks = []
        for proc in stages:
            sinks.append(RingBuffer(shape=proc.shape,
                                    buffer=self.num_steps))
            proc.s_out.connect(sinks[-1].a_in)
        runner = Runner(self.q)
        try:
            runner.run(RunSteps(num_steps=self.num_steps),
                       Loihi2SimCfg(select_tag=tag))
            traces = [sink.data.get() for sink in sinks]
            saturated = sum(count_events(dict(enumerate(
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
