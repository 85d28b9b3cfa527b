"""lava-spiked: SpikedAttention (Hwang et al., NeurIPS 2024) as Lava processes.

A pretrained transformer becomes a spike-driven network with one-spike phase
coding: a neuron of scale ``sigma`` that fires at step ``m`` of its window
means ``+-sigma * B**-m``::

    import lava_spiked
    net = lava_spiked.convert(model, calibration_images)
    logits = lava_spiked.Engine(net, "fixed")(images).logits   # torch
    with net:                                                  # Lava
        logits = net.infer(images, Loihi2SimCfg(select_tag="fixed_pt"))

See ``lava_spiked.numerics.phase`` for the code itself,
``lava_spiked.numerics.fixed`` for the integer arithmetic of the ``fixed_pt``
models, ``lava_spiked.plan`` for the integer Plan every backend runs, and
``lava_spiked.processes`` for the Lava processes. Names are imported on first
use (PEP 562), so the Plan and the engine work where Lava is not installed.
"""
import importlib
import typing as ty

__version__ = "0.1.0"

_LAZY = {"convert": "lava_spiked.conversion", "SpikingNetwork":
         "lava_spiked.network", "Engine": "lava_spiked.engine",
         "UnsupportedModelError": "lava_spiked.capture",
         "Plan": "lava_spiked.plan", "verify": "lava_spiked.verification"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> ty.Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lava_spiked' has no attribute {name!r}")
