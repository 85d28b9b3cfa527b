"""The one place lava-spiked imports Lava.

Importing this module fails with an explanation where Lava is not
installed (or not patched for this Python); the Plan, the engine and the
export work without it. Lava's import sets multiprocessing's start method
to 'fork' and fails if anything fixed it before (any use of
multiprocessing does); 'fork' again is harmless, another method cannot
work.
"""
import multiprocessing

_method = multiprocessing.get_start_method(allow_none=True)
if _method not in (None, "fork"):
    raise RuntimeError(
        f"Lava needs multiprocessing's 'fork' start method, but it is set to "
        f"{_method!r}: import lava_spiked.lava_backend.imports (or run a "
        "Lava network) before setting another start method")
multiprocessing.set_start_method(None, force=True)  # Lava sets 'fork'

try:
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer
    from lava.proc.sparse.process import Sparse
    from lava.utils.weightutils import SignMode

    from lava_spiked.processes import (
        ActivationPhaseNeuron, LayerNormPhaseNeuron, NormalizedPhaseNeuron,
        PhaseEncoder, PhaseNeuron, SpikeDelay, SpikingBlock, TraceMatMul,
        WOSSSoftmax)
    from lava_spiked.processes.spiking_block import COUNTERS, connect
except (ImportError, ValueError) as err:  # ValueError: unpatched lava
    raise ImportError(
        "Lava runs need lava-nc 0.10.0, installed and patched for Python "
        "3.11 and later: run `make setup` (or `bash scripts/setup.sh`) in the "
        "lava-spiked repository and use its .venv/bin/python. The engine "
        f"(lava_spiked.engine) works without Lava. Underlying error: {err}"
    ) from err

__all__ = ["ActivationPhaseNeuron", "COUNTERS", "LayerNormPhaseNeuron",
           "Loihi2SimCfg", "NormalizedPhaseNeuron", "PhaseEncoder",
           "PhaseNeuron", "RingBuffer", "RunSteps", "SignMode", "Sparse",
           "SpikeDelay", "SpikingBlock", "TraceMatMul", "WOSSSoftmax",
           "connect"]
