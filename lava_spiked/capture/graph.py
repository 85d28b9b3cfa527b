"""The captured network: populations, synapses and attention operations,
and its exact (unquantised) evaluation, which calibration and every check
of a capture run."""
import dataclasses
import math
import typing as ty

import numpy as np
import torch

from lava_spiked.capture.symbolic import UnsupportedModelError
from lava_spiked.numerics.nonlinear import ACTIVATIONS
from lava_spiked.plan import STAGED, Synapse


@dataclasses.dataclass
class Population:
    """A population of phase neurons (or the input encoder).

    Attributes
    ----------
    name : str
        Says what it is, from the module path (``blocks.0.act``).
    shape : tuple of int
        Shape of one sample's value.
    kind : str
        One of :data:`lava_spiked.plan.KINDS`.
    synapses : list of Synapse
        Its sources (empty for the input and attention outputs).
    bias : numpy.ndarray
        (size,) real-unit bias.
    fn : str
        Activation of an ``'activation'`` population
        (:data:`lava_spiked.numerics.nonlinear.ACTIVATIONS`).
    eps : float
        LayerNorm's eps of a ``'layernorm'`` population.
    token_mask : bool
        Padded tokens never fire (:func:`mask_tokens`).
    """

    name: str
    shape: ty.Tuple[int, ...]
    kind: str
    synapses: ty.List[Synapse]
    bias: np.ndarray
    fn: str = ""
    eps: float = 0.0
    token_mask: bool = False

    @property
    def size(self) -> int:
        """Number of neurons."""
        return int(np.prod(self.shape))


@dataclasses.dataclass
class AttentionOp:
    """``softmax(coef * (x @ y) + bias, masked) @ v`` on populations.

    ``x`` is (h, N, K), ``y`` is (h, K, M) and ``v`` is (h, M, d); ``out``
    is the (h, N, d) population of the normalised result. ``coef``,
    ``bias`` and ``mask`` are (h, N, M); with ``key_mask`` padded keys are
    masked too (:func:`mask_tokens`).
    """

    x: str
    y: str
    v: str
    out: str
    coef: np.ndarray
    bias: np.ndarray
    mask: np.ndarray
    key_mask: bool = False

    @property
    def logits(self) -> str:
        """Name of the logit population."""
        return self.out + ":logits"


@dataclasses.dataclass
class Graph:
    """Captured network: populations in creation order (sources first),
    attention operations, the input and output population names, the
    multiply-accumulates of one forward pass of the original model, and,
    after :func:`mask_tokens`, the tokens of its runtime attention mask and
    whether its readout is a mean over them."""

    populations: ty.List[Population]
    attention: ty.List[AttentionOp]
    input: str
    output: str
    ann_macs: float
    tokens: int = 0
    mean_pool: bool = False

    def __getitem__(self, name: str) -> Population:
        return self._by_name[name]

    def __post_init__(self) -> None:
        self._by_name = {p.name: p for p in self.populations}


def mask_tokens(graph: Graph, mean_pool: bool = False) -> Graph:
    """``graph`` with a runtime attention mask over the N tokens of its
    input (the first axis): every attention masks padded keys; with
    ``mean_pool`` (the readout is a mean over tokens) the populations the
    readout reads never fire for padded tokens and the readout divides by
    the real tokens (:meth:`lava_spiked.plan.Plan.pool`).

    Raises
    ------
    UnsupportedModelError
        If an attention's keys or a pooled population's first axis are not
        the N tokens.
    """
    n = graph[graph.input].shape[0]
    for op in graph.attention:
        if op.coef.shape[-1] != n:
            raise UnsupportedModelError(
                f"{op.out}: attends over {op.coef.shape[-1]} keys, not the "
                f"{n} tokens of the attention mask")
    pooled = _pooled_tokens(graph, n) if mean_pool else set()
    return dataclasses.replace(
        graph, tokens=n, mean_pool=mean_pool,
        attention=[dataclasses.replace(op, key_mask=True)
                   for op in graph.attention],
        populations=[dataclasses.replace(p, token_mask=p.name in pooled)
                     for p in graph.populations])


def _pooled_tokens(graph: Graph, n: int) -> ty.Set[str]:
    """The token populations (N, ...) whose mean the readout takes:
    reached from the readout through populations without a token axis
    (the pooled vector), and read by nothing else."""
    readers: ty.Dict[str, ty.Set[str]] = {}
    for pop in graph.populations:
        for syn in pop.synapses:
            readers.setdefault(syn.src, set()).add(pop.name)
    for op in graph.attention:
        for src in (op.x, op.y, op.v):
            readers.setdefault(src, set()).add(op.out)
    chain, pooled = {graph.output}, set()
    frontier = [graph.output]
    while frontier:
        for syn in graph[frontier.pop()].synapses:
            src = graph[syn.src]
            if len(src.shape) >= 2 and src.shape[0] == n:
                pooled.add(src.name)
            elif src.kind != "input" and src.name not in chain:
                chain.add(src.name)
                frontier.append(src.name)
    if not pooled:
        raise UnsupportedModelError(
            f"mean_pool: the readout reads no population of {n} tokens")
    for name in pooled:
        other = readers[name] - chain
        if other:
            raise UnsupportedModelError(
                f"mean_pool: {name} is pooled but also read by "
                f"{sorted(other)}; its padded tokens cannot be silenced")
    return pooled


Recorder = ty.Callable[[str, torch.Tensor], None]


