# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""ProcessModels of :class:`lava_spiked.processes.PhaseNeuron`."""
import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spiked.numerics import fixed, nonlinear
from lava_spiked.numerics.phase import threshold_factor
from lava_spiked.proc_models import register, window_step
from lava_spiked.processes.phase_neuron import (ActivationPhaseNeuron,
                                                 LayerNormPhaseNeuron,
                                                 NormalizedPhaseNeuron,
                                                 PhaseNeuron)


class AbstractPhaseNeuronModel(PyLoihiProcessModel):
    """Window logic shared by the float and fixed PhaseNeuron models; the
    subclasses supply the arithmetic."""

    a_in = s_out = v = acc = None  # declared by the arithmetic subclasses
    fired: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=1)
    mask: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=1)
    bias: np.ndarray = LavaPyType(np.ndarray, float)
    scale: np.ndarray = LavaPyType(np.ndarray, float)
    sat_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    clip_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    stray_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.B, self.T = proc_params["B"], proc_params["T"]
        self.window_start = proc_params["start"]
        self.period = proc_params["period"]
        self.weight_exp = proc_params["weight_exp"]
        self.unipolar = proc_params["unipolar"]
        self.readout = proc_params["readout"]
        self.silent = np.zeros(proc_params["shape"])

    def run_spk(self):
        """The run function that performs the actual computation during
        execution orchestrated by a PyLoihiProcessModel using the
        LoihiProtocol."""
        a_in = self.a_in.recv()
        r = window_step(self.time_step, self.window_start, self.period)
        if r is not None and r < self.T:
            if r == 0:
                self.fired[:] = 0
                self.acc[:] = 0
            self.accumulate(a_in, r)
        else:
            self.stray_count[0] += np.count_nonzero(a_in)
        if r == self.T:
            self.close_window(self.bias / self.scale)
            if not self.readout:
                self.clip_count[0] += self.clipped()
        if r is None or not self.T <= r < 2 * self.T:
            self.s_out.send(self.silent)
        elif self.readout:
            self.s_out.send(self.membrane() if r == self.T else self.silent)
        else:
            s = self.fire(r - self.T) * ((self.fired == 0) &
                                         (self.mask == 0))
            self.fired[s != 0] = 1
            self.s_out.send(s)

    def accumulate(self, a_in: np.ndarray, r: int) -> None:
        """Add the input of input step ``r`` with its weight ``B**-r`` to
        the dendritic accumulator."""
        raise NotImplementedError

    def close_window(self, bias_norm: np.ndarray) -> None:
        """Set the membrane to bias + accumulator (units of the scale)."""
        raise NotImplementedError

    def fire(self, m: int) -> np.ndarray:
        """Spike signs at fire step ``m``, ignoring the one-spike latch."""
        raise NotImplementedError

    def membrane(self) -> np.ndarray:
        """The membrane in state units (readout)."""
        raise NotImplementedError

    def clipped(self) -> int:
        """Neurons whose closed membrane lies beyond the code's range,
        one sigma (see PhaseNeuron's docstring)."""
        beyond = self.v if self.unipolar else np.abs(self.v)
        return int(np.count_nonzero(beyond > self.one))


class FloatArithmetic(AbstractPhaseNeuronModel):
    """Floating-point arithmetic of the phase neuron."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    acc: np.ndarray = LavaPyType(np.ndarray, float)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        steps = np.arange(self.T, dtype=np.float64)
        self.gains = self.B ** -steps * 2.0 ** (self.weight_exp -
                                               fixed.STATE_FRAC_BITS)
        self.levels = threshold_factor(self.B) * self.B ** -steps
        self.one = 1.0  # one sigma

    def accumulate(self, a_in, r):
        self.acc += a_in * self.gains[r]

    def close_window(self, bias_norm):
        self.v[:] = bias_norm + self.acc

    def fire(self, m):
        up = self.v >= self.levels[m]
        if self.unipolar:
            return up.astype(float)
        return up.astype(float) - (self.v <= -self.levels[m])

    def membrane(self):
        return self.v * 2.0 ** fixed.STATE_FRAC_BITS

    def divide(self, row_sum):
        """Divide each row of the membrane by its row sum (0 if none)."""
        r = row_sum[..., None]
        self.v[:] = np.where(r > 0, self.v / np.where(r > 0, r, 1.0), 0.0)


class FixedArithmetic(AbstractPhaseNeuronModel):
    """Integer arithmetic: 24-bit saturating state, 12-bit gain table and
    integer thresholds, all from :mod:`lava_spiked.numerics.fixed`."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    acc: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=48)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.gain_bits = proc_params["gain_bits"]
        self.gains = fixed.layer_gains(self.B, self.T, self.gain_bits)
        self.acc_max = (1 << (proc_params["acc_bits"] - 1)) - 1
        self.thresholds = fixed.threshold_table(self.B, self.T)
        self.one = 1 << fixed.STATE_FRAC_BITS  # one sigma in state units

    def accumulate(self, a_in, r):
        self.acc[:], n_sat = fixed.accumulate(
            self.acc, a_in, int(self.gains[r]), self.acc_max)
        self.sat_count[0] += n_sat

    def close_window(self, bias_norm):
        self.v[:], n_sat = fixed.close_window(self.acc, bias_norm,
                                              self.weight_exp, self.gain_bits)
        self.sat_count[0] += n_sat

    def fire(self, m):
        return fixed.fire(self.v, int(self.thresholds[m]), self.unipolar)

    def membrane(self):
        return self.v

    def divide(self, row_sum):
        """Divide each row of the membrane by its row sum (0 if none)."""
        self.v[:] = fixed.normalize(self.v, row_sum)


