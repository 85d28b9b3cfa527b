"""Golden models of a Plan, one sample at a time, in numpy.

:func:`golden_float` is the closed form of the ``floating_pt`` models: Q of
each layer's integrated input and the closed-form WOSS attention.
:func:`golden_fixed` runs the integer functions of
:mod:`lava_spiked.fixed` step by step over each window, as the ``fixed_pt``
models do: :func:`lava_spiked.fixed.integrate_layer` per layer and
:func:`lava_spiked.attention.attention_fixed` per attention. Both read the
Plan only, and return every layer's spikes besides the readout.
"""
import dataclasses
import typing as ty

import numpy as np

from lava_spiked import fixed, phase
from lava_spiked.attention import attention_fixed, attention_float
from lava_spiked.plan import Plan


class Golden(ty.NamedTuple):
    """One sample through a golden model.

    Attributes
    ----------
    readout : numpy.ndarray
        Decoded readout (the logits), shaped as the readout layer.
    state : numpy.ndarray
        Readout membrane in state units (``readout / sigma * 2**16``), flat;
        an integer in the fixed model.
    spikes : dict
        Layer name -> (fire steps, signs), flat, for the input and every
        spiking layer (-1 = silent); attention logits and softmax excluded.
    saturated : int
        Saturation events of the integer state (0 in the float model).
    """

    readout: np.ndarray
    state: np.ndarray
    spikes: ty.Dict[str, ty.Tuple[np.ndarray, np.ndarray]]
    saturated: int


def golden_float(plan: Plan, sample: ty.Any) -> Golden:
    """One sample under ``floating_pt``."""
    B, T = plan.B, plan.T
    first = plan[plan.input]
    # spike values in units of each layer's sigma
    code = phase.quantize(np.asarray(sample, float).ravel() / first.scale,
                          B, T)
    val, spikes = {first.name: code.value}, {first.name: (code.step,
                                                          code.sign)}
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
            spikes[layer.name] = (out.step.ravel(), out.sign.ravel())
            continue
        a = layer.bias.copy()
        for syn in layer.synapses:
            w = fixed.dequantize_weights(syn.weight, layer.weight_exp)
            a = a + dataclasses.replace(syn, weight=w).apply(
                val[syn.src][None])[0]
        if layer.kind == "readout":
            return Golden((a * layer.scale).reshape(layer.shape),
                          a * 2.0 ** fixed.STATE_FRAC_BITS, spikes, 0)
        code = phase.quantize(a, B, T, unipolar=layer.kind == "relu")
        val[layer.name] = code.value
        spikes[layer.name] = (code.step, code.sign)
    raise AssertionError("no readout layer")


def golden_fixed(plan: Plan, sample: ty.Any) -> Golden:
    """One sample under ``fixed_pt``, bit for bit."""
    B, T = plan.B, plan.T
    thresholds = fixed.threshold_table(B, T)
    first = plan[plan.input]
    state, saturated = fixed.to_state(np.asarray(sample, float).ravel() /
                                      first.scale)
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
            saturated += res.n_saturated
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
        saturated += res.n_saturated
        if layer.kind == "readout":
            return Golden((res.v * 2.0 ** -fixed.STATE_FRAC_BITS *
                           layer.scale).reshape(layer.shape), res.v, spikes,
                          saturated)
        spikes[layer.name] = (res.step, res.sign)
    raise AssertionError("no readout layer")
