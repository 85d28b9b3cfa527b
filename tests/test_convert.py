"""The converter: capture of every supported operation (checked by exact,
unquantised evaluation against the PyTorch model), errors, calibration,
and converted networks in Lava against their golden models and the ANN."""
import numpy as np
import pytest
import torch
from lava.magma.core.process.variable import Var
from lava.magma.core.run_configs import Loihi2SimCfg
from torch import nn

from conftest import TAGS, lava_children
from lava_spiked.convert import (UnsupportedModelError, capture, evaluate,
                                 plain)
from lava_spiked.models import (DigitsViT, TokenBatchNorm, digits_splits,
                                load_default)
from lava_spiked.network import calibrate, convert


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn = nn.Linear(6, 12), nn.BatchNorm1d(12)
        self.act, self.fc2 = nn.ReLU(), nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(self.act(self.bn(self.fc1(x))))


class PatchMean(nn.Module):
    """Conv patch embedding, residual ReLU branch, mean pooling, head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(2, 8, 4, stride=4)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + torch.relu(self.fc(x))
        return self.head(x.mean(dim=1))


class MHABlock(nn.Module):
    """nn.MultiheadAttention with an additive mask, then CLS pooling."""

    def __init__(self, batch_first=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.batch_first = batch_first
        self.register_buffer("mask", torch.triu(torch.full((5, 5), -2.0), 1))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = x if self.batch_first else x.transpose(0, 1)
        y = self.attn(y, y, y, attn_mask=self.mask, need_weights=False)[0]
        y = y if self.batch_first else y.transpose(0, 1)
        return self.head((x + y)[:, 0])


class EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer with ReLU and token-wise BatchNorm."""

    def __init__(self, norm_first):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0,
                                           batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2,
                                             enable_nested_tensor=False)
        for each in self.encoder.layers:
            each.norm1, each.norm2 = TokenBatchNorm(8), TokenBatchNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


CASES = {
    "linear-batchnorm-relu": (MLP, (6,)),
    "conv-residual-meanpool": (PatchMean, (2, 8, 8)),
    "plain-attention-cls": (lambda: DigitsViT(dim=8, heads=2, mlp=16),
                            (1, 8, 8)),
    "multihead-attention": (MHABlock, (5, 8)),
    "multihead-attention-seq-first": (lambda: MHABlock(False), (5, 8)),
    "encoder-layer-post-norm": (lambda: EncoderLayer(False), (5, 8)),
    "encoder-layer-pre-norm": (lambda: EncoderLayer(True), (5, 8)),
}


@pytest.mark.parametrize("case", CASES)
def test_capture_is_exact(case):
    """Folding every affine operation into the synapses changes nothing:
    the captured graph, evaluated without quantisation, equals the model."""
    torch.manual_seed(0)
    build, shape = CASES[case]
    model = _randomize_norms(build())
    graph = capture(model, shape)
    x = torch.randn((3,) + shape, dtype=torch.float64)
    with torch.no_grad():
        # torch's own TransformerEncoderLayer forward cannot run with
        # BatchNorm norms (its fast-path checks read LayerNorm attributes);
        # test_plain_forwards_match_torch covers the plain forwards.
        want = plain(model).double()(x).numpy()
    for i in range(3):
        np.testing.assert_allclose(evaluate(graph, x[i].numpy()), want[i],
                                   rtol=1e-9, atol=1e-9)
    if "attention" in case or "encoder" in case:
        assert graph.attention


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_plain_forwards_match_torch(norm_first, batch_first):
    """The traceable forwards of MultiheadAttention, TransformerEncoderLayer
    and TransformerEncoder compute what torch's own forwards compute (here
    with LayerNorm, which torch's forward needs)."""
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0,
                                       batch_first=batch_first,
                                       norm_first=norm_first)
    # Train mode with dropout 0 is deterministic and takes torch's reference
    # path; torch's eval-mode fast path treats a float src_mask differently
    # (up to 0.4 apart here), and the converter follows the reference.
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).train()
    mask = torch.triu(torch.full((5, 5), -1.5), 1)
    x = torch.randn((3, 5, 8) if batch_first else (5, 3, 8))
    with torch.no_grad():
        want = model(x, mask=mask)
        got = plain(model)(x, mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_capture_places_populations_where_spikes_are_needed():
    graph = capture(_randomize_norms(DigitsViT(dim=8, heads=2, mlp=16)),
                    (1, 8, 8))
    kinds = [p.kind for p in graph.populations]
    assert kinds == ["input", "operand", "operand", "operand", "attention",
                     "relu", "readout"]
    q, k, v = graph.populations[1:4]
    assert q.shape == (2, 17, 4) and k.shape == (2, 4, 17)
    assert v.shape == (2, 17, 4)
    assert (q.shared_axes, k.shared_axes, v.shared_axes) == ((2,), (1,), (1,))
    np.testing.assert_allclose(graph.attention[0].coef, 0.5)  # 1/sqrt(4)


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.act(self.norm(self.fc(x)))
        return x * x + torch.tanh(x)


def test_unsupported_operations_are_listed_together():
    with pytest.raises(UnsupportedModelError) as err:
        capture(Unsupported(), (4,))
    msg = str(err.value)
    for part in ("norm (LayerNorm)", "act (GELU)", "function tanh"):
        assert part in msg
    assert "elementwise" not in msg  # reported before symbolic evaluation


def test_elementwise_product_of_activations_is_refused():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    with pytest.raises(UnsupportedModelError, match="elementwise product"):
        capture(Square(), (3,))


def test_untraceable_model_is_refused():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedModelError, match="could not trace"):
        capture(Branchy(), (3,))


