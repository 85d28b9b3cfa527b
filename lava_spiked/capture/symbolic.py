"""Symbolic values that capture evaluates a model on, and their algebra.

``Affine``
    ``bias + sum_t scale_t * term_t``: an affine function of the decoded
    spikes of populations. A :class:`Term` keeps the model's own weight
    ``(C, K)`` and two index maps: ``rows`` (R, K), the source neuron that
    feeds each input position of a row (a token), and ``out``, for each
    element of the value, the ``(row, channel)`` of the product it takes.
    Ops that move values without arithmetic run as themselves on these index
    maps, so memory grows with the model's activations, never with their
    square.
``SpikeProduct``
    ``coef * (x @ y) + bias`` of two operand populations, masked.
``Softmax``
    The softmax of a SpikeProduct, which becomes a WOSS population.
``Pointwise``
    ``f(source)`` elementwise, for an Affine ``source`` and a function
    composed from the pointwise ops that act on it (GELU written out as
    ``0.5 * x * (1 + tanh(c * (x + 0.044715 * x ** 3)))``): it becomes an
    activation population where something other than a pointwise op reads
    it.

Every tensor of a symbolic value is float64 (index maps int64) and shaped
like the model's value at batch size 1.
"""
import dataclasses
import typing as ty

import torch

from lava_spiked.plan import Synapse


class UnsupportedModelError(ValueError):
    """The model uses operations that have no phase-coded equivalent."""


@dataclasses.dataclass
class Term:
    """``scale * (W @ src[rows])[out]`` (``weight`` None: ``src[out]``);
    ``out`` -1 where the term feeds nothing."""

    src: str
    rows: ty.Optional[torch.Tensor]
    weight: ty.Optional[torch.Tensor]
    out: torch.Tensor
    scale: torch.Tensor


@dataclasses.dataclass
class Affine:
    """``bias + sum(terms)``, all tensors shaped like the value."""

    terms: ty.List[Term]
    bias: torch.Tensor

    @property
    def shape(self) -> ty.Tuple[int, ...]:
        return tuple(self.bias.shape)


@dataclasses.dataclass
class SpikeProduct:
    """Pending ``coef * (x @ y) + bias`` of two populations, masked; the
    tensors have the shape of the model's logits."""

    x: str
    y: str
    coef: torch.Tensor
    bias: torch.Tensor
    mask: torch.Tensor

    @property
    def shape(self) -> ty.Tuple[int, ...]:
        return tuple(self.coef.shape)


@dataclasses.dataclass
class Softmax:
    """Softmax of a SpikeProduct along its last axis."""

    product: SpikeProduct

    @property
    def shape(self) -> ty.Tuple[int, ...]:
        return self.product.shape


@dataclasses.dataclass
class Pointwise:
    """``fn(source)``, elementwise; ``fn`` maps float64 tensors to float64
    tensors of the same shape; ``source_node`` is the fx node of
    ``source``; ``bases`` the ``(c, d)`` of the values ``c * source + d``
    that its ops read; ``node`` the node that made this value from ``args``,
    and
    ``redo(cap, *args)`` makes it again from other values (its arguments
    made populations, when ``fn`` as a whole is no activation)."""

    source: Affine
    fn: ty.Callable[[torch.Tensor], torch.Tensor]
    source_node: ty.Any
    bases: ty.Tuple[ty.Tuple[float, float], ...]
    node: ty.Any
    args: ty.Tuple[ty.Any, ...]
    redo: ty.Callable[..., ty.Any]

    @property
    def shape(self) -> ty.Tuple[int, ...]:
        return self.source.shape


SYMBOLIC = (Affine, SpikeProduct, Softmax, Pointwise)


def direct(name: str, shape: ty.Tuple[int, ...]) -> Affine:
    """The value of population ``name``, read as it is."""
    size = int(torch.Size(shape).numel())
    return Affine([Term(name, None, None, torch.arange(size).reshape(shape),
                        torch.ones(shape, dtype=torch.float64))],
                  torch.zeros(shape, dtype=torch.float64))


