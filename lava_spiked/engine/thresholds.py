"""Fire-step finders against a falling threshold table, without a search:
the WOSS softmax's steps (a closed-form estimate corrected by table
comparisons) and float mode's neurons (buckets of the float64 bit
pattern)."""
import typing as ty

import numpy as np
import torch

from lava_spiked.engine.ops import lookup, tensor

# float mode's closed-form fire steps are computed within about 1e-12 of a
# step (float64 logs of tables exact to a few ulps); lowered by this they
# are never above the true step and at most one below
LOWER = 1e-6


class FallingThresholds:
    """Fire step against a falling threshold table: how many thresholds lie
    strictly above ``x`` (``len(table)`` = silent).

    ``estimate(x)`` is a closed form of that count that is never off by more
    than one (the table is geometric or linear in the step), so one
    comparison each way makes it exact: ``table[e] > x`` means one more,
    ``table[e - 1] <= x`` one fewer. With ``low=True`` the estimate is
    never above the count (a closed form lowered by :data:`LOWER`, far more
    than its rounding error and far less than one step), so the first
    comparison alone makes it exact.
    """

    def __init__(self, table: np.ndarray, estimate: ty.Callable,
                 device: torch.device, low: bool = False) -> None:
        self.T, self.estimate, self.low = len(table), estimate, low
        # table[T] = -inf lies above nothing; table[-1] = nan is never <= x
        self.at = tensor(np.append(table, -np.inf), device)
        self.before = tensor(np.insert(table, 0, np.nan), device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        e = self.estimate(x).clamp_(0, self.T).long()
        # e + [table[e] > x] - [table[e - 1] <= x], in place
        e = e.add_(lookup(self.at, e) > x)
        if self.low:
            return e
        return e.add_(lookup(self.before, e) <= x, alpha=-1)


class ThresholdBuckets:
    """Fire step and trace of magnitudes ``x >= 0`` against a falling
    threshold table (float mode's neurons), with no logarithm: a positive
    float64 orders as its bit pattern, so that pattern shifted right
    indexes a bucket, and the shift is the largest that leaves at most one
    threshold in any bucket. The thresholds above ``x`` are then those
    above its bucket (a table) plus one comparison with the threshold
    inside it: exactly a plain count. Compiled, about half the time of a
    logarithm-based estimate (measured on 557k membranes, one thread).

    Parameters
    ----------
    table : numpy.ndarray
        (T,) positive thresholds, strictly falling.
    gains : numpy.ndarray
        (T + 1,) trace of each fire step, 0 at step T (silent).
    """

    def __init__(self, table: np.ndarray, gains: np.ndarray,
                 device: torch.device) -> None:
        T = len(table)
        bits = np.asarray(table, np.float64).view(np.int64)
        self.shift = next(s for s in range(63, -1, -1)
                          if np.all(np.diff(bits >> s) < 0))
        keys = bits >> self.shift
        # bucket 0 lies below every threshold, the last one above all
        self.low = int(keys[-1]) - 1
        self.size = int(keys[0]) - self.low + 2
        upper = ((np.arange(self.size) + self.low + 1) << self.shift).view(
            np.float64)  # each bucket's exclusive upper end
        above = T - np.searchsorted(table[::-1], upper, side="left")
        inside = np.full(self.size, -np.inf)
        inside[keys - self.low] = table
        self.above = torch.as_tensor(above, device=device)
        self.inside = tensor(inside, device)
        self.at = tensor(np.asarray(gains)[above], device)
        self.after = tensor(np.asarray(gains)[np.minimum(above + 1, T)],
                            device)

    def _bucket(self, x: torch.Tensor) -> torch.Tensor:
        return (x.view(torch.int64) >> self.shift).sub_(self.low).clamp_(
            0, self.size - 1)

    def steps(self, x: torch.Tensor) -> torch.Tensor:
        """Thresholds strictly above each ``x`` (int64; T: silent)."""
        b = self._bucket(x)
        return lookup(self.above, b).add_(lookup(self.inside, b) > x)

    def traces(self, x: torch.Tensor) -> torch.Tensor:
        """``gains[steps(x)]``."""
        b = self._bucket(x)
        return torch.where(lookup(self.inside, b) > x,
                           lookup(self.after, b), lookup(self.at, b))
