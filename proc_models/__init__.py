"""CPU ProcessModels (``floating_pt`` and ``fixed_pt``) of lava-spiked.

Lava's compiler (``ProcGroupDiGraphs._find_proc_models``) looks for the
ProcessModels of a Process in the module that defines the Process, and in
files beside it. This project keeps declarations (``lava_spiked.processes``)
and models (this package) apart, so each model module calls :func:`register`
to make its models members of their Process's module, which is exactly where
the compiler looks first.
"""
import sys
import typing as ty


def window_step(time_step: int, start: int, period: int) -> ty.Optional[int]:
    """Steps since the window of a Process opened, or None before ``start``.

    ``time_step`` is Lava's 1-based step counter; with ``period > 0`` the
    count restarts every ``period`` steps (one sample after another).
    """
    r = time_step - 1 - start
    if r < 0:
        return None
    return r % period if period else r


def register(*models: type) -> None:
    """Make ``models`` discoverable by Lava for the Process they implement."""
    for model in models:
        module = sys.modules[model.implements_process.__module__]
        model.__module__ = module.__name__
        setattr(module, model.__name__, model)


from lava_spiked.proc_models import (  # noqa: E402,F401
    phase_encoder, phase_neuron, spike_delay, spiking_block, trace_matmul,
    woss_softmax)
