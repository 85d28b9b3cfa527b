"""Calibrate the scale sigma of every population of a captured graph.

Token-shared weights fold the source's sigma into their columns and the
destination's into their rows, so every neuron that feeds the same input
channel of a shared weight (across tokens), and every neuron that takes the
same output channel, must share one sigma; so must the neurons along the
contracted axis of a spike product and along the softmax axis of the
logits. These constraints form groups (connected components); sigma is a
statistic of |activation| over the calibration samples and over the
neurons of a group. With ``granularity='channel'`` (the default) that is as
fine as the constraints allow (per channel; per head and query row for the
logits); ``'tensor'`` gives one sigma per population.

Activation and LayerNorm populations have two scales: their spikes' sigma
(constrained by what reads them) and ``<name>:pre``, their membrane's
(constrained by the weights that feed them). A LayerNorm's membrane scale is
one number per population, so that the membranes of one token, whose mean
the stage removes, share their units.
"""
import dataclasses
import math
import typing as ty

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch

from lava_spiked.capture import Graph, run_graph
from lava_spiked.plan import STAGED
from lava_spiked.progress import bar
from lava_spiked.validation import check_batch

GRANULARITIES = ("channel", "tensor")


def batches(data: ty.Any, sample_shape: ty.Tuple[int, ...],
            batch_size: int, name: str) -> ty.Iterator[torch.Tensor]:
    """Checked float64 batches from an array or tensor (n, *sample_shape)
    or from an iterable of batches (a DataLoader; of ``(x, label)`` pairs
    the first item is used)."""
    if isinstance(data, (np.ndarray, torch.Tensor)):
        arr = check_batch(name, data.detach().cpu().numpy()
                          if torch.is_tensor(data) else data, sample_shape)
        for start in range(0, len(arr), batch_size):
            yield torch.from_numpy(arr[start:start + batch_size])
        return
    empty = True
    for batch in data:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        if torch.is_tensor(batch):
            batch = batch.detach().cpu().numpy()
        empty = False
        yield torch.from_numpy(check_batch(name, batch, sample_shape))
    if empty:
        raise ValueError(f"{name} is empty")


def _masked(data: ty.Any, attention_mask: ty.Any, shape, batch_size: int,
            name: str) -> ty.Iterator[ty.Tuple[torch.Tensor, ty.Any]]:
    """Batches of ``data`` with the matching rows of ``attention_mask``
    (None without one; with one, ``data`` must be an array)."""
    if attention_mask is None:
        for x in batches(data, shape, batch_size, name):
            yield x, None
        return
    if not isinstance(data, (np.ndarray, torch.Tensor)):
        raise ValueError(f"with attention_mask, {name} must be an array "
                         "(n, *sample_shape), not an iterable of batches")
    mask = torch.as_tensor(np.asarray(attention_mask)).bool()
    if tuple(mask.shape) != (len(data), shape[0]):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, "
                         f"expected ({len(data)}, {shape[0]})")
    for i, x in enumerate(batches(data, shape, batch_size, name)):
        yield x, mask[i * batch_size:i * batch_size + len(x)]


