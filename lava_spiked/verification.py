"""Check a converted network on your own data before trusting it.

``lava_spiked.verify(net, samples, k=3)`` runs k samples through Lava, through the
torch engine and through the exact (unquantised) captured model, and
reports per layer in one table:

- whether Lava's spikes equal the engine's (fire step and sign of every
  neuron; they must, bit for bit under ``fixed_pt``);
- how far the spikes' decoded values are from the exact activations
  (relative error ``||decoded - exact|| / ||exact||``), i.e. what the phase
  code costs at that layer;
- how many exact activations lie beyond the calibrated range ``|a| > sigma``
  (the code clips them to ``sigma``): many means the calibration data does
  not cover yours; and how many of the spiking network's own membranes do
  (the engine's ``EngineResult.clipped``, the count of the Lava models'
  ``clip_count``; see :mod:`lava_spiked.golden.models`), which must equal
  Lava's under ``fixed_pt``;

plus, for the readout, the logits' agreement (Lava vs engine, SNN vs ANN,
arg-max) and the saturation events of the integer state.
"""
import dataclasses
import typing as ty

import numpy as np
import torch

from lava_spiked.capture import run_graph
from lava_spiked.engine import Engine
from lava_spiked.numerics import phase
from lava_spiked.progress import bar
from lava_spiked.validation import check_batch, check_count

TAGS = {"fixed_pt": "fixed", "floating_pt": "float"}


@dataclasses.dataclass
class LayerCheck:
    """One spiking layer (or attention's logits) over the k samples.

    Attributes
    ----------
    name, kind : str
    neurons : int
    lava_equal : float
        Fraction of (sample, neuron) pairs whose Lava spike (step and sign)
        equals the engine's.
    error : float
        ``||decoded - exact|| / ||exact||`` of the engine's spikes (0 when
        the exact values are all 0).
    clipped : float
        Fraction of exact activations with ``|a| > sigma``.
    snn_clipped : float
        Fraction of the spiking network's membranes beyond sigma (the
        engine's counted clipping).
    lava_clipped : float
        The same, counted by the Lava models' ``clip_count``.
    """

    name: str
    kind: str
    neurons: int
    lava_equal: float
    error: float
    clipped: float
    snn_clipped: float = 0.0
    lava_clipped: float = 0.0


@dataclasses.dataclass
class Verification:
    """What :func:`verify` found.

    Attributes
    ----------
    tag : str
    samples : int
    layers : list of LayerCheck
    lava_vs_engine : float
        Max |Lava logit - engine logit| (0 under ``fixed_pt``).
    snn_vs_ann : float
        Relative error of the SNN logits against the exact model's.
    argmax_agree : float
        Fraction of samples with the same arg-max class.
    saturated : int
        Saturation events of the integer state (engine, all samples).
    """

    tag: str
    samples: int
    layers: ty.List[LayerCheck]
    lava_vs_engine: float
    snn_vs_ann: float
    argmax_agree: float
    saturated: int

    @property
    def ok(self) -> bool:
        """Lava equals the engine in every spike and logit (exactly under
        ``fixed_pt``, to 1e-6 relative under ``floating_pt``)."""
        return all(c.lava_equal == 1.0 for c in self.layers) and \
            self.lava_vs_engine <= (0.0 if self.tag == "fixed_pt" else 1e-6)

    def to_markdown(self) -> str:
        lines = [f"Verification on {self.samples} samples, Lava `{self.tag}`"
                 " vs engine vs exact model", "",
                 "| layer | kind | neurons | Lava = engine | SNN vs exact "
                 "(rel. error) | clipped | SNN clipped (engine / Lava) |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {c.name} | {c.kind} | {c.neurons} | "
                  f"{c.lava_equal:.2%} | {c.error:.3g} | {c.clipped:.2%} | "
                  f"{c.snn_clipped:.2%} / {c.lava_clipped:.2%} |"
                  for c in self.layers]
        lines += ["", f"Logits: max |Lava - engine| {self.lava_vs_engine:.3g},"
                  f" SNN vs exact rel. error {self.snn_vs_ann:.3g}, arg-max "
                  f"agreement {self.argmax_agree:.0%}; saturation events "
                  f"{self.saturated}. "
                  + ("Lava equals the engine." if self.ok else
                     "LAVA DIFFERS FROM THE ENGINE: please report this.")]
        return "\n".join(lines)

    __str__ = to_markdown


