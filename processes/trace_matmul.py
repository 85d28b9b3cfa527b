# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""TraceMatMul: spike x spike matrix product driven by latched traces."""
import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from lava_spiked.numerics import fixed
from lava_spiked.validation import (broadcast, check_base, check_finite,
                                    check_period, check_shape, check_start,
                                    check_steps)


class TraceMatMul(AbstractProcess):
    """Product of two phase-coded operands, for h heads in one Process.

    X has shape (h, N, K); Y has shape (h, M, K) (``Q @ K.T``) or, with
    ``y_transposed=True``, (h, K, M) (``A @ V``). Both receive graded spikes
    (+-1). Each operand neuron latches the global trace at its own spike,
    ``L = s * B**-m`` with m counted from its operand's window start
    (``x_start`` or ``y_start``, in arrival steps). At every step::

        raw[h,i,j] = sum_k  x_now[h,i,k] * Ly[h,j,k]        (Ly incl. now)
                          + Lx_before[h,i,k] * y_now[h,j,k]  (Lx until t-1)
        a_out      = weights * raw * 4096                   (sent next step)

    Both operands' latches are cleared when the earlier of the two windows
    opens (a new sample), so an operand from an earlier window (V in
    ``A @ V``) stays latched until the other one has read it. A spike thus
    reads the latched traces of its partners and a pair that fires
    in the same step is counted once, with the product of its signs. A
    PhaseNeuron whose input window opens one step after the later operand's
    window (this Process, like Dense, sends the current it computed on the
    previous step) integrates ``sum_j B**-j a_out`` and so receives exactly
    ``weights * 4096 * sum_k x_hat[i,k] * y_hat[j,k]`` with the operand scales
    folded into ``weights``. ``weights`` are the Dense-form mantissas ``2k`` of
    :func:`lava_spiked.numerics.fixed.quantize_weights` (per output element,
    e.g.
    ``sigma_x[i] * sigma_y[j] / (sqrt(d) * sigma_out[i])``); give the
    receiving PhaseNeuron ``weight_exp = exp - 12`` for the 4096.

    ``fixed_pt`` latches the ``trace_bits`` (12) bit trace table
    (:func:`lava_spiked.numerics.fixed.layer_gains`; 12 bits: ``round(B**-m *
    4096)``) instead of ``4096 * B**-m``; its products are exact integers,
    and a current beyond the ``out_bits`` (32) bit message range saturates
    and is counted in ``sat_count``. Spikes that arrive outside an
    operand's window are not latched.

    Parameters
    ----------
    x_shape, y_shape : tuple of int
        Operand shapes, (h, N, K) and (h, M, K) or (h, K, M).
    weights : array_like of int
        Mantissas broadcast to the output shape (h, N, M).
    B, T : float, int
        Code parameters.
    x_start, y_start : int
        0-based arrival steps at which each operand's fire window opens.
    y_transposed : bool, optional
        Y is (h, K, M). Default False.
    trace_bits : int, optional
        ``fixed_pt``: bits of the trace table, 1..12. Default 12.
    out_bits : int, optional
        ``fixed_pt``: width of the output current, 24 (Loihi 2's graded
        spikes) or 32. Default 32.
    period : int, optional
        0 for one sample, else windows repeat every ``period`` steps.
    name : str, optional
    log_config : LogConfig, optional

    Raises
    ------
    ValueError
        On shapes that do not multiply or invalid parameters.
    """

    def __init__(self, *, x_shape: ty.Tuple[int, ...],
                 y_shape: ty.Tuple[int, ...], weights: ty.Any, B: float,
                 T: int, x_start: int, y_start: int,
                 y_transposed: bool = False,
                 trace_bits: int = fixed.GAIN_FRAC_BITS, out_bits: int = 32,
                 period: int = 0,
                 name: ty.Optional[str] = None,
                 log_config: ty.Optional[LogConfig] = None,
                 **kwargs) -> None:
        super().__init__(name=name, log_config=log_config, **kwargs)
        x_shape, y_shape = check_shape(x_shape), check_shape(y_shape)
        if len(x_shape) != 3 or len(y_shape) != 3:
            raise ValueError(f"x_shape and y_shape must be (heads, rows, "
                             f"cols), got {x_shape} and {y_shape}")
        h, n, k = x_shape
        yk, m = (y_shape[1], y_shape[2]) if y_transposed else \
            (y_shape[2], y_shape[1])
        if y_shape[0] != h or yk != k:
            raise ValueError(
                f"x_shape {x_shape} and y_shape {y_shape} do not multiply "
                f"(y_transposed={y_transposed}): heads and the contracted "
                "dimension must match")
        out_shape = (h, n, m)
        weights = broadcast("weights", check_finite("weights", weights),
                            out_shape)
        if np.any(weights != np.round(weights)):
            raise ValueError("weights must be integer mantissas (see "
                             "lava_spiked.numerics.fixed.quantize_weights)")
        B, T = check_base(B), check_steps(T)
        if trace_bits not in range(1, fixed.GAIN_FRAC_BITS + 1):
            raise ValueError(f"trace_bits must be an int in 1..12, got "
                             f"{trace_bits!r}")
        if out_bits not in (fixed.STATE_BITS, 32):
            raise ValueError(f"out_bits must be 24 or 32, got {out_bits!r}")
        for key, value in dict(
                x_shape=x_shape, y_shape=y_shape, out_shape=out_shape, B=B,
                T=T, x_start=check_start(x_start, "x_start"),
                y_start=check_start(y_start, "y_start"),
                y_transposed=bool(y_transposed), trace_bits=trace_bits,
                out_bits=out_bits, period=check_period(period, T)).items():
            self.proc_params[key] = value
        self.x_in = InPort(shape=x_shape)
        self.y_in = InPort(shape=y_shape)
        self.a_out = OutPort(shape=out_shape)
        self.weights = Var(shape=out_shape, init=weights.astype(np.int32))
        self.x_trace = Var(shape=x_shape, init=0)
        self.y_trace = Var(shape=y_shape, init=0)
        self.sat_count = Var(shape=(1,), init=0)

    @property
    def shape(self) -> ty.Tuple[int, ...]:
        """Output shape (h, N, M)."""
        return self.proc_params["out_shape"]
