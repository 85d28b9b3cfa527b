"""lava-spiked: SpikedAttention (Hwang et al., NeurIPS 2024) as Lava processes.

A pretrained transformer becomes a spike-driven network with one-spike phase
coding: a neuron of scale ``sigma`` that fires at step ``m`` of its window
means ``+-sigma * B**-m``. See ``lava_spiked.phase`` for the code itself,
``lava_spiked.fixed`` for the integer arithmetic of the ``fixed_pt`` models,
and ``lava_spiked.processes`` for the Lava processes.
"""
try:
    import lava.magma.core.process.process  # noqa: F401
except (ImportError, ValueError) as err:  # ValueError: unpatched lava on 3.11
    raise ImportError(
        "lava-spiked needs lava-nc 0.10.0, installed and patched for Python "
        "3.11. Run `make setup` (or `bash scripts/setup.sh`) in the "
        "lava-spiked repository and use its .venv/bin/python. "
        f"Underlying error: {err}") from err

__version__ = "0.1.0"
