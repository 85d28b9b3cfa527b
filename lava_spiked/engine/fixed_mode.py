"""Fixed mode (``fixed_pt``, bit for bit): integer membranes held as rows
of a trace table, sums of integers times one power of two, proven exact."""
import functools
import math
import typing as ty

import numpy as np
import torch

from lava_spiked.numerics import fixed
from lava_spiked.engine.arithmetic import Arithmetic
from lava_spiked.engine.ops import (INT_LIMIT, exact_matmul, lookup,
                                    round_half_away, round_to_int)
from lava_spiked.engine.products import exact_in_f32, f32_products_exact
from lava_spiked.engine.stages import ActivationFixed, LayerNormFixed
from lava_spiked.plan import ActivationStage


class FixedArithmetic(Arithmetic):
    """``fixed_pt``, bit for bit. A membrane is held as its row in the
    trace table (int32), ``v + theta_0`` for an integer membrane ``v`` in
    state units, so that its trace and fire step are one clamp and one
    gather; sums are of integers times one power of two, proven exact."""

    mode = "fixed"
    woss_on_line = False
    one = 1 << fixed.STATE_FRAC_BITS
    matmul = staticmethod(exact_matmul)

    def __init__(self, plan: ty.Any, device: torch.device) -> None:
        thresholds = fixed.threshold_table(plan.B, plan.T)
        self.top = self.silent = int(thresholds[0])
        #: largest |rounded accumulator| a layer can reach, in state units
        #: (the float32 products, int32 rows and saturation counts follow
        #: from it)
        self.reach: ty.Dict[str, float] = {}
        #: layers whose accumulator is an integer (weights of even
        #: multiples of 2**(e - 12) >= 1/2): rounding is the identity
        self.integral: ty.Set[str] = set()
        self.bias_saturated: ty.Dict[str, ty.Any] = {}
        self.bias_max: ty.Dict[str, int] = {}
        super().__init__(plan, device)
        gains = self.gain_table(plan.B, plan.T)
        v = np.arange(-self.top, self.top + 1)
        steps = len(thresholds) - np.searchsorted(
            thresholds[::-1], np.abs(v), side="right")
        trace = np.sign(v) * np.append(gains, 0.0)[steps]
        self.lut_steps = torch.as_tensor(steps, device=device)
        # float32 holds the 13-bit traces exactly, halves the table (so it
        # stays in cache) and feeds the float32 products directly
        self.lut_trace = {
            unipolar: torch.as_tensor(t, dtype=torch.float32, device=device)
            for unipolar, t in ((False, trace),
                                (True, np.where(v > 0, trace, 0.0)))}
        # the softmax's trace of every integer input from one below the
        # last threshold (silent) to 0: one gather instead of the fire
        # step's estimate, corrections and trace lookup
        woss = self.woss_table(plan.B, plan.T)
        self.masked = self.woss_low = int(woss[-1]) - 1
        d = np.arange(self.woss_low, 1)
        steps = plan.T - np.searchsorted(woss[::-1], d, side="right")
        self.woss_trace = torch.as_tensor(
            np.append(gains, 0.0)[steps], dtype=torch.float32, device=device)

    def gain_table(self, B, T):
        return fixed.gain_table(B, T).astype(np.float64)

    def woss_table(self, B, T):
        return fixed.woss_thresholds(B, T).astype(np.float64)

    def woss_unit(self, B):
        return math.log(B) * (1 << fixed.STATE_FRAC_BITS)

    def gain_bits(self, layer):
        return layer.gain_bits

    def attention_bits(self, op):
        return (op.qk_bits, op.v_bits, self.plan[op.out].gain_bits,
                op.woss_bits)

    def weights(self, dense, exp, gain_bits=fixed.GAIN_FRAC_BITS):
        """Weights whose product is the accumulator times the shift of
        fixed.close_window, ``2**(e - gain_bits)`` (exact: a power of
        two)."""
        return dense * 2.0 ** (exp - gain_bits)

    def attention_weights(self, op, bits):
        """The neurons apply 2**(e - trace bits - gain bits) to products
        of a trace and a gain."""
        qk_bits, v_bits, out_bits, _ = bits
        return (self.weights(op.qk, op.qk_exp - qk_bits, qk_bits),
                self.weights(op.av, op.av_exp - v_bits, out_bits))

    def bias(self, name, bias_norm):
        """The saturated state bias plus theta_0, so that adding it to the
        rounded accumulator gives the membrane's table row."""
        state, self.bias_saturated[name] = fixed.to_state(bias_norm)
        self.bias_max[name] = int(np.abs(state).max(initial=0))
        return torch.as_tensor(state + self.top, dtype=torch.int32,
                               device=self.device)

    def prove(self, name, bound, limit, unit=1.0):
        """Refuse a sum that could reach ``limit`` (an accumulator's
        width: it could saturate mid-window; float64's exact range) or
        whose membrane (``bound * unit`` in state units) could overflow
        the int64 it is rounded into."""
        if bound >= limit or bound * unit >= 2.0 ** 62:
            raise ValueError(
                f"{name}: a sum may reach {bound:.3g}, beyond {limit:.3g}, "
                "where saturation would depend on spike order; the engine "
                "cannot reproduce fixed_pt bit for bit")

    def bound(self, name, bound, limit, unit, integral=False):
        self.prove(name, bound, limit, unit)
        self.reach[name] = float(bound * unit)
        if integral:
            self.integral.add(name)

    def f32_products(self):
        return f32_products_exact(self.device)

    def exact_f32(self, bound, step):
        return exact_in_f32(bound, step)

    def check_attention(self, op):
        limit = 2 ** (fixed.STATE_BITS - 1 - fixed.STATE_FRAC_BITS - 1)
        if np.abs(op.logit_scale).max() >= limit:
            raise ValueError(
                f"{op.out}: its calibrated logits reach "
                f"{np.abs(op.logit_scale).max():.3g}, and fixed_pt's WOSS "
                f"membrane (24 bits, 16 of them fraction) holds logits "
                f"below {limit}: they could saturate it mid-window. Run the "
                "network in float mode (floating_pt), or scale the model's "
                "queries or keys down (a softmax of logits this large is "
                "one-hot anyway)")

    def woss_scale(self, op, woss_bits):
        # round(unit * G / 2**woss_bits), the shift folded into the unit
        return self.tensor(fixed.to_state(op.logit_scale)[0] *
                           2.0 ** -woss_bits)

    def stage_constants(self, layer):
        st = layer.stage
        if st is None:
            return None
        long = functools.partial(torch.as_tensor, dtype=torch.int64,
                                 device=self.device)
        if isinstance(st, ActivationStage):
            return ActivationFixed(
                long(np.ravel(st.knots)),
                long(np.asarray(st.row) * fixed.KNOTS), self.top)
        n = layer.shape[-1]
        return LayerNormFixed(n, int(st.eps_state),
                              long(np.reshape(st.gain, (-1, n))),
                              int(st.gain_shift), self.top)

    def encode(self, u):
        # to_state; beyond 2**30 only "saturated" matters
        u = round_to_int(u.mul_(float(1 << fixed.STATE_FRAC_BITS))
                         .clamp_(-INT_LIMIT, INT_LIMIT)).add_(self.top)
        return u, self.saturated(u)

    def close(self, acc, bias, name):
        """The membrane's table row (int32; a membrane beyond 2**30 is
        clamped there, still saturated), rounded in place (``acc`` is the
        caller's own), before saturation: spikes do not need it, since
        every threshold lies far below the 24-bit limit (see
        fixed.close_window); float32 accumulators come only from
        products whose sums (and the rounding's half) are exact in
        float32."""
        if self.reach[name] >= INT_LIMIT - 1:
            acc = acc.clamp_(-INT_LIMIT, INT_LIMIT)
        if name in self.integral:  # nothing to round: the cast is exact
            return acc.int().add_(bias)
        return round_to_int(acc).add_(bias)

    def saturated(self, v, name=None):
        """Events outside 24 bits when the window closes, plus the
        layer's saturated bias; not counted where the layer's bound shows
        that no membrane can leave 24 bits."""
        if name is not None and self.reach[name] + 1 + \
                self.bias_max[name] <= fixed.STATE_MAX:
            return self.bias_saturated[name]
        v = v.reshape(v.shape[0], -1)
        out = torch.count_nonzero((v < self.top - fixed.STATE_MAX) |
                                  (v > self.top + fixed.STATE_MAX), dim=1)
        return out.add_(self.bias_saturated.get(name, 0))

    def trace(self, v, unipolar, keep=True):
        row = v.clamp(0, 2 * self.top) if keep else v.clamp_(0, 2 * self.top)
        return lookup(self.lut_trace[unipolar], row)

    def steps_and_signs(self, v):
        step = lookup(self.lut_steps, v.clamp(0, 2 * self.top))
        return step, torch.sign((v - self.top).double())

    def stage_input(self, v):
        """In state units, saturated (int64)."""
        return (v.long() - self.top).clamp_(-fixed.STATE_MAX,
                                            fixed.STATE_MAX)

    def logits(self, v):
        return (v - self.top).clamp_(
            -fixed.STATE_MAX, fixed.STATE_MAX).double() * \
            2.0 ** -fixed.STATE_FRAC_BITS

    def woss_input(self, z):
        return round_to_int(z)  # int32: |z| < 2**22, logit scales below 64

    def softmax_traces(self, d):
        return lookup(self.woss_trace, d.sub(self.woss_low).clamp_(
            min=0)).double()

    def normalize(self, out, row_sum, name):
        """fixed.normalize: a row without spikes has out = 0, and the
        exact quotient of integers below 2**53 rounds half away from zero
        as trunc((2 v 4096 +- r) / 2 r)."""
        n = out.shape[0]
        out = round_half_away(out)
        saturated = 0
        if self.reach[name] >= fixed.STATE_MAX:
            saturated = (out.abs() > fixed.STATE_MAX).reshape(n, -1).sum(1)
        r = row_sum.clamp(min=1.0)
        out = out.clamp(-fixed.STATE_MAX, fixed.STATE_MAX)
        out = torch.copysign(r, out).add_(
            out * float(2 << fixed.GAIN_FRAC_BITS)).div_(2 * r)
        return out.clamp_(-INT_LIMIT, INT_LIMIT).int().add_(self.top), \
            saturated
