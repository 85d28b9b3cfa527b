"""Golden models of a Plan, one sample at a time, in numpy.

:func:`golden_float` is the closed form of the ``floating_pt`` models: Q of
each layer's integrated input and the closed-form WOSS attention.
:func:`golden_fixed` runs the integer functions of
:mod:`lava_spiked.numerics.fixed` step by step over each window, as the
``fixed_pt`` models do: :func:`lava_spiked.numerics.fixed.integrate_layer` per
layer and :func:`lava_spiked.golden.attention.attention_fixed` per
attention. Both read the Plan only, and return every layer's spikes besides
the readout.

Clipping
--------
The phase code's largest value is a population's scale sigma: any
``|A| >= c_B * sigma`` fires at step 0 and decodes to sigma. A neuron is
**clipped** in a sample when, at the close of its input window, its
normalised value lies strictly beyond that range, ``|A| / sigma > 1``:

- ``fixed_pt``: the integer membrane (or, for the encoder, its input's
  state ``to_state(x / sigma)``) ``|v| > 2**16``, i.e. more than one sigma
  in state units (a value at exactly sigma, as max calibration puts one
  neuron per population, is not clipped);
- ``floating_pt``: the normalised membrane (encoder: ``x / sigma``)
  ``|v| > 1.0``;
- a unipolar (ReLU) neuron clips only above, ``v > 2**16`` (``v > 1``);
- an activation neuron clips where its pre-activation membrane lies beyond
  its own scale (the stage clips it there before applying ``f``) or its
  output beyond sigma; a LayerNorm neuron where its normalised output lies
  beyond sigma;
- a NormalizedPhaseNeuron (attention output) is judged after its row-sum
  division; the attention logits are PhaseNeurons and count; the WOSS
  softmax (shifted logits <= 0) never clips; the readout reports its
  membrane and never clips.

Every backend counts the same thing per population (:func:`clip_sizes`
names them): the Lava models in their ``clip_count`` Var, the golden
models in :attr:`Golden.clipped`, the engine in
:attr:`lava_spiked.engine.EngineResult.clipped`. A clipped value is not
an error (with max-of-32 calibration a few percent of activations of
ordinary data clip), so :func:`warn_clipped` warns only above
:data:`CLIP_WARN_FRACTION`.
"""
import dataclasses
import typing as ty
import warnings

import numpy as np

from lava_spiked.golden.attention import attention_fixed, attention_float
from lava_spiked.numerics import fixed, nonlinear, phase
from lava_spiked.plan import ActivationStage, Layer, Plan

#: Clipped fraction (clipped neurons / (neurons x samples)) of a population
#: in one call above which :meth:`lava_spiked.engine.Engine.__call__` and
#: :meth:`lava_spiked.network.SpikingNetwork.infer` warn. Measured on the
#: bundled DigitsViT (``load_default()``), engine fixed and float modes
#: alike, over its 397-sample test split: calibrated with max on the whole
#: 200-sample calibration split, the largest population fraction is 0.56 %
#: (``head.input``; every other population <= 0.12 %, the input 0); with
#: max-of-32 calibration (samples 0-31, 32-63, 64-95 of that split) it is
#: 2.8 %, 1.3 % and 1.8 % (``head.input`` again; the others <= 0.4 %).
#: That is what max calibration predicts: a new sample exceeds the maximum
#: of n exchangeable ones with probability 1 / (n + 1), 3 % for n = 32.
#: 10 % lies 3.5x above the worst measured (and would take calibration on
#: fewer than 10 samples); the calibration split at 20x its range clips
#: 51 % of the encoder. Small batches of small populations are noisy (one
#: neuron of 8 in one sample is 12.5 %), so a call on one or two samples
#: of a tiny model may warn on data that clips only normally. The figures
#: come from ``benchmarks/clipping.py`` (``benchmarks/results/clipping.md``).
CLIP_WARN_FRACTION = 0.1


def clip_sizes(plan: Plan) -> ty.Dict[str, int]:
    """Neurons per population that can clip, in Plan order: the input,
    every spiking layer and every attention's logits (before its output);
    the readout excluded."""
    sizes = {}
    for layer in plan.layers:
        op = plan.attention_of(layer.name)
        if op is not None:
            sizes[op.logits] = int(np.size(op.qk))
        if layer.kind != "readout":
            sizes[layer.name] = int(layer.size)
    return sizes


