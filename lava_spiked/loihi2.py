"""Which numbers of a Plan do not fit Loihi 2's fixed-point conventions.

``check(plan)`` lists every quantity outside the conventions of Lava's
bit-accurate models and lava-dl's Loihi 2 export, with the layer, the
value and the source of the limit. Today's Plans do not fit: the phase
neuron sums its window in a 48-bit accumulator and applies the layer's
weight exponent itself, residual sources wait in delays longer than 62
steps, the spike x spike products carry 32-bit currents, and a LayerNorm
stage sums the squared deviations of a token in 64 bits. A conformant
lowering is the export issue's next step; until then this check says,
honestly, what would have to change.

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

from lava_spiked import fixed

STATE_BITS = 24
MAX_DELAY = 62
DENSE_OUT_MAX = (1 << 15) - 1  # bit-accurate Dense/Sparse a_out: 16 bits
FACTOR_MAX = (1 << 12) - 1
LOIHI1_WEIGHT_EXP = (-8, 7)


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
    state_max = (1 << (STATE_BITS - 1)) - 1
    gain0 = int(fixed.gain_table(plan.B, plan.T)[0])
    found = []
    if gain0 > FACTOR_MAX:
        found.append(Violation(
            "gain table", "step-0 gain B**0 in 12-bit units", gain0,
            FACTOR_MAX))
    for layer in plan.layers:
        if not layer.synapses:
            continue
        # a neuron's largest input: every source spikes once per window,
        # all of them at step 0 at worst
        current = sum(int(np.abs(s.scaled()).sum(-1).max(initial=0))
                      for s in layer.synapses)
        if current > DENSE_OUT_MAX:
            found.append(Violation(
                layer.name, "per-step synaptic current", current,
                DENSE_OUT_MAX))
        if current * gain0 > state_max:
            found.append(Violation(
                layer.name, "window accumulator (48-bit in the PhaseNeuron)",
                current * gain0, state_max))
        lo, hi = LOIHI1_WEIGHT_EXP
        for exp in sorted({layer.weight_exp + int(e)
                           for s in layer.synapses for e in s.shift}):
            if not lo <= exp <= hi:
                found.append(Violation(
                    layer.name, "weight exponent (neuron's plus the "
                    "synapse's shift)", exp, hi if exp > hi else lo,
                    certain=False))
        for syn in layer.synapses:
            delay = layer.window.start - plan[syn.src].window.fire - 1
            if delay > MAX_DELAY:
                found.append(Violation(
                    f"{syn.src} -> {layer.name}", "SpikeDelay steps", delay,
                    MAX_DELAY))
        if layer.kind == "layernorm":
            # sum over a token of squared deviations of 24-bit membranes
            n = layer.shape[-1]
            found.append(Violation(
                layer.name, "LayerNorm sum of squares (int64 in the stage)",
                float(n) * (2.0 * state_max) ** 2, state_max))
    for op in plan.attention:
        k, m = plan[op.x].shape[-1], plan[op.v].shape[-2]
        for name, w, n in ((op.logits, op.qk, k), (op.out, op.av, m)):
            # a step's product current: up to 2n latched 12-bit traces
            bound = int(np.abs(w).max()) * 2 * n * gain0
            if bound > state_max:
                found.append(Violation(
                    name, "spike x spike product current (int32 in "
                    "TraceMatMul)", bound, state_max))
        for name, exp in ((op.logits, op.qk_exp), (op.out, op.av_exp)):
            lo, hi = LOIHI1_WEIGHT_EXP
            if not lo <= exp <= hi:
                found.append(Violation(
                    name, "weight exponent (applied in the neuron)", exp,
                    hi if exp > hi else lo, certain=False))
    return found


def report(plan: ty.Any) -> str:
    """:func:`check` as text, one violation per line."""
    found = check(plan)
    if not found:
        return "fits the Loihi 2 conventions checked"
    return "\n".join(str(v) for v in found)
