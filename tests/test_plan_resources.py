"""What a Plan asks of a chip (:mod:`lava_spiked.plan.resources`)."""
import pytest

from lava_spiked.plan.resources import resources


def test_resources_count_what_lava_stores(bundled):
    from lava_spiked.lava_backend.build import sparse_weights
    net, _ = bundled
    plan = net.plan
    report = resources(net)
    stored = sum(sparse_weights(syn, layer.size, plan[syn.src].size).nnz
                 for layer in plan.layers for syn in layer.synapses)
    assert report.synapses == stored
    op, = plan.attention
    # the 204-step residual delay of the 8x8 input relays at 62, 124, 186
    assert plan.delay("input", "blocks.0.add") == 204
    assert report.neurons == sum(ly.size for ly in plan.layers) + \
        2 * op.qk.size + 3 * 64
    assert report.max_spikes == report.neurons - 10  # the readout reports
    assert report.steps == plan.num_steps == 369
    assert report.chips == pytest.approx(report.neurons / 1e6)
    assert "| Loihi 2 chips (estimate) |" in str(report)
