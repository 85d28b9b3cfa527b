"""Window-close stages beyond the phase code's linear neurons
(docs/semantics.md, "Window-close stages: activations and LayerNorm").

A phase neuron integrates ``A`` over its input window and fires ``Q`` of
what it holds when the window closes. Two stages change what it holds:

pointwise activation (population kind ``'activation'``)
    The neuron fires ``Q(f(A))`` for GELU (erf and tanh forms), SiLU, tanh
    or sigmoid. Its membrane integrates ``A`` in units of its own
    *pre-activation* scale ``sigma_pre`` (the calibrated range of ``A``);
    at window close ``A`` is clipped to ``[-sigma_pre, sigma_pre]`` (as
    every population clips at its scale) and replaced by ``f(A)`` in units
    of the output scale ``sigma``. Non-monotone parts (GELU's and SiLU's
    negative dip) need no special case: the value is computed, not
    inverted, and fires like any bipolar neuron.
LayerNorm (population kind ``'layernorm'``)
    The membranes of one token (the last axis) are normalised,
    ``z = (A - mean) / sqrt(var + eps)``, and the neuron fires ``Q(z)`` in
    units of its output scale; ``gamma`` and ``beta`` fold into the
    synapses that read it. The per-token mean, variance and inverse square
    root are a **non-spike operation** (docs/semantics.md), counted as
    multiply-accumulates by the energy model; the membrane's scale
    ``sigma_pre`` is one number per population so that one token's
    membranes share their units.

This module holds the floating-point definitions (``floating_pt``, the
engine's float mode and the float golden model) and the constants of the
integer ones, which live in :mod:`lava_spiked.numerics.fixed`
(:func:`~lava_spiked.numerics.fixed.activation`,
:func:`~lava_spiked.numerics.fixed.layer_norm`). numpy only, no torch.
"""
import math
import typing as ty

import numpy as np
from scipy.special import erf

from lava_spiked.numerics import fixed


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) *
                                    (x + 0.044715 * x ** 3)))


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


#: Activation name -> (f on float64 arrays, max |f''| over the reals).
#: The curvature bounds the interpolation error of the integer table
#: (:func:`activation_error_bound`): GELU ``phi(x) (2 - x**2)`` peaks at
#: ``2 phi(0) = 0.798`` (its tanh form, a fit of it, was checked on a
#: grid: 0.798); SiLU's ``f''`` peaks at 0.5; tanh's at ``4 / (3 sqrt 3)``;
#: the sigmoid's at ``1 / (6 sqrt 3)``.
ACTIVATIONS: ty.Dict[str, ty.Tuple[ty.Callable, float]] = {
    "gelu": (_gelu, 0.7979),
    "gelu_tanh": (_gelu_tanh, 0.7990),
    "silu": (_silu, 0.5),
    "tanh": (np.tanh, 4.0 / (3.0 * math.sqrt(3.0))),
    "sigmoid": (_sigmoid, 1.0 / (6.0 * math.sqrt(3.0))),
}


def check_activation(fn: str) -> str:
    """``fn`` if it is a known activation, else a ValueError naming them."""
    if fn not in ACTIVATIONS:
        raise ValueError(f"unknown activation {fn!r}; supported: "
                         f"{', '.join(ACTIVATIONS)}")
    return fn


#: Where :func:`identify` compares functions: wide enough that every
#: activation above has reached its asymptotes on both sides.
IDENTIFY_GRID = np.linspace(-64.0, 64.0, 8193)


def identify(f: ty.Callable[[np.ndarray], np.ndarray]
             ) -> ty.Optional[ty.Tuple[str, float, float]]:
    """``(name, a, b)`` with ``f(x) == a * g(x) + b`` for the activation
    ``g = ACTIVATIONS[name]`` (to 1e-9 of ``f``'s range on
    :data:`IDENTIFY_GRID`), or None.

    Capture recognises activations by what they compute, not by what the
    model calls them: GELU written out with ``pow`` and ``tanh`` (Hugging
    Face's ``NewGELUActivation``) is ``gelu_tanh``.
    """
    x = IDENTIFY_GRID
    y = np.asarray(f(x), dtype=np.float64)
    if y.shape != x.shape or not np.isfinite(y).all():
        return None
    tol = 1e-9 * max(1.0, float(np.abs(y).max()))
    for name, (g, _) in ACTIVATIONS.items():
        basis = np.stack([g(x), np.ones_like(x)], 1)
        (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)
        a, b = (float(np.round(v, 12)) for v in (a, b))
        if abs(a) > 1e-12 and np.abs(a * basis[:, 0] + b - y).max() <= tol:
            return name, a, b
    return None


def activation_float(v: ty.Any, fn: str, pre_scale: ty.Any,
                     scale: ty.Any) -> np.ndarray:
    """``f(A) / sigma`` of membranes ``v = A / sigma_pre``, the pre-activation
    clipped to one ``sigma_pre`` (``floating_pt``)."""
    f = ACTIVATIONS[check_activation(fn)][0]
    a = np.clip(np.asarray(v, dtype=np.float64), -1.0, 1.0) * pre_scale
    return f(a) / scale


