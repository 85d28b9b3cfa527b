"""Shared helpers and fixtures of the tests."""
import numpy as np
import psutil
import pytest
import torch
from hypothesis import settings
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from torch import nn

from lava_spiked.bundled.digits_vit import (DigitsViT, digits_splits,
                                            load_default)
from lava_spiked.conversion import convert
from toy_models import randomize_norms

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


# No float membrane of the engine tests' inputs lies within this distance
# (in units of sigma) of a level it is compared with (a fire threshold,
# the clip level, a WOSS threshold): far beyond the rounding by which two
# orders of summing its terms can differ (at most 2 n 2**-53 times the
# sum of their magnitudes: below 2e-12 on these networks, whose traces
# are at most 1 and weights' row sums at most a few tens). So float spikes
# and clip counts do not depend on the order in which a CPU's kernels or
# compiled code sum. (An activation's input, which its stage also counts
# as clipped beyond 1, is not recorded and so not checked.)
DECIDED = 1e-9


def level_gap(res, plan, sample=None) -> float:
    """The smallest distance of a float membrane that the engine result
    ``res`` recorded (of one ``sample``, or all) from a level it is
    compared with: the fire thresholds c_B B**-m and the clip level 1 (for
    |v|), the WOSS thresholds -(m + 1/2) ln B (for the shifted logits),
    written out here from the paper's definitions. A threshold is the
    midpoint of two adjacent levels B**-m, so a membrane that averages
    two such values with equal weights (an attention row with two keys of
    one WOSS step) lands on it: only rounding decides that spike. The
    input's membranes are not sums and are left out."""
    m = np.arange(plan.T, dtype=np.float64)
    levels = {"woss": np.sort(-(m + 0.5) * np.log(plan.B))}
    neuron = np.sort(np.append((1 + 1 / plan.B) / 2 * plan.B ** -m, 1.0))
    activations = {la.name for la in plan.layers if la.kind == "activation"}
    gap = np.inf
    for name, (v, kind) in res._membranes.items():
        if name == plan.input:  # x / sigma: one division, no sum, exact
            continue  # to the same bit everywhere (and often exactly 1)
        v = (v if sample is None else v[sample]).numpy().ravel()
        # -inf: masked; exactly 1: an activation of an input clipped to
        # one sigma (the engine takes that value from the golden model)
        v = v[np.isfinite(v)] if kind == "woss" else np.abs(v)
        if name in activations:
            v = v[v != 1.0]
        lv = levels.get(kind, neuron)
        i = np.clip(np.searchsorted(lv, v), 1, len(lv) - 1)
        gap = min(gap, float(np.minimum(np.abs(v - lv[i - 1]),
                                        np.abs(v - lv[i])).min(
                                            initial=np.inf)))
    return gap


@pytest.fixture(scope="module")
def small_vit():
    """A one-block DigitsViT (8 channels, 2 heads) with random norms, and
    32 calibration and 8 test samples."""
    torch.manual_seed(1)
    model = randomize_norms(DigitsViT(dim=8, heads=2, mlp=16), seed=1)
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (40, 1, 8, 8)).astype(np.float32)
    return model, data[:32], data[32:]


@pytest.fixture(scope="module")
def bundled():
    splits = digits_splits()
    return convert(load_default(), splits["calibration"][0],
                   progress=False), splits["test"][0][:8]


@pytest.fixture(scope="module")
def encoder_net():
    """Another shape: nn.TransformerEncoderLayer (its MHA) with BatchNorm
    in place of LayerNorm, ReLU, mean pooling."""
    class Norm(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.bn = nn.BatchNorm1d(c)

        def forward(self, x):
            return self.bn(x.transpose(1, 2)).transpose(1, 2)

    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(12, 3, 24, dropout=0.0,
                                       batch_first=True)
    layer.norm1, layer.norm2 = Norm(12), Norm(12)
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(5 * 12, 4))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 5, 12))
    data = torch.randn(24, 5, 12)
    return convert(model.eval(), data[:16], T=16, B=1.2,
                   progress=False), data[16:].numpy()
