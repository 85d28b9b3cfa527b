"""Batched torch engine that computes a converted network like its Lava
models do, on CPU or CUDA.

Every layer fires only after integrating its whole window (W = T), so its
spikes are a function of its membrane when the window closes, and that
membrane is a closed form of its sources' spikes:

``float`` (= ``floating_pt``)
    ``A = sum_s W_s @ (x_hat_s / sigma_s) + b / sigma``, then the phase
    quantiser; attention as :func:`lava_spiked.attention.attention_float`.
``fixed`` (= ``fixed_pt``, bit for bit)
    The 48-bit dendritic accumulator of a PhaseNeuron sums ``a_in * G_j``
    exactly and is rounded once when the window closes, so it equals
    ``W @ (sign * G[step])``: one matrix product per synapse. For a trace
    product, a pair of spikes at steps m and m' adds
    ``s s' G[min] * G[max] = s G[m] * s' G[m']`` whatever their order, so
    the logit accumulator is ``w * (X_G @ Y_G)`` and the attention output's
    is ``w * (P_G @ V_G)``. Products run in float64, which is exact because
    the constructor proves every sum stays below 2**53; it also proves that
    no accumulator, trace-product current or WOSS membrane can saturate
    mid-window (where step order would matter) and refuses networks for
    which it cannot.

What flows between layers is the trace ``sign * G[step]`` (0 if silent),
looked up from the membrane in one table gather (fixed) or from a
closed-form estimate of the fire step corrected by one table comparison
each way (float, and the WOSS softmax in both modes). Fire steps and signs
are decoded from the stored membranes only when a caller reads them.

Cost: one matrix product per synapse plus a few elementwise passes per
layer, not T steps.
"""
import math
import typing as ty

import numpy as np
import torch

from lava_spiked import fixed
from lava_spiked.phase import threshold_factor
from lava_spiked.plan import Plan, Synapse
from lava_spiked.validation import check_batch

EXACT = 2.0 ** 53  # float64 integers are exact below this
INT32_MAX = (1 << 31) - 1  # TraceMatMul's output port


class EngineResult:
    """Logits and, decoded on first access, every population's spikes.

    Attributes
    ----------
    logits : torch.Tensor
        (batch, *out_shape).
    steps, signs : dict of str to torch.Tensor
        Per spiking layer (and ``<attention>:logits`` / ``:softmax``): fire
        steps (-1 = silent, int64) and signs (float64), each (batch, size)
        in the layer's flat (row-major) order.
    saturated : torch.Tensor
        (batch,) saturation events per sample, as the ``sat_count`` Vars of
        the fixed_pt models count them (all zero in float mode, where
        floating_pt does not saturate).
    """

    def __init__(self, logits: torch.Tensor,
                 membranes: ty.Dict[str, ty.Tuple[torch.Tensor, str]],
                 closed: ty.Dict[str, torch.Tensor], engine: "Engine"
                 ) -> None:
        self.logits = logits
        self._membranes, self._closed = membranes, closed
        self._engine = engine
        self._spikes: ty.Optional[dict] = None

    def _decoded(self) -> dict:
        if self._spikes is None:
            self._spikes = {name: self._engine._decode(v, kind)
                            for name, (v, kind) in self._membranes.items()}
        return self._spikes

    @property
    def steps(self) -> ty.Dict[str, torch.Tensor]:
        return {k: step for k, (step, _) in self._decoded().items()}

    @property
    def signs(self) -> ty.Dict[str, torch.Tensor]:
        return {k: sign for k, (_, sign) in self._decoded().items()}

    @property
    def saturated(self) -> torch.Tensor:
        return self._engine._saturated(self._closed, len(self.logits))


