# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""ProcessModels of :class:`lava_spiked.processes.TraceMatMul`."""
import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spiked.numerics import fixed
from lava_spiked.proc_models import register, window_step
from lava_spiked.processes.trace_matmul import TraceMatMul



class AbstractTraceMatMulModel(PyLoihiProcessModel):
    """Latching and product logic; subclasses give the trace table and the
    output number format."""

    x_in = y_in = a_out = weights = x_trace = y_trace = sat_count = None

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.T, self.period = proc_params["T"], proc_params["period"]
        self.x_start = proc_params["x_start"]
        self.y_start = proc_params["y_start"]
        self.y_transposed = proc_params["y_transposed"]
        self.a_buff = np.zeros(proc_params["out_shape"])

    def run_spk(self):
        """The run function that performs the actual computation during
        execution orchestrated by a PyLoihiProcessModel using the
        LoihiProtocol."""
        self.a_out.send(self.a_buff)  # one step of latency, as Dense
        if window_step(self.time_step, min(self.x_start, self.y_start),
                       self.period) == 0:  # a new sample: forget the old one
            self.x_trace[:] = 0
            self.y_trace[:] = 0
        x_now, x_gain = self.arrivals(self.x_in.recv(), self.x_start)
        y_now, y_gain = self.arrivals(self.y_in.recv(), self.y_start)
        if not (x_now.any() or y_now.any()):  # no spike: no current
            self.a_buff = np.zeros_like(self.a_buff)
            return
        x_before = self.x_trace.copy()
        self.x_trace += x_now * x_gain
        self.y_trace += y_now * y_gain
        raw = fixed.product_current(x_now, self.y_trace, x_before, y_now,
                                    self.y_transposed)
        self.a_buff = self.output(self.weights * raw)

    def arrivals(self, spikes: np.ndarray, start: int):
        """Spikes inside the operand's window (others are dropped) and the
        global trace value of this step of that window."""
        r = window_step(self.time_step, start, self.period)
        if r is None or r >= self.T:
            return np.zeros_like(spikes), 0
        return spikes, self.table[r]

    def output(self, current: np.ndarray) -> np.ndarray:
        """Convert the weighted current to the output number format."""
        raise NotImplementedError


@implements(proc=TraceMatMul, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyTraceMatMulModelFloat(AbstractTraceMatMulModel):
    """Floating-point TraceMatMul (traces ``4096 * B**-m``)."""

    x_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    y_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    weights: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=9)  # 2k
    x_trace: np.ndarray = LavaPyType(np.ndarray, float)
    y_trace: np.ndarray = LavaPyType(np.ndarray, float)
    sat_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.table = proc_params["B"] ** -np.arange(
            self.T, dtype=np.float64) * (1 << fixed.GAIN_FRAC_BITS)

    def output(self, current):
        return current


@implements(proc=TraceMatMul, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTraceMatMulModelFixed(AbstractTraceMatMulModel):
    """Integer TraceMatMul (``trace_bits`` trace table, exact products,
    ``out_bits`` output)."""

    x_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=2)
    y_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=2)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=32)
    weights: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=9)  # 2k
    x_trace: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=13)
    y_trace: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=13)
    sat_count: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self.table = fixed.layer_gains(proc_params["B"], self.T,
                                       proc_params["trace_bits"])
        self.limit = (1 << (proc_params["out_bits"] - 1)) - 1

    def output(self, current):
        current = np.asarray(current, dtype=np.int64)
        clipped = np.clip(current, -self.limit, self.limit)
        self.sat_count[0] += np.count_nonzero(clipped != current)
        return clipped


register(PyTraceMatMulModelFloat, PyTraceMatMulModelFixed)