def as_constant(c) -> torch.Tensor:
    """A number or tensor argument as float64; an activation refused."""
    if isinstance(c, SYMBOLIC):
        raise UnsupportedModelError(
            f"a {type(c).__name__} (an activation) where the phase code "
            "needs a constant")
    return torch.as_tensor(c, dtype=torch.float64)


def expand(t: Term, shape) -> Term:
    return dataclasses.replace(t, out=t.out.expand(shape).clone(),
                               scale=t.scale.expand(shape).clone())


def scaled(x: Affine, scale, shift) -> Affine:
    """``x * scale + shift`` (constants that broadcast)."""
    scale, shift = as_constant(scale), as_constant(shift)
    bias = x.bias * scale + shift
    shape = tuple(bias.shape)
    return Affine([dataclasses.replace(
        expand(t, shape), scale=(t.scale * scale).expand(shape).clone())
        for t in x.terms], bias)


def add(a, b) -> Affine:
    """``a + b``, at least one of them an Affine."""
    if not isinstance(a, Affine):
        a, b = b, a
    if not isinstance(b, Affine):
        return scaled(a, 1.0, as_constant(b))
    shape = torch.broadcast_shapes(a.shape, b.shape)
    terms = [expand(t, shape) for t in a.terms + b.terms]
    return Affine(terms, (a.bias + b.bias).expand(shape).clone())


def live(terms: ty.List[Term]) -> ty.List[Term]:
    """The terms that feed some element: picking one item of a list (the
    ``getitem`` after ``unbind``/``split``) or slicing leaves other terms
    with every ``out`` at -1; kept, they would become empty synapses that
    still store and multiply their whole weight."""
    kept = [t for t in terms if bool(((t.out >= 0) & (t.scale != 0)).any())]
    return kept or terms[:1]


def uniform(scale: torch.Tensor, valid: torch.Tensor,
            axis: int) -> ty.Optional[torch.Tensor]:
    """The (R, K) ``scale`` as one value per column (``axis=0``) or per row
    (``axis=1``) where ``valid``, or None if it is not."""
    first = valid.to(torch.uint8).argmax(axis)  # first valid entry
    picked = scale.gather(axis, first.unsqueeze(axis)).squeeze(axis)
    spread = picked.unsqueeze(axis).expand_as(scale)
    if torch.equal(torch.where(valid, scale, 0.0),
                   torch.where(valid, spread, 0.0)):
        return picked
    return None


def affine_of(a: Affine, s: Affine) -> ty.Optional[ty.Tuple[float, float]]:
    """``(c, d)`` if ``a == c * s + d`` elementwise with numbers ``c`` and
    ``d`` (same terms, scales in one ratio), else None."""
    if a is s:
        return 1.0, 0.0
    if a.shape != s.shape or len(a.terms) != len(s.terms) or not a.terms:
        return None
    ratios = []
    for ta, ts in zip(a.terms, s.terms):
        if ta.src != ts.src or not _same(ta.rows, ts.rows) or \
                not _same(ta.weight, ts.weight) or \
                not torch.equal(ta.out, ts.out) or \
                not torch.equal(ta.scale != 0, ts.scale != 0):
            return None
        nz = ts.scale != 0
        ratios.append((ta.scale[nz] / ts.scale[nz]).reshape(-1))
    ratios = torch.cat(ratios)
    if not len(ratios) or not torch.allclose(
            ratios, ratios[0].expand_as(ratios), rtol=1e-12, atol=0.0):
        return None
    c = float(ratios[0])
    d = (a.bias - c * s.bias).reshape(-1)
    if not torch.allclose(d, d[0].expand_as(d), rtol=1e-12, atol=1e-15):
        return None
    return c, float(d[0])


def _same(x: ty.Optional[torch.Tensor], y: ty.Optional[torch.Tensor]
          ) -> bool:
    if x is None or y is None:
        return x is y
    return x is y or (x.shape == y.shape and torch.equal(x, y))