@pytest.fixture(scope="module")
def small_vit():
    torch.manual_seed(1)
    model = _randomize_norms(DigitsViT(dim=8, heads=2, mlp=16), seed=1)
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (40, 1, 8, 8)).astype(np.float32)
    return model, data[:32], data[32:]


def _assert_lava_equals_golden(net, samples, tag):
    """Run ``samples`` through Lava under ``tag``: fixed_pt logits equal
    ``golden_fixed`` exactly, floating_pt ones ``golden_float`` to 1e-6."""
    with net:
        got = net.infer(samples, Loihi2SimCfg(select_tag=tag),
                        progress=False)
    for x, out in zip(samples, got):
        if tag == "fixed_pt":
            np.testing.assert_array_equal(out, net.golden_fixed(x))
        else:
            np.testing.assert_allclose(out, net.golden_float(x), rtol=1e-6,
                                       atol=1e-9)
    return got


def test_calibration_errors(small_vit):
    model, calib, _ = small_vit
    with pytest.raises(ValueError, match="calibration_data must be"):
        convert(model, np.zeros((0, 1, 8, 8)))
    bad = calib.copy()
    bad[3, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        convert(model, bad, progress=False)
    with pytest.raises(ValueError, match="does not accept inputs of shape"):
        convert(model, np.zeros((4, 3, 5)), progress=False)
    graph = capture(model, (1, 8, 8))
    with pytest.raises(ValueError,
                       match="calibration_data must be \\(n, 1, 8, 8\\)"):
        calibrate(graph, np.zeros((4, 1, 8, 9)))
    with pytest.raises(ValueError, match="granularity must be"):
        calibrate(graph, calib, granularity="head")
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
    assert np.isclose(top["x"], calib.max()).all()
    for name in top:
        assert (p50[name] <= top[name] + 1e-12).all()
        assert (top[name] > 0).all()
    token = calibrate(graph, calib, progress=False)
    q = graph.populations[1]
    assert token[q.name].shape == (2, 17, 1)  # shared along head_dim


@pytest.mark.parametrize("tag", TAGS)
def test_one_block_model_equals_golden_in_lava(small_vit, tag):
    model, calib, test = small_vit
    net = convert(model, calib, T=12, B=1.25, progress=False)
    _assert_lava_equals_golden(net, test[:2], tag)
    assert lava_children() == []


def test_failed_inference_leaves_no_process(small_vit, monkeypatch):
    model, calib, test = small_vit
    net = convert(model, calib, T=6, B=1.3, progress=False)
    with pytest.raises(ValueError, match="NaN or inf"):
        net.infer(np.full((1, 1, 8, 8), np.nan), Loihi2SimCfg())
    with pytest.raises(ValueError, match="samples must be \\(n, 1, 8, 8\\)"):
        net.infer(test[:, :, :4], Loihi2SimCfg())

    def broken(self):
        raise RuntimeError("reading failed")

    monkeypatch.setattr(Var, "get", broken)
    with pytest.raises(RuntimeError, match="reading failed"):
        with net:
            net.infer(test[:1], Loihi2SimCfg(select_tag="fixed_pt"),
                      progress=False)
    assert lava_children() == []


@pytest.mark.slow
def test_default_model_agrees_with_ann_in_lava():
    """The bundled ViT at T = 40, B = 1.15: 20 test images through Lava
    (fixed_pt) equal the integer golden model and agree with the ANN."""
    splits = digits_splits()
    model = load_default()
    net = convert(model, splits["calibration"][0], progress=False)
    x = splits["test"][0][:20]
    with net:
        snn = net.infer(x, Loihi2SimCfg(select_tag="fixed_pt"),
                        progress=False)
    with torch.no_grad():
        ann = model(torch.from_numpy(x)).numpy()
    assert (snn.argmax(1) == ann.argmax(1)).mean() >= 0.95
    for i in (0, 7):
        np.testing.assert_array_equal(snn[i], net.golden_fixed(x[i]))


@pytest.mark.parametrize("tag", TAGS)
def test_shallow_mlp_in_lava_equals_golden(tag):
    """Two layers only: the sample period is set by the 2T window rule."""
    torch.manual_seed(4)
    model = _randomize_norms(MLP())
    data = np.random.default_rng(2).normal(0, 1, (24, 6)).astype(np.float32)
    net = convert(model, data[:20], T=8, B=1.3, progress=False)
    assert net.num_steps == max(net.windows[net.graph.output.name].fire + 1,
                                16)
    _assert_lava_equals_golden(net, data[20:], tag)


@pytest.mark.parametrize("tag", TAGS)
def test_single_linear_and_relu_ending_models_in_lava(tag):
    """A readout fed by the encoder (the 2T period wins over the readout's
    report step) and a model whose output is already a ReLU population."""
    torch.manual_seed(5)
    data = np.random.default_rng(3).normal(0, 1, (12, 4)).astype(np.float32)
    for model in (nn.Linear(4, 3), nn.Sequential(nn.Linear(4, 3),
                                                 nn.ReLU())):
        net = convert(model.eval(), data[:10], T=8, B=1.3, progress=False)
        names = [p.name for p in net.graph.populations]
        assert len(names) == len(set(names))
        got = _assert_lava_equals_golden(net, data[10:], tag)
        assert np.abs(got).max() > 0
