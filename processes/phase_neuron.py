# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""PhaseNeuron: integrate-then-fire one-spike neuron of the phase code."""
import typing as ty

from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

from lava_spiked.numerics import fixed, nonlinear
from lava_spiked.validation import (broadcast, check_base, check_finite,
                                    check_period, check_scale, check_shape,
                                    check_start, check_steps)


class PhaseNeuron(AbstractProcess):
    """One-spike phase neuron: integrate for T steps, then fire at most once.

    With ``t = time_step - 1`` and ``r = t - start`` (modulo ``period`` when
    ``period > 0``), ``floating_pt`` runs::

        r == 0:         acc = 0;  fired = 0                    (window opens)
        0 <= r < T:     acc += a_in * 2**(weight_exp - 16) * B**-r
        r == T:         v = bias / scale + acc                 (window closes)
        T <= r < 2T:    m = r - T                              (fire window)
                        s = sign(v) if |v| >= c_B * B**-m and not fired
                        (unipolar: only v >= c_B * B**-m gives s = +1)
                        fired |= s != 0;  s_out = s
        otherwise:      s_out = 0

    so a spike at fire step ``m`` means ``s * scale * B**-m`` and the neuron
    emits ``Q(A)`` of its integrated input ``A = scale * v``: a presynaptic
    spike that arrives at input step ``j`` counts ``B**-j``, which is exactly
    its phase value (docs/semantics.md, "Windows and integration"). The bias
    enters once, when the window closes, so its decoded total is exactly
    ``bias``. Input that arrives outside the input window is a scheduling
    error; it is ignored and counted in ``stray_count``.

    ``fixed_pt`` runs the same steps with the functions of
    :mod:`lava_spiked.numerics.fixed`: the ``acc_bits`` (48) bit dendritic
    accumulator sums ``a_in * G_r`` exactly (``gain_bits`` (12) bit gain
    table ``G_r``), and when the window closes the signed 24-bit membrane
    becomes ``round(bias / scale * 2**16) +
    round(acc * 2**weight_exp / 2**gain_bits)``, the
    layer's only rounding; the threshold is the integer table ``theta_m``,
    and every saturation is counted in ``sat_count``.

    A neuron whose ``mask`` Var is 1 never spikes (a padded token's neuron
    when the runtime attention mask is set; its membrane, and its clipping
    count, are computed as usual).

    With ``readout=True`` the neuron never spikes: at ``r = T`` it sends its
    membrane in state units, ``v * 2**16`` (a float under ``floating_pt``, the
    integer state under ``fixed_pt``), so ``A = s_out * scale / 2**16``; it
    sends 0 at every other step.

    Clipping: the code's largest value is ``scale`` (every ``|v| >=
    c_B`` fires at step 0 and decodes to ``scale``), so a neuron is
    **clipped** in a sample when its membrane at the close of the input
    window (after the row-sum division of :class:`NormalizedPhaseNeuron`)
    lies strictly beyond it: ``|v| > 1`` under ``floating_pt`` and
    ``|v| > 2**16`` (one sigma in state units) under ``fixed_pt``; a
    unipolar neuron clips only above, ``v > 1`` (``v > 2**16``). The
    cumulative ``clip_count`` counts them, one per clipped neuron and
    sample. Readout neurons report their membrane and never clip (their
    ``clip_count`` stays 0). Attention logits are PhaseNeurons, so they
    count; the WOSS softmax has no ``clip_count`` (its shifted logits are
    at most 0 and never clip).

    Synapses are Lava ``Dense`` processes (one step of latency) whose weights
    are the 8-bit mantissas of
    :func:`lava_spiked.numerics.fixed.quantize_weights`, with the presynaptic
    scale folded in; this neuron applies their shared exponent ``weight_exp``.
    Dense needs ``num_message_bits > 0`` so that the sign of graded spikes
    survives.

    Parameters
    ----------
    shape : tuple of int
        Number of neurons.
    B : float
        Base of the code, 1 < B <= 2.
    T : int
        Steps of the input window and of the fire window, >= 2.
    start : int
        Time step (0-based) at which the input window opens.
    weight_exp : int, optional
        Exponent of the incoming weight mantissas. Default 0.
    gain_bits : int, optional
        ``fixed_pt``: bits of the integration gains, 1..12
        (:func:`lava_spiked.numerics.fixed.layer_gains`). Default 12.
    acc_bits : int, optional
        ``fixed_pt``: width of the saturating dendritic accumulator, 24
        (Loihi 2's neuron state) or 48. Default 48.
    bias : float or array_like, optional
        Bias in real units (decoded total). Default 0.
    scale : float or array_like, optional
        Positive scale sigma of this layer's code. Default 1.
    unipolar : bool, optional
        ReLU neuron: only positive spikes. Default False.
    readout : bool, optional
        Send the integrated value instead of spiking. Default False.
    period : int, optional
        0 for one sample, else the windows repeat every ``period`` (>= 2T)
        steps. Default 0.
    name : str, optional
    log_config : LogConfig, optional

    Raises
    ------
    ValueError
        If any parameter is invalid (the message names it).
    """

    def __init__(self, *, shape: ty.Tuple[int, ...], B: float, T: int,
                 start: int, weight_exp: int = 0,
                 gain_bits: int = fixed.GAIN_FRAC_BITS,
                 acc_bits: int = fixed.ACC_BITS, bias: ty.Any = 0.0,
                 scale: ty.Any = 1.0, unipolar: bool = False,
                 readout: bool = False, period: int = 0,
                 name: ty.Optional[str] = None,
                 log_config: ty.Optional[LogConfig] = None,
                 **kwargs) -> None:
        # Lava's __del__ needs the base initialised, so validate after it.
        super().__init__(name=name, log_config=log_config, **kwargs)
        shape = check_shape(shape)
        B, T = check_base(B), check_steps(T)
        period = check_period(period, T)
        if not isinstance(weight_exp, int) or isinstance(weight_exp, bool):
            raise ValueError(f"weight_exp must be an int, got {weight_exp!r}")
        if gain_bits not in range(1, fixed.GAIN_FRAC_BITS + 1):
            raise ValueError(f"gain_bits must be an int in 1..12, got "
                             f"{gain_bits!r}")
        if acc_bits not in (fixed.STATE_BITS, fixed.ACC_BITS):
            raise ValueError(f"acc_bits must be 24 or 48, got {acc_bits!r}")
        scale = check_scale("scale", scale, shape)
        bias = broadcast("bias", check_finite("bias", bias), shape)
        if unipolar and readout:
            raise ValueError("readout neurons do not spike, so unipolar=True "
                             "has no meaning with readout=True")
        for key, value in dict(shape=shape, B=B, T=T, start=check_start(start),
                               weight_exp=weight_exp, gain_bits=gain_bits,
                               acc_bits=acc_bits, unipolar=bool(unipolar),
                               readout=bool(readout), period=period).items():
            self.proc_params[key] = value
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=0)
        self.acc = Var(shape=shape, init=0)
        self.fired = Var(shape=shape, init=0)
        self.bias = Var(shape=shape, init=bias)
        self.scale = Var(shape=shape, init=scale)
        self.mask = Var(shape=shape, init=0)
        self.sat_count = Var(shape=(1,), init=0)
        self.clip_count = Var(shape=(1,), init=0)
        self.stray_count = Var(shape=(1,), init=0)

    @property
    def shape(self) -> ty.Tuple[int, ...]:
        """Shape of the neuron population."""
        return self.proc_params["shape"]


