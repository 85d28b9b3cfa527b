"""Calibration (:mod:`lava_spiked.calibration`): errors, statistics and
granularity, and centred logits."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from lava_spiked.calibration import calibrate
from lava_spiked.capture import UnsupportedModelError, capture, run_graph
from lava_spiked.conversion import convert
from lava_spiked.engine import Engine


def test_calibration_errors(small_vit):
    model, calib, _ = small_vit
    with pytest.raises(ValueError, match="calibration_data must be"):
        convert(model, np.zeros((0, 1, 8, 8)))
    bad = calib.copy()
    bad[3, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        convert(model, bad, progress=False)
    with pytest.raises(UnsupportedModelError, match="inputs of shape"):
        convert(model, np.zeros((4, 3, 5)), progress=False)
    graph = capture(model, (1, 8, 8))
    with pytest.raises(ValueError,
                       match="calibration_data must be \\(n, 1, 8, 8\\)"):
        calibrate(graph, np.zeros((4, 1, 8, 9)))
    with pytest.raises(ValueError, match="granularity must be"):
        calibrate(graph, calib, granularity="token")
    with pytest.raises(ValueError, match="T must be"):
        convert(model, calib, T=1)
    with pytest.raises(ValueError, match="B must be"):
        convert(model, calib, B=2.5)


def test_calibration_statistics(small_vit):
    model, calib, _ = small_vit
    graph = capture(model, (1, 8, 8))
    top = calibrate(graph, calib, progress=False, granularity="tensor")
    p50 = calibrate(graph, calib, statistic="percentile", percentile=50,
                    granularity="tensor", progress=False)
    np.testing.assert_allclose(top["input"], calib.max())
    for name in top:
        assert (p50[name] <= top[name] + 1e-12).all()
        assert (top[name] > 0).all()
        assert np.unique(top[name]).size == 1
    # channel: a DataLoader of (x, label) batches gives the same scales, up
    # to the rounding of the float64 products: MKL's AVX2 kernels round a
    # row by how many rows its product has (batches of 5, not 32)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(calib),
                                       torch.zeros(len(calib))),
        batch_size=5)
    sig = calibrate(graph, calib, progress=False)
    for name, s in calibrate(graph, loader, progress=False).items():
        np.testing.assert_allclose(s, sig[name], rtol=1e-13, atol=0,
                                   err_msg=name)
    q = sig["blocks.0.attn.q"].reshape(2, 17, 4)
    # shared along head_dim (the product) and tokens (the qkv weight)
    assert (q == q[:, :1, :1]).all() and q[0, 0, 0] != q[1, 0, 0]
    logits = sig["blocks.0.attn.attention:logits"].reshape(2, 17, 17)
    assert (logits == logits[..., :1]).all()  # one scale per query row
    assert np.unique(logits).size > 2
    ann = {}
    run_graph(graph, torch.from_numpy(calib), ann.__setitem__)
    top = np.abs(ann["blocks.0.act"].numpy().reshape(-1, 17, 16)).max(
        (0, 1))  # per channel; channels that never fire take the largest
    np.testing.assert_allclose(sig["blocks.0.act"].reshape(17, 16)[0],
                               np.where(top > 0, top, top.max()))


class FarBelow(nn.Module):
    """One attention whose logits all sit near ``-shift``, and a readout of
    its mean output: ``softmax(q k^T / 2 - shift) v``."""

    def __init__(self, shift=8.0):
        super().__init__()
        self.qkv, self.out = nn.Linear(4, 12), nn.Linear(4, 3)
        self.shift = shift

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        a = torch.softmax(q @ k.transpose(1, 2) * 0.5 - self.shift, -1)
        return self.out((a @ v).mean(1))


def test_centred_logits_fire_where_every_logit_is_negative():
    """Rows whose logits are all below -(T - 1/2) ln B never fire in WOSS
    (no positive winner shifts them up), and the attention outputs 0;
    centred on calibration (each row's largest logit 0 on the median
    sample) the model computes the same and the SNN follows it as closely
    as it follows the model without the shift."""
    torch.manual_seed(0)
    model = FarBelow().double().eval()
    near = copy.deepcopy(model)
    near.shift = 0.0
    x = torch.randn(40, 5, 4, dtype=torch.float64)
    kw = dict(T=16, B=1.4, progress=False)
    plain = convert(model, x[:32], **kw)
    centred = convert(model, x[:32], center_logits=True, **kw)
    np.testing.assert_allclose(run_graph(centred.graph, x[32:]),
                               run_graph(plain.graph, x[32:]), rtol=1e-12)
    peaks = []

    def record(name, z):
        if name.endswith(":logits"):
            peaks.append(z.reshape(-1, 5, 5).max(-1).values)
    run_graph(centred.graph, x[:32], record)
    np.testing.assert_allclose(np.median(peaks[0].numpy(), 0), 0.0,
                               atol=1e-12)
    with torch.no_grad():
        want = model(x[32:]).numpy()
    err = {}
    for name, net in (("plain", plain), ("centred", centred),
                      ("near", convert(near, x[:32], **kw))):
        got = Engine(net, "fixed")(x[32:].numpy(), warn=False).logits
        err[name] = np.abs(got.numpy() - want).max()
    # plain: the attention is silent, the readout its bias alone
    silent = model.out.bias.detach().numpy()
    np.testing.assert_allclose(
        Engine(plain, "float")(x[32:].numpy(), warn=False).logits.numpy(),
        np.broadcast_to(silent, want.shape), atol=1e-6)
    assert err["centred"] < 0.6 * err["plain"], err
    assert err["centred"] < 1.5 * err["near"], err
