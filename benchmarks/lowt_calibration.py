"""Low-T calibration (issue 33): reconstruction of the scales against max
and per-channel MSE scales, measured on the engine's fixed mode.

A research prototype, not a library feature (results and conclusions:
``benchmarks/results/lowt_calibration.md``). It holds

- :func:`quant_forward`, a differentiable model of the code: the captured
  graph evaluated as :func:`lava_spiked.capture.graph.run_graph` does, but
  every population's value phase-coded with its scale, every attention's
  logits coded and its softmax WOSS (forward: the ``floating_pt`` value;
  backward: straight through, :meth:`Code.quantize`). It is checked
  against ``Engine(net, 'float')`` on the same scales (:func:`validate`):
  the same logits up to float rounding once the Plan's 8-bit weights are
  put into the graph (:func:`plan_weights`);
- ways of choosing the scales: ``max`` (:func:`lava_spiked.calibration.
  calibrate`, what ``convert`` does); ``mse`` (per calibration group the
  ``alpha * max``, alpha on a grid 0.30..1.00, that minimises the code's
  squared error of that population's own float values); the gradient
  reconstructions ``block`` (per block of :meth:`lava_spiked.plan.Plan.
  blocks`, in order, Adam on log sigma minimising the squared error of
  the block's output with quantised inputs from the blocks before, as
  BRECQ does for integer networks) and ``e2e`` (every scale at once, the
  readout's squared error); ``search`` and ``mse+search`` (a coordinate
  search of one multiplier per population on the readout's error,
  :func:`search`); a ``c`` prefix runs a method on the graph with
  centred logits (:func:`lava_spiked.calibration.center_logits`);
- :func:`attribute`: the readout error with one code on at a time;
- the measurement: each set of scales lowered with
  :func:`lava_spiked.plan.lower` and run on ``Engine(net, 'fixed')`` over
  the full test split, accuracy against the ANN's; with ``--b-grid``,
  the quantised model's calibration error and the engine's drop per B.

Models: ``digits`` (the bundled DigitsViT, BatchNorm/ReLU, 200
calibration and 397 test images) and ``fashion`` (a 3-block
LayerNorm/GELU ViT for Fashion-MNIST, the tutorial's ``TinyViT`` with 7x7
patches, trained here for 12 epochs on the first 55k training images; 512
of the other 5k are the calibration samples, the 10k test images the
test). Usage::

    OMP_NUM_THREADS=1 python benchmarks/lowt_calibration.py \\
        --models digits fashion --out benchmarks/results

writes ``<name>.md`` and ``<name>.log`` (``--name``, default
``lowt_run``; ``lowt_calibration.md`` is the written-up measurement, not
overwritten) and trains the Fashion ViT unless ``<out>/
lowt_fashion_vit.pt`` holds its weights.
"""
import argparse
import dataclasses
import gzip
import math
import pathlib
import platform
import sys
import time
import typing as ty

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lava_spiked.calibration import (absorb_masks, calibrate, center_logits,
                                     groups)
from lava_spiked.capture import capture, run_graph
from lava_spiked.capture.graph import Graph, _apply
from lava_spiked.engine import Engine
from lava_spiked.network import SpikingNetwork
from lava_spiked.numerics import fixed, phase
from lava_spiked.plan import Plan, lower
from lava_spiked.plan.lowering import _channel_scale, _source_scale

CODES = ((16, 1.4), (24, 1.15), (40, 1.15))
ALPHAS = np.round(np.arange(0.30, 1.001, 0.05), 2)
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")

# --------------------------------------------------------------------------
# The quantised graph


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) *
                                       (x + 0.044715 * x ** 3)))


#: torch twins of :data:`lava_spiked.numerics.nonlinear.ACTIVATIONS` (autograd
#: needs them; numpy's values and these agree to float rounding)
TORCH_ACTIVATIONS = {"gelu": _gelu, "gelu_tanh": _gelu_tanh,
                     "silu": F.silu, "tanh": torch.tanh,
                     "sigmoid": torch.sigmoid}


