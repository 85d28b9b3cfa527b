"""The public names, as a user reaches them: each import in a fresh
interpreter (``python -c``), so that no module this test session imported
first can hide a broken import path, and each command-line entry point."""
import subprocess
import sys

import pytest

IMPORTS = [
    "from lava_spiked import convert, Engine, SpikingNetwork, verify, Plan",
    "from lava_spiked import UnsupportedModelError",
    "from lava_spiked.engine import Engine, EngineResult, keep_freed_memory",
    "from lava_spiked.export import save, load, ExportError",
    "from lava_spiked.huggingface import convert",
    "from lava_spiked.energy import energy",
    "from lava_spiked.processes import PhaseEncoder, PhaseNeuron",
    "from lava_spiked.proc_models import phase_neuron",
]


@pytest.mark.parametrize("statement", IMPORTS)
def test_import(statement):
    done = subprocess.run([sys.executable, "-c", statement],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("module", ["lava_spiked", "lava_spiked.export",
                                    "lava_spiked.evaluate"])
def test_command(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")