class NormalizedPhaseNeuron(PhaseNeuron):
    """PhaseNeuron whose integrated value is divided by a per-row sum before
    it fires: the attention output ``(sum_c p_c v_c) / R``
    (docs/semantics.md, "WOSS softmax").

    Shape (..., d); rows are the leading axes. ``r_in`` receives row-sum
    increments (from :class:`~lava_spiked.processes.WOSSSoftmax`'s
    ``r_out``) and adds them up during the input window; when the fire window
    opens, every membrane of a row is divided by the row's sum ``R``::

        floating_pt:  v = v / R                     (0 where R == 0)
        fixed_pt:     v = round(v * 4096 / R_int)   (R in 12-bit trace units)

    then the neuron fires as a PhaseNeuron. This division is a **non-spike
    operation** (a per-row threshold scaling); ``norm_count`` counts the
    divided elements (the energy model charges one multiply each). A row
    that received no softmax spike (R = 0) outputs zeros, never NaN or inf.

    Parameters are those of :class:`PhaseNeuron`.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        rows = self.shape[:-1]
        if not rows:
            raise ValueError(f"shape must be (..., rows, d), got {self.shape}")
        self.r_in = InPort(shape=rows)
        self.row_sum = Var(shape=rows, init=0)
        self.norm_count = Var(shape=(1,), init=0)


class ActivationPhaseNeuron(PhaseNeuron):
    """PhaseNeuron that fires ``Q(f(A))``: a pointwise activation (GELU,
    its tanh form, SiLU, tanh, sigmoid) applied when the input window
    closes (docs/semantics.md, "Window-close stages";
    :mod:`lava_spiked.numerics.nonlinear`).

    The membrane integrates ``A`` in units of ``pre_scale`` (the calibrated
    range of the pre-activation; the incoming weight mantissas are
    normalised by it, and ``bias / pre_scale`` enters at window close).
    Then ``A`` is clipped to one ``pre_scale`` and replaced by ``f(A)`` in
    units of ``scale``::

        floating_pt:  v = f(clip(v, -1, 1) * pre_scale) / scale
        fixed_pt:     v = fixed.activation(v, knots, row)

    (integer knots of :func:`lava_spiked.numerics.nonlinear.knot_table`, linear
    interpolation; error bound
    :func:`lava_spiked.numerics.nonlinear.activation_error_bound`), and the
    neuron fires as a bipolar PhaseNeuron. A neuron clips where its
    pre-activation lies beyond ``pre_scale`` or its output beyond ``scale``.

    Parameters
    ----------
    fn : str
        A key of :data:`lava_spiked.numerics.nonlinear.ACTIVATIONS`.
    pre_scale : float or array_like
        Positive scale of the membrane.
    **kwargs
        Those of :class:`PhaseNeuron` (not ``unipolar`` or ``readout``).
    """

    def __init__(self, *, fn: str, pre_scale: ty.Any, **kwargs) -> None:
        super().__init__(**kwargs)
        _check_plain(self)
        shape = self.shape
        pre = check_scale("pre_scale", pre_scale, shape)
        scale = self.scale.init
        knots, row = nonlinear.knot_table(nonlinear.check_activation(fn), pre,
                                          scale)
        self.proc_params.overwrite("fn", fn)
        self.proc_params.overwrite("pre_scale", pre)
        self.proc_params.overwrite("knots", knots)
        self.proc_params.overwrite("row", row)


class LayerNormPhaseNeuron(PhaseNeuron):
    """PhaseNeuron population that LayerNorm-normalises each token (the
    last axis) when its input window closes, then fires ``Q(z)``.

    The membranes integrate the LayerNorm's input in units of one
    ``pre_scale`` (all of a token's membranes share their units, so that
    the mean can be removed exactly). At window close, per token of ``n``
    membranes::

        floating_pt:  v = (v - mean) / sqrt(var + eps / pre_scale**2) / scale
        fixed_pt:     v = fixed.layer_norm(v, eps_state, gain, gain_shift)

    (integer mean, variance and 24-bit inverse square root; constants of
    :func:`lava_spiked.numerics.nonlinear.layer_norm_constants`). This
    per-token statistics stage is a **non-spike operation**
    (docs/semantics.md);
    ``norm_count`` counts the normalised elements, which the energy model
    charges as multiply-accumulates. LayerNorm's gamma and beta are not
    applied here: they fold into the weights and biases that read the
    population.

    Parameters
    ----------
    eps : float
        LayerNorm's eps (real units, >= 0).
    pre_scale : float
        Positive scale of the membranes.
    **kwargs
        Those of :class:`PhaseNeuron` (not ``unipolar`` or ``readout``).
    """

    def __init__(self, *, eps: float, pre_scale: float, **kwargs) -> None:
        super().__init__(**kwargs)
        _check_plain(self)
        pre = float(check_scale("pre_scale", pre_scale, (1,))[0])
        eps = float(check_finite("eps", eps))
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        const = nonlinear.layer_norm_constants(
            self.shape[-1], eps, pre, self.scale.init)
        for key, value in dict(eps=eps, pre_scale=pre, **const._asdict()
                               ).items():
            self.proc_params.overwrite(key, value)
        self.norm_count = Var(shape=(1,), init=0)


def _check_plain(proc: PhaseNeuron) -> None:
    if proc.proc_params["unipolar"] or proc.proc_params["readout"]:
        raise ValueError(f"{type(proc).__name__} neurons are bipolar and "
                         "spike: unipolar and readout must be False")