def warn_clipped(clipped: ty.Mapping[str, ty.Any], sizes: ty.Mapping[str, int],
                 samples: int, stacklevel: int = 3) -> ty.Dict[str, float]:
    """Warn once (a RuntimeWarning) naming every population whose clipped
    fraction ``clipped / (neurons * samples)`` exceeds
    :data:`CLIP_WARN_FRACTION`; return those fractions."""
    over = {}
    for name, count in clipped.items():
        total = sizes[name] * samples
        frac = float(count) / total if total else 0.0
        if frac > CLIP_WARN_FRACTION:
            over[name] = frac
    if over:
        listed = ", ".join(f"{k} {v:.1%}" for k, v in over.items())
        warnings.warn(
            f"inputs beyond the calibrated range: clipped fraction above "
            f"{CLIP_WARN_FRACTION:.0%} in {listed} (values beyond a "
            "population's scale sigma decode to sigma); recalibrate on data "
            "like these", RuntimeWarning, stacklevel=stacklevel)
    return over


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
    clipped : dict
        Population name (those of :func:`clip_sizes`) -> clipped neurons
        (see the module docstring).
    """

    readout: np.ndarray
    state: np.ndarray
    spikes: ty.Dict[str, ty.Tuple[np.ndarray, np.ndarray]]
    saturated: int
    clipped: ty.Dict[str, int]


def _clipped(v: np.ndarray, one: float, unipolar: bool = False) -> int:
    """Elements of a normalised membrane beyond one sigma (``one``)."""
    v = np.asarray(v)
    return int(np.count_nonzero((v if unipolar else np.abs(v)) > one))


def stage_float(layer: Layer, v: np.ndarray) -> np.ndarray:
    """The window-close stage of a staged layer under ``floating_pt``:
    membranes ``v`` (..., size) in units of its membrane scale -> values in
    units of sigma."""
    st = layer.stage
    if isinstance(st, ActivationStage):
        return nonlinear.activation_float(v, st.fn, st.pre_scale, layer.scale)
    n = layer.shape[-1]
    y = nonlinear.layer_norm_float(
        np.reshape(v, np.shape(v)[:-1] + (-1, n)),
        st.eps / st.pre_scale ** 2, layer.scale.reshape(-1, n))
    return y.reshape(np.shape(v))


def stage_fixed(layer: Layer, v: np.ndarray
                ) -> ty.Tuple[np.ndarray, np.ndarray]:
    """The window-close stage of a staged layer under ``fixed_pt``: integer
    membranes (..., size) -> state units of sigma, and the saturated
    elements per leading index (...)."""
    st = layer.stage
    lead = np.shape(v)[:-1]
    if isinstance(st, ActivationStage):
        y, _ = fixed.activation(v, st.knots, st.row)
        return y, np.zeros(lead, np.int64)
    n = layer.shape[-1]
    y, n_sat = fixed.layer_norm(
        np.reshape(v, lead + (-1, n)), st.eps_state,
        st.gain.reshape(-1, n), st.gain_shift)
    return y.reshape(np.shape(v)), n_sat.sum(-1)


def _valid(plan: Plan, attention_mask: ty.Any) -> ty.Optional[np.ndarray]:
    """One sample's token mask (N,) bool, checked, or None."""
    m = plan.check_mask(None if attention_mask is None else
                        np.asarray(attention_mask)[None], 1)
    return None if m is None else m[0]


def _key_mask(op, valid: ty.Optional[np.ndarray]) -> np.ndarray:
    """An attention's mask with this sample's padded keys."""
    if not op.key_mask:
        return op.mask
    return op.mask | ~valid[None, None, :]