def verify(net: ty.Any, samples: ty.Any, k: int = 3,
           tag: str = "fixed_pt", progress: bool = True,
           attention_mask: ty.Any = None) -> Verification:
    """Run ``k`` of ``samples`` through Lava, the engine and the exact
    model and compare them layer by layer (see the module docstring).

    Parameters
    ----------
    net : SpikingNetwork
        From :func:`lava_spiked.convert`. Its own Lava processes are left
        alone: the check builds, runs and stops its own, with probes.
    samples : array_like
        (n, *sample_shape), n >= k.
    k : int
        Samples to run (Lava takes about a second per sample for a small
        model: keep k small).
    tag : {'fixed_pt', 'floating_pt'}
    attention_mask : array_like, optional
        (n, N) token masks of ``samples``, for a network that takes one.
    """
    if tag not in TAGS:
        raise ValueError(f"tag must be one of {sorted(TAGS)}, got {tag!r}")
    plan = net.plan
    x = check_batch("samples", samples, plan[plan.input].shape)
    valid = plan.check_mask(attention_mask, len(x))
    k = check_count(k, "k")
    x, valid = x[:k], None if valid is None else valid[:k]
    from lava_spiked.lava_backend.imports import Loihi2SimCfg
    from lava_spiked.lava_backend.runs import LavaNetwork
    lava = LavaNetwork(plan, tag, record=True)
    states, probes = [], []
    try:
        for i, sample in enumerate(bar(x, f"verify in Lava {tag}",
                                       progress)):
            states.append(lava.infer_one(sample, Loihi2SimCfg(
                select_tag=tag), None if valid is None else valid[i]))
            probes.append(lava.read_probes())
        lava.check_counts()
        lava_clipped = dict(lava.clipped)
    finally:
        lava.stop()
    lava_logits = plan.pool(plan.decode_readout(np.array(states)), valid)
    # the table reports clipping: no warning on top
    result = Engine(plan, TAGS[tag])(x, warn=False, attention_mask=valid)
    exact: ty.Dict[str, np.ndarray] = {}
    ann = run_graph(net.graph, torch.from_numpy(x),
                    lambda name, v: exact.__setitem__(name, v.numpy()),
                    None if valid is None else torch.from_numpy(valid)
                    ).numpy()
    logits = result.logits.cpu().numpy()
    checks = []
    for name in probes[0]:
        if name not in result.steps or name not in exact:
            continue  # the softmax has no exact counterpart
        steps = result.steps[name].cpu().numpy()
        signs = result.signs[name].cpu().numpy()
        same = [(p[name][0].ravel() == st) & (p[name][1].ravel() == sg)
                for p, st, sg in zip(probes, steps, signs)]
        layer = plan[name] if name in {ly.name for ly in plan.layers} \
            else None
        sigma = layer.scale if layer is not None else \
            plan.attention_of(name.rsplit(":", 1)[0]).logit_scale.ravel()
        a = exact[name]
        decoded = phase.decode(steps, signs, plan.B, sigma)
        norm = np.linalg.norm(a)
        checks.append(LayerCheck(
            name, layer.kind if layer is not None else "logits",
            steps.shape[1], float(np.mean(same)),
            float(np.linalg.norm(decoded - a) / norm) if norm else 0.0,
            # beyond float rounding: max calibration puts a neuron at sigma
            float(np.mean(np.abs(a) > sigma * (1 + 1e-9))),
            float(result.clipped[name].sum()) / a.size,
            lava_clipped.get(name, 0) / a.size))
    norm = np.linalg.norm(ann)
    return Verification(
        tag, len(x), checks, float(np.abs(lava_logits - logits).max()),
        float(np.linalg.norm(logits - ann) / norm) if norm else 0.0,
        float(np.mean(logits.reshape(len(x), -1).argmax(1) ==
                      ann.reshape(len(x), -1).argmax(1))),
        int(result.saturated.sum()))
