"""The resources a Plan asks of neuromorphic hardware: neurons, stored
synapses, spike x spike product inputs, spikes and steps, and the Loihi 2
cores and chips they need by the public per-chip figures
(:func:`resources`).
"""
import dataclasses
import typing as ty

import numpy as np

from lava_spiked.plan import loihi2


# Public Loihi 2 figures per chip (Intel, "Taking Neuromorphic Computing
# to the Next Level with Loihi 2", technology brief, 2021): 128 neuro-cores,
# up to 1 M neurons and 120 M synapses. Per-core budgets below are these
# totals divided by 128, an even spread the real mapping will not reach.
LOIHI2_CORES_PER_CHIP = 128
LOIHI2_NEURONS_PER_CHIP = 1_000_000
LOIHI2_SYNAPSES_PER_CHIP = 120_000_000


@dataclasses.dataclass
class Resources:
    """What a Plan asks of neuromorphic hardware (see :func:`resources`).

    Attributes
    ----------
    neurons : int
        Spiking and readout neurons, plus two per attention logit (the
        logit neuron and its WOSS softmax neuron), plus the relays of
        delays over 62 steps (one population of the source's size every
        62 steps).
    synapses : int
        Nonzero weights as the chip must store them: a token-shared weight
        once per token (the block-diagonal matrix Lava builds).
    product_inputs : int
        Trace inputs of the spike x spike products: each logit reads K
        traces of x and of y, each attention output M of p and of v.
    max_spikes : int
        Spikes per sample at most: each neuron fires at most once (the
        encoder included, the readout excluded: it reports its membrane).
    steps : int
        Steps per sample (latency).
    cores, chips : float
        Estimates from the public per-chip figures (the larger of the
        neuron and synapse budgets).
    """

    neurons: int
    synapses: int
    product_inputs: int
    max_spikes: int
    steps: int
    cores: float
    chips: float

    def to_markdown(self) -> str:
        return "\n".join([
            "| resource | count |", "|---|---|",
            f"| neurons | {self.neurons:,} |",
            f"| synapses (stored per token) | {self.synapses:,} |",
            f"| spike x spike product inputs | {self.product_inputs:,} |",
            f"| spikes per sample (at most) | {self.max_spikes:,} |",
            f"| steps per sample | {self.steps:,} |",
            f"| neuro-cores (estimate) | {self.cores:,.1f} |",
            f"| Loihi 2 chips (estimate) | {self.chips:,.3f} |", "",
            f"Estimates from the public Loihi 2 figures of "
            f"{LOIHI2_CORES_PER_CHIP} neuro-cores, "
            f"{LOIHI2_NEURONS_PER_CHIP:,} neurons and "
            f"{LOIHI2_SYNAPSES_PER_CHIP:,} synapses per chip, spread evenly "
            "over the cores; a real mapping needs more."])

    __str__ = to_markdown


def resources(plan: ty.Any) -> Resources:
    """Count the neurons, stored synapses, spikes and steps of a Plan (or
    of a network's ``.plan``) and estimate the Loihi 2 cores and chips."""
    plan = getattr(plan, "plan", plan)
    neurons = sum(layer.size for layer in plan.layers)
    synapses = 0
    for layer in plan.layers:
        for syn in layer.synapses:
            # each destination neuron reads the nonzero weights of its
            # channel at the valid input positions of its row
            c = syn.weight.shape[0]
            o = syn.out[syn.out >= 0]
            row, ch = np.divmod(o, c)
            valid = (syn.rows >= 0)[row] & (syn.weight != 0)[ch]
            synapses += int(valid.sum())
    product_inputs = 0
    for op in plan.attention:
        neurons += 2 * op.qk.size
        k = plan[op.x].shape[-1]
        m = plan[op.v].shape[-2]
        product_inputs += 2 * k * op.qk.size + 2 * m * op.av.size
    # a delay beyond MAX_DELAY steps relays through a population every
    # MAX_DELAY steps (chains of one source share their relays)
    longest: ty.Dict[str, int] = {}
    for layer in plan.layers:
        for syn in layer.synapses:
            longest[syn.src] = max(longest.get(syn.src, 0),
                                   plan.delay(syn.src, layer.name))
    neurons += sum(plan[src].size * ((delay - 1) // loihi2.MAX_DELAY)
                   for src, delay in longest.items() if delay > 0)
    spikes = neurons - plan[plan.output].size
    chips = max(neurons / LOIHI2_NEURONS_PER_CHIP,
                synapses / LOIHI2_SYNAPSES_PER_CHIP)
    return Resources(neurons, synapses, product_inputs, spikes,
                     plan.num_steps, chips * LOIHI2_CORES_PER_CHIP, chips)
