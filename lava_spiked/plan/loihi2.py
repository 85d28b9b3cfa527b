"""Which numbers of a Plan do not fit Loihi 2's fixed-point conventions,
and a lowering that makes them fit.

``check(plan)`` lists every quantity outside the conventions of Lava's
bit-accurate models and lava-dl's Loihi 2 export, with the layer, the
value and the source of the limit. With Lava's formats (``lower(...,
target='lava')``, the default) Plans do not fit: the phase neuron sums its
window in a 48-bit accumulator with 13-bit gains (4096 at step 0) and
applies the layer's weight exponent itself, the spike x spike products
carry 32-bit currents, and a LayerNorm stage sums the squared deviations
of a token in 64 bits. ``conform(plan)`` (``target='loihi2'``) gives every
window sum, product current and trace or gain table a 24-bit or 12-bit
format that cannot overflow, keeping the closed form that the engine
computes (Lava and the engine stay bit-exact); what it leaves, ``check``
still lists: LayerNorm's sums. A wide fan-in fits Dense's 16-bit output
in a conformant Plan because Lava builds it as several connections into
the neuron (:func:`connections`), each carrying at most 16 bits a step,
and no synapse shift exceeds :data:`MAX_SHIFT`, so that one spike's
current fits too. Residual sources that wait longer
than 62 steps fit either way: Lava builds their delay as a chain of
SpikeDelays of at most 62 steps each, and
:func:`lava_spiked.plan.resources.resources` counts the relay neurons.

Sources of the limits (paths in lava-nc 0.10.0 / lava-dl 0.6.0):

- 24-bit neuron state: ``lava/proc/lif/models.py`` (``PyLifModelBitAcc``:
  u and v are 24-bit signed; v saturates, u wraps).
- 24-bit graded spikes: the bit-accurate neurons declare ``s_out``
  ``precision=24`` (``lava/proc/lif/models.py``, ``lava/proc/sdn/models.py``).
- Delays at most 62 steps: ``lava/lib/dl/netx/utils.py`` ("Max delay
  exceeded limit of 62"), ``netx/blocks/process.py`` (``max_delay=62``).
- 8-bit weight mantissas, even values in [-256, 254] in MIXED sign mode:
  ``lava/utils/weightutils.py`` (``clip_weights``, ``truncate_weights``).
- 12-bit factors (decays 0..4095): ``lava/proc/lif/models.py``.
- 16-bit synaptic output per step: the bit-accurate ``Dense`` and
  ``Sparse`` models declare ``a_out`` ``precision=16``
  (``lava/proc/dense/models.py``, ``lava/proc/sparse/models.py``; declared,
  not enforced by Lava's CPU models).
- Weight exponent: no public document gives Loihi 2's range; Lava's models
  accept any integer. The only documented range is Loihi 1's signed 4 bits,
  -8..7 (NxSDK; brian2_loihi ``loihi_synapses.py``). Exponents outside it
  are reported as unverified, not as certain violations.

Not checked: the activation stage's knot lookup (a table of
``fixed.KNOTS`` entries per distinct pair of scales, interpolated with one
multiply) and the LayerNorm stage's division-free inverse square root
would run in Loihi 2's programmable neuron microcode, whose instruction
set and memory limits have no public document.
"""
import dataclasses
import typing as ty

import numpy as np

from lava_spiked.numerics import fixed

