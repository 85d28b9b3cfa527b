"""Energy model of a converted network and of its ANN (the SpikedAttention
code's, with its counts corrected; docs/guide/energy.md).

Operations are counted from the spikes that the engine computes, per sample,
and priced with 45 nm figures (Horowitz, ISSCC 2014, 32-bit float, as the
SpikedAttention code does): an accumulate ``E_AC = 0.9 pJ`` and a
multiply-accumulate ``E_MAC = 4.6 pJ`` (3.7 pJ multiply + 0.9 pJ add).
Memory traffic is not priced (the reference's 5 pJ per access depends on a
memory hierarchy that neither side specifies).

SNN, per population:
- synaptic accumulations (AC): every spike adds its weight to each target
  neuron it reaches through a Dense synapse (the nonzero weights of its
  column). Spikes carry only their sign, so these are additions.
- trace products (MAC): in a TraceMatMul each pair of spikes (x_ik, y_kj)
  adds ``w_ij * trace`` once, a multiply; counted per pair that fired (Q K^T
  summed over the head dimension, A V over the keys), which fixes the
  reference's r_q * r_k and hidden-size counts.
- neuron updates (AC): one threshold comparison per fire-window step until
  the neuron fires (T if it stays silent).
- input gains (MAC): the accumulator multiplies each step's input by
  B**-j and adds it: one per neuron and step with input (for the logit and
  attention output neurons an upper bound: one per spike pair, at most T).
- non-spike operations (MAC): the row-sum division of every attention
  output element and the WOSS inhibition of every logit (AC); the
  activation stage of a GELU/SiLU/tanh/sigmoid neuron, one multiply per
  neuron (the interpolation between two knots); the LayerNorm stage,
  :data:`NORM_MAC_PER_ELEMENT` per neuron (the sum, the squared deviation,
  and the two multiplies of the normalisation) plus
  :data:`NORM_MAC_PER_TOKEN` per token (the inverse square root, priced as
  three Newton steps of three multiplies and one more for the mean).

ANN: the multiply-accumulates of the original model's Linear, Conv and
matmul operations on dense activations (no zero-skipping credit), all MLP
layers included, with each layer's true fan-in, as counted at capture
(``Plan.ann_macs``).
"""
import dataclasses
import typing as ty

import numpy as np

from lava_spiked.engine import EngineResult

E_AC = 0.9e-12   # J, 32-bit float add, 45 nm
E_MAC = 4.6e-12  # J, 32-bit float multiply (3.7 pJ) + add (0.9 pJ), 45 nm
NORM_MAC_PER_ELEMENT = 4
NORM_MAC_PER_TOKEN = 10


def stage_macs(layer) -> float:
    """Multiply-accumulates of a layer's window-close stage per sample (0
    without one); see the module docstring."""
    if layer.kind == "activation":
        return float(layer.size)
    if layer.kind == "layernorm":
        tokens = layer.size // layer.shape[-1]
        return float(NORM_MAC_PER_ELEMENT * layer.size +
                     NORM_MAC_PER_TOKEN * tokens)
    return 0.0


@dataclasses.dataclass
class LayerEnergy:
    """Operation counts (per sample) of one population."""

    name: str
    neurons: int
    spikes: float
    synaptic_ac: float
    neuron_ac: float
    mac: float

    @property
    def joules(self) -> float:
        return (self.synaptic_ac + self.neuron_ac) * E_AC + self.mac * E_MAC


@dataclasses.dataclass
class EnergyReport:
    """Per-layer SNN counts and the ANN's MACs, per sample."""

    layers: ty.List[LayerEnergy]
    ann_macs: float

    @property
    def snn_joules(self) -> float:
        return sum(layer.joules for layer in self.layers)

    @property
    def ann_joules(self) -> float:
        return self.ann_macs * E_MAC

    def to_markdown(self) -> str:
        """Per-layer table with totals."""
        rows = ["| population | neurons | spikes | synaptic AC | neuron AC "
                "| MAC | energy nJ |", "|---|---|---|---|---|---|---|"]
        for r in self.layers:
            rows.append(f"| {r.name} | {r.neurons} | {r.spikes:.1f} | "
                        f"{r.synaptic_ac:.0f} | {r.neuron_ac:.0f} | "
                        f"{r.mac:.0f} | {r.joules * 1e9:.2f} |")
        rows.append(f"| **SNN total** | | "
                    f"{sum(r.spikes for r in self.layers):.1f} | | | | "
                    f"**{self.snn_joules * 1e9:.2f}** |")
        rows.append(f"| **ANN** ({self.ann_macs:.0f} MAC) | | | | | | "
                    f"**{self.ann_joules * 1e9:.2f}** |")
        return "\n".join(rows)