class Code:
    """The phase code (B, T): decision points and levels as torch tensors.

    The decision points are computed exactly as
    :func:`lava_spiked.numerics.phase.quantize` computes them (``c_B *
    B**-m`` in numpy float64), so that a value lands on the same side of
    a threshold as in the golden model.
    """

    def __init__(self, B: float, T: int) -> None:
        self.B, self.T = B, T
        points = phase.threshold_factor(B) * B ** -np.arange(T,
                                                             dtype=np.float64)
        # ascending, for searchsorted
        self.points = torch.from_numpy(points[::-1].copy())
        self.levels = torch.from_numpy(
            np.append(B ** -np.arange(T, dtype=np.float64), 0.0))
        # WOSS thresholds on shifted logits, as attention.woss has them
        woss = -(np.arange(T) + 0.5) * np.log(B)
        self.woss_points = torch.from_numpy(woss[::-1].copy())

    def step(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Fire step of |x| / sigma (T where silent): the number of
        decision points strictly above it, as phase.quantize counts."""
        return self.T - torch.searchsorted(self.points, magnitude.detach(),
                                           right=True)

    #: backward of :meth:`quantize`: ``'lsq'`` or ``'log'``
    gradient = "log"

    def quantize(self, x: torch.Tensor, sigma: torch.Tensor,
                 unipolar: bool = False) -> torch.Tensor:
        """``sigma * Q(x / sigma)`` with a straight-through backward.

        Forward: the nearest level, clipped at sigma, 0 in the dead zone
        (and for x < 0 where ``unipolar``): the ``floating_pt`` value.

        Backward, ``gradient = 'lsq'``: of ``sigma * (u + (Q(u) -
        u).detach())`` with ``u = x / sigma`` clipped to the code's range:
        d/dx is 1 inside and 0 beyond the clip, d/dsigma is ``Q(u) - u``
        inside and ``sign(x)`` beyond (LSQ). For a uniform code that
        inside term is right; for this one it is not: the levels
        ``sigma * B**-m`` move with sigma, so the code is (up to where the
        levels fall) equivariant to scale, and the error inside the range
        has no trend in sigma; LSQ's inside term, whose sum over a
        population is ``sum (x_hat - x)**2 / sigma``, always pulls sigma
        down and measured so (the loss did not fall on DigitsViT).

        ``gradient = 'log'`` (default): of a surrogate that keeps what
        sigma does change, the clip above and the dead zone below,
        ``clip(x, -sigma, sigma) * h`` with ``h`` a ramp from 0 to 1 over
        one factor of B around the dead zone's edge ``c_B sigma
        B**-(T-1)`` (in log |x|): d/dsigma is ``sign(x)`` beyond the clip
        and ``-x / (sigma ln B)`` on the ramp, 0 elsewhere.
        """
        u = x / sigma
        lo = 0.0 if unipolar else -1.0
        uc = u.clamp(lo, 1.0)
        with torch.no_grad():
            q = self.levels[self.step(u.abs())] * torch.sign(u)
            if unipolar:
                q = q.clamp(min=0.0)
        if self.gradient == "lsq":
            return sigma * (uc + (q - uc).detach())
        edge = float(self.points[0])  # dead zone edge in units of sigma
        h = (torch.log(u.abs().clamp(min=1e-300) / edge) / math.log(self.B)
             + 0.5).clamp(0.0, 1.0)
        sur = sigma * uc * h
        return sur + (sigma * q - sur).detach()

    def woss(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised WOSS probabilities of decoded logits ``z`` (real
        units) as :func:`lava_spiked.golden.attention.woss` computes them; the
        backward is that of ``exp(z - z_max)`` (straight through)."""
        positive = (z > 0) & ~mask
        z_max = torch.where(positive, z, torch.zeros_like(z)).amax(
            -1, keepdim=True)
        d = z - z_max
        with torch.no_grad():
            # the golden model's step counts the thresholds above d; the
            # ascending thresholds at or below d are the rest
            step = self.T - torch.searchsorted(
                self.woss_points, d.contiguous(), right=True)
            p = torch.where((step >= self.T) | mask, 0.0,
                            self.levels[step.clamp(max=self.T)])
        e = torch.where(mask, 0.0, torch.exp(d.clamp(max=0.0)))
        return e + (p - e).detach()


class PerPopulation(dict):
    """A code per population (key -> :class:`Code`, keys as in
    :func:`attribute`), ``default`` for the others: a base B per
    population (``benchmarks/population_bases.py``)."""

    def __init__(self, default: Code, codes=()) -> None:
        super().__init__(codes)
        self.default = default

    def of(self, key: str) -> Code:
        return self.get(key, self.default)


def _code_of(code, key: str) -> Code:
    return code.of(key) if isinstance(code, PerPopulation) else code


def _stage_input(pop, a: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """Value a staged population codes, from its membrane ``a``."""
    if pop.kind == "activation":
        # the membrane clips at its own scale before f (nonlinear.py)
        v = torch.maximum(torch.minimum(a, pre), -pre)
        return TORCH_ACTIVATIONS[pop.fn](v)
    n = pop.shape[-1]
    # LayerNorm is scale-free: its membrane scale changes nothing here
    return F.layer_norm(a.reshape(-1, n), (n,), eps=pop.eps).reshape(a.shape)


def run(graph: Graph, sig: ty.Optional[ty.Mapping[str, torch.Tensor]],
        code: ty.Optional[Code], val: ty.Dict[str, torch.Tensor],
        names: ty.Sequence[str], gains: ty.Optional[ty.Mapping[
            str, np.ndarray]] = None, exact: ty.Container[str] = ()
        ) -> ty.Dict[str, torch.Tensor]:
    """Compute the populations ``names`` (in graph order) into ``val``.

    Parameters
    ----------
    graph : Graph
    sig : dict or None
        Name -> sigma (size,) tensors (also ``<name>:pre`` and
        ``<attention>:logits``); None with ``code=None``.
    code : Code, PerPopulation or None
        The phase code (or one per population); None evaluates the float
        graph (exactly as
        :func:`lava_spiked.capture.run_graph`).
    val : dict
        Population -> (batch, size) float64 values already known (the
        sources of ``names``); updated in place and returned.
    gains : dict, optional
        Attention output -> (h, N, d) factor on ``p @ v / R``: what the
        Plan's 8-bit ``av`` mantissas make of the ratio ``sigma_v /
        sigma_out`` they stand for (:func:`plan_weights`); default 1.
    exact : container of str
        Populations computed without the code, to attribute the error;
        of an attention, ``<out>:logits``, ``<out>:softmax`` (exact
        softmax for WOSS) and ``<out>`` (its output) each alone.
    """
    attention = {op.out: op for op in graph.attention}
    for name in names:
        pop = graph[name]
        n = len(next(iter(val.values())))
        op = attention.get(name)
        coded = code is not None and name not in exact
        if op is not None:
            xs, ys, vs = (val[p].reshape((n,) + graph[p].shape)
                          for p in (op.x, op.y, op.v))
            z = torch.from_numpy(op.coef) * (xs @ ys) + \
                torch.from_numpy(op.bias)
            mask = torch.from_numpy(op.mask).expand_as(z)
            # three codes, each switched off alone by ``exact``: the
            # logits', the WOSS softmax's and the output's
            if code is not None and op.logits not in exact:
                z = _code_of(code, op.logits).quantize(
                    z, sig[op.logits].reshape(op.coef.shape))
            if code is not None and name + ":softmax" not in exact:
                p = _code_of(code, name + ":softmax").woss(z, mask)
            else:
                p = torch.softmax(z.masked_fill(mask, -math.inf), -1)
                p = torch.nan_to_num(p, nan=0.0)
            r = p.sum(-1, keepdim=True)
            out = torch.where(r > 0, (p @ vs) / torch.where(
                r > 0, r, torch.ones_like(r)), 0.0)
            if gains is not None and name in gains:
                out = out * torch.from_numpy(gains[name])
            if coded:
                out = _code_of(code, name).quantize(
                    out.reshape(n, -1), sig[name])
            val[name] = out.reshape(n, -1)
            continue
        a = torch.from_numpy(pop.bias).expand(n, -1)
        for syn in pop.synapses:
            a = a + _apply(syn, val[syn.src])
        if pop.kind == "readout":
            val[name] = a
        elif not coded:
            if pop.kind == "relu":
                val[name] = a.clamp(min=0.0)
            elif pop.kind in ("activation", "layernorm"):
                big = torch.full((1,), math.inf, dtype=a.dtype)
                val[name] = _stage_input(pop, a, big)
            else:
                val[name] = a
        elif pop.kind in ("activation", "layernorm"):
            val[name] = _code_of(code, name).quantize(
                _stage_input(pop, a, sig[name + ":pre"]), sig[name])
        else:
            val[name] = _code_of(code, name).quantize(a, sig[name],
                                                      pop.kind == "relu")
    return val


def quant_forward(graph: Graph, sig, code: ty.Optional[Code],
                  x: torch.Tensor, gains=None, exact=()) -> torch.Tensor:
    """Readout (batch, *output shape) of the whole graph, quantised with
    ``sig`` under ``code`` (``code=None``: the float graph); ``gains`` and
    ``exact`` as in :func:`run`."""
    n = len(x)
    x = x.reshape(n, -1).double()
    first = x if code is None or graph.input in exact else \
        _code_of(code, graph.input).quantize(x, sig[graph.input])
    val = run(graph, sig, code, {graph.input: first},
              [p.name for p in graph.populations[1:]], gains, exact)
    return val[graph.output].reshape((n,) + graph[graph.output].shape)


def plan_weights(graph: Graph, plan: Plan,
                 sigmas: ty.Mapping[str, np.ndarray]
                 ) -> ty.Tuple[Graph, ty.Dict[str, np.ndarray]]:
    """``graph`` with the weights the Plan really uses, and the attention
    output gains (:func:`run`).

    Every synapse's 8-bit mantissas and every attention's ``qk`` mantissas
    are dequantised back to real units with the scales that were folded
    into them; ``av`` (``sigma_v / sigma_out`` per output neuron) becomes
    the factor its mantissas make of that ratio. :func:`quant_forward` on
    these computes what ``floating_pt`` does, up to float rounding.
    """
    pops = []
    for pop in graph.populations:
        layer = plan[pop.name]
        membrane = layer.membrane_scale
        syns = []
        for syn, psyn in zip(pop.synapses, layer.synapses):
            w = fixed.dequantize_weights(psyn.weight, layer.weight_exp +
                                         psyn.shift[:, None])
            w = w * _channel_scale(syn, membrane)[:, None] / \
                _source_scale(syn, sigmas[syn.src])[None, :]
            syns.append(dataclasses.replace(syn, weight=w))
        pops.append(dataclasses.replace(pop, synapses=syns))
    ops, gains = [], {}
    for op, pop in zip(graph.attention, plan.attention):
        sh = lambda name: graph[name].shape  # noqa: E731
        sx = sigmas[op.x].reshape(sh(op.x))[..., :, :1]
        sy = sigmas[op.y].reshape(sh(op.y))[..., :1, :]
        sv = sigmas[op.v].reshape(sh(op.v))[..., :1, :]
        s_out = sigmas[op.out].reshape(sh(op.out))
        qk = fixed.dequantize_weights(pop.qk, pop.qk_exp)
        ops.append(dataclasses.replace(
            op, coef=qk * pop.logit_scale / (sx * sy)))
        gains[op.out] = fixed.dequantize_weights(pop.av, pop.av_exp) * \
            s_out / sv
    return (dataclasses.replace(graph, populations=pops, attention=ops),
            gains)


# --------------------------------------------------------------------------
# Scales


class Scales:
    """Sigmas as one log-scale parameter per calibration group.

    ``groups(graph)`` labels every neuron (and ``:pre``, ``:logits``
    entry); weight folding needs one sigma per label, so the label is the
    parameter. A LayerNorm's membrane scale has no effect on the
    ``floating_pt`` value (LayerNorm is scale-free), so it is frozen.
    """

    def __init__(self, graph: Graph, sigmas: ty.Mapping[str, np.ndarray]):
        self.labels, n = groups(graph)
        g = np.zeros(n)
        for name, lab in self.labels.items():
            g[lab] = sigmas[name]
        self.theta = torch.tensor(np.log(g), requires_grad=True)
        self.index = {name: torch.from_numpy(lab)
                      for name, lab in self.labels.items()}
        frozen = np.zeros(n, bool)
        for pop in graph.populations:
            if pop.kind == "layernorm":
                frozen[self.labels[pop.name + ":pre"]] = True
        self.frozen = torch.from_numpy(frozen)

    def tensors(self) -> ty.Dict[str, torch.Tensor]:
        s = torch.exp(self.theta)
        return {name: s[idx] for name, idx in self.index.items()}

    def numpy(self) -> ty.Dict[str, np.ndarray]:
        s = np.exp(self.theta.detach().numpy())
        return {name: s[lab] for name, lab in self.labels.items()}

    def owned(self, names: ty.Iterable[str]) -> torch.Tensor:
        """Bool mask of the groups of populations ``names`` (with their
        ``:pre`` and ``:logits``), the frozen ones excluded."""
        m = torch.zeros(len(self.theta), dtype=torch.bool)
        for name in names:
            for key in (name, name + ":pre", name + ":logits"):
                if key in self.index:
                    m[self.index[key]] = True
        return m & ~self.frozen


def float_values(graph: Graph, x: torch.Tensor
                 ) -> ty.Dict[str, torch.Tensor]:
    """Every population's float value (and the logits and membranes), as
    :func:`lava_spiked.capture.run_graph` records them."""
    rec: ty.Dict[str, torch.Tensor] = {}
    run_graph(graph, x, lambda k, v: rec.__setitem__(k, v.clone()))
    return rec


def mse_scales(graph: Graph, sigmas: ty.Mapping[str, np.ndarray],
               x: torch.Tensor, code: Code) -> ty.Dict[str, np.ndarray]:
    """Per group, sigma = alpha * max with alpha on :data:`ALPHAS`
    minimising the code's squared error of that population's own float
    values (the issue's item 3; membrane scales kept at max: the
    membrane of an activation is clipped, not coded)."""
    labels, n = groups(graph)
    rec = float_values(graph, x)
    relu = {p.name for p in graph.populations if p.kind == "relu"}
    out = dict(sigmas)
    for name, v in rec.items():
        if name.endswith(":pre") or name == graph.output or name not in labels:
            continue
        lab = labels[name]
        s0 = torch.from_numpy(sigmas[name])
        err = []
        for a in ALPHAS:
            with torch.no_grad():
                q = code.quantize(v, s0 * a, name in relu)
            e = ((q - v) ** 2).sum(0).numpy()
            err.append(np.bincount(lab, e, minlength=n))
        best = ALPHAS[np.argmin(np.stack(err), 0)]  # per group
        out[name] = sigmas[name] * best[lab]
    return out


def reconstruct(graph: Graph, plan: Plan, sigmas, x: torch.Tensor,
                code: Code, how: str, iters: int, lr: float = 0.01,
                batch: int = 128, seed: int = 0, log=print):
    """Optimise the scales on calibration inputs ``x``.

    ``how='block'``: per block (``plan.blocks()``), in order, the groups
    of its populations minimise the squared error of the block's output
    population (the next block's input; the readout for the last),
    normalised by that output's float mean square, given the quantised
    output of the blocks before with their scales already fixed (as
    BRECQ). ``how='e2e'``: every scale at once, minimising the readout's
    squared error. Adam on log sigma, ``iters`` steps per block, random
    mini-batches of ``batch`` samples.
    """
    scales = Scales(graph, sigmas)
    gen = torch.Generator().manual_seed(seed)
    x = x.reshape(len(x), -1).double()
    ref = float_values(graph, x)
    if how == "e2e":
        stages = [("all", [p.name for p in graph.populations],
                   graph.output, None)]
    else:
        blocks = plan.blocks()
        stages = []
        for i, (inp, names) in enumerate(blocks):
            out = blocks[i + 1][0] if i + 1 < len(blocks) else graph.output
            own = names + ([graph.input] if i == 0 else [])
            stages.append((f"block {i}", own, out, inp))
    # the quantised input of the current block, fixed scales before it
    fed = None
    for label, own, out, inp in stages:
        mask = scales.owned(own)
        opt = torch.optim.Adam([scales.theta], lr=lr)
        start = scales.theta.detach().clone()
        norm = float((ref[out] ** 2).mean())
        names = [n for n in own if n != graph.input]
        t0 = time.perf_counter()
        for it in range(iters):
            idx = torch.randperm(len(x), generator=gen)[:batch]
            sig = scales.tensors()
            if inp is None or inp == graph.input:
                val = {graph.input: scales_input(graph, sig, code, x[idx])}
            else:
                val = {inp: fed[idx]}
            if inp is None:
                names = [p.name for p in graph.populations[1:]]
            run(graph, sig, code, val, names)
            loss = ((val[out] - ref[out][idx]) ** 2).mean() / norm
            opt.zero_grad()
            loss.backward()
            scales.theta.grad[~mask] = 0.0
            opt.step()
            with torch.no_grad():  # Adam moves zero-grad entries by momentum
                scales.theta[~mask] = start[~mask]
            if it in (0, iters - 1):
                log(f"  {label}: iter {it} loss {loss.item():.4g}")
        log(f"  {label}: {iters} iterations in "
            f"{time.perf_counter() - t0:.1f} s")
        with torch.no_grad():
            sig = scales.tensors()
            if inp is None or inp == graph.input:
                val = {graph.input: scales_input(graph, sig, code, x)}
            else:
                val = {inp: fed}
            run(graph, sig, code, val, names)
            fed = val[out]
    return scales.numpy()


def logit_error(graph: Graph, sigmas, code: Code, x: torch.Tensor,
                ref: ty.Optional[torch.Tensor] = None, exact=()) -> float:
    """Squared error of the quantised readout against the float one, over
    the float readout's mean square (what :func:`search` minimises)."""
    x = x.reshape(len(x), -1).double()
    with torch.no_grad():
        if ref is None:
            ref = quant_forward(graph, None, None, x)
        sig = {k: torch.as_tensor(v) for k, v in sigmas.items()}
        out = quant_forward(graph, sig, code, x, exact=exact)
    return float(((out - ref) ** 2).mean() / (ref ** 2).mean())


def search(graph: Graph, sigmas, x: torch.Tensor, code: Code,
           sweeps: int = 2, log=print) -> ty.Dict[str, np.ndarray]:
    """Coordinate search of one multiplier per population's scales.

    The code's levels ``sigma * B**-m`` repeat when sigma moves by a
    factor B, so inside the range a scale only sets where the levels fall
    (its phase) and, at the ends, what clips and what drops into the dead
    zone; the squared error is a bumpy, piecewise-constant function of
    sigma, which a gradient does not see (the straight-through gradients
    of :meth:`Code.quantize` did not lower it). So each knob (a
    population's sigmas, an attention's logit sigmas, an activation's
    membrane sigmas), in graph order, is multiplied by the best of
    ``B**(j / 6)``, j = -6..2, for the readout's squared error over the
    calibration inputs with every other scale as it stands; ``sweeps``
    passes. The channels' ratios (from ``sigmas``) are kept.
    """
    s = {k: np.array(v, dtype=np.float64) for k, v in sigmas.items()}
    grid = code.B ** (np.arange(-6, 3) / 6.0)
    x = x.reshape(len(x), -1).double()
    with torch.no_grad():
        ref = quant_forward(graph, None, None, x)
    norm = float((ref ** 2).mean())
    attention = {op.out for op in graph.attention}
    names = [p.name for p in graph.populations]
    knobs = []
    for p in graph.populations:
        if p.name == graph.output:
            continue
        if p.name in attention:
            knobs.append((p.name, p.name + ":logits"))
        if p.kind == "activation":
            knobs.append((p.name, p.name + ":pre"))
        knobs.append((p.name, p.name))
    err = logit_error(graph, s, code, x, ref)
    log(f"  search: calibration error {err:.4g}, {len(knobs)} knobs")
    t0 = time.perf_counter()
    for sweep in range(sweeps):
        moved = 0
        for pop, key in knobs:
            i = names.index(pop)
            with torch.no_grad():
                sig = {k: torch.from_numpy(v) for k, v in s.items()}
                prefix = {graph.input: code.quantize(x, sig[graph.input])}
                if i > 0:
                    run(graph, sig, code, prefix, names[1:i])
                best, best_m = math.inf, 1.0
                for m in grid:
                    trial = dict(sig)
                    trial[key] = sig[key] * m
                    val = dict(prefix)
                    if i == 0:
                        val[graph.input] = code.quantize(x, trial[key])
                        rest = names[1:]
                    else:
                        rest = names[i:]
                    run(graph, trial, code, val, rest)
                    err = float(((val[graph.output] - ref) ** 2).mean()) / norm
                    # a tie keeps the scale as it is
                    if err < best - 1e-12 or (m == 1.0 and err <= best):
                        best, best_m = err, m
            if best_m != 1.0:
                s[key] = s[key] * best_m
                moved += 1
        log(f"  search sweep {sweep}: moved {moved} knobs, calibration "
            f"error {best:.4g} ({time.perf_counter() - t0:.0f} s)")
    return s


def attribute(graph: Graph, sigmas, code: Code, x: torch.Tensor
              ) -> ty.Dict[str, float]:
    """Readout error (:func:`logit_error`) with one code switched on at a
    time, everything else exact: every population's, and each
    attention's logits, softmax and output apart."""
    keys = [p.name for p in graph.populations if p.name != graph.output]
    for op in graph.attention:
        i = keys.index(op.out)
        keys[i:i] = [op.logits, op.out + ":softmax"]
    x = x.reshape(len(x), -1).double()
    with torch.no_grad():
        ref = quant_forward(graph, None, None, x)
    return {k: logit_error(graph, sigmas, code, x, ref,
                           exact=set(keys) - {k}) for k in keys}


def scales_input(graph: Graph, sig, code: Code,
                 x: torch.Tensor) -> torch.Tensor:
    """The encoder's spikes' values: the input coded with its scale."""
    return code.quantize(x, sig[graph.input])


# --------------------------------------------------------------------------
# Models and data


class FashionViT(nn.Module):
    """The tutorial's ``TinyViT`` (nn.TransformerEncoder, pre-norm,
    LayerNorm, GELU, CLS pooling) for 1x28x28 images: 7x7 patches, 16
    tokens + CLS, 64 channels, 3 blocks, 4 heads, MLP 128."""

    def __init__(self, dim=64, depth=3, heads=4, mlp=128, patch=7,
                 classes=10):
        super().__init__()
        tokens = (28 // patch) ** 2
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, mlp, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth,
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
        return self.head(self.norm(self.encoder(x + self.pos)[:, 0]))


def _idx(path: pathlib.Path, images: bool) -> np.ndarray:
    with gzip.open(path) as f:
        raw = f.read()
    if images:
        return (np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)
                .astype(np.float32) / 255.0)
    return np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)


def fashion(out: pathlib.Path, epochs: int, n_cal: int, log=print):
    """Trained FashionViT and (calibration, test) splits: calibration from
    the last 5k training images (not trained on), test the full 10k."""
    if not FASHION.exists():
        sys.exit(f"{FASHION} is missing: "
                 "apt-get install dataset-fashion-mnist")
    xtr = _idx(FASHION / "train-images-idx3-ubyte.gz", True)
    ytr = _idx(FASHION / "train-labels-idx1-ubyte.gz", False)
    xte = _idx(FASHION / "t10k-images-idx3-ubyte.gz", True)
    yte = _idx(FASHION / "t10k-labels-idx1-ubyte.gz", False)
    torch.manual_seed(0)
    model = FashionViT()
    weights = out / "lowt_fashion_vit.pt"
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        xs, ys = torch.from_numpy(xtr[:55000]), torch.from_numpy(ytr[:55000])
        bs = 128
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3,
                                weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, 3e-3, total_steps=epochs * -(-len(ys) // bs))
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        model.train()
        for ep in range(epochs):
            for idx in torch.randperm(len(ys), generator=g).split(bs):
                loss = F.cross_entropy(model(xs[idx]), ys[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            log(f"  epoch {ep}: loss {loss.item():.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
        torch.save(model.state_dict(), weights)
    model.eval()
    return model, xtr[55000:55000 + n_cal], (xte, yte)


def digits():
    from lava_spiked.bundled.digits_vit import digits_splits, load_default
    s = digits_splits()
    return load_default(), s["calibration"][0], s["test"]


# --------------------------------------------------------------------------
# Measurement


def accuracy(plan: Plan, graph, sigmas, x: np.ndarray, y: np.ndarray,
             mode: str = "fixed",
             batch: int = 500) -> ty.Tuple[float, np.ndarray]:
    eng = Engine(SpikingNetwork(plan, graph, sigmas), mode, compile=False)
    logits = np.concatenate([
        eng(x[i:i + batch], record=False, warn=False).logits.numpy()
        for i in range(0, len(x), batch)])
    return float((logits.argmax(1) == y).mean()), logits


def validate(graph: Graph, sigmas, code: Code, x: np.ndarray, log=print
             ) -> ty.Dict[str, float]:
    """:func:`quant_forward` against ``Engine(net, 'float')`` on the same
    scales: with the Plan's weights (must agree to float rounding) and
    with the graph's real weights (the effect of the 8-bit weights)."""
    plan = lower(graph, sigmas, code.B, code.T)
    _, eng = accuracy(plan, graph, sigmas, x, np.zeros(len(x)), "float")
    sig = {k: torch.from_numpy(v) for k, v in sigmas.items()}
    xt = torch.from_numpy(x)
    with torch.no_grad():
        g, gains = plan_weights(graph, plan, sigmas)
        mine = quant_forward(g, sig, code, xt, gains).reshape(
            len(x), -1).numpy()
        real = quant_forward(graph, sig, code, xt).reshape(len(x), -1).numpy()
    scale = float(np.abs(eng).max())
    res = dict(max_abs=float(np.abs(mine - eng).max()),
               rel=float(np.abs(mine - eng).max()) / scale,
               rows_differ=float((np.abs(mine - eng) > 1e-9 * scale)
                                 .any(1).mean()),
               argmax=float((mine.argmax(1) == eng.argmax(1)).mean()),
               real_max_abs=float(np.abs(real - eng).max()),
               real_argmax=float((real.argmax(1) == eng.argmax(1)).mean()))
    log(f"  validation T={code.T} B={code.B}: {res}")
    return res


def scales_for(method: str, graph: Graph, s_max, xc: torch.Tensor,
               code: Code, args, log) -> ty.Dict[str, np.ndarray]:
    """The scales of one method (see the module docstring)."""
    if method == "max":
        return s_max
    if method == "mse":
        return mse_scales(graph, s_max, xc.double(), code)
    if method in ("search", "mse+search"):
        s = s_max if method == "search" else \
            mse_scales(graph, s_max, xc.double(), code)
        return search(graph, s, xc, code, args.sweeps, log=log)
    if method in ("block", "e2e"):
        plan0 = lower(graph, s_max, code.B, code.T)
        return reconstruct(graph, plan0, s_max, xc, code, method,
                           args.iters, log=log)
    raise ValueError(f"unknown method {method!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits", "fashion"])
    ap.add_argument("--out", type=pathlib.Path,
                    default=pathlib.Path("benchmarks/results"))
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--calibration", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--methods", nargs="+",
                    default=["max", "mse", "search", "mse+search", "e2e"],
                    help="max, mse, search, mse+search, block, e2e; a "
                    "'c' prefix (cmax, csearch, ...) runs it on the graph "
                    "with centred logits (calibrate.center_logits)")
    ap.add_argument("--sweeps", type=int, default=2)
    ap.add_argument("--codes", nargs="+", default=None,
                    help="T:B pairs, default 16:1.4 24:1.15 40:1.15")
    ap.add_argument("--name", default="lowt_run",
                    help="results file stem")
    ap.add_argument("--gradient", choices=("log", "lsq"), default="log",
                    help="backward of the quantiser for block and e2e")
    ap.add_argument("--b-grid", nargs="*", type=float, default=[],
                    help="also, per T of --codes, every B of this grid with "
                    "max scales: the quantised model's readout error on "
                    "the calibration samples and the engine's test drop")
    args = ap.parse_args()
    torch.set_num_threads(1)
    Code.gradient = args.gradient
    lines, rows, checks, where, bs = [], [], [], [], []
    log = lambda s: (print(s, flush=True), lines.append(s))  # noqa: E731
    for name in args.models:
        log(f"## {name}")
        if name == "digits":
            model, xc, (xt, yt) = digits()
        else:
            model, xc, (xt, yt) = fashion(args.out, args.epochs,
                                          args.calibration, log)
        with torch.no_grad():
            ann = model(torch.from_numpy(xt)).numpy()
        ann_acc = float((ann.argmax(1) == yt).mean())
        log(f"ANN accuracy {ann_acc:.4f} on {len(yt)}; "
            f"{len(xc)} calibration samples")
        graphs = {"": absorb_masks(capture(model, tuple(xc.shape[1:])), xc,
                                   progress=False)}
        if any(m.startswith("c") for m in args.methods):
            graphs["c"] = center_logits(graphs[""], xc, progress=False)
        s_maxes = {k: calibrate(g, xc, progress=False)
                   for k, g in graphs.items()}
        xct = torch.from_numpy(xc)
        codes = CODES if args.codes is None else [
            (int(c.split(":")[0]), float(c.split(":")[1]))
            for c in args.codes]
        for T in dict.fromkeys(T for T, _ in codes) if args.b_grid else ():
            for B in args.b_grid:
                code = Code(B, T)
                acc, _ = accuracy(lower(graphs[""], s_maxes[""], B, T),
                                  graphs[""], s_maxes[""], xt, yt)
                err = logit_error(graphs[""], s_maxes[""], code, xct)
                bs.append((name, T, B, ann_acc, acc, err))
                log(f"B-SWEEP {name} T={T} B={B}: calibration error "
                    f"{err:.4f}, drop {100 * (ann_acc - acc):+.2f} pp")
        for T, B in codes:
            code = Code(B, T)
            check = validate(graphs[""], s_maxes[""], code, xt[:500], log)
            checks.append((name, T, B, check))
            att = attribute(graphs[""], s_maxes[""], code,
                            torch.from_numpy(xt[:1000]))
            where.append((name, T, B, att))
            for method in args.methods:
                centred = method.startswith("c")
                graph = graphs["c" if centred else ""]
                t0 = time.perf_counter()
                s = scales_for(method[1:] if centred else method, graph,
                               s_maxes["c" if centred else ""], xct, code,
                               args, log)
                took = time.perf_counter() - t0
                acc, _ = accuracy(lower(graph, s, B, T), graph, s, xt, yt)
                err_c = logit_error(graph, s, code, xct)
                err_t = logit_error(graph, s, code,
                                    torch.from_numpy(xt[:2000]))
                rows.append((name, T, B, method, ann_acc, acc, err_c, err_t,
                             took))
                log(f"RESULT {name} T={T} B={B} {method}: acc {acc:.4f} "
                    f"drop {100 * (ann_acc - acc):+.2f} pp, error calib "
                    f"{err_c:.4f} test {err_t:.4f} ({took:.0f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.log").write_text("\n".join(lines) + "\n")
    write_results(args, rows, checks, where, bs)


def write_results(args, rows, checks, where, bs) -> None:
    """``<name>.md``: the command, the machine, the tables."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cmd = "OMP_NUM_THREADS=1 python benchmarks/lowt_calibration.py " + \
        " ".join(sys.argv[1:])
    out = [f"Command: `{cmd}`  ",
           f"Machine: {cpu}, one thread, Python "
           f"{platform.python_version()}, torch {torch.__version__}, "
           f"{time.strftime('%Y-%m-%d')}", "",
           "## Accuracy (engine fixed, full test split)", "",
           "Drop = ANN accuracy - SNN accuracy (pp; negative: the SNN is "
           "better). Readout error = squared error of the quantised "
           "model's logits against the float graph's over their mean "
           "square, on the calibration samples and on the first 2000 "
           "test samples. Time: choosing the scales (one thread).", "",
           "| model | T | B | method | ANN acc | SNN acc | drop (pp) | "
           "readout error calib | readout error test | time (s) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for name, T, B, m, a, acc, ec, et, took in rows:
        out.append(f"| {name} | {T} | {B} | {m} | {a:.2%} | {acc:.2%} | "
                   f"{100 * (a - acc):+.2f} | {ec:.4f} | {et:.4f} | "
                   f"{took:.0f} |")
    out += ["", "## The quantised model against Engine(net, 'float')", "",
            "Max scales, the first 500 test samples (all of digits' 397). "
            "`plan weights`: the graph with the Plan's dequantised 8-bit "
            "weights; `real weights`: the graph's own.", "",
            "| model | T | B | max abs diff (plan weights) | relative | "
            "samples with any diff > 1e-9 rel | argmax agreement | max abs "
            "diff (real weights) | argmax agreement (real weights) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, T, B, c in checks:
        out.append(f"| {name} | {T} | {B} | {c['max_abs']:.2g} | "
                   f"{c['rel']:.2g} | {c['rows_differ']:.2%} | "
                   f"{c['argmax']:.2%} | {c['real_max_abs']:.3g} | "
                   f"{c['real_argmax']:.2%} |")
    out += ["", "## Where the error is (max scales)", "",
            "Readout error (as above, first 1000 test samples) with one "
            "code switched on, everything else exact.", ""]
    keys = []
    for _, _, _, att in where:
        keys += [k for k in att if k not in keys]
    for name in dict.fromkeys(w[0] for w in where):
        sub = [w for w in where if w[0] == name]
        out += [f"### {name}", "",
                "| code | " + " | ".join(
                    f"T={T}, B={B}" for _, T, B, _ in sub) + " |",
                "|---|" + "---|" * len(sub)]
        for k in dict.fromkeys(k for w in sub for k in w[3]):
            out.append(f"| {k} | " + " | ".join(
                f"{w[3][k]:.4f}" for w in sub) + " |")
        out.append("")
    if bs:
        out += ["## B at fixed T (max scales)", "",
                "Readout error of the quantised model on the calibration "
                "samples, and the engine's (fixed) test drop.", "",
                "| model | T | B | readout error calib | drop (pp) |",
                "|---|---|---|---|---|"]
        for name, T, B, a, acc, err in bs:
            out.append(f"| {name} | {T} | {B} | {err:.4f} | "
                       f"{100 * (a - acc):+.2f} |")
        out.append("")
    (args.out / f"{args.name}.md").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
