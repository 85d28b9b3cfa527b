"""LayerNorm and activation stages in the engine: each staged layer's
constants as a typed record whose ``run`` computes the stage in torch
(:mod:`lava_spiked.numerics.torch_stages`, inside a compiled graph), and
:func:`run_numpy`, the golden model's own numpy functions on a few samples
at a time (eager calls). Each returns the stage's output as membranes
(fixed: table rows), its clipped neurons and its saturation events per
sample; bit for bit alike in fixed mode."""
import dataclasses
import typing as ty

import numpy as np
import torch

from lava_spiked.numerics import fixed, torch_stages
from lava_spiked.golden.models import stage_fixed, stage_float

STAGE_CHUNK = 1 << 16  # membranes per numpy stage call (int64: 512 kB)
ONE = 1 << fixed.STATE_FRAC_BITS  # one sigma in state units


def _clipped(y: torch.Tensor, m: torch.Tensor, activation: bool,
             one: ty.Union[int, float]) -> torch.Tensor:
    """Clipped neurons per sample: the output beyond one sigma, and an
    activation's input too."""
    beyond = y.abs() > one
    if activation:
        beyond |= m.abs() > one
    return beyond.sum(1)


@dataclasses.dataclass(frozen=True)
class ActivationFixed:
    """Fixed: the knot table raveled and each neuron's first knot."""

    knots: torch.Tensor
    row_base: torch.Tensor
    top: int

    def run(self, m: torch.Tensor):
        y = torch_stages.activation_fixed(m, self.knots, self.row_base)
        n_sat = torch.zeros(m.shape[0], dtype=torch.int64, device=m.device)
        return (y + self.top).int(), _clipped(y, m, True, ONE), n_sat


@dataclasses.dataclass(frozen=True)
class LayerNormFixed:
    """Fixed: the row width, epsilon in state units and the gains per
    token row."""

    n: int
    eps_state: int
    gain: torch.Tensor
    gain_shift: int
    top: int

    def run(self, m: torch.Tensor):
        b = m.shape[0]
        y, n_sat = torch_stages.layer_norm_fixed(
            m.reshape(b, -1, self.n), self.eps_state, self.gain,
            self.gain_shift)
        y = y.reshape(b, -1)
        return (y + self.top).int(), _clipped(y, m, False, ONE), n_sat.sum(1)


@dataclasses.dataclass(frozen=True)
class ActivationFloat:
    """Float: the function, its input and output scales, and its values
    at the clip (``-1``, ``+1``) as the golden model computes them."""

    fn: str
    pre_scale: torch.Tensor
    scale: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def run(self, m: torch.Tensor):
        y = torch_stages.activation_float(m, self.fn, self.pre_scale,
                                          self.scale)
        y = torch.where(m >= 1, self.high, torch.where(m <= -1, self.low, y))
        n_sat = torch.zeros(m.shape[0], dtype=torch.int64, device=m.device)
        return y, _clipped(y, m, True, 1.0), n_sat


@dataclasses.dataclass(frozen=True)
class LayerNormFloat:
    """Float: the row width, epsilon in units of the input's sigma and
    the output scales per token row."""

    n: int
    eps_norm: float
    scale: torch.Tensor

    def run(self, m: torch.Tensor):
        b = m.shape[0]
        y = torch_stages.layer_norm_float(
            m.reshape(b, -1, self.n), self.eps_norm, self.scale).reshape(b, -1)
        n_sat = torch.zeros(b, dtype=torch.int64, device=m.device)
        return y, _clipped(y, m, False, 1.0), n_sat


def run_numpy(layer: ty.Any, m: torch.Tensor, fixed_mode: bool, top: int):
    """A stage by :func:`lava_spiked.golden.models.stage_fixed` and
    ``stage_float``, on a few samples at a time, so that numpy's dozen
    passes over its temporaries stay in cache (with the flat knot reads
    of :func:`fixed.activation`, a MiniLM engine call 1.37x faster than
    the whole batch at once); fixed outputs as table rows (``+ top``)."""
    n = m.shape[0]
    device = m.device
    m = m.cpu().numpy()
    one = ONE if fixed_mode else 1.0
    out = np.empty(m.shape, np.int32 if fixed_mode else np.float64)
    n_sat = np.zeros(n, np.int64)
    clipped = np.empty(n, np.int64)
    k = max(1, STAGE_CHUNK // m.shape[1])
    for s in range(0, n, k):
        part = slice(s, s + k)
        if fixed_mode:
            y, n_sat[part] = stage_fixed(layer, m[part])
            out[part] = y + top  # table rows
        else:
            y = out[part] = stage_float(layer, m[part])
        beyond = np.abs(y) > one
        if layer.kind == "activation":
            beyond |= np.abs(m[part]) > one
        clipped[part] = np.count_nonzero(beyond, axis=1)
    return (torch.as_tensor(out, device=device),
            torch.as_tensor(clipped, device=device),
            torch.as_tensor(n_sat, device=device))
