"""One-spike phase code: the floating-point golden model (docs/semantics.md,
sections "Units and the code" to "Windows and integration").

A neuron with scale ``sigma > 0`` fires at most one spike, of sign ``s``, at
step ``m`` in ``0..T-1`` of its fire window. The spike means::

    x_hat = s * sigma * B**-m            (no spike means 0)

The encoder and every phase neuron pick the step with the quantiser ``Q``::

    c_B = (1 + 1/B) / 2
    m*  = min{ m in 0..T-1 : |x| >= c_B * sigma * B**-m }    (no spike if none)

so ``|x|`` goes to the nearest level of ``{sigma * B**-m}`` (decision points at
the arithmetic midpoints, exact midpoints to the larger level), ``|x| >= sigma``
clips to ``sigma`` and ``|x| < c_B * sigma * B**-(T-1)`` is the dead zone. A
unipolar (ReLU) neuron never fires for ``x < 0``.

A phase layer integrates ``A = sum_i w_i * x_hat_i + b`` over its input
window and then emits ``Q(A)``. These closed forms use no Lava and no code
of the processes: they are what the processes are tested against.
"""
import typing as ty

import numpy as np

from lava_spiked.validation import check_base, check_finite, check_steps


class PhaseCode(ty.NamedTuple):
    """Result of :func:`quantize`.

    Attributes
    ----------
    value : numpy.ndarray
        Decoded value ``s * sigma * B**-step`` (0 where no spike).
    step : numpy.ndarray
        Fire step ``m*`` in ``0..T-1``, or -1 where the neuron stays silent.
    sign : numpy.ndarray
        Spike sign, +1 or -1, and 0 where silent.
    """

    value: np.ndarray
    step: np.ndarray
    sign: np.ndarray


def threshold_factor(B: float) -> float:
    """Return ``c_B = (1 + 1/B) / 2``, the midpoint between adjacent levels.

    Parameters
    ----------
    B : float
        Phase-coding base, 1 < B <= 2.
    """
    B = check_base(B)
    return (1.0 + 1.0 / B) / 2.0


def quantization_bound(B: float) -> float:
    """Return ``(B - 1) / (B + 1)``, the largest relative rounding error of Q
    for inputs between the dead zone and the clipping level.

    >>> round(quantization_bound(1.15), 4)
    0.0698
    """
    B = check_base(B)
    return (B - 1.0) / (B + 1.0)


def dead_zone(B: float, T: int, sigma: float = 1.0) -> float:
    """Return the magnitude below which Q emits no spike:
    ``c_B * sigma * B**-(T-1)``.

    >>> dead_zone(2.0, 4)          # 3/4 * 2**-3
    0.09375
    """
    return threshold_factor(B) * sigma * check_base(B) ** -(check_steps(T) - 1)


def quantize(x: ty.Any, B: float, T: int, sigma: ty.Any = 1.0,
             unipolar: bool = False) -> PhaseCode:
    """Phase-code ``x`` into one spike per element (the quantiser Q).

    Parameters
    ----------
    x : array_like
        Values to encode (finite).
    B : float
        Base, 1 < B <= 2.
    T : int
        Steps in the fire window, >= 2.
    sigma : array_like, optional
        Positive scale, broadcast against ``x``. Default 1.
    unipolar : bool, optional
        If True (ReLU neuron), negative inputs give no spike.

    Returns
    -------
    PhaseCode
        Decoded values, fire steps (-1 for no spike) and signs.

    Raises
    ------
    ValueError
        If B, T, x or sigma are invalid.

    Examples
    --------
    At B = 2 the levels are 1, 1/2, 1/4, 1/8 and the decision points 3/4,
    3/8, 3/16, 3/32: 0.3 fires at step 2 (1/4), -1.5 clips to -1 and 0.01
    lies in the dead zone.

    >>> code = quantize([0.3, -1.5, 0.01], B=2.0, T=4)
    >>> code.value.tolist(), code.step.tolist(), code.sign.tolist()
    ([0.25, -1.0, 0.0], [2, 0, -1], [1, -1, 0])
    """
    B, T = check_base(B), check_steps(T)
    x = check_finite("x", x)
    sigma = check_finite("sigma", sigma)
    if (sigma <= 0).any():
        raise ValueError(f"sigma must be > 0, got min {sigma.min()}")
    magnitude = np.abs(x) / sigma
    levels = threshold_factor(B) * B ** -np.arange(T, dtype=np.float64)
    # Levels fall with m, so the steps whose level is still above |x| form a
    # prefix 0..m*-1 and their count is m*.
    step = np.sum(magnitude[..., None] < levels, axis=-1)
    sign = np.sign(x).astype(np.int64)
    silent = (step == T) | (sign == 0)
    if unipolar:
        silent |= sign < 0
    step = np.where(silent, -1, step)
    sign = np.where(silent, 0, sign)
    return PhaseCode(decode(step, sign, B, sigma), step, sign)


def decode(step: ty.Any, sign: ty.Any, B: float,
           sigma: ty.Any = 1.0) -> np.ndarray:
    """Value of spikes: ``sign * sigma * B**-step``, and 0 where ``step < 0``.

    Parameters
    ----------
    step : array_like of int
        Fire steps, -1 for no spike.
    sign : array_like of int
        Spike signs (+1 or -1; ignored where silent).
    B : float
        Base, 1 < B <= 2.
    sigma : array_like, optional
        Positive scale. Default 1.

    Examples
    --------
    >>> decode([0, 2, -1], [1, -1, 1], B=2.0, sigma=3.0).tolist()
    [3.0, -0.75, 0.0]
    """
    B = check_base(B)
    step = np.asarray(step)
    fired = step >= 0
    power = np.where(fired, B ** -np.where(fired, step, 0).astype(np.float64),
                     0.0)
    return np.asarray(sign) * np.asarray(sigma, dtype=np.float64) * power


def layer(x_hat: ty.Any, weights: ty.Any, bias: ty.Any = 0.0) -> np.ndarray:
    """Integrated input of a phase layer: ``A = weights @ x_hat + bias``.

    With ``W = T`` every presynaptic spike lands inside the window at its own
    phase, so the integrator recovers the weighted sum of decoded values
    exactly (docs/semantics.md, "Windows and integration").
    """
    return np.asarray(weights, dtype=np.float64) @ np.asarray(
        x_hat, dtype=np.float64) + np.asarray(bias, dtype=np.float64)


def first_spikes(trace: ty.Any, start: int,
                 T: int) -> ty.Tuple[np.ndarray, np.ndarray]:
    """Fire step (-1 = none) and sign of every neuron in a recorded spike
    trace of shape (*shape, steps), within the window [start, start + T)."""
    window = np.asarray(trace)[..., start:start + T]
    fired = window != 0
    step = np.where(fired.any(-1), fired.argmax(-1), -1)
    return step, np.sign(window.sum(-1)).astype(np.int64)
