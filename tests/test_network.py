"""SpikingNetwork (:mod:`lava_spiked.network`) without Lava: recoding."""
import numpy as np
import pytest
import torch
from torch import nn

from lava_spiked.conversion import convert
from lava_spiked.engine import Engine


def test_recode_lowers_the_same_calibration_anew():
    """recode(B, T) equals converting again with that code (calibration
    does not depend on it); a network loaded from a file cannot."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = np.random.default_rng(0).normal(size=(32, 4))
    net = convert(model, data, T=40, B=1.15, progress=False)
    again = convert(model, data, T=16, B=1.4, progress=False)
    recoded = net.recode(1.4, 16)
    assert (recoded.B, recoded.T) == (1.4, 16)
    np.testing.assert_array_equal(
        Engine(recoded, "fixed")(data[:8]).logits.numpy(),
        Engine(again, "fixed")(data[:8]).logits.numpy())
    from lava_spiked.network import SpikingNetwork
    with pytest.raises(ValueError, match="loaded from a file"):
        SpikingNetwork(net.plan).recode(1.2)
