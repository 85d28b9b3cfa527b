"""Float mode (``floating_pt``): float64 membranes in units of sigma, the
phase code's thresholds and traces in closed form."""
import math
import typing as ty

import numpy as np
import torch

from lava_spiked.numerics import fixed
from lava_spiked.engine.arithmetic import Arithmetic
from lava_spiked.engine.ops import lookup
from lava_spiked.engine.stages import ActivationFloat, LayerNormFloat
from lava_spiked.engine.thresholds import ThresholdBuckets
from lava_spiked.golden.models import stage_float
from lava_spiked.numerics.phase import threshold_factor
from lava_spiked.plan import ActivationStage


class FloatArithmetic(Arithmetic):
    """``floating_pt``: float64 membranes in units of sigma, the phase
    code's thresholds and traces in closed form."""

    mode = "float"
    woss_on_line = True
    one = 1.0
    silent = 0.0
    masked = -math.inf
    matmul = staticmethod(torch.matmul)

    def __init__(self, plan: ty.Any, device: torch.device) -> None:
        super().__init__(plan, device)
        steps = np.arange(plan.T, dtype=np.float64)
        self.neurons = ThresholdBuckets(
            threshold_factor(plan.B) * plan.B ** -steps,
            np.append(self.gain_table(plan.B, plan.T), 0.0), device)

    def gain_table(self, B, T):
        return B ** -np.arange(T, dtype=np.float64)

    def woss_table(self, B, T):
        return -(np.arange(T, dtype=np.float64) + 0.5) * math.log(B)

    def woss_unit(self, B):
        return math.log(B)

    def gain_bits(self, layer):
        return fixed.GAIN_FRAC_BITS

    def attention_bits(self, op):
        return (fixed.GAIN_FRAC_BITS,) * 4

    def weights(self, dense, exp, gain_bits=fixed.GAIN_FRAC_BITS):
        """The dequantised weights."""
        return fixed.dequantize_weights(dense, exp)

    def attention_weights(self, op, bits):
        return (self.weights(op.qk, op.qk_exp),
                self.weights(op.av, op.av_exp))

    def bias(self, name, bias_norm):
        """The bias in units of sigma."""
        return self.tensor(bias_norm)

    def woss_scale(self, op, woss_bits):
        return self.tensor(op.logit_scale)

    def stage_constants(self, layer):
        st = layer.stage
        if st is None:
            return None
        if isinstance(st, ActivationStage):
            # the values at the clip, +-sigma_pre, as the golden model
            # computes them: f(sigma_pre) / sigma is exactly 1 there where
            # sigma = f(sigma_pre), and torch's f may round it above 1,
            # which would count as clipped
            ends = stage_float(layer, np.stack([-np.ones(layer.size),
                                                np.ones(layer.size)]))
            return ActivationFloat(st.fn, self.tensor(st.pre_scale),
                                   self.tensor(layer.scale),
                                   self.tensor(ends[0]),
                                   self.tensor(ends[1]))
        n = layer.shape[-1]
        return LayerNormFloat(n, st.eps / st.pre_scale ** 2,
                              self.tensor(np.reshape(layer.scale, (-1, n))))

    def encode(self, u):
        return u, 0

    def close(self, acc, bias, name):
        return acc.add_(bias)

    def saturated(self, v, name=None):
        return 0  # floating_pt does not saturate

    def trace(self, v, unipolar, keep=True):
        sign = torch.sign(v)
        if unipolar:
            sign.clamp_(min=0.0)
        magnitude = v.abs() if keep else v.abs_()
        return self.neurons.traces(magnitude).mul_(sign)

    def steps_and_signs(self, v):
        return self.neurons.steps(v.abs()), torch.sign(v)

    def stage_input(self, v):
        return v

    def logits(self, v):
        return v

    def woss_input(self, z):
        return z

    def softmax_traces(self, d):
        return lookup(self.gains, self.woss_steps(d))

    def normalize(self, out, row_sum, name):
        return out / torch.where(row_sum > 0, row_sum,
                                 torch.ones_like(row_sum)), 0