def run_graph(graph: Graph, x: torch.Tensor,
              record: ty.Optional[Recorder] = None,
              attention_mask: ty.Optional[torch.Tensor] = None
              ) -> torch.Tensor:
    """The captured network without quantisation, batched, in float64:
    the folded synapses, ReLU, the activations and LayerNorm (unclipped)
    and exact softmax attention. It equals the
    model's output up to float rounding exactly when the capture is right.

    With ``record``, calls ``record(name, values)`` with each population's
    values (batch, size) (and the logits of each attention, masked entries
    0, and the membrane ``<name>:pre`` of each activation and LayerNorm
    population) as soon as they exist. Every value is dropped after its
    last reader, so memory holds the live activations only (calibration
    reduces each one in its callback).

    A graph with a runtime mask (:func:`mask_tokens`) takes
    ``attention_mask`` (batch, N), True for real tokens: padded keys are
    masked, pooled padded tokens are 0 and a mean-pooled readout divides
    by the real tokens, as the model computes with its attention mask.
    """
    n = len(x)
    if graph.tokens:
        attention_mask = torch.ones(n, graph.tokens, dtype=torch.bool) \
            if attention_mask is None else \
            torch.as_tensor(attention_mask).bool()
    dead = _dead_after(graph)
    val = {graph.input: x.reshape(n, -1).double()}
    if record is not None:
        record(graph.input, val[graph.input])
    attention = {op.out: op for op in graph.attention}
    for i, pop in enumerate(graph.populations[1:], 1):
        op = attention.get(pop.name)
        if op is not None:
            xs, ys, vs = (val[p].reshape((n,) + graph[p].shape)
                          for p in (op.x, op.y, op.v))
            z = torch.from_numpy(op.coef) * (xs @ ys) + \
                torch.from_numpy(op.bias)
            mask = torch.from_numpy(op.mask)
            if op.key_mask:
                mask = mask | ~attention_mask[:, None, None, :]
            if record is not None:
                record(op.logits, z.masked_fill(mask, 0.0).reshape(n, -1))
            p = torch.softmax(z.masked_fill(mask, -math.inf), -1)
            val[pop.name] = torch.nan_to_num(p @ vs, nan=0.0).reshape(n, -1)
        else:
            a = torch.from_numpy(pop.bias).expand(n, -1)
            for syn in pop.synapses:
                a = a + _apply(syn, val[syn.src])
            if pop.kind in STAGED and record is not None:
                record(pop.name + ":pre", a)
            val[pop.name] = _activate(pop, a)
            if pop.token_mask:
                val[pop.name] = (val[pop.name].reshape((n, pop.shape[0], -1))
                                 * attention_mask[..., None]).reshape(n, -1)
        if record is not None:
            record(pop.name, val[pop.name])
        for name in dead.get(i, ()):
            del val[name]
    out = graph[graph.output]
    y = val[graph.output].reshape((n,) + out.shape)
    if graph.mean_pool:
        b = torch.from_numpy(out.bias).reshape(out.shape)
        ratio = graph.tokens / attention_mask.sum(1).double()
        y = (y - b) * ratio.reshape((-1,) + (1,) * len(out.shape)) + b
    return y


def _activate(pop: Population, a: torch.Tensor) -> torch.Tensor:
    """What a population holds given its integrated input ``a`` (batch,
    size), exactly (float64)."""
    if pop.kind == "relu":
        return a.clamp(min=0.0)
    if pop.kind == "layernorm":
        n = pop.shape[-1]
        z = torch.nn.functional.layer_norm(a.reshape(-1, n), (n,),
                                           eps=pop.eps)
        return z.reshape(a.shape)
    if pop.kind == "activation":
        return torch.from_numpy(ACTIVATIONS[pop.fn][0](a.numpy()))
    return a


def _dead_after(graph: Graph) -> ty.Dict[int, ty.List[str]]:
    """Population index -> the values no later population reads."""
    last: ty.Dict[str, int] = {}
    attention = {op.out: op for op in graph.attention}
    for i, pop in enumerate(graph.populations[1:], 1):
        op = attention.get(pop.name)
        for src in (op.x, op.y, op.v) if op is not None else \
                (syn.src for syn in pop.synapses):
            last[src] = i
    dead: ty.Dict[int, ty.List[str]] = {}
    for name, i in last.items():
        if name != graph.output:
            dead.setdefault(i, []).append(name)
    return dead


def _is_arange(idx: np.ndarray) -> bool:
    return bool(np.array_equal(idx.reshape(-1), np.arange(idx.size)))


def _apply(syn: Synapse, x: torch.Tensor) -> torch.Tensor:
    """``syn`` applied to real source values ``x`` (batch, src size): the
    torch twin of :meth:`lava_spiked.plan.Synapse.apply`, so calibration
    stays on torch tensors. Identity index maps (a Linear reading a whole
    population, a product taken whole) are views, not gathers."""
    n, (r, k) = len(x), syn.rows.shape
    w = torch.as_tensor(syn.weight.T, dtype=x.dtype)
    if _is_arange(syn.rows):
        g = x[:, :r * k].reshape(n, r, k)
    else:
        rows = torch.as_tensor(syn.rows)
        g = x.index_select(1, rows.clamp(min=0).reshape(-1)).reshape(
            n, r, k)
        if (rows < 0).any():
            g = g.masked_fill(rows < 0, 0.0)
    y = (g @ w).reshape(n, -1)
    if len(syn.out) == y.shape[1] and _is_arange(syn.out):
        return y
    out = torch.as_tensor(syn.out)
    y = y.index_select(1, out.clamp(min=0))
    return y.masked_fill(out < 0, 0.0) if (out < 0).any() else y
