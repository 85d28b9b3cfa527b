"""Lowering: a calibrated graph quantised and scheduled into a
:class:`~lava_spiked.plan.plan.Plan` (:func:`lower`); see
:mod:`lava_spiked.plan.plan` for what it makes.
"""
import dataclasses
import typing as ty
import warnings

import numpy as np

from lava_spiked.numerics import fixed, nonlinear
from lava_spiked.plan import loihi2
from lava_spiked.plan.layers import (MASK, TARGETS, ActivationStage, Layer,
                                     LoweredAttention, NormStage,
                                     RuntimeInput, Stage, Synapse, Window)
from lava_spiked.plan.plan import Plan
from lava_spiked.validation import check_base, check_steps


def lower(graph: ty.Any, sigmas: ty.Dict[str, np.ndarray], B: float,
          T: int, target: str = "lava") -> Plan:
    """Quantise and schedule a calibrated graph into a Plan.

    Parameters
    ----------
    graph : lava_spiked.capture.Graph
        Populations with real-unit synapses.
    sigmas : dict
        From :func:`lava_spiked.calibration.calibrate`.
    B, T : float, int
        Base and window length of the phase code.
    target : {'lava', 'loihi2'}
        ``'loihi2'``: conformant integer formats where they exist
        (:func:`lava_spiked.plan.loihi2.conform`).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    B, T = check_base(B), check_steps(T)
    usable = fixed.usable_steps(B, T)
    if usable < T:
        warnings.warn(
            f"at B = {B} the integer tables of fixed_pt keep only {usable} of "
            f"the T = {T} steps (later gains round to 0 or thresholds "
            f"collide): use T <= {usable} or a smaller B", RuntimeWarning,
            stacklevel=3)
    windows = _schedule(graph, T)
    attention = {op.out: op for op in graph.attention}
    layers, plan_attention = [], []
    for pop in graph.populations:
        sigma = sigmas[pop.name]
        stage = _stage(pop, sigma, sigmas.get(pop.name + ":pre"))
        membrane = sigma if stage is None else np.broadcast_to(
            stage.pre_scale, sigma.shape)
        # exponents per output channel: a shared one would round to 0 the
        # weights of a synapse that is small next to another into the same
        # layer (a FFN output next to the residual), and the rows of one
        # synapse that are small next to an outlier channel's (MiniLM)
        quantized = [fixed.quantize_rows(
            syn.weight * _source_scale(syn, sigmas[syn.src])[None, :] /
            _channel_scale(syn, membrane)[:, None]) for syn in pop.synapses]
        exp = min((int(e.min()) for _, e in quantized if len(e)), default=0)
        layers.append(Layer(
            pop.name, pop.shape, pop.kind, sigma, pop.bias / membrane,
            [dataclasses.replace(syn, weight=d, shift=e - exp)
             for syn, (d, e) in zip(pop.synapses, quantized)], exp,
            windows[pop.name], stage, pop.token_mask))
        op = attention.get(pop.name)
        if op is not None:
            plan_attention.append(_lower_attention(
                op, graph, sigmas, windows[op.x].fire + 1))
    out = windows[graph.output]
    # a sample ends when the readout has reported; the period must hold an
    # integration and a fire window
    plan = Plan(B, T, layers, plan_attention, graph.input, graph.output,
                max(out.fire + 1, 2 * T), graph.ann_macs,
                [RuntimeInput(MASK, (graph.tokens,))] if graph.tokens else [],
                graph.mean_pool)
    return loihi2.conform(plan) if target == "loihi2" else plan


def _stage(pop, sigma: np.ndarray,
           pre: ty.Optional[np.ndarray]) -> ty.Optional[Stage]:
    """The window-close stage of a population of a staged kind, from its
    output scales ``sigma`` and membrane scales ``pre``."""
    if pop.kind == "activation":
        knots, row = nonlinear.knot_table(pop.fn, pre, sigma)
        return ActivationStage(pop.fn, pre, knots, row)
    if pop.kind == "layernorm":
        pre_scale = float(pre.max())  # one per population (calibrate)
        c = nonlinear.layer_norm_constants(pop.shape[-1], pop.eps, pre_scale,
                                           sigma)
        return NormStage(pre_scale, float(pop.eps), c.eps_state, c.gain,
                         c.gain_shift)
    return None


def _source_scale(syn: Synapse, sigma: np.ndarray) -> np.ndarray:
    """Sigma of the source per input channel k (shared by all rows)."""
    first = np.argmax(syn.rows >= 0, axis=0)
    ids = syn.rows[first, np.arange(syn.rows.shape[1])]
    return np.where(ids >= 0, sigma[np.maximum(ids, 0)], 1.0)


def _channel_scale(syn: Synapse, sigma: np.ndarray) -> np.ndarray:
    """Sigma of the destination per output channel c."""
    c = syn.weight.shape[0]
    per_c = np.ones(c)
    o = np.flatnonzero(syn.out >= 0)
    per_c[syn.out[o] % c] = sigma[o]
    return per_c


def _lower_attention(op, graph, sigmas, logit_start: int) -> LoweredAttention:
    shape = lambda name: graph[name].shape  # noqa: E731
    sx = sigmas[op.x].reshape(shape(op.x))
    sy = sigmas[op.y].reshape(shape(op.y))
    sv = sigmas[op.v].reshape(shape(op.v))
    s_out = sigmas[op.out].reshape(shape(op.out))
    s_logit = sigmas[op.logits].reshape(op.coef.shape)
    # row i of x and column j of y: sigma is shared along the contracted
    # axis, and v's along its rows
    (qk,), qk_exp = fixed.quantize_weights(
        op.coef * sx[..., :, :1] * sy[..., :1, :] / s_logit)
    (av,), av_exp = fixed.quantize_weights(sv[..., :1, :] / s_out)
    return LoweredAttention(op.x, op.y, op.v, op.out, qk, qk_exp, av, av_exp,
                            s_logit, op.bias / s_logit, op.mask, logit_start,
                            op.key_mask)


def _schedule(graph, T: int) -> ty.Dict[str, Window]:
    win = {graph.input: Window(-T, 0)}
    attention = {op.out: op for op in graph.attention}
    operands = {}
    for op in graph.attention:
        operands[op.x] = operands[op.y] = (op.x, op.y)
    for pop in graph.populations[1:]:
        if pop.name in win:
            continue
        if pop.name in attention:
            op = attention[pop.name]
            logits = win[op.x].fire + 1
            win[pop.name] = Window(logits + 2 * T + 1, logits + 3 * T + 1)
            if win[op.v].fire > logits + T:
                raise AssertionError("v fires after the softmax")
            continue
        group = operands.get(pop.name, (pop.name,))
        start = max(win[syn.src].fire + 1 for p in group
                    for syn in graph[p].synapses) if any(
            graph[p].synapses for p in group) else 0
        for p in group:
            win[p] = Window(start, start + T)
    return win
