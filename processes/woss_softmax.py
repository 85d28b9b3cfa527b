# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""WOSSSoftmax: winner-oriented spike shift softmax."""
import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from lava_spiked.numerics import fixed
from lava_spiked.validation import (broadcast, check_base, check_period,
                                    check_scale, check_shape, check_start,
                                    check_steps)


class WOSSSoftmax(AbstractProcess):
    """Softmax of phase-coded logits, one spike per probability
    (docs/semantics.md, "WOSS softmax").

    Input ``s_in`` carries the +-1 spikes of a logit PhaseNeuron of shape
    (..., M) (rows = all leading axes) whose scale is ``scale`` (one per
    row). With ``r = t - start`` (modulo ``period``)::

        input window, 0 <= r < T:
            v += s_in * scale * B**-r                (decoded logit z)
            first step with a positive unmasked spike in a row: every
            neuron of the row gets -(scale * B**-r) once    (inhibition)
        fire window, m = r - T:
            s_out = 1  if v >= -(m + 1/2) * ln B, unmasked, not yet fired
            row_sum += B**-m * (spikes of the row at m)

    The earliest positive spike is the largest logit, so after the
    inhibition ``v = z - z_max`` and neuron c fires at
    ``m* = round((z_max - z_c) / ln B)`` (halves to the earlier step): its
    spike means ``p_c = B**-m* ~ exp(z_c - z_max)``. Beyond ``T - 1`` steps
    the output is 0; masked entries never fire and never win; a row without
    a positive spike is not shifted. ``r_out`` sends each row's increment of
    ``row_sum`` one step later (aligned with TraceMatMul's latency), so a
    NormalizedPhaseNeuron that sums it gets ``R = sum_c p_c``.

    ``fixed_pt`` holds ``v`` in 2**-16 logit units (24-bit, saturating,
    counted), adds ``round(round(scale * 2**16) * G_r / 2**b)`` per spike
    with the ``b = trace_bits`` (12) bit trace table ``G``
    (:func:`lava_spiked.numerics.fixed.layer_gains`), compares with
    ``-round((m + 1/2) ln B 2**16)`` and sums ``G_m * 2**(12 - b)`` into
    ``row_sum`` (12-bit trace units whatever ``b``).

    Parameters
    ----------
    shape : tuple of int
        (..., M); rows are the leading axes.
    B, T : float, int
        Code parameters.
    start : int
        0-based step at which the input window opens.
    scale : array_like
        Scale of the logit neurons, broadcast to the shape (one per row).
    mask : array_like of bool, optional
        True where an entry is masked out. Default: none.
    trace_bits : int, optional
        ``fixed_pt``: bits of the trace table, 1..12. Default 12.
    period : int, optional
        0 for one sample, else windows repeat every ``period`` steps.
    name : str, optional
    log_config : LogConfig, optional
    """

    def __init__(self, *, shape: ty.Tuple[int, ...], B: float, T: int,
                 start: int, scale: ty.Any = 1.0, mask: ty.Any = None,
                 trace_bits: int = fixed.GAIN_FRAC_BITS, period: int = 0, name: ty.Optional[str] = None,
                 log_config: ty.Optional[LogConfig] = None,
                 **kwargs) -> None:
        super().__init__(name=name, log_config=log_config, **kwargs)
        shape = check_shape(shape)
        if len(shape) < 2:
            raise ValueError(f"shape must be (..., rows, M), got {shape}")
        B, T = check_base(B), check_steps(T)
        if trace_bits not in range(1, fixed.GAIN_FRAC_BITS + 1):
            raise ValueError(f"trace_bits must be an int in 1..12, got "
                             f"{trace_bits!r}")
        scale = check_scale("scale", scale, shape)
        if np.any(scale != scale[..., :1]):
            raise ValueError("scale must be one value per row (constant "
                             "along the last axis)")
        mask = np.zeros(shape, bool) if mask is None else \
            broadcast("mask", np.asarray(mask, dtype=bool), shape) != 0
        for key, value in dict(shape=shape, B=B, T=T,
                               start=check_start(start),
                               trace_bits=trace_bits,
                               period=check_period(period, T)).items():
            self.proc_params[key] = value
        rows = shape[:-1]
        self.s_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.r_out = OutPort(shape=rows)
        self.v = Var(shape=shape, init=0)
        self.fired = Var(shape=shape, init=0)
        self.scale = Var(shape=shape, init=scale)
        self.mask = Var(shape=shape, init=mask.astype(np.int32))
        self.row_sum = Var(shape=rows, init=0)
        self.sat_count = Var(shape=(1,), init=0)

    @property
    def shape(self) -> ty.Tuple[int, ...]:
        """Shape of the probability population."""
        return self.proc_params["shape"]
