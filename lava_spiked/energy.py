"""Energy model of a converted network and of its ANN (design §7, fixed).

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
  output element and the WOSS inhibition of every logit (AC).

ANN: the multiply-accumulates of the original model's Linear, Conv and
matmul operations on dense activations (no zero-skipping credit), all MLP
layers included, with each layer's true fan-in.
"""
import dataclasses
import typing as ty

import numpy as np
import torch

from lava_spiked.engine import EngineResult
from lava_spiked.network import SpikingNetwork

E_AC = 0.9e-12   # J, 32-bit float add, 45 nm
E_MAC = 4.6e-12  # J, 32-bit float multiply (3.7 pJ) + add (0.9 pJ), 45 nm


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


def ann_macs(net: SpikingNetwork) -> float:
    """Multiply-accumulates of one forward pass of the original model."""
    from torch.fx.passes.shape_prop import ShapeProp

    gm = net.graph.module.float()
    ShapeProp(gm).propagate(torch.zeros((1,) + net.graph.input.shape))
    modules = dict(gm.named_modules())
    total = 0.0
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if not hasattr(meta, "shape"):
            continue
        out = float(np.prod(meta.shape))
        if node.op == "call_module":
            mod = modules[node.target]
            if isinstance(mod, torch.nn.Linear):
                total += out * mod.in_features
            elif isinstance(mod, torch.nn.modules.conv._ConvNd):
                total += out * mod.in_channels // mod.groups * \
                    float(np.prod(mod.kernel_size))
        elif node.target in (torch.matmul, torch.bmm, "matmul") or \
                getattr(node.target, "__name__", "") == "matmul":
            a = node.args[0].meta["tensor_meta"].shape
            total += out * a[-1]
        elif node.target is torch.nn.functional.linear:
            a = node.args[0].meta["tensor_meta"].shape
            total += out * a[-1]
    gm.double()
    return total


def energy(net: SpikingNetwork, result: EngineResult) -> EnergyReport:
    """Operation counts per sample, averaged over the batch of ``result``
    (an engine run of ``net``)."""
    T = net.T
    steps = {k: v.cpu().numpy() for k, v in result.steps.items()}
    n = next(iter(steps.values())).shape[0]
    fired = {k: (v >= 0) for k, v in steps.items()}
    attention = {op.out.name: op for op in net.graph.attention}
    layers = []

    def updates(name: str) -> float:
        s = steps[name].reshape(n, -1)
        return float(np.where(s >= 0, s + 1, T).sum()) / n

    for pop in net.graph.populations:
        if pop.kind == "input":
            layers.append(LayerEnergy(pop.name, pop.size,
                                      fired[pop.name].sum() / n, 0, 0, 0))
            continue
        op = attention.get(pop.name)
        if op is not None:
            f = {k: fired[k].astype(float) for k in
                 (op.x.name, op.y.name, op.v.name, pop.name + ":softmax")}
            logits, soft = pop.name + ":logits", pop.name + ":softmax"
            qk = f[op.x.name] @ f[op.y.name]   # spike pairs per logit
            av = f[soft] @ f[op.v.name]        # spike pairs per output
            qk_pairs, av_pairs = qk.sum() / n, av.sum() / n
            neuron = updates(logits) + updates(soft) + updates(pop.name)
            inhibit = float(np.prod(op.coef.shape))
            # input gains of the logit and output neurons: at most one per
            # pair and at most T per neuron (an upper bound)
            gains = np.minimum(qk, T).sum() / n + np.minimum(av, T).sum() / n
            layers.append(LayerEnergy(
                pop.name + " (attention)",
                int(np.prod(op.coef.shape)) * 2 + pop.size,
                (fired[logits].sum() + fired[soft].sum() +
                 fired[pop.name].sum()) / n, 0, neuron + inhibit,
                qk_pairs + av_pairs + gains + pop.size))  # + divisions
            continue
        synaptic, input_steps = 0.0, np.zeros((n, pop.size, T), bool)
        for src, w in pop.inputs:
            reach = (w != 0).astype(np.float32)          # (targets, sources)
            s = steps[src.name].reshape(n, -1)
            synaptic += float(((s >= 0) @ reach.sum(0)).sum()) / n
            for j in range(T):  # which targets get input at step j
                input_steps[..., j] |= ((s == j).astype(np.float32) @
                                        reach.T) > 0
        gain_macs = float(input_steps.sum()) / n
        layers.append(LayerEnergy(
            pop.name, pop.size,
            fired[pop.name].sum() / n if pop.name in fired else 0.0,
            synaptic, (updates(pop.name) if pop.name in steps else 0.0),
            gain_macs))
    return EnergyReport(layers, ann_macs(net))
