"""Argument checks shared by the golden models and the Lava processes.

Every check raises ``ValueError`` whose message names the parameter, the bad
value and the accepted range, so a wrong call fails before anything is built.
"""
import argparse
import typing as ty

import numpy as np


def check_base(B: float) -> float:
    """Return ``B`` as a float if it is a valid phase-coding base, 1 < B <= 2.

    B = 1 would give every step the same weight (no code at all); B > 2 would
    leave gaps between the levels B**-m that no sum of spikes can reach.
    """
    try:
        value = float(B)
    except (TypeError, ValueError):
        raise ValueError(f"B must be a number in (1, 2], got {B!r}") from None
    if not (1.0 < value <= 2.0):
        raise ValueError(f"B must be in (1, 2], got {B!r}")
    return value


#: Longest window accepted: a guard against typos (T = 10**6 would keep the
#: golden models busy for minutes); for every B above 1.009 the 12-bit gains
#: of steps beyond it round to 0 anyway (see fixed.usable_steps).
MAX_STEPS = 1024


def check_steps(T: int) -> int:
    """Return ``T`` if it is a valid window length: an integer in
    [2, MAX_STEPS]."""
    if isinstance(T, (bool, np.bool_)) or not isinstance(T, (int, np.integer)):
        raise ValueError(f"T must be an integer in [2, {MAX_STEPS}], "
                         f"got {T!r}")
    if not 2 <= T <= MAX_STEPS:
        raise ValueError(f"T must be an integer in [2, {MAX_STEPS}], got {T}")
    return int(T)


def check_start(start: int, name: str = "start") -> int:
    """Return ``start`` if it is a non-negative integer time step."""
    if isinstance(start, (bool, np.bool_)) or \
            not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {start!r}")
    return int(start)


def check_period(period: int, T: int) -> int:
    """Return ``period``: 0 (one sample) or the >= 2T steps between samples."""
    period = check_start(period, "period")
    if period and period < 2 * T:
        raise ValueError(
            f"period must be 0 (a single sample) or >= 2*T = {2 * T} so "
            f"that integration and firing windows do not overlap, got {period}")
    return period


def check_finite(name: str, value: ty.Any) -> np.ndarray:
    """Return ``value`` as a float64 array, refusing NaN and inf."""
    arr = np.asarray(value, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN or infinite value(s) "
            f"(first at index {tuple(int(i) for i in np.argwhere(bad)[0])}); "
            "phase coding needs finite numbers")
    return arr


def check_scale(name: str, value: ty.Any,
                shape: ty.Tuple[int, ...]) -> np.ndarray:
    """Return a positive, finite scale broadcast to ``shape``."""
    arr = check_finite(name, value)
    if (arr <= 0).any():
        raise ValueError(f"{name} must be > 0 everywhere, got min {arr.min()}")
    return broadcast(name, arr, shape)


def broadcast(name: str, value: ty.Any,
              shape: ty.Tuple[int, ...]) -> np.ndarray:
    """Broadcast ``value`` to ``shape`` or raise a ValueError naming it."""
    arr = np.asarray(value, dtype=np.float64)
    try:
        return np.broadcast_to(arr, shape).copy()
    except ValueError:
        raise ValueError(
            f"{name} has shape {arr.shape}, which does not broadcast to the "
            f"layer shape {shape}") from None


def check_shape(shape: ty.Any) -> ty.Tuple[int, ...]:
    """Return ``shape`` as a tuple of positive ints."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        out = tuple(int(n) for n in shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of positive integers, "
                         f"got {shape!r}") from None
    if not out or any(n <= 0 for n in out):
        raise ValueError(f"shape must be a tuple of positive integers, "
                         f"got {shape!r}")
    return out


def check_batch(name: str, data: ty.Any,
                sample_shape: ty.Tuple[int, ...]) -> np.ndarray:
    """Return a batch of samples (n, *sample_shape) as float64, refusing a
    wrong shape, an empty batch and NaN or inf."""
    arr = check_finite(name, data)
    if arr.ndim != len(sample_shape) + 1 or arr.shape[1:] != sample_shape \
            or arr.shape[0] == 0:
        raise ValueError(f"{name} must be (n, "
                         f"{', '.join(map(str, sample_shape))}) with n > 0; "
                         f"got shape {arr.shape}")
    return arr


def check_base_choice(B: ty.Any) -> ty.Union[float, str]:
    """Return ``'auto'``, or ``B`` checked by :func:`check_base`: the
    command lines' ``--B``, which may leave the base to
    :func:`lava_spiked.code_error.choose_base`."""
    return "auto" if B == "auto" else check_base(B)


def cli_type(check: ty.Callable, cast: ty.Callable) -> ty.Callable:
    """An argparse ``type``: ``check(cast(text))``, its ValueError turned
    into argparse's usage error (no traceback)."""
    def parse(text: str):
        try:
            return check(cast(text))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = cast.__name__  # argparse names it in messages
    return parse


def check_count(n: int, name: str = "samples") -> int:
    """Return ``n`` if it is an integer >= 1."""
    if isinstance(n, (bool, np.bool_)) or \
            not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    return int(n)