def mean_report(reports: ty.Sequence[EnergyReport],
                counts: ty.Sequence[int]) -> EnergyReport:
    """Per-sample counts of several :func:`energy` reports (of one plan,
    over ``counts`` samples each), averaged over all their samples."""
    w = np.asarray(counts, np.float64) / float(np.sum(counts))
    fields = ("spikes", "synaptic_ac", "neuron_ac", "mac")
    layers = [dataclasses.replace(first, **{
        f: float(sum(wi * getattr(r.layers[i], f)
                     for wi, r in zip(w, reports))) for f in fields})
        for i, first in enumerate(reports[0].layers)]
    return EnergyReport(layers, reports[0].ann_macs)


def energy(plan: ty.Any, result: EngineResult) -> EnergyReport:
    """Operation counts per sample, averaged over the batch of ``result``
    (an engine run of ``plan``, a Plan or a SpikingNetwork)."""
    plan = getattr(plan, "plan", plan)
    T = plan.T
    steps = {k: v.cpu().numpy() for k, v in result.steps.items()}
    n = next(iter(steps.values())).shape[0]
    fired = {k: (v >= 0) for k, v in steps.items()}
    layers = []

    def updates(name: str) -> float:
        s = steps[name]
        return float(np.where(s >= 0, s + 1, T).sum()) / n

    for layer in plan.layers:
        if layer.kind == "input":
            layers.append(LayerEnergy(layer.name, layer.size,
                                      fired[layer.name].sum() / n, 0, 0, 0))
            continue
        op = plan.attention_of(layer.name)
        if op is not None:
            shape = lambda k: (n,) + plan[k].shape  # noqa: E731
            fx, fy, fv = (fired[k].reshape(shape(k)).astype(float)
                          for k in (op.x, op.y, op.v))
            fs = fired[op.softmax].reshape((n,) + op.qk.shape).astype(float)
            qk = fx @ fy   # spike pairs per logit
            av = fs @ fv   # spike pairs per output
            neuron = updates(op.logits) + updates(op.softmax) + \
                updates(layer.name)
            inhibit = float(op.qk.size)
            # input gains of the logit and output neurons: at most one per
            # pair and at most T per neuron (an upper bound)
            gains = np.minimum(qk, T).sum() / n + np.minimum(av, T).sum() / n
            layers.append(LayerEnergy(
                layer.name + " (attention)", op.qk.size * 2 + layer.size,
                (fired[op.logits].sum() + fired[op.softmax].sum() +
                 fired[layer.name].sum()) / n, 0, neuron + inhibit,
                qk.sum() / n + av.sum() / n + gains + layer.size))
            continue
        synaptic, input_steps = 0.0, np.zeros((n, layer.size, T), bool)
        for syn in layer.synapses:
            s = steps[syn.src].reshape(n, -1)
            fan = syn.fan_out(s.shape[1])
            synaptic += float(((s >= 0) @ fan).sum()) / n
            reach = dataclasses.replace(syn, weight=(syn.weight != 0)
                                        .astype(np.float64))
            for j in range(T):  # which targets get input at step j
                input_steps[..., j] |= reach.apply(
                    (s == j).astype(np.float64)) > 0
        layers.append(LayerEnergy(
            layer.name, layer.size,
            fired[layer.name].sum() / n if layer.name in fired else 0.0,
            synaptic, updates(layer.name) if layer.name in steps else 0.0,
            float(input_steps.sum()) / n + stage_macs(layer)))
    return EnergyReport(layers, plan.ann_macs)