def add_to_product(prod: SpikeProduct, c: torch.Tensor) -> SpikeProduct:
    """An additive constant on the logits; -inf entries are a mask."""
    c = torch.broadcast_to(c, prod.coef.shape)
    masked = torch.isneginf(c)
    return dataclasses.replace(prod, bias=prod.bias + torch.where(
        masked, 0.0, c), mask=prod.mask | masked)


def synapse(t: Term, dst: str, src_channels: int) -> Synapse:
    """A Term as a token-shared synapse: per-channel scales fold into the
    weight's rows; a direct read becomes a diagonal weight over the value's
    last axis or, where the scale follows the source's channels instead (a
    per-channel BatchNorm read in another layout), over the source's
    ``src_channels``. Only what the destination takes is kept: rows of the
    product no element reads, input positions no row fills and output
    channels nothing takes (a strided slice keeps a quarter of the rows, a
    concatenation part a fraction of the channels), so no backend
    multiplies what is thrown away."""
    scale = t.scale.reshape(-1)
    if t.weight is None:
        layouts = [_by_last_axis(t.out), _by_source_channel(
            t.out.reshape(-1), scale, src_channels)]
    else:
        layouts = [(t.rows, t.weight, t.out.reshape(-1))]
    for rows, weight, out in layouts:
        c = weight.shape[0]
        out = torch.where(scale != 0, out, -1)
        taken = out >= 0
        channel = torch.where(taken, out % c, 0)
        per_c = torch.zeros(c, dtype=torch.float64).scatter_(
            0, channel[taken], scale[taken])
        if torch.equal(torch.where(taken, per_c[channel], 0.0),
                       torch.where(taken, scale, 0.0)):
            break
    else:
        raise UnsupportedModelError(
            f"{dst}: its input scales the channels of each token "
            "differently (a product with a per-position constant, such as a "
            "rotary position embedding), which a token-shared weight cannot "
            "carry")
    weight = weight * per_c[:, None]
    row = torch.where(taken, out // c, 0)
    used_rows = torch.zeros(len(rows), dtype=torch.bool)
    used_rows[row[taken]] = True
    used_channels = torch.zeros(c, dtype=torch.bool)
    used_channels[channel[taken]] = True
    if not taken.any():  # a constant value: one empty row keeps shapes
        used_rows[0] = used_channels[0] = True
    rows = rows[used_rows]
    used_inputs = (rows >= 0).any(0) & (weight[used_channels] != 0).any(0)
    used_inputs[0] |= not used_inputs.any()
    new_row = used_rows.cumsum(0) - 1
    new_channel = used_channels.cumsum(0) - 1
    c_new = int(used_channels.sum())
    out = torch.where(taken, new_row[row] * c_new + new_channel[channel], -1)
    weight = weight[used_channels][:, used_inputs]
    return Synapse(t.src, rows[:, used_inputs].numpy().astype("int64"),
                   weight.numpy(), out.numpy().astype("int64"))


def _by_last_axis(out: torch.Tensor):
    """A direct read as rows of the value's last axis."""
    c = out.shape[-1]
    rows = out.reshape(-1, c)
    return rows, torch.eye(c, dtype=torch.float64), torch.where(
        rows.reshape(-1) >= 0, torch.arange(rows.numel()), -1)


def _by_source_channel(out: torch.Tensor, scale: torch.Tensor, c: int):
    """A direct read as rows of the source's ``c`` channels: element ``e``
    reading source neuron ``s`` takes channel ``s % c`` of the row given by
    its rank among the elements that read that channel."""
    valid = (out >= 0) & (scale != 0)
    channel = torch.where(valid, out % c, c)  # c: reads nothing
    order = torch.argsort(channel, stable=True)
    counts = torch.bincount(channel, minlength=c + 1)
    start = counts.cumsum(0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order)) - start[channel[order]]
    n_rows = int(counts[:c].max()) if valid.any() else 1
    rows = torch.full((n_rows, c), -1, dtype=torch.int64)
    rows[rank[valid], channel[valid]] = out[valid]
    return rows, torch.eye(c, dtype=torch.float64), torch.where(
        valid, rank * c + channel, -1)
