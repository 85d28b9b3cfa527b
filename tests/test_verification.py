"""``lava_spiked.verify`` (:mod:`lava_spiked.verification`): agreement of
Lava, the engine and the golden models, and clipping."""
import numpy as np
import pytest

import lava_spiked
from lava_spiked.conversion import convert


@pytest.mark.slow
def test_verify_reports_agreement_and_clipping(small_vit):
    model, calib, test = small_vit
    net = convert(model, calib, T=12, B=1.25, progress=False)
    # on its own calibration data nothing lies beyond sigma (max statistic)
    report = lava_spiked.verify(net, calib, k=1, progress=False)
    assert report.ok and report.lava_vs_engine == 0.0
    assert {c.name for c in report.layers} >= {
        "input", "blocks.0.act", "blocks.0.attn.attention:logits"}
    assert all(c.clipped == 0.0 for c in report.layers)
    assert all(0 < c.error < 0.3 for c in report.layers), report
    assert "| blocks.0.act | relu | 272 | 100.00% |" in str(report)
    # three times the calibrated range: the encoder clips every input
    # above a third of its sigma
    loud = test[:1] * 3
    report = lava_spiked.verify(net, loud, k=1, tag="floating_pt",
                                progress=False)
    sigma = net.plan["input"].scale
    assert report.layers[0].clipped == np.mean(np.abs(loud[0].ravel()) >
                                               sigma)
    assert report.layers[0].clipped > 0.1 and report.ok
    with pytest.raises(ValueError, match="tag must be one of"):
        lava_spiked.verify(net, calib, tag="fixed")