def knot_table(fn: str, pre_scale: ty.Any, scale: ty.Any
               ) -> ty.Tuple[np.ndarray, np.ndarray]:
    """Integer knots of the activation stage of ``fixed_pt``.

    Knot ``i`` sits at membrane ``v_i = i * 2**KNOT_SHIFT - 2**16`` (state
    units of ``sigma_pre``, covering one ``sigma_pre`` each way) and holds
    ``round(f(sigma_pre * v_i / 2**16) / sigma * 2**16)``, saturated to 24
    bits. Neurons with the same pair of scales share a row.

    Parameters
    ----------
    fn : str
        A key of :data:`ACTIVATIONS`.
    pre_scale, scale : array_like
        ``sigma_pre`` and ``sigma`` per neuron (broadcast together).

    Returns
    -------
    knots : numpy.ndarray of int64
        (rows, :data:`lava_spiked.numerics.fixed.KNOTS`).
    row : numpy.ndarray of int64
        Knot row of every neuron, shaped like the broadcast scales.
    """
    f = ACTIVATIONS[check_activation(fn)][0]
    pre, out = np.broadcast_arrays(np.asarray(pre_scale, dtype=np.float64),
                                   np.asarray(scale, dtype=np.float64))
    pairs, row = np.unique(np.stack([pre.ravel(), out.ravel()], 1), axis=0,
                           return_inverse=True)
    one = 1 << fixed.STATE_FRAC_BITS
    v = np.arange(fixed.KNOTS) * (1 << fixed.KNOT_SHIFT) - one
    y = f(pairs[:, :1] * v[None, :] / one) / pairs[:, 1:] * one
    y = np.clip(np.sign(y) * np.floor(np.abs(y) + 0.5), -fixed.STATE_MAX,
                fixed.STATE_MAX)
    return y.astype(np.int64), row.reshape(pre.shape).astype(np.int64)


def activation_error_bound(fn: str, pre_scale: ty.Any,
                           scale: ty.Any) -> np.ndarray:
    """Largest ``|fixed.activation(v) - f(sigma_pre v / 2**16) / sigma *
    2**16|`` over integer membranes ``|v| <= 2**16`` (state units of
    ``sigma``, per neuron), below saturation.

    Linear interpolation between knots ``h = sigma_pre * 2**(KNOT_SHIFT -
    16)`` apart errs by at most ``h**2 / 8 * max|f''|`` (real units); the
    knots' rounding adds half a unit and the interpolation's rounding
    another half.
    """
    curvature = ACTIVATIONS[check_activation(fn)][1]
    h = np.asarray(pre_scale, dtype=np.float64) * 2.0 ** (
        fixed.KNOT_SHIFT - fixed.STATE_FRAC_BITS)
    return h ** 2 / 8.0 * curvature / np.asarray(scale) * \
        (1 << fixed.STATE_FRAC_BITS) + 1.0


def layer_norm_float(v: ty.Any, eps_norm: float,
                     scale: ty.Any) -> np.ndarray:
    """``(v - mean) / sqrt(var + eps_norm) / sigma`` over the last axis
    (``floating_pt``); ``v = A / sigma_pre`` and ``eps_norm = eps /
    sigma_pre**2``. A token whose variance and eps are both 0 gives 0."""
    v = np.asarray(v, dtype=np.float64)
    c = v - v.mean(-1, keepdims=True)
    d = (c * c).mean(-1, keepdims=True) + eps_norm
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, c / np.sqrt(safe), 0.0) / scale


class NormConstants(ty.NamedTuple):
    """Integer constants of the LayerNorm stage of ``fixed_pt``
    (:func:`layer_norm_constants`)."""

    eps_state: int
    gain: np.ndarray
    gain_shift: int


def layer_norm_constants(n: int, eps: float, pre_scale: float,
                         scale: ty.Any) -> NormConstants:
    """Constants of :func:`lava_spiked.numerics.fixed.layer_norm` for tokens of
    ``n`` channels, LayerNorm's ``eps``, the membrane scale ``sigma_pre``
    (one number) and the output scales ``sigma`` (per neuron).

    ``eps_state = round(eps / sigma_pre**2 * 2**32)`` is eps in the units of
    the squared membranes; ``gain = round(sqrt(n) / sigma * 2**gain_shift)``
    with the largest ``gain_shift`` that keeps every gain below 2**24.

    Raises
    ------
    ValueError
        If ``n * eps_state`` or ``n`` itself would overflow the int64 sums of
        the stage.
    """
    if not 1 <= n <= fixed.NORM_MAX_CHANNELS:
        raise ValueError(f"LayerNorm over {n} channels: the integer stage "
                         f"supports 1 to {fixed.NORM_MAX_CHANNELS}")
    eps_state = int(np.floor(eps / pre_scale ** 2 * 2.0 ** 32 + 0.5))
    if n * eps_state >= 2 ** 61:
        raise ValueError(
            f"LayerNorm eps = {eps} is {eps / pre_scale ** 2:.3g} times the "
            f"square of the calibrated input range {pre_scale:.3g}: the "
            "input is too small for its eps to be held in 64-bit sums; "
            "recalibrate or check the model")
    ratio = math.sqrt(n) / np.asarray(scale, dtype=np.float64)
    shift = int(np.floor(np.log2((2 ** 24 - 1) / ratio.max())))
    while np.floor(ratio.max() * 2.0 ** shift + 0.5) >= 2 ** 24:
        shift -= 1
    gain = np.floor(ratio * 2.0 ** shift + 0.5).astype(np.int64)
    return NormConstants(eps_state, gain, shift)