class AbstractNormalizedModel(AbstractPhaseNeuronModel):
    """Adds the row-sum input and the division before the fire window; the
    arithmetic class it is combined with supplies ``divide(row_sum)``."""

    r_in = row_sum = None  # declared by the concrete models
    norm_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def run_spk(self):
        """The run function that performs the actual computation during
        execution orchestrated by a PyLoihiProcessModel using the
        LoihiProtocol."""
        r_in = self.r_in.recv()
        r = window_step(self.time_step, self.window_start, self.period)
        if r is not None and r < self.T:
            if r == 0:
                self.row_sum[:] = 0
            self.row_sum += r_in
        super().run_spk()

    def close_window(self, bias_norm):
        """Close the window, then divide by the row sum: the non-spike
        operation."""
        super().close_window(bias_norm)
        self.divide(self.row_sum)
        self.norm_count[0] += self.v.size


class AbstractStagedModel(AbstractPhaseNeuronModel):
    """A window-close stage after the membrane closes in units of
    ``pre_scale``; the concrete models supply ``stage(v) -> (v,
    n_saturated)``."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.pre_scale = proc_params["pre_scale"]
        self.pre = None  # the membrane the stage saw (clipping)

    def close_window(self, bias_norm):
        """Close the window in the membrane's own units, then run the
        stage."""
        super().close_window(self.bias / self.pre_scale)
        self.pre = self.v.copy()
        self.v[:], n_sat = self.stage(self.v)
        self.sat_count[0] += n_sat

    def stage(self, v):
        raise NotImplementedError


class AbstractActivationModel(AbstractStagedModel):
    """Activation stage; clips where the pre-activation or the output lies
    beyond one scale."""

    def clipped(self):
        return int(np.count_nonzero((np.abs(self.v) > self.one) |
                                    (np.abs(self.pre) > self.one)))


class AbstractLayerNormModel(AbstractStagedModel):
    """LayerNorm stage over the last axis: a non-spike operation counted in
    ``norm_count``."""

    norm_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def close_window(self, bias_norm):
        super().close_window(bias_norm)
        self.norm_count[0] += self.v.size


@implements(proc=PhaseNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyPhaseNeuronModelFloat(FloatArithmetic):
    """Floating-point PhaseNeuron."""


@implements(proc=PhaseNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyPhaseNeuronModelFixed(FixedArithmetic):
    """Integer PhaseNeuron."""


@implements(proc=NormalizedPhaseNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyNormalizedPhaseNeuronModelFloat(AbstractNormalizedModel,
                                        FloatArithmetic):
    """Floating-point NormalizedPhaseNeuron."""

    r_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    row_sum: np.ndarray = LavaPyType(np.ndarray, float)


@implements(proc=NormalizedPhaseNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyNormalizedPhaseNeuronModelFixed(AbstractNormalizedModel,
                                        FixedArithmetic):
    """Integer NormalizedPhaseNeuron."""

    r_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    row_sum: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)


@implements(proc=ActivationPhaseNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyActivationPhaseNeuronModelFloat(AbstractActivationModel,
                                        FloatArithmetic):
    """Floating-point ActivationPhaseNeuron: ``f`` evaluated."""

    def stage(self, v):
        return nonlinear.activation_float(
            v, self.proc_params["fn"], self.pre_scale, self.scale), 0


@implements(proc=ActivationPhaseNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyActivationPhaseNeuronModelFixed(AbstractActivationModel,
                                        FixedArithmetic):
    """Integer ActivationPhaseNeuron: knots and linear interpolation."""

    def stage(self, v):
        return fixed.activation(v, self.proc_params["knots"],
                                self.proc_params["row"])


@implements(proc=LayerNormPhaseNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyLayerNormPhaseNeuronModelFloat(AbstractLayerNormModel,
                                       FloatArithmetic):
    """Floating-point LayerNormPhaseNeuron."""

    def stage(self, v):
        return nonlinear.layer_norm_float(
            v, self.proc_params["eps"] / self.pre_scale ** 2, self.scale), 0


@implements(proc=LayerNormPhaseNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyLayerNormPhaseNeuronModelFixed(AbstractLayerNormModel,
                                       FixedArithmetic):
    """Integer LayerNormPhaseNeuron."""

    def stage(self, v):
        p = self.proc_params
        out, n_sat = fixed.layer_norm(v, p["eps_state"], p["gain"],
                                      p["gain_shift"])
        return out, int(n_sat.sum())


register(PyPhaseNeuronModelFloat, PyPhaseNeuronModelFixed,
         PyNormalizedPhaseNeuronModelFloat, PyNormalizedPhaseNeuronModelFixed,
         PyActivationPhaseNeuronModelFloat, PyActivationPhaseNeuronModelFixed,
         PyLayerNormPhaseNeuronModelFloat, PyLayerNormPhaseNeuronModelFixed)
