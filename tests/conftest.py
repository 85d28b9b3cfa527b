"""Shared helpers for the Lava tests."""
import numpy as np
import psutil
import pytest

TAGS = ["floating_pt", "fixed_pt"]


def lava_children():
    """Child processes of this test process, except Python's own
    multiprocessing resource tracker, which lives as long as the
    interpreter once any shared memory was used."""
    return [c for c in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(c.cmdline())]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
