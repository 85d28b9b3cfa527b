"""The Plan: one integer description of a converted network that every
backend consumes, and how it is made.

``plan``
    :class:`~lava_spiked.plan.plan.Plan` (what it holds, the schedule).
``layers``
    Its parts: synapses, windows, window-close stages, layers, attentions.
``lowering``
    :func:`~lava_spiked.plan.lowering.lower`: a calibrated graph quantised
    and scheduled into a Plan.
``loihi2``
    The Loihi 2 rules: the conformance check and the 24-bit lowering.
``resources``
    What a Plan asks of a chip (neurons, synapses, cores).

Importable without torch and without Lava; the names below are the
modules' own.
"""
from lava_spiked.plan.layers import (KINDS, MASK, STAGED, TARGETS,
                                     ActivationStage, Layer, LoweredAttention,
                                     NormStage, RuntimeInput, Synapse, Window)
from lava_spiked.plan.lowering import lower
from lava_spiked.plan.plan import CodeChoice, Plan

__all__ = ["KINDS", "MASK", "STAGED", "TARGETS", "ActivationStage",
           "CodeChoice", "Layer", "LoweredAttention", "NormStage", "Plan",
           "RuntimeInput", "Synapse", "Window", "lower"]
