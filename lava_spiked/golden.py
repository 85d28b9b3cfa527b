"""Golden models of a Plan, one sample at a time, in numpy.

:func:`golden_float` is the closed form of the ``floating_pt`` models: Q of
each layer's integrated input and the closed-form WOSS attention.
:func:`golden_fixed` runs the integer functions of
:mod:`lava_spiked.fixed` step by step over each window, as the ``fixed_pt``
models do: :func:`lava_spiked.fixed.integrate_layer` per layer and
:func:`lava_spiked.attention.attention_fixed` per attention. Both read the
Plan only.
"""
import dataclasses
import typing as ty

import numpy as np

from lava_spiked import fixed, phase
from lava_spiked.attention import attention_fixed, attention_float
from lava_spiked.plan import Plan


def golden_float(plan: Plan, sample: ty.Any) -> np.ndarray:
    """Decoded readout of one sample under ``floating_pt``."""
    B, T = plan.B, plan.T
    first = plan[plan.input]
    # spike values in units of each layer's sigma
    val = {first.name: phase.quantize(
        np.asarray(sample, float).ravel() / first.scale, B, T).value}
    for layer in plan.layers[1:]:
        op = plan.attention_of(layer.name)
        if op is not None:
            shapes = [plan[n].shape for n in (op.x, op.y, op.v)]
            *_, out = attention_float(
                *(val[n].reshape(s) for n, s in zip((op.x, op.y, op.v),
                                                   shapes)),
                fixed.dequantize_weights(op.qk, op.qk_exp),
                op.logit_bias * op.logit_scale, op.logit_scale, op.mask,
                fixed.dequantize_weights(op.av, op.av_exp),
                layer.scale.reshape(layer.shape), B, T)
            val[layer.name] = out.value.ravel() / layer.scale
            continue
        a = layer.bias.copy()
        for syn in layer.synapses:
            w = fixed.dequantize_weights(syn.weight, layer.weight_exp)
            a = a + dataclasses.replace(syn, weight=w).apply(
                val[syn.src][None])[0]
        if layer.kind == "readout":
            return (a * layer.scale).reshape(layer.shape)
        val[layer.name] = phase.quantize(a, B, T,
                                         unipolar=layer.kind == "relu").value
    raise AssertionError("no readout layer")


def golden_fixed(plan: Plan, sample: ty.Any) -> np.ndarray:
    """Decoded readout of one sample under ``fixed_pt``, bit for bit."""
    B, T = plan.B, plan.T
    thresholds = fixed.threshold_table(B, T)
    first = plan[plan.input]
    state, _ = fixed.to_state(np.asarray(sample, float).ravel() / first.scale)
    spikes = {first.name: fixed.first_spike(state, thresholds, False)}
    for layer in plan.layers[1:]:
        op = plan.attention_of(layer.name)
        if op is not None:
            (xs, xg), (ys, yg), (vs, vg) = [
                [a.reshape(plan[n].shape) for a in spikes[n]]
                for n in (op.x, op.y, op.v)]
            res = attention_fixed(xs, xg, ys, yg, vs, vg, op.qk, op.qk_exp,
                                  op.logit_bias, op.logit_scale, op.mask,
                                  op.av, op.av_exp, B, T, y_transposed=True)
            spikes[layer.name] = tuple(a.ravel() for a in fixed.first_spike(
                res.out_state, thresholds, False))
            continue

        def current(j: int, layer=layer) -> np.ndarray:
            total = np.zeros(layer.size, np.int64)
            for syn in layer.synapses:
                step, sign = spikes[syn.src]
                total += syn.apply((sign * (step == j))[None])[0]
            return total

        res = fixed.integrate_layer(current, layer.size, layer.weight_exp,
                                    layer.bias, B, T,
                                    unipolar=layer.kind == "relu")
        if layer.kind == "readout":
            return (res.v * 2.0 ** -fixed.STATE_FRAC_BITS * layer.scale
                    ).reshape(layer.shape)
        spikes[layer.name] = (res.step, res.sign)
    raise AssertionError("no readout layer")
