# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""ProcessModels of :class:`lava_spiked.processes.WOSSSoftmax`."""
import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spiked.numerics import fixed
from lava_spiked.proc_models import register, window_step
from lava_spiked.processes.woss_softmax import WOSSSoftmax


class AbstractWOSSModel(PyLoihiProcessModel):
    """Window logic of WOSS; subclasses supply the arithmetic."""

    s_in = s_out = r_out = v = fired = scale = mask = row_sum = None
    sat_count = None

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.B, self.T = proc_params["B"], proc_params["T"]
        self.window_start = proc_params["start"]
        self.period = proc_params["period"]
        shape = proc_params["shape"]
        self.silent = np.zeros(shape)
        self.r_buff = np.zeros(shape[:-1])
        self.latched = np.zeros(shape[:-1], dtype=bool)

    def run_spk(self):
        """The run function that performs the actual computation during
        execution orchestrated by a PyLoihiProcessModel using the
        LoihiProtocol."""
        s_in = self.s_in.recv()
        self.r_out.send(self.r_buff)  # one step late, like TraceMatMul
        self.r_buff = np.zeros_like(self.r_buff)
        r = window_step(self.time_step, self.window_start, self.period)
        if r is not None and r < self.T:
            if r == 0:
                self.v[:] = 0
                self.fired[:] = 0
                self.row_sum[:] = 0
                self.latched[:] = False
            s = s_in * (self.mask == 0)
            z = self.logit(s, r)
            positive = s > 0
            # The earliest positive spike of a row is its largest logit:
            # inhibit the whole row by that value, once.
            winner = positive.any(-1) & ~self.latched
            inhibit = np.where(positive, z, 0).max(-1, initial=0)
            self.add(z - np.where(winner, inhibit, 0)[..., None])
            self.latched |= winner
            self.s_out.send(self.silent)
        elif r is not None and r < 2 * self.T:
            m = r - self.T
            s = (self.v >= self.thresholds[m]) & (self.fired == 0) & \
                (self.mask == 0)
            self.fired[s] = 1
            self.r_buff = s.sum(-1) * self.row_unit[m]
            self.row_sum += self.r_buff
            self.s_out.send(s.astype(self.silent.dtype))
        else:
            self.s_out.send(self.silent)

    def logit(self, s: np.ndarray, r: int) -> np.ndarray:
        """Decoded logit contribution of spikes ``s`` at input step ``r``."""
        raise NotImplementedError

    def add(self, dv: np.ndarray) -> None:
        """Add to the membrane (saturating in fixed point)."""
        raise NotImplementedError


@implements(proc=WOSSSoftmax, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyWOSSModelFloat(AbstractWOSSModel):
    """Floating-point WOSS softmax."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    r_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    fired: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=1)
    scale: np.ndarray = LavaPyType(np.ndarray, float)
    mask: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=1)
    row_sum: np.ndarray = LavaPyType(np.ndarray, float)
    sat_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        steps = np.arange(self.T, dtype=np.float64)
        self.trace = self.row_unit = self.B ** -steps
        self.thresholds = -(steps + 0.5) * np.log(self.B)

    def logit(self, s, r):
        return s * self.scale * self.trace[r]

    def add(self, dv):
        self.v += dv


@implements(proc=WOSSSoftmax, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyWOSSModelFixed(AbstractWOSSModel):
    """Integer WOSS softmax: membrane in 2**-16 logit units, ``trace_bits``
    traces, row sums in 12-bit trace units."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=2)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    r_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    v: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    fired: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=1)
    scale: np.ndarray = LavaPyType(np.ndarray, float)
    mask: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=1)
    row_sum: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    sat_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.bits = proc_params["trace_bits"]
        self.trace = fixed.layer_gains(self.B, self.T, self.bits)
        self.row_unit = self.trace << (fixed.GAIN_FRAC_BITS - self.bits)
        self.thresholds = fixed.woss_thresholds(self.B, self.T)
        self.silent = self.silent.astype(np.int32)
        self.r_buff = self.r_buff.astype(np.int64)

    def logit(self, s, r):
        if r == 0:  # the scale is constant over a window: convert it once
            self.unit = fixed.to_state(self.scale)[0]
        return fixed.woss_logit(s, self.unit, int(self.trace[r]), self.bits)

    def add(self, dv):
        self.v[:], n_sat = fixed.saturate(self.v + dv)
        self.sat_count[0] += n_sat


register(PyWOSSModelFloat, PyWOSSModelFixed)
