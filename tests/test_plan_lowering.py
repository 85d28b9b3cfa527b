"""Lowering a calibrated graph into a Plan
(:mod:`lava_spiked.plan.lowering`): quantisation per synapse."""
import numpy as np
import torch
from torch import nn

from lava_spiked.conversion import convert
from lava_spiked.engine import Engine


def test_each_synapse_keeps_its_own_exponent():
    """Two sources 1000x apart into one population (a FFN output next to a
    residual): the small synapse keeps its 8-bit mantissas under its own
    exponent instead of rounding to 0 under the large one's, and the
    engine, the integer golden model and the ANN still agree."""
    class TwoScales(nn.Module):
        def __init__(self):
            super().__init__()
            self.big, self.small = nn.Linear(6, 8), nn.Linear(6, 8)
            self.act, self.head = nn.ReLU(), nn.Linear(8, 3)

        def forward(self, x):
            h = self.act(x)
            return self.head(1000.0 * self.big(h) + self.small(h))

    torch.manual_seed(0)
    model = TwoScales().double().eval()
    data = torch.randn(64, 6, dtype=torch.float64)
    net = convert(model, data, progress=False)
    both = net.plan["head.input"]  # the sum, read by the head
    small = [s for s in both.synapses if s.shift.max() == 0]
    assert len(both.synapses) == 2 and len(small) == 1
    big = next(s for s in both.synapses if s.shift.min() > 0)
    assert big.shift.min() >= 8 and np.count_nonzero(small[0].weight) > 0.9 * \
        small[0].weight.size
    res = Engine(net, "fixed")(data[:4], warn=False)
    for i in range(4):
        np.testing.assert_array_equal(res.logits[i].numpy(),
                                      net.golden_fixed(data[i].numpy()))