MAX_DELAY = 62
DENSE_OUT_MAX = (1 << 15) - 1  # bit-accurate Dense/Sparse a_out: 16 bits
FACTOR_MAX = (1 << 12) - 1
LOIHI1_WEIGHT_EXP = (-8, 7)
#: the largest synapse shift with which one spike's current (an 8-bit
#: mantissa, at most 254) stays within Dense's 16-bit output
MAX_SHIFT = int(np.log2(DENSE_OUT_MAX // (2 * fixed.WEIGHT_MANT_MAX)))


@dataclasses.dataclass
class Violation:
    """One quantity that does not fit, where, and by how much."""

    where: str
    quantity: str
    value: float
    limit: float
    certain: bool = True

    def __str__(self) -> str:
        note = "" if self.certain else " (unverified limit)"
        return (f"{self.where}: {self.quantity} = {self.value:,.0f}, limit "
                f"{self.limit:,.0f}{note}")


def check(plan: ty.Any) -> ty.List[Violation]:
    """Every quantity of ``plan`` (or a network's ``.plan``) outside the
    Loihi 2 conventions above, in layer order."""
    plan = getattr(plan, "plan", plan)
    state_max = (1 << (fixed.STATE_BITS - 1)) - 1
    gain0 = int(fixed.gain_table(plan.B, plan.T)[0])
    found = []
    # any 12-bit trace or gain table
    full = fixed.GAIN_FRAC_BITS
    if gain0 > FACTOR_MAX and (any(
            full in (op.qk_bits, op.v_bits, op.woss_bits)
            for op in plan.attention) or any(
            (layer.synapses or plan.attention_of(layer.name)) and
            layer.gain_bits == full for layer in plan.layers)):
        found.append(Violation(
            "gain table", "step-0 gain B**0 in 12-bit units", gain0,
            FACTOR_MAX))
    lo, hi = LOIHI1_WEIGHT_EXP
    for layer in plan.layers:
        if not layer.synapses:
            continue
        wide = max(_bound(part) for syn in layer.synapses
                   for _, part in connections(plan, syn))
        if wide > DENSE_OUT_MAX:
            found.append(Violation(
                layer.name, "per-step synaptic current of one connection",
                wide, DENSE_OUT_MAX))
        current = current_bound(layer)
        g0 = int(fixed.layer_gains(plan.B, plan.T, layer.gain_bits)[0])
        if current * g0 > state_max:
            found.append(Violation(
                layer.name, f"window accumulator ({layer.acc_bits}-bit in "
                "the PhaseNeuron)", current * g0, state_max))
        shifts = {int(e) for s in layer.synapses for e in s.shift}
        if layer.acc_bits > fixed.STATE_BITS:
            # the neuron scales the accumulator by 2**weight_exp
            exps = {layer.weight_exp + e for e in shifts}
            quantity = "weight exponent (neuron's plus the synapse's shift)"
        else:
            # conformant: the synapse applies its shift (Sparse's
            # weight_exp); the neuron shifts its 24-bit sum by
            # weight_exp - gain_bits when the window closes (rounding
            # right, or saturating left, counted)
            exps = shifts
            quantity = "weight exponent (the synapse's shift)"
        for exp in sorted(exps):
            if not lo <= exp <= hi:
                found.append(Violation(
                    layer.name, quantity, exp, hi if exp > hi else lo,
                    certain=False))
        if layer.kind == "layernorm":
            # sum over a token of squared deviations of 24-bit membranes
            n = layer.shape[-1]
            found.append(Violation(
                layer.name, "LayerNorm sum of squares (int64 in the stage)",
                float(n) * (2.0 * state_max) ** 2, state_max))
    for op in plan.attention:
        k, m = plan[op.x].shape[-1], plan[op.v].shape[-2]
        out_bits = plan[op.out].gain_bits
        current = "int32" if op.acc_bits > fixed.STATE_BITS else "24-bit"
        for name, w, n, exp, trace, gain in (
                (op.logits, op.qk, k, op.qk_exp, op.qk_bits, op.qk_bits),
                (op.out, op.av, m, op.av_exp, op.v_bits, out_bits)):
            w = int(np.abs(w).max())
            # a step's product current: up to 2n latched traces
            bound = w * 2 * n << trace
            if bound > state_max:
                found.append(Violation(
                    name, f"spike x spike product current ({current} in "
                    "TraceMatMul)", bound, state_max))
            # the window: n pairs, each a trace times a gain
            bound = w * n << (trace + gain)
            if bound > state_max:
                found.append(Violation(
                    name, f"window accumulator ({op.acc_bits}-bit in the "
                    "PhaseNeuron)", bound, state_max))
            # conformant: the neuron shifts its 24-bit sum when the
            # window closes (saturating, counted), as for the layers
            if op.acc_bits > fixed.STATE_BITS and not lo <= exp <= hi:
                found.append(Violation(
                    name, "weight exponent (applied in the neuron)", exp,
                    hi if exp > hi else lo, certain=False))
    return found


def conform(plan: ty.Any) -> ty.Any:
    """The Plan with each synaptic layer's window sum in a 24-bit
    accumulator, as Loihi 2's neuron state holds it.

    A layer whose largest per-step current is ``C`` (every source spiking
    at step 0, :func:`current_bound`) gets gains of
    ``b = min(11, floor(log2(STATE_MAX / C)))`` bits
    (:func:`lava_spiked.numerics.fixed.layer_gains`: the 12-bit table rounded
    half away from zero), so that no window, in any spike order, leaves 24 bits
    and every gain is a 12-bit factor (``2**b <= 2048``). The closed form
    is kept: the membrane is still ``W @ (sign * G[step])`` rounded once.
    The cost is the gains' rounding, at most half a unit of ``2**-b`` per
    input spike. First, a layer whose synapse shifts exceed
    :data:`MAX_SHIFT` by ``d`` raises its exponent by ``d``: the channels
    ``d - s`` bits below round their mantissas (:func:`_cap_shifts`).

    An attention's products get the same treatment: a logit sums at most
    ``K`` pairs, each its weight times the trace of the earlier spike and
    the gain of the later, so traces and gains share ``q`` bits with
    ``max|w| * K * 2**(2q)`` within 24 bits (which also bounds the
    per-step product current); the output sums at most ``M`` softmax
    spikes times V's trace, splitting the bits that
    ``max|w| * M * 2**(t + g)`` leaves between V's traces (``t``, one more
    where odd) and the output's gains (``g``). The WOSS softmax decodes
    logit spikes with 11-bit traces (its row sums keep 12-bit units). The
    LayerNorm stage keeps its format (see :func:`check`).

    Raises
    ------
    ValueError
        Naming a layer whose per-step current alone exceeds 23 bits
        (the neuron sums it whatever the connections).
    """
    layers = []
    state_max = (1 << (fixed.STATE_BITS - 1)) - 1
    for layer in plan.layers:
        if layer.synapses:
            layer = _cap_shifts(layer)
            current = current_bound(layer)
            if current > state_max // 2:
                raise ValueError(
                    f"{layer.name}: a step's synaptic current can reach "
                    f"{current:,}, so even 1-bit gains could overflow "
                    "Loihi 2's 24-bit accumulator: lower with "
                    "target='lava'")
            bits = min(fixed.GAIN_FRAC_BITS - 1,
                       int(np.floor(np.log2(state_max / max(current, 1)))))
            layer = dataclasses.replace(layer, gain_bits=bits,
                                        acc_bits=fixed.STATE_BITS)
        layers.append(layer)
    attention, out_bits = [], {}
    for op in plan.attention:
        k, m = plan[op.x].shape[-1], plan[op.v].shape[-2]
        qk = _product_bits(op.logits, int(np.abs(op.qk).max()) * k)
        av = _product_bits(op.out, int(np.abs(op.av).max()) * m)
        t = min(fixed.GAIN_FRAC_BITS - 1, (av + 1) // 2)
        out_bits[op.out] = min(fixed.GAIN_FRAC_BITS - 1, av - t)
        attention.append(dataclasses.replace(
            op, qk_bits=min(fixed.GAIN_FRAC_BITS - 1, qk // 2), v_bits=t,
            acc_bits=fixed.STATE_BITS, woss_bits=fixed.GAIN_FRAC_BITS - 1))
    layers = [dataclasses.replace(layer, gain_bits=out_bits[layer.name],
                                  acc_bits=fixed.STATE_BITS)
              if layer.name in out_bits else layer for layer in layers]
    return dataclasses.replace(plan, layers=layers, attention=attention)


def _cap_shifts(layer: ty.Any) -> ty.Any:
    """``layer`` with no synapse shift above :data:`MAX_SHIFT`: the
    neuron's exponent rises by the excess ``d`` and each channel of shift
    ``s < d`` rounds its mantissa by ``d - s`` bits (half away from zero),
    its exponent now the neuron's."""
    d = max(int(s.shift.max(initial=0)) for s in layer.synapses) - MAX_SHIFT
    if d <= 0:
        return layer
    synapses = []
    for syn in layer.synapses:
        drop = np.maximum(d - syn.shift, 0)[:, None]
        half = (1 << drop) >> 1
        k = np.asarray(syn.weight, np.int64) // 2     # mantissas are 2k
        k = np.sign(k) * ((np.abs(k) + half) >> drop)
        synapses.append(dataclasses.replace(
            syn, weight=(2 * k).astype(syn.weight.dtype),
            shift=np.maximum(syn.shift - d, 0)))
    return dataclasses.replace(layer, synapses=synapses,
                               weight_exp=layer.weight_exp + d)


def _product_bits(name: str, bound: int) -> int:
    """Bits that two factors of a product may share so that ``bound``
    times their product stays within 24 bits (at least 1 each)."""
    bits = int(np.floor(np.log2(((1 << (fixed.STATE_BITS - 1)) - 1) /
                                max(bound, 1))))
    if bits < 2:
        raise ValueError(
            f"{name}: its weights times the pairs it sums reach {bound:,}, "
            "so even 1-bit traces and gains could overflow Loihi 2's "
            "24-bit accumulator: lower with target='lava'")
    return bits


def current_bound(layer: ty.Any) -> int:
    """A layer's largest per-step synaptic current (units of its weight
    exponent): every source spikes once per window, all of them at step 0
    at worst, with the signs of the weights."""
    return sum(_bound(s) for s in layer.synapses)


def connections(plan: ty.Any, syn: ty.Any) -> ty.List[ty.Tuple[int, ty.Any]]:
    """``(shift, synapse)`` per Lava connection of ``syn``: one per weight
    exponent, and in a conformant Plan (``target == 'loihi2'``) as many
    more as keep each connection's per-step current within Dense's 16-bit
    output."""
    return syn.split(DENSE_OUT_MAX if plan.target == "loihi2" else None)


def _bound(syn: ty.Any) -> int:
    return int(np.abs(syn.scaled()).sum(-1).max(initial=0))


def report(plan: ty.Any) -> str:
    """:func:`check` as text, one violation per line."""
    found = check(plan)
    if not found:
        return "fits the Loihi 2 conventions checked"
    return "\n".join(str(v) for v in found)