def _silence(layer: Layer, valid: ty.Optional[np.ndarray],
             *arrays: np.ndarray) -> ty.Tuple[np.ndarray, ...]:
    """Flat per-neuron arrays with a token-masked layer's padded tokens
    set to 0 (silent)."""
    if not layer.token_mask:
        return arrays
    keep = np.repeat(valid, layer.size // len(valid))
    return tuple(np.where(keep, a, 0) for a in arrays)


def _pool(plan: Plan, readout: np.ndarray,
          valid: ty.Optional[np.ndarray]) -> np.ndarray:
    return plan.pool(readout[None], None if valid is None else
                     valid[None])[0]


def golden_float(plan: Plan, sample: ty.Any,
                 attention_mask: ty.Any = None) -> Golden:
    """One sample under ``floating_pt`` (``attention_mask``: its token
    mask (N,), for a Plan that takes one)."""
    B, T = plan.B, plan.T
    valid = _valid(plan, attention_mask)
    first = plan[plan.input]
    # spike values in units of each layer's sigma
    u = np.asarray(sample, float).ravel() / first.scale
    code = phase.quantize(u, B, T)
    val, spikes = {first.name: code.value}, {first.name: (code.step,
                                                          code.sign)}
    clipped = {first.name: _clipped(u, 1.0)}
    for layer in plan.layers[1:]:
        op = plan.attention_of(layer.name)
        if op is not None:
            shapes = [plan[n].shape for n in (op.x, op.y, op.v)]
            xs, ys, vs = (val[n].reshape(s) for n, s in zip(
                (op.x, op.y, op.v), shapes))
            qk = fixed.dequantize_weights(op.qk, op.qk_exp)
            av = fixed.dequantize_weights(op.av, op.av_exp)
            res = attention_float(
                xs, ys, vs, qk, op.logit_bias * op.logit_scale,
                op.logit_scale, _key_mask(op, valid), av,
                layer.scale.reshape(layer.shape), B, T)
            clipped[op.logits] = _clipped(res.logit_membrane, 1.0)
            clipped[layer.name] = _clipped(res.out_membrane, 1.0)
            val[layer.name] = res.out.value.ravel() / layer.scale
            spikes[layer.name] = (res.out.step.ravel(),
                                  res.out.sign.ravel())
            continue
        a = layer.bias.copy()
        for syn in layer.synapses:
            w = fixed.dequantize_weights(syn.weight, layer.weight_exp +
                                         syn.shift[:, None])
            a = a + dataclasses.replace(syn, weight=w).apply(
                val[syn.src][None])[0]
        if layer.kind == "readout":
            return Golden(_pool(plan, (a * layer.scale).reshape(layer.shape),
                                valid),
                          a * 2.0 ** fixed.STATE_FRAC_BITS, spikes, 0,
                          clipped)
        if layer.stage is not None:
            y = stage_float(layer, a)
            clipped[layer.name] = int(np.count_nonzero(
                (np.abs(y) > 1.0) | ((np.abs(a) > 1.0) &
                                     (layer.kind == "activation"))))
            a = y
        else:
            clipped[layer.name] = _clipped(a, 1.0, layer.kind == "relu")
        code = phase.quantize(a, B, T, unipolar=layer.kind == "relu")
        value, step, sign = _silence(layer, valid, code.value, code.step + 1,
                                     code.sign)
        val[layer.name] = value
        spikes[layer.name] = (step - 1, sign)
    raise AssertionError("no readout layer")


def golden_fixed(plan: Plan, sample: ty.Any,
                 attention_mask: ty.Any = None) -> Golden:
    """One sample under ``fixed_pt``, bit for bit (``attention_mask``: its
    token mask (N,), for a Plan that takes one)."""
    B, T = plan.B, plan.T
    valid = _valid(plan, attention_mask)
    thresholds = fixed.threshold_table(B, T)
    first = plan[plan.input]
    state, saturated = fixed.to_state(np.asarray(sample, float).ravel() /
                                      first.scale)
    spikes = {first.name: fixed.first_spike(state, thresholds, False)}
    one = 1 << fixed.STATE_FRAC_BITS  # one sigma in state units
    clipped = {first.name: _clipped(state, one)}
    for layer in plan.layers[1:]:
        op = plan.attention_of(layer.name)
        if op is not None:
            (xs, xg), (ys, yg), (vs, vg) = [
                [a.reshape(plan[n].shape) for a in spikes[n]]
                for n in (op.x, op.y, op.v)]
            res = attention_fixed(xs, xg, ys, yg, vs, vg, op.qk, op.qk_exp,
                                  op.logit_bias, op.logit_scale,
                                  _key_mask(op, valid), op.av, op.av_exp, B,
                                  T, y_transposed=True, qk_bits=op.qk_bits,
                                  v_bits=op.v_bits,
                                  out_gain_bits=layer.gain_bits,
                                  acc_bits=op.acc_bits,
                                  woss_bits=op.woss_bits)
            saturated += res.n_saturated
            clipped[op.logits] = _clipped(res.logit_state, one)
            clipped[layer.name] = _clipped(res.out_state, one)
            spikes[layer.name] = tuple(a.ravel() for a in fixed.first_spike(
                res.out_state, thresholds, False))
            continue

        scaled = [dataclasses.replace(syn, weight=syn.scaled())
                  for syn in layer.synapses]

        def current(j: int, layer=layer, scaled=scaled) -> np.ndarray:
            total = np.zeros(layer.size, np.int64)
            for syn in scaled:
                step, sign = spikes[syn.src]
                total += syn.apply((sign * (step == j))[None])[0]
            return total

        pre = []  # the membrane a stage saw

        def stage(v, layer=layer):
            pre.append(v)
            y, n_sat = stage_fixed(layer, v)
            return y, int(n_sat)

        res = fixed.integrate_layer(
            current, layer.size, layer.weight_exp, layer.bias, B, T,
            unipolar=layer.kind == "relu",
            stage=stage if layer.stage is not None else None,
            gain_bits=layer.gain_bits, acc_bits=layer.acc_bits)
        saturated += res.n_saturated
        if layer.kind == "readout":
            return Golden(_pool(plan, plan.decode_readout(
                res.v.reshape(layer.shape)), valid), res.v, spikes,
                saturated, clipped)
        clipped[layer.name] = _clipped(res.v, one, layer.kind == "relu")
        if layer.kind == "activation":
            clipped[layer.name] = int(np.count_nonzero(
                (np.abs(res.v) > one) | (np.abs(pre[0]) > one)))
        step, sign = _silence(layer, valid, res.step + 1, res.sign)
        spikes[layer.name] = (step - 1, sign)
    raise AssertionError("no readout layer")

