"""Lava Processes of lava-spiked (declarations only; models live in
``lava_spiked.proc_models``)."""
from lava_spiked.processes.phase_encoder import PhaseEncoder
from lava_spiked.processes.phase_neuron import (
    ActivationPhaseNeuron, LayerNormPhaseNeuron, NormalizedPhaseNeuron,
    PhaseNeuron)
from lava_spiked.processes.spike_delay import SpikeDelay
from lava_spiked.processes.spiking_block import SpikingBlock
from lava_spiked.processes.trace_matmul import TraceMatMul
from lava_spiked.processes.woss_softmax import WOSSSoftmax

# Lava's compiler finds a Process's models only in the Process's own module;
# importing the model package hands them over (see proc_models/__init__.py).
import lava_spiked.proc_models  # noqa: E402,F401  (registration side effect)

__all__ = ["ActivationPhaseNeuron", "LayerNormPhaseNeuron",
           "NormalizedPhaseNeuron", "PhaseEncoder", "PhaseNeuron", "SpikeDelay",
           "SpikingBlock", "TraceMatMul", "WOSSSoftmax"]
