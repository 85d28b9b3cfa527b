# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""PhaseEncoder: real values in, one signed spike per element out."""
import typing as ty

from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from lava_spiked.validation import (check_base, check_finite, check_period,
                                    check_scale, check_shape, check_start,
                                    check_steps)


class PhaseEncoder(AbstractProcess):
    """Encode a real vector into one graded spike per element (phase code).

    With ``t = time_step - 1`` and the window step ``m = t - start`` (taken
    modulo ``period`` when ``period > 0``), for ``0 <= m < T``::

        u        = data / scale
        s_out[m] = sign(u)   if m == m*(u) else 0
        m*(u)    = min{ m : |u| >= c_B * B**-m },   c_B = (1 + 1/B) / 2

    The payload of a spike is its sign, +1 or -1; the value it stands for,
    ``sign * scale * B**-m``, is recovered by the receiving layer, whose
    weights carry ``scale``. Elements with ``|u|`` below
    ``c_B * B**-(T-1)`` stay silent. ``fixed_pt`` first converts ``u`` to
    24-bit state integers and compares them with the integer threshold table
    of :mod:`lava_spiked.numerics.fixed`; values of ``|u|`` above 128 saturate
    and are counted in ``sat_count``. NaN or inf written into ``data`` with
    ``Var.set`` after construction (the constructor refuses them) give no
    spike and are counted in ``invalid_count``: a model that raised would
    leave Lava's runtime waiting forever.

    Clipping: every ``|u| >= c_B`` fires at step 0 and stands for
    ``scale``, so an element is **clipped** in a sample when ``|u| > 1``
    (``floating_pt``), or when its state ``to_state(u)`` exceeds one sigma,
    ``|state| > 2**16`` (``fixed_pt``). The cumulative ``clip_count``
    counts them, one per element and sample, when the window opens (NaN or
    inf elements are not counted).

    Parameters
    ----------
    data : array_like
        Values to encode; its shape is the Process's shape. Finite.
    scale : float or array_like, optional
        Positive scale sigma (broadcast to the shape). Default 1.
    B : float
        Base of the code, 1 < B <= 2.
    T : int
        Steps in the fire window, >= 2.
    start : int, optional
        Time step (0-based) at which the fire window opens. Default 0.
    period : int, optional
        0 encodes one sample; otherwise the window repeats every ``period``
        (>= 2T) steps, re-reading ``data`` (set it between runs to stream
        samples). Default 0.
    name : str, optional
    log_config : LogConfig, optional

    Raises
    ------
    ValueError
        If B, T, start, period, scale or data are invalid (the message names
        the parameter).
    """

    def __init__(self, *, data: ty.Any, B: float, T: int,
                 scale: ty.Any = 1.0, start: int = 0, period: int = 0,
                 name: ty.Optional[str] = None,
                 log_config: ty.Optional[LogConfig] = None,
                 **kwargs) -> None:
        # Lava's __del__ needs the base initialised, so validate after it.
        super().__init__(name=name, log_config=log_config, **kwargs)
        data = check_finite("data", data)
        shape = check_shape(data.shape)
        B, T = check_base(B), check_steps(T)
        period = check_period(period, T)
        scale = check_scale("scale", scale, shape)
        for key, value in dict(shape=shape, B=B, T=T, start=check_start(start),
                               period=period).items():
            self.proc_params[key] = value
        self.s_out = OutPort(shape=shape)
        self.data = Var(shape=shape, init=data)
        self.scale = Var(shape=shape, init=scale)
        self.sat_count = Var(shape=(1,), init=0)
        self.clip_count = Var(shape=(1,), init=0)
        self.invalid_count = Var(shape=(1,), init=0)

    @property
    def shape(self) -> ty.Tuple[int, ...]:
        """Shape of the encoded vector."""
        return self.proc_params["shape"]
