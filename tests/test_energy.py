"""Energy counts (:mod:`lava_spiked.energy`) on a hand-checkable network."""
import numpy as np
import pytest
import torch
from torch import nn

from lava_spiked.conversion import convert
from lava_spiked.energy import E_AC, E_MAC, energy, mean_report
from lava_spiked.engine import Engine


def test_energy_counts_by_hand():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))
        model.bias.zero_()
    net = convert(model, np.ones((4, 3)), T=6, B=1.5, progress=False)
    report = energy(net, Engine(net, "fixed")(np.ones((2, 3))))
    x, out = report.layers
    assert x.spikes == 3                   # every input fires (at step 0)
    # fan-outs of the three inputs: 1, 0 and 2 nonzero weights
    assert out.synaptic_ac == 3
    assert out.mac == 2                     # one input step per target
    assert out.neuron_ac == 0               # a readout never compares
    assert report.ann_macs == net.plan.ann_macs == 6
    assert report.snn_joules == pytest.approx(3 * E_AC + 2 * E_MAC)
    assert report.ann_joules == pytest.approx(6 * E_MAC)
    assert "**SNN total**" in report.to_markdown()


def test_mean_report_weights_by_samples():
    """Energy of 3 samples, then of 1 sample: the merged report is the
    mean over all 4 samples, equal to one report over the 4."""
    net = convert(nn.Linear(3, 2), np.random.default_rng(0).normal(
        size=(16, 3)), T=6, B=1.5, progress=False)
    x = np.random.default_rng(1).normal(size=(4, 3))
    engine = Engine(net, "fixed")
    merged = mean_report([energy(net, engine(x[:3])),
                          energy(net, engine(x[3:]))], [3, 1])
    whole = energy(net, engine(x))
    for a, b in zip(merged.layers, whole.layers):
        for f in ("spikes", "synaptic_ac", "neuron_ac", "mac"):
            assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-12)
    assert merged.ann_macs == whole.ann_macs
