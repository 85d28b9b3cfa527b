# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""ProcessModels of :class:`lava_spiked.processes.PhaseEncoder`."""
import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spiked.numerics import fixed
from lava_spiked.numerics.phase import threshold_factor
from lava_spiked.proc_models import register, window_step
from lava_spiked.processes.phase_encoder import PhaseEncoder


class AbstractPhaseEncoderModel(PyLoihiProcessModel):
    """Window timing shared by the float and fixed encoders."""

    s_out = data = scale = sat_count = clip_count = invalid_count = None
    one = 1.0  # one sigma in model units

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.B, self.T = proc_params["B"], proc_params["T"]
        self.window_start = proc_params["start"]
        self.period = proc_params["period"]
        self.silent = np.zeros(proc_params["shape"])
        self.u = None       # the sample being encoded, in model units
        self.done = None    # which elements have fired this window

    def run_spk(self):
        """The run function that performs the actual computation during
        execution orchestrated by a PyLoihiProcessModel using the
        LoihiProtocol."""
        m = window_step(self.time_step, self.window_start, self.period)
        if m is None or m >= self.T:
            self.s_out.send(self.silent)
            return
        if m == 0:
            u = self.data / self.scale
            # Raising here would hang Lava's runtime (it joins every actor),
            # so NaN/inf set through Var.set() is counted for the host to
            # report, and those elements stay silent.
            bad = ~np.isfinite(u)
            self.invalid_count[0] += np.count_nonzero(bad)
            self.u = self.load(np.where(bad, 0.0, u))
            # clipped: beyond one sigma, the code's largest value
            self.clip_count[0] += np.count_nonzero(np.abs(self.u) > self.one)
            self.done = np.zeros(self.u.shape, dtype=bool)
        s = self.fire(m) * ~self.done
        self.done |= s != 0
        self.s_out.send(s)

    def load(self, u: np.ndarray) -> np.ndarray:
        """Convert the normalised sample to this model's number format."""
        raise NotImplementedError

    def fire(self, m: int) -> np.ndarray:
        """Spike signs at fire step ``m``, ignoring the one-spike latch."""
        raise NotImplementedError


@implements(proc=PhaseEncoder, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyPhaseEncoderModelFloat(AbstractPhaseEncoderModel):
    """Floating-point PhaseEncoder."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    data: np.ndarray = LavaPyType(np.ndarray, float)
    scale: np.ndarray = LavaPyType(np.ndarray, float)
    sat_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    clip_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    invalid_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.levels = threshold_factor(self.B) * \
            self.B ** -np.arange(self.T, dtype=np.float64)

    def load(self, u):
        return u

    def fire(self, m):
        hit = np.abs(self.u) >= self.levels[m]
        return np.sign(self.u) * hit


@implements(proc=PhaseEncoder, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyPhaseEncoderModelFixed(AbstractPhaseEncoderModel):
    """Integer PhaseEncoder: 24-bit state, threshold table of
    :mod:`lava_spiked.numerics.fixed`."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=2)
    data: np.ndarray = LavaPyType(np.ndarray, float)
    scale: np.ndarray = LavaPyType(np.ndarray, float)
    sat_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    clip_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    invalid_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.thresholds = fixed.threshold_table(self.B, self.T)
        self.one = 1 << fixed.STATE_FRAC_BITS  # one sigma in state units

    def load(self, u):
        state, n_sat = fixed.to_state(u)
        self.sat_count[0] += n_sat
        return state

    def fire(self, m):
        return fixed.fire(self.u, int(self.thresholds[m]), unipolar=False)


register(PyPhaseEncoderModelFloat, PyPhaseEncoderModelFixed)
