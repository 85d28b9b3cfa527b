"""Shared helpers for the Lava tests."""
import numpy as np
import psutil
import pytest
from hypothesis import settings
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg

TAGS = ["floating_pt", "fixed_pt"]

# Property tests draw the same examples on every run, so CI cannot turn red
# by chance; change the seed of a test by editing it, not by re-running.
settings.register_profile("lava-spiked", derandomize=True, deadline=None)
settings.load_profile("lava-spiked")


def lava_children():
    """Child processes of this test process, except Python's own
    multiprocessing resource tracker, which lives as long as the
    interpreter once any shared memory was used. A child that ended but
    was not reaped (a zombie, whose command line is gone) still counts."""
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.ZombieProcess:
            pass
        except psutil.NoSuchProcess:  # ended and reaped meanwhile
            continue
        children.append(child)
    return children


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def run(proc, steps, tag, read):
    """Run the graph of ``proc`` for ``steps`` under ``tag`` and return
    ``read()``; always stop."""
    try:
        proc.run(condition=RunSteps(num_steps=steps),
                 run_cfg=Loihi2SimCfg(select_tag=tag))
        return read()
    finally:
        proc.stop()
