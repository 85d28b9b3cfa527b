# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""ProcessModels of :class:`lava_spiked.processes.SpikeDelay`."""
import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lava_spiked.proc_models import register
from lava_spiked.processes.spike_delay import SpikeDelay


class AbstractSpikeDelayModel(PyLoihiProcessModel):
    """Ring buffer of the last ``delay`` spike vectors."""

    s_in = s_out = buffer = None

    def run_spk(self):
        """The run function that performs the actual computation during
        execution orchestrated by a PyLoihiProcessModel using the
        LoihiProtocol."""
        slot = (self.time_step - 1) % self.buffer.shape[0]
        self.s_out.send(self.buffer[slot].copy())
        self.buffer[slot] = self.s_in.recv()


@implements(proc=SpikeDelay, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikeDelayModelFloat(AbstractSpikeDelayModel):
    """SpikeDelay for float spikes."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    buffer: np.ndarray = LavaPyType(np.ndarray, float)


@implements(proc=SpikeDelay, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikeDelayModelFixed(AbstractSpikeDelayModel):
    """SpikeDelay for integer (sign) spikes."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=2)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=2)
    buffer: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=2)


register(PySpikeDelayModelFloat, PySpikeDelayModelFixed)