def groups(graph: Graph, granularity: str = "channel"
           ) -> ty.Tuple[ty.Dict[str, np.ndarray], int]:
    """Sigma group of every neuron: population (and ``<attention>:logits``,
    ``<population>:pre``) name -> (size,) group labels, and the number of
    groups."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got "
                         f"{granularity!r}")
    sizes = {p.name: p.size for p in graph.populations}
    shapes = {p.name: p.shape for p in graph.populations}
    # the membrane of a staged population is fed in its own scale
    membrane = {p.name: p.name + ":pre" if p.kind in STAGED else p.name
                for p in graph.populations}
    for p in graph.populations:
        if p.kind in STAGED:
            sizes[p.name + ":pre"], shapes[p.name + ":pre"] = p.size, p.shape
    for op in graph.attention:
        sizes[op.logits], shapes[op.logits] = op.coef.size, op.coef.shape
    offset, total = {}, 0
    for name, size in sizes.items():
        offset[name], total = total, total + size
    edges: ty.List[ty.Tuple[np.ndarray, np.ndarray]] = []

    def link(name: str, idx: np.ndarray, label: np.ndarray) -> None:
        """Neurons ``idx`` of ``name`` with equal ``label`` share sigma."""
        order = np.lexsort((idx, label))
        idx, label = idx[order], label[order]
        same = label[1:] == label[:-1]
        # int32 node ids (neurons < 2**31): half the memory of int64
        edges.append(((offset[name] + idx[:-1][same]).astype(np.int32),
                      (offset[name] + idx[1:][same]).astype(np.int32)))

    def along(name: str, axis: int) -> None:
        idx = np.arange(sizes[name]).reshape(shapes[name])
        label = np.moveaxis(idx, axis, -1)[..., :1]
        link(name, np.moveaxis(idx, axis, -1).ravel(),
             np.broadcast_to(label, np.moveaxis(idx, axis, -1).shape)
             .ravel())

    for pop in graph.populations:
        for syn in pop.synapses:
            k = np.broadcast_to(np.arange(syn.rows.shape[1]), syn.rows.shape)
            ok = syn.rows >= 0
            link(syn.src, syn.rows[ok], k[ok])
            o = np.flatnonzero(syn.out >= 0)
            link(membrane[pop.name], o, syn.out[o] % syn.weight.shape[0])
        if pop.kind == "layernorm":
            link(pop.name + ":pre", np.arange(pop.size),
                 np.zeros(pop.size, np.int64))
    for op in graph.attention:
        along(op.x, -1)
        along(op.y, -2)
        along(op.v, -2)
        along(op.logits, -1)
    if granularity == "tensor":
        for name, size in sizes.items():
            link(name, np.arange(size), np.zeros(size, np.int64))
    a = np.concatenate([e[0] for e in edges] + [np.zeros(0, np.int32)])
    b = np.concatenate([e[1] for e in edges] + [np.zeros(0, np.int32)])
    edges.clear()  # free the pairs before the matrix is built
    adj = scipy.sparse.coo_matrix((np.ones(len(a), np.int8), (a, b)),
                                  shape=(total, total))
    n, labels = scipy.sparse.csgraph.connected_components(adj,
                                                          directed=False)
    return {name: labels[offset[name]:offset[name] + size]
            for name, size in sizes.items()}, n


#: A negative logit bias whose float32 softmax weight stays below this on
#: every calibration sample is a mask (:func:`absorb_masks`).
MASKED_BELOW = 2.0 ** -24


def absorb_masks(graph: Graph, data: ty.Any, batch_size: int = 64,
                 progress: bool = True,
                 attention_mask: ty.Any = None) -> Graph:
    """The graph with masks written as large negative constants made masks.

    Models mask attention in many ways: a boolean mask or ``-inf`` (already
    masks when captured), or an additive constant such as ``-100`` (Swin's
    shifted windows), ``-1e4``, ``-1e9`` or ``torch.finfo(dtype).min``
    (Hugging Face's extended mask). An entry of a logit bias is taken for a
    mask when the bias is negative there and the entry's softmax
    probability, computed in float32 as the model computes it, is below
    float32's unit roundoff (:data:`MASKED_BELOW`, 2**-24) on every
    calibration sample: the entry then moves the model's own float32
    result by less than its rounding (Swin's ``exp(-100)`` is a float32
    subnormal, not 0). Kept as a bias, such an entry would stretch the
    logits' scale over it (about 100 for Swin's mask, where its real logits
    need 0.1 to 0.2; near 1e4 for a -1e4 mask) and put every real logit in
    the code's dead zone. Masked entries never fire in the WOSS softmax and
    take no part in the logits' calibration. ``attention_mask`` (n, N) is
    the runtime token mask of a graph that has one
    (:func:`lava_spiked.capture.mask_tokens`): a key it pads is masked in
    that sample anyway and says nothing; a key padded in every calibration
    sample is a mask only where its bias is the lowest float (half of
    float32's minimum or below), as models write masks.
    """
    candidates = {op.logits: op for op in graph.attention
                  if (op.bias < 0).any()}
    if not candidates:
        return graph
    # entries with a nonzero probability in some sample, and entries that
    # were a real key in some sample
    alive = {name: np.zeros(op.bias.shape, bool)
             for name, op in candidates.items()}
    seen = {name: np.zeros(op.bias.shape, bool)
            for name, op in candidates.items()}

    def update(op, z: torch.Tensor, masked: torch.Tensor) -> None:
        # padded keys (recorded as 0) are masked at run time anyway
        z = z.float().masked_fill(masked, -math.inf)
        alive[op.logits] |= (torch.softmax(z, -1) >= MASKED_BELOW).any(
            0).numpy()
        seen[op.logits] |= (~masked).expand_as(z).any(0).numpy()

    _each_logits(graph, candidates, data, attention_mask, batch_size,
                 progress, "finding masks", update)
    attention = []
    for op in graph.attention:
        if op.logits in alive:
            # a key padded in every calibration sample: a mask only where
            # its bias is the lowest float, as models write masks
            dead = np.where(seen[op.logits], ~alive[op.logits],
                            op.bias <= np.finfo(np.float32).min / 2)
            new = (op.bias < 0) & ~op.mask & dead
        else:
            new = np.zeros(op.mask.shape, bool)
        attention.append(dataclasses.replace(
            op, mask=op.mask | new, bias=np.where(new, 0.0, op.bias)))
    return dataclasses.replace(graph, attention=attention)


def _each_logits(graph: Graph, ops: ty.Dict[str, ty.Any], data: ty.Any,
                 attention_mask: ty.Any, batch_size: int, progress: bool,
                 desc: str, fn: ty.Callable) -> None:
    """Run the calibration data through ``graph`` and call ``fn(op, z,
    masked)`` for each attention op of ``ops`` (logits name -> op) with its
    logits ``z`` (batch, *op.bias.shape) and the entries masked in each
    sample: its constant mask and, with a runtime token mask, the padded
    keys."""
    shape = graph[graph.input].shape
    for x, m in bar(_masked(data, attention_mask, shape, batch_size,
                            "calibration_data"), desc, progress):
        def record(name: str, z: torch.Tensor) -> None:
            op = ops.get(name)
            if op is None:
                return
            masked = torch.from_numpy(op.mask)
            if op.key_mask and m is not None:
                masked = masked | ~m[:, None, None, :]
            fn(op, z.reshape((-1,) + op.bias.shape), masked)
        run_graph(graph, x, record, m)


def center_logits(graph: Graph, data: ty.Any, batch_size: int = 64,
                  progress: bool = True,
                  attention_mask: ty.Any = None) -> Graph:
    """The graph with each attention row's logits moved by a constant
    towards a largest logit of 0 on the median calibration sample.

    Softmax ignores a constant added to a row, so the model computes the
    same. The phase code does not: WOSS shifts a row by its largest
    *positive* logit (the first positive spike), so a row whose logits are
    all negative is not shifted, and its entries below ``-(T - 1/2) ln B``
    never fire (a causal row with few keys may then output nothing); and a
    logit is coded with an error relative to its magnitude, so the logits
    that decide the softmax, those near the row's maximum, are coded best
    near 0. The constant is ``-median`` over samples of the row's largest
    unmasked logit, one per head and query row (a logit bias, folded into
    the Plan like any other), limited so that the row's largest magnitude
    over the calibration samples does not grow: the row's scale, and with
    it the coarseness of its code, stays as it was. ``attention_mask`` as
    in :func:`absorb_masks`.
    """
    if not graph.attention:
        return graph
    ops = {op.logits: op for op in graph.attention}
    # per logit population: per sample row maxima, and the running row
    # minimum and maximum over samples
    peaks: ty.Dict[str, ty.List[np.ndarray]] = {name: [] for name in ops}
    low = {name: np.full(op.bias.shape[:-1], np.inf)
           for name, op in ops.items()}
    high = {name: np.full(op.bias.shape[:-1], -np.inf)
            for name, op in ops.items()}

    def update(op, z: torch.Tensor, masked: torch.Tensor) -> None:
        name = op.logits
        peak = z.masked_fill(masked, -math.inf).max(-1).values.numpy()
        floor = z.masked_fill(masked, math.inf).min(-1).values.numpy()
        peaks[name].append(peak)
        high[name] = np.maximum(high[name], peak.max(0))
        low[name] = np.minimum(low[name], floor.min(0))

    _each_logits(graph, ops, data, attention_mask, batch_size, progress,
                 "centering logits", update)
    attention = []
    for op in graph.attention:
        name = op.logits
        peak = np.concatenate(peaks[name])
        peak = np.where(np.isfinite(peak), peak, np.nan)  # rows all masked
        with np.errstate(all="ignore"):
            wanted = -np.nanmedian(peak, 0)
            lo, hi = low[name], high[name]
            reach = np.maximum(np.abs(lo), np.abs(hi))
            # keep lo + c >= -reach and hi + c <= reach
            shift = np.clip(wanted, -reach - lo, reach - hi)
        shift = np.where(np.isfinite(shift), shift, 0.0)
        attention.append(dataclasses.replace(
            op, bias=op.bias + shift[..., None]))
    return dataclasses.replace(graph, attention=attention)


def calibrate(graph: Graph, data: ty.Any, statistic: str = "max",
              percentile: float = 99.9, granularity: str = "channel",
              batch_size: int = 64, progress: bool = True,
              attention_mask: ty.Any = None) -> ty.Dict[str, np.ndarray]:
    """Scale sigma of every population and of every attention's logits.

    Parameters
    ----------
    graph : Graph
        From :func:`lava_spiked.capture.capture`.
    data : array_like, torch.Tensor or iterable of batches
        Calibration inputs (n, *sample_shape), kept apart from the data you
        evaluate on; a DataLoader works too.
    statistic : {'max', 'percentile'}
        Of |activation|: the maximum over samples and group, or the largest
        per-neuron ``percentile`` over samples in the group (keeps every
        sample's activations in memory).
    percentile : float
        Used with ``statistic='percentile'``.
    granularity : {'channel', 'tensor'}
        See the module docstring.
    attention_mask : array_like, optional
        (n, N) runtime token mask of the calibration samples, for a graph
        that has one (:func:`lava_spiked.capture.mask_tokens`).

    Returns
    -------
    dict
        Population (or ``<attention>:logits``, ``<population>:pre``) name
        -> sigma (size,).

    Raises
    ------
    ValueError
        On bad arguments or data, and when an activation is NaN or infinite
        (naming the population).
    """
    if statistic not in ("max", "percentile"):
        raise ValueError(f"statistic must be 'max' or 'percentile', got "
                         f"{statistic!r}")
    labels, n_groups = groups(graph, granularity)
    shape = graph[graph.input].shape
    stats: ty.Dict[str, ty.List[np.ndarray]] = {}

    def update(name: str, v: torch.Tensor) -> None:
        """Reduce one population's values as soon as they exist."""
        v = v.abs()
        if not torch.isfinite(v).all():
            raise ValueError(
                f"{name}: activations are NaN or infinite on the "
                "calibration data; the model overflows or divides by "
                "zero there")
        v = v.numpy()
        if statistic == "max":
            v = v.max(0, keepdims=True)
            if name in stats:
                v = np.maximum(v, stats[name][0])
            stats[name] = [v]
        else:
            stats.setdefault(name, []).append(v.astype(np.float32))

    for x, m in bar(_masked(data, attention_mask, shape, batch_size,
                            "calibration_data"), "calibrating", progress):
        run_graph(graph, x, update, m)
    per_neuron = {
        name: (v[0][0] if statistic == "max" else
               np.percentile(np.concatenate(v), percentile, axis=0))
        for name, v in stats.items()}
    group_max = np.zeros(n_groups)
    for name, v in per_neuron.items():
        np.maximum.at(group_max, labels[name], v)
    sigmas = {}
    for name, lab in labels.items():
        s = group_max[lab]
        # a group that was always 0 gets the population's scale (any scale
        # codes 0), so no sigma is 0
        fallback = s.max() if s.max() > 0 else 1.0
        sigmas[name] = np.where(s > 0, s, fallback).astype(np.float64)
    return sigmas
