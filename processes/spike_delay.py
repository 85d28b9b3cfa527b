# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""SpikeDelay: a fixed axonal delay for graded spikes."""
import typing as ty

from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from lava_spiked.validation import check_shape


class SpikeDelay(AbstractProcess):
    """Delay spikes by a fixed number of steps::

        s_out[t] = s_in[t - delay]      (0 for t < delay)

    It aligns a residual branch with the phase of the branch it joins: a
    spike keeps its phase only if it arrives at the same relative step of
    the receiving layer's window. Lava's DelayDense stops at 62 steps; a
    transformer block spans several windows of T steps. The buffer holds
    ``delay`` spike vectors (payload: the sign).

    Parameters
    ----------
    shape : tuple of int
        Shape of the spike vector.
    delay : int
        Delay in steps, >= 1.
    name : str, optional
    log_config : LogConfig, optional
    """

    def __init__(self, *, shape: ty.Tuple[int, ...], delay: int,
                 name: ty.Optional[str] = None,
                 log_config: ty.Optional[LogConfig] = None,
                 **kwargs) -> None:
        super().__init__(name=name, log_config=log_config, **kwargs)
        shape = check_shape(shape)
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 1:
            raise ValueError(f"delay must be an integer >= 1, got {delay!r}")
        self.proc_params["shape"] = shape
        self.proc_params["delay"] = delay
        self.s_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.buffer = Var(shape=(delay,) + shape, init=0)

    @property
    def shape(self) -> ty.Tuple[int, ...]:
        """Shape of the spike vector."""
        return self.proc_params["shape"]