class _FallingThresholds:
    """Fire step against a falling threshold table: how many thresholds lie
    strictly above ``x`` (``len(table)`` = silent).

    ``estimate(x)`` is a closed form of that count that is never off by more
    than one (the table is geometric or linear in the step), so one
    comparison each way makes it exact: ``table[e] > x`` means one more,
    ``table[e - 1] <= x`` one fewer.
    """

    def __init__(self, table: np.ndarray, estimate: ty.Callable,
                 device: torch.device) -> None:
        self.T, self.estimate = len(table), estimate
        # table[T] = -inf lies above nothing; table[-1] = nan is never <= x
        self.at = _tensor(np.append(table, -np.inf), device)
        self.before = _tensor(np.insert(table, 0, np.nan), device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        e = self.estimate(x).clamp_(0, self.T).long()
        # e + [table[e] > x] - [table[e - 1] <= x], in place
        return e.add_(_lookup(self.at, e) > x).add_(
            _lookup(self.before, e) <= x, alpha=-1)


class _Synapse:
    """A Plan synapse on batches (batch, src size) -> (batch, dst size):
    one product ``(batch, R, K) @ W^T`` over the token-shared weight, with
    the gather of the rows and the pick of the outputs skipped where they
    are the identity. Float64 sums of integers below 2**53 are exact in any
    order, so every form gives the same bits."""

    def __init__(self, syn: Synapse, w: np.ndarray, device) -> None:
        r, k = syn.rows.shape
        rows = torch.as_tensor(syn.rows, device=device)
        self.rows = None if np.array_equal(
            syn.rows.ravel(), np.arange(r * k)) else rows
        self.r, self.k = r, k
        self.w = _tensor(w.T, device)
        out = torch.as_tensor(syn.out, device=device)
        self.out = None if np.array_equal(
            syn.out, np.arange(r * w.shape[0])) else out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.rows is None:
            g = x[:, :self.r * self.k].reshape(n, self.r, self.k)
        else:
            g = x.index_select(1, self.rows.clamp(min=0).reshape(-1))
            g = g.reshape(n, self.r, self.k).masked_fill_(self.rows < 0, 0.0)
        y = (g @ self.w).reshape(n, -1)
        if self.out is None:
            return y
        return y.index_select(1, self.out.clamp(min=0)).masked_fill_(
            self.out < 0, 0.0)


def _tensor(a: ty.Any, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` (a 1-D table; index_select is the fastest gather)."""
    return table.index_select(0, index.reshape(-1)).view(index.shape)


def _round(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero, as :func:`lava_spiked.fixed.round_shift`
    does: exact for ``x = k * 2**-n`` with integer ``k`` below 2**53, which
    is what the engine rounds (shifts are folded into the weights)."""
    # sign * floor(|x| + 1/2): floor is vectorised, trunc and copysign are
    # not (3x slower on CPU)
    return x.abs().add_(0.5).floor_().mul_(x.sign())


class Engine:
    """Evaluate a Plan on batches with torch.

    Parameters
    ----------
    plan : Plan or SpikingNetwork
        A converted network (its Lava processes are not run).
    mode : {'fixed', 'float'}
        Integer (``fixed_pt``) or floating-point (``floating_pt``) model.
    device : str or torch.device, optional
        Default 'cpu'.

    Raises
    ------
    ValueError
        If ``mode`` is unknown or bit-exactness cannot be proven for the
        network's weights and scales.
    """

    def __init__(self, plan: ty.Any, mode: str = "fixed",
                 device: ty.Union[str, torch.device] = "cpu") -> None:
        if mode not in ("fixed", "float"):
            raise ValueError(f"mode must be 'fixed' or 'float', got {mode!r}")
        plan = getattr(plan, "plan", plan)
        self.plan, self.mode = plan, mode
        self.device = torch.device(device)
        self._tables(plan.B, plan.T)
        self.layers, self.bias_saturated = {}, {}
        for layer in plan.layers[1:]:
            op = plan.attention_of(layer.name)
            if op is not None:
                self.layers[layer.name] = self._attention_layer(op)
                continue
            # each input adds at most |w| * 4096 (trace of step 0)
            self._prove(sum(float(np.abs(s.weight).sum(-1).max(initial=0))
                            for s in layer.synapses) * 4096.0, layer.name)
            synapses = [_Synapse(s, self._weights(s.weight,
                                                  layer.weight_exp),
                                 self.device) for s in layer.synapses]
            self.layers[layer.name] = (synapses,
                                       self._bias(layer.name, layer.bias))

    # ----------------------------------------------------------- utilities
    def _tensor(self, a) -> torch.Tensor:
        return _tensor(a, self.device)

    def _tables(self, B: float, T: int) -> None:
        """Trace tables (``gains[T] = 0``: silent) and fire-step finders."""
        log_b = math.log(B)
        if self.mode == "fixed":
            gains = fixed.gain_table(B, T).astype(np.float64)
            woss = fixed.woss_thresholds(B, T).astype(np.float64)
            woss_unit = log_b * (1 << fixed.STATE_FRAC_BITS)
            self._neuron_luts(fixed.threshold_table(B, T), gains)
        else:
            steps = np.arange(T, dtype=np.float64)
            gains = B ** -steps
            woss = -(steps + 0.5) * log_b
            woss_unit = log_b
            log_c = math.log(threshold_factor(B))
            # |v| >= c_B B**-m  <=>  m >= (ln c_B - ln |v|) / ln B
            self.neuron_steps = _FallingThresholds(
                threshold_factor(B) * B ** -steps,
                lambda a: (log_c - a.log()).div_(log_b).ceil_(), self.device)
        self.gains = self._tensor(np.append(gains, 0.0))
        # d >= -(m + 1/2) ln B  <=>  m >= -d / ln B - 1/2
        self.woss_steps = _FallingThresholds(
            woss, lambda d: (-d).div_(woss_unit).sub_(0.5).ceil_(),
            self.device)

    def _neuron_luts(self, thresholds: np.ndarray, gains: np.ndarray):
        """Fixed mode: every integer membrane in [-theta_0, theta_0] (a
        larger magnitude fires at step 0) indexes its trace and fire step."""
        top = int(thresholds[0])
        v = np.arange(-top, top + 1)
        steps = len(thresholds) - np.searchsorted(thresholds[::-1], np.abs(v),
                                                  side="right")
        trace = np.sign(v) * np.append(gains, 0.0)[steps]
        self.top = float(top)
        self.lut_steps = torch.as_tensor(steps, device=self.device)
        # float32 holds the 13-bit traces exactly and halves the table, so
        # it stays in cache
        self.lut_trace = {
            unipolar: torch.as_tensor(t, dtype=torch.float32,
                                      device=self.device)
            for unipolar, t in ((False, trace),
                                (True, np.where(v > 0, trace, 0.0)))}

    def _weights(self, dense: np.ndarray, exp: int) -> np.ndarray:
        """Weights whose product is the accumulator times the shift of
        fixed.close_window, ``2**(e - 12)`` (exact: a power of two), or the
        dequantised weights (float)."""
        if self.mode == "fixed":
            return dense * 2.0 ** (exp - fixed.GAIN_FRAC_BITS)
        return fixed.dequantize_weights(dense, exp)

    def _bias(self, name: str, bias_norm: np.ndarray) -> torch.Tensor:
        if self.mode == "float":
            return self._tensor(bias_norm)
        state, self.bias_saturated[name] = fixed.to_state(bias_norm)
        return self._tensor(state)

    def _prove(self, bound: float, name: str,
               limit: float = min(fixed.ACC_MAX, EXACT)) -> None:
        """Refuse a layer whose accumulator could reach ``bound`` >= 2**47
        (it could saturate mid-window) or leave float64's exact range."""
        if self.mode == "float":
            return
        if bound >= limit:
            raise ValueError(
                f"{name}: a sum may reach {bound:.3g}, beyond {limit:.3g}, "
                "where saturation would depend on spike order; the engine "
                "cannot reproduce fixed_pt bit for bit")

    def _attention_layer(self, op):
        t = self._tensor
        # an element sums at most K pairs of 4096 * 4096 (logits) or M
        # softmax spikes times 4096 * 4096 (output), times its weight; a
        # step's product current at most twice K (or M) times 4096
        g = float(1 << fixed.GAIN_FRAC_BITS)
        for w, k, name in ((op.qk, self.plan[op.x].shape[-1], ":logits"),
                           (op.av, self.plan[op.v].shape[-2], "")):
            self._prove(np.abs(w).max() * k * g * g, op.out + name)
            self._prove(np.abs(w).max() * 2 * k * g, op.out + name +
                        " (product current)", INT32_MAX)
        if self.mode == "fixed" and np.abs(op.logit_scale).max() >= 2 ** (
                fixed.STATE_BITS - 1 - fixed.STATE_FRAC_BITS - 1):
            raise ValueError(f"{op.out}: logit scales of 64 or more "
                             "could saturate the WOSS membrane mid-window")
        # fixed: the neurons apply e - 12 to products of 12-bit traces
        g_bits = fixed.GAIN_FRAC_BITS if self.mode == "fixed" else 0
        # WOSS logit: round(unit * G / 4096), the shift folded into the unit
        unit = t(fixed.to_state(op.logit_scale)[0] *
                 2.0 ** -fixed.GAIN_FRAC_BITS if self.mode == "fixed"
                 else op.logit_scale)
        return dict(w_qk=t(self._weights(op.qk, op.qk_exp - g_bits)),
                    w_av=t(self._weights(op.av, op.av_exp - g_bits)),
                    bias=self._bias(op.logits, op.logit_bias), unit=unit,
                    mask=torch.as_tensor(op.mask, device=self.device))

    # ------------------------------------------------------------- forward
    @torch.no_grad()
    def __call__(self, x: ty.Any) -> EngineResult:
        """Run a batch (batch, *sample_shape) and return logits and spikes.
        """
        plan = self.plan
        first = plan[plan.input]
        if not torch.is_tensor(x):
            x = check_batch("x", x, first.shape)
        elif tuple(x.shape[1:]) != first.shape or \
                not torch.isfinite(x).all():  # checked on its own device
            x = check_batch("x", x.cpu(), first.shape)
        x = torch.as_tensor(x, dtype=torch.float64, device=self.device)
        n = len(x)
        u = x.reshape(n, -1) / self._tensor(first.scale)
        if self.mode == "fixed":  # to_state, saturated below with the rest
            u = _round(u * float(1 << fixed.STATE_FRAC_BITS))
        # per layer: membrane and kind (decoded to spikes on demand),
        # membrane before saturation (counted on demand), trace
        membranes = {first.name: (u, "bipolar")}
        closed = {first.name: u}
        traces = {first.name: self._trace(u, False)}
        for layer in plan.layers[1:]:
            op = plan.attention_of(layer.name)
            if op is not None:
                self._attend(op, traces, membranes, closed)
                continue
            synapses, bias = self.layers[layer.name]
            acc = torch.zeros((n, layer.size), dtype=torch.float64,
                              device=self.device)
            for syn, s in zip(synapses, layer.synapses):
                acc += syn(traces[s.src])
            v = self._close(acc, bias)
            closed[layer.name] = v
            if layer.kind == "readout":
                if self.mode == "fixed":
                    v = v.clamp(-fixed.STATE_MAX, fixed.STATE_MAX) * \
                        2.0 ** -fixed.STATE_FRAC_BITS
                logits = (v * self._tensor(layer.scale)).reshape(
                    (n,) + layer.shape)
                return EngineResult(logits, membranes, closed, self)
            kind = "relu" if layer.kind == "relu" else "bipolar"
            membranes[layer.name] = (v, kind)
            traces[layer.name] = self._trace(v, kind == "relu")
        raise AssertionError("no readout layer")

    def _attend(self, op, traces, membranes, closed) -> None:
        a = self.layers[op.out]
        plan, name = self.plan, op.out
        xs, ys, vs = (traces[k].view((-1,) + plan[k].shape)
                      for k in (op.x, op.y, op.v))
        n = xs.shape[0]
        v = self._close(a["w_qk"] * (xs @ ys), a["bias"])
        membranes[op.logits] = (v, "bipolar")
        closed[op.logits] = v
        # WOSS: decoded logits, shift by the largest positive unmasked one
        z = self._trace(v, False) * a["unit"]
        if self.mode == "fixed":
            z = _round(z)
        z.masked_fill_(a["mask"], 0.0)
        d = z - z.amax(-1, keepdim=True).clamp_(min=0.0)
        d.masked_fill_(a["mask"], -math.inf)  # masked entries never fire
        membranes[op.softmax] = (d, "woss")
        p = _lookup(self.gains, self.woss_steps(d))
        row_sum = p.sum(-1, keepdim=True)
        out = self._close(a["w_av"] * (p @ vs), 0.0)
        closed[name] = out.reshape(n, -1)
        if self.mode == "fixed":  # fixed.normalize: a row without spikes
            # has out = 0, and the exact quotient of integers below 2**53
            # rounds half away from zero as trunc((2 v 4096 +- r) / 2 r)
            r = row_sum.clamp(min=1.0)
            out = out.clamp(-fixed.STATE_MAX, fixed.STATE_MAX)
            out = torch.copysign(r, out).add_(
                out * float(2 << fixed.GAIN_FRAC_BITS)).div_(2 * r).trunc_()
        else:
            out = out / torch.where(row_sum > 0, row_sum,
                                    torch.ones_like(row_sum))
        out = out.reshape(n, -1)
        membranes[name] = (out, "bipolar")
        traces[name] = self._trace(out, False)

    def _close(self, acc, bias) -> torch.Tensor:
        """Membrane when the window closes (see fixed.close_window), before
        saturation: spikes do not need it, since every threshold lies far
        below the 24-bit limit."""
        if self.mode == "float":
            return acc + bias
        return _round(acc).add_(bias)

    def _trace(self, v: torch.Tensor, unipolar: bool) -> torch.Tensor:
        """``sign * G[step]`` (fixed) or ``sign * B**-step`` (float) of the
        first spike of membrane ``v``; 0 where silent."""
        if self.mode == "fixed":
            return _lookup(self.lut_trace[unipolar],
                           self._lut_index(v)).double()
        sign = torch.sign(v)
        if unipolar:
            sign.clamp_(min=0.0)
        return _lookup(self.gains, self.neuron_steps(v.abs())).mul_(sign)

    def _lut_index(self, v: torch.Tensor) -> torch.Tensor:
        """Fixed mode: the table row of integer membrane ``v`` (a magnitude
        beyond theta_0 fires at step 0, like theta_0 itself)."""
        return v.clamp(-self.top, self.top).add_(self.top).int()

    def _decode(self, v: torch.Tensor, kind: str):
        """Fire steps (-1 = silent) and signs, (batch, size), from a stored
        membrane."""
        v = v.reshape(v.shape[0], -1)
        if kind == "woss":
            step = self.woss_steps(v)
            sign = torch.ones_like(v)
        elif self.mode == "fixed":
            step = _lookup(self.lut_steps, self._lut_index(v))
            sign = torch.sign(v)
        else:
            step = self.neuron_steps(v.abs())
            sign = torch.sign(v)
        silent = step == self.plan.T
        if kind == "relu":
            silent |= v <= 0
        return (step.masked_fill(silent, -1),
                sign.masked_fill(silent, 0.0))

    def _saturated(self, closed, n: int) -> torch.Tensor:
        """Saturation events per sample: membranes (and the encoder's state)
        outside 24 bits when their window closes, plus saturated biases."""
        count = torch.zeros(n, dtype=torch.int64, device=self.device)
        if self.mode == "fixed":
            for name, v in closed.items():
                count += (v.abs() > fixed.STATE_MAX).reshape(n, -1).sum(1) \
                    + self.bias_saturated.get(name, 0)
        return count
