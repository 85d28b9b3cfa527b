"""The converter: capture of every supported operation (checked by exact,
unquantised evaluation against the PyTorch model), errors, calibration,
and converted networks in Lava against their golden models and the ANN."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lava.magma.core.process.variable import Var
from lava.magma.core.run_configs import Loihi2SimCfg
from torch import nn

import lava_spiked
from conftest import TAGS, lava_children
from lava_spiked.calibration import calibrate
from lava_spiked.capture import UnsupportedModelError, capture, run_graph
from lava_spiked.engine import Engine
from lava_spiked.bundled.digits_vit import (DigitsViT, TokenBatchNorm,
                                            digits_splits, load_default)
from lava_spiked.conversion import convert


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


class TimmAttention(nn.Module):
    """Attention written as timm writes it: shape arithmetic, one qkv
    Linear unbound into heads, scaled_dot_product_attention; patches by
    Tensor.unfold; F.linear head; CLS by chunk."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(4, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.w = nn.Parameter(torch.randn(3, dim))

    def forward(self, img):
        b = img.shape[0]
        p = img.unfold(2, 2, 2).unfold(3, 2, 2)  # (B, 1, 4, 4, 2, 2)
        x = self.embed(p.reshape(b, -1, 4))
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(B, N, C))
        first, _ = x.chunk(2, dim=1)
        return F.linear(first.mean(1), self.w)


CASES = {
    "linear-batchnorm-relu": (MLP, (6,)),
    "conv-residual-meanpool": (PatchMean, (2, 8, 8)),
    "plain-attention-cls": (lambda: DigitsViT(dim=8, heads=2, mlp=16),
                            (1, 8, 8)),
    "multihead-attention": (MHABlock, (5, 8)),
    "multihead-attention-seq-first": (lambda: MHABlock(False), (5, 8)),
    "encoder-layer-post-norm": (lambda: EncoderLayer(False), (5, 8)),
    "encoder-layer-pre-norm": (lambda: EncoderLayer(True), (5, 8)),
    "timm-style-attention": (TimmAttention, (1, 8, 8)),
}


@pytest.mark.parametrize("case", CASES)
def test_capture_is_exact_and_leaves_the_model_alone(case):
    """Folding every affine operation into token-shared synapses changes
    nothing: the captured graph, evaluated without quantisation on a batch
    of another size than the capture's, equals the model; the model's
    modes and parameters are what they were."""
    torch.manual_seed(0)
    build, shape = CASES[case]
    model = _randomize_norms(build()).double().train()
    before = copy.deepcopy(model.state_dict())
    graph = capture(model, shape)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype
    x = torch.randn((7,) + shape, dtype=torch.float64)
    model.eval()
    # torch's fused fast path computes a float mask differently (up to 0.4
    # apart); the converter follows torch's reference path
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            want = model(x).numpy()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    np.testing.assert_allclose(run_graph(graph, x).numpy(), want,
                               rtol=1e-9, atol=1e-9)
    if "attention" in case or "encoder" in case:
        assert graph.attention


def test_capture_places_populations_where_spikes_are_needed():
    graph = capture(_randomize_norms(DigitsViT(dim=8, heads=2, mlp=16)),
                    (1, 8, 8))
    layers = {p.name: (p.kind, p.shape) for p in graph.populations}
    assert layers == {
        "input": ("input", (1, 8, 8)),
        # a Linear reads the BatchNorm of a Conv output: materialised
        "blocks.0.norm1": ("neuron", (17, 8)),
        "blocks.0.attn.q": ("operand", (2, 17, 4)),
        "blocks.0.attn.k": ("operand", (2, 4, 17)),
        "blocks.0.attn.v": ("operand", (2, 17, 4)),
        "blocks.0.attn.attention": ("attention", (2, 17, 4)),
        # the residual stream, used by norm2 and by the next add
        "blocks.0.add": ("neuron", (17, 8)),
        "blocks.0.act": ("relu", (17, 16)),
        # the CLS token after the last add, picked in the model's forward:
        # named after the layer it feeds
        "head.input": ("neuron", (8,)),
        "head": ("readout", (10,))}
    np.testing.assert_allclose(graph.attention[0].coef, 0.5)  # 1/sqrt(4)
    # the model's own weights, not all-neuron matrices
    fc1 = graph["blocks.0.act"].synapses[0]
    assert fc1.weight.shape == (16, 8) and fc1.rows.shape == (17, 8)


def test_memory_follows_the_activations_not_their_square():
    """A model whose all-neuron matrices ((N C)^2 = (512 * 256)^2 float64,
    137 GB) could not exist converts, and no array of the plan is larger
    than a weight or an activation."""
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(256, 256), nn.Linear(256, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)) + x).mean(1)

    torch.manual_seed(0)
    data = torch.randn(8, 512, 256)
    net = convert(Wide().eval(), data, progress=False)
    sizes = [a.size for layer in net.plan.layers for syn in layer.synapses
             for a in (syn.rows, syn.weight, syn.out)]
    assert max(sizes) <= 512 * 256
    got = Engine(net, "fixed")(data[:3]).logits
    assert got.shape == (3, 4)


def test_silent_layer_converts():
    """A layer whose weights and bias are all zero never fires; the network
    still converts and matches the ANN."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    nn.init.zeros_(model[0].weight)
    nn.init.zeros_(model[0].bias)
    x = torch.randn(16, 4)
    net = convert(model.eval(), x, progress=False)
    with torch.no_grad():
        want = model(x[:3]).numpy()
    np.testing.assert_allclose(Engine(net, "float")(x[:3]).logits, want,
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(net.golden_fixed(x[0].numpy()), want[0],
                               atol=2.0 ** -16 * np.abs(want).max() * 2)


def test_top_level_convert_and_names():
    assert lava_spiked.convert is convert
    with pytest.raises(AttributeError, match="no attribute"):
        lava_spiked.not_a_name  # noqa: B018


@dataclasses.dataclass
class _Output:
    hidden: torch.Tensor
    logits: torch.Tensor


class KeywordModel(nn.Module):
    """Hugging Face style: data as a keyword, an optional mask, a
    structured output (tuple, dict or dataclass)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.fc, self.head = kind, nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, input_ids=None, inputs_embeds=None,
                attention_mask=None):
        hidden = torch.relu(self.fc(inputs_embeds))
        logits = self.head(hidden)
        if self.kind == "dict":
            return {"hidden": hidden, "logits": logits, "extra": None}
        if self.kind == "dataclass":
            return _Output(hidden, logits)
        return hidden, (logits,)


@pytest.mark.parametrize("kind, key", [("tuple", "1.0"), ("dict", "logits"),
                                       ("dataclass", "logits")])
def test_keyword_input_and_structured_output(kind, key):
    torch.manual_seed(0)
    model = KeywordModel(kind).eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        want = model.head(torch.relu(model.fc(x))).numpy()
    for output in (key, 1):
        graph = capture(model, (4,), output=output,
                        input_name="inputs_embeds")
        assert graph.output == "head"
        np.testing.assert_allclose(run_graph(graph, x.double()).numpy(), want,
                                   rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="model's outputs are"):
        capture(model, (4,), output="nope", input_name="inputs_embeds")
    with pytest.raises(ValueError, match="returns 2 tensors"):
        capture(model, (4,), output=2, input_name="inputs_embeds")
    with pytest.raises(ValueError, match="takes input_ids, inputs_embeds"):
        capture(model, (4,), input_name="embeds")


def test_required_extra_input_is_named():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, mask):
            return self.fc(x)

    with pytest.raises(UnsupportedModelError, match="also requires mask"):
        capture(TwoInputs(), (4,))


class TakesMask(nn.Module):
    """Attention over 6 tokens that takes its token mask, written as users
    write it: 'additive' (Hugging Face's 1 = real, -1e4 on padded keys,
    first token pooled), 'fill' (masked_fill with -inf, every token out),
    'torch' (nn.TransformerEncoder with PyTorch's key_padding_mask,
    True = padding, then a mean over real tokens)."""

    def __init__(self, style: str):
        super().__init__()
        self.style = style
        self.qkv, self.o = nn.Linear(8, 24), nn.Linear(8, 8)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(
            8, 2, 16, dropout=0.0, batch_first=True), 1,
            enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x, mask):
        if self.style == "torch":
            h = self.encoder(x, src_key_padding_mask=mask)
            keep = (~mask).float()[..., None]
            return self.head((h * keep).sum(1) / keep.sum(1))
        q, k, v = self.qkv(x).chunk(3, -1)
        z = q @ k.transpose(1, 2) / 8 ** 0.5
        if self.style == "additive":
            z = z + (1.0 - mask[:, None, :].float()) * -1e4
            return self.head(self.o(z.softmax(-1) @ v)[:, 0])
        z = z.masked_fill(mask[:, None, :] == 0, float("-inf"))
        return self.o(z.softmax(-1) @ v)


@pytest.mark.parametrize("style", ["additive", "fill", "torch"])
def test_a_model_that_takes_its_mask_gets_it_at_run_time(style):
    """forward(x, mask): the mask, in the model's own convention, becomes
    the network's runtime mask (1 = real token): the network without
    quantisation equals the model fed the masks, at every real token."""
    torch.manual_seed(0)
    model = TakesMask(style).eval()
    x = torch.randn(48, 6, 8)
    real = torch.arange(6)[None, :] < torch.randint(1, 7, (48,))[:, None]
    net = convert(model, x[:32], attention_mask=real[:32].long().numpy(),
                  progress=False)
    assert net.plan.tokens == 6
    assert net.plan.mean_pool == (style == "torch")
    with torch.no_grad():
        want = model(x[32:], ~real[32:] if style == "torch" else
                     real[32:].long()).double()
    got = torch.from_numpy(net.ann(x[32:].numpy(), real[32:].numpy())
                           ).reshape(want.shape)
    if style == "fill":  # padded tokens' outputs are free
        got, want = got[real[32:]], want[real[32:]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    Engine(net, "fixed")(x[32:].numpy(), attention_mask=real[32:].numpy(),
                         warn=False)


def test_a_stock_model_takes_its_own_attention_mask():
    """A Hugging Face BertModel through the generic convert, fed
    inputs_embeds and its own attention_mask."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, attn_implementation="eager")).eval()
    x = torch.randn(24, 8, 32)
    real = (torch.arange(8)[None, :] < torch.randint(1, 9, (24,))[:, None]
            ).long()
    net = convert(model, x[:16].numpy(), attention_mask=real[:16].numpy(),
                  input_name="inputs_embeds", output="last_hidden_state",
                  progress=False)
    with torch.no_grad():
        want = model(inputs_embeds=x[16:], attention_mask=real[16:]
                     ).last_hidden_state.double()
    got = torch.from_numpy(net.ann(x[16:].numpy(), real[16:].numpy())
                           ).reshape(want.shape)
    keep = real[16:].bool()
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5, atol=1e-5)


class IgnoresMask(TakesMask):
    def forward(self, x, attention_mask=None):
        return super().forward(x, torch.ones(x.shape[:2]))


class TakesLengths(TakesMask):
    def forward(self, x, lengths):
        return super().forward(x, torch.ones(x.shape[:2])) * lengths.sum()


@pytest.mark.parametrize("model, name", [
    (IgnoresMask("additive"), "attention_mask"),
    (TakesLengths("additive"), "lengths")])
def test_an_input_that_is_no_padding_mask_is_refused_by_name(model, name):
    """A mask parameter the model does not use as a padding mask, or
    another input, is refused naming it and what was tried: never a
    network that computes something else."""
    x = torch.randn(16, 6, 8)
    real = torch.arange(6)[None, :] < torch.randint(1, 7, (16,))[:, None]
    with pytest.raises(UnsupportedModelError,
                       match=f"{name} was tried as the token mask.*"
                       "1 = real token: relative difference.*"
                       "True = padding"):
        convert(model.eval(), x, attention_mask=real.long().numpy(),
                progress=False)
    if name == "lengths":  # required: without masks it says what to give
        with pytest.raises(UnsupportedModelError,
                           match="requires lengths: if it is a token mask, "
                           "give convert .*attention_mask="):
            convert(model.eval(), x, progress=False)


def test_an_unsupported_op_is_named_whatever_the_mask():
    """A model that takes its mask and cannot be captured for another
    reason is refused for that reason alone."""
    class Cumulative(nn.Module):
        def forward(self, x, attention_mask):
            return torch.cumsum(x, 1) * attention_mask[..., None]

    real = np.ones((4, 6), np.int64)
    with pytest.raises(UnsupportedModelError, match="^cannot convert these "
                       "operations.*cumsum"):
        convert(Cumulative(), np.random.rand(4, 6, 8), attention_mask=real,
                progress=False)


def test_more_than_one_required_input_is_refused():
    class ThreeInputs(nn.Module):
        def forward(self, x, mask, positions):
            return x

    with pytest.raises(UnsupportedModelError,
                       match="also requires mask, positions"):
        capture(ThreeInputs(), (4,))


def _torchvision_vit(**kw):
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    cfg = dict(image_size=16, patch_size=8, num_layers=2, num_heads=2,
               hidden_dim=16, mlp_dim=32, num_classes=3)
    vit = VisionTransformer(**{**cfg, **kw}).double().eval()
    # torchvision zero-initialises the head, which would hide every error
    nn.init.normal_(vit.heads.head.weight)
    nn.init.normal_(vit.heads.head.bias)
    return vit


def test_unmodified_torchvision_vit_converts():
    """torchvision's VisionTransformer, unchanged (LayerNorm, GELU,
    nn.MultiheadAttention, class token, position embedding): the capture
    is exact, LayerNorm and GELU become staged populations, and the engine
    reproduces the integer golden model bit for bit."""
    vit = _torchvision_vit()
    graph = capture(vit, (3, 16, 16))
    kinds = {p.name: p.kind for p in graph.populations}
    assert kinds["encoder.layers.encoder_layer_0.ln_1"] == "layernorm"
    assert kinds["encoder.layers.encoder_layer_0.mlp.1"] == "activation"
    assert kinds["encoder.ln"] == "layernorm"
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        want = vit(x).numpy()
    np.testing.assert_allclose(run_graph(graph, x).numpy(), want, rtol=1e-9,
                               atol=1e-9)
    net = convert(vit, torch.randn(64, 3, 16, 16, dtype=torch.float64),
                  progress=False)
    res = Engine(net, "fixed")(x[:2], warn=False)
    for i in range(2):
        gold = net.golden_fixed(x[i].numpy())
        np.testing.assert_array_equal(res.logits[i].numpy(), gold)


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ELU()

    def forward(self, x):
        x = self.act(self.fc(x))
        return x * x + torch.exp(x)


def test_unsupported_operations_are_listed_together():
    with pytest.raises(UnsupportedModelError) as err:
        capture(Unsupported(), (4,))
    msg = str(err.value)
    for part in ("act (ELU: elu)", "exp (Unsupported: exp)"):
        assert part in msg
    assert "elementwise" not in msg  # reported before symbolic evaluation


def test_elementwise_product_of_activations_is_refused():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    class Gated(nn.Module):
        def forward(self, x):
            return x * x.flip(-1)

    with pytest.raises(UnsupportedModelError, match="a pointwise function "
                                                    "of an activation"):
        capture(Square(), (3,))
    with pytest.raises(UnsupportedModelError, match="elementwise product"):
        capture(Gated(), (3,))


def test_untraceable_model_is_refused():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedModelError,
                       match=r"operations to phase-coded spikes: "
                       r"gt \(Branchy: gt\); ne \(Branchy: ne\)\. "):
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
def test_multihead_attention_model_in_lava_equals_golden(tag):
    torch.manual_seed(6)
    model = MHABlock().eval()
    data = np.random.default_rng(4).normal(0, 1, (22, 5, 8)) \
        .astype(np.float32)
    net = convert(model, data[:20], T=10, B=1.3, progress=False)
    got = _assert_lava_equals_golden(net, data[20:], tag)
    mode = "fixed" if tag == "fixed_pt" else "float"
    want = Engine(net, mode)(data[20:]).logits.numpy()
    if tag == "fixed_pt":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("tag", TAGS)
def test_shallow_mlp_in_lava_equals_golden(tag):
    """Two layers only: the sample period is set by the 2T window rule."""
    torch.manual_seed(4)
    model = _randomize_norms(MLP())
    data = np.random.default_rng(2).normal(0, 1, (24, 6)).astype(np.float32)
    net = convert(model, data[:20], T=8, B=1.3, progress=False)
    assert net.num_steps == max(net.plan[net.plan.output].window.fire + 1,
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


class MaskedAttention(nn.Module):
    """Single-head attention over 6 tokens with a constant mask (the last
    two keys hidden) written in one of the ways models write it."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(8, 8) for _ in range(3))
        self.out = nn.Linear(48, 3)
        self.register_buffer("mask", mask)

    def forward(self, x):
        z = self.q(x) @ self.k(x).transpose(-1, -2) / 8 ** 0.5
        z = z.masked_fill(self.mask, float("-inf")) \
            if self.mask.dtype == torch.bool else z + self.mask
        return self.out((torch.softmax(z, -1) @ self.v(x)).flatten(1))


HIDDEN = torch.zeros(6, 6, dtype=torch.bool)
HIDDEN[:, 4:] = True


def _masked_net(mask):
    torch.manual_seed(0)
    model = MaskedAttention(mask).eval()
    x = torch.randn(40, 6, 8)
    return model, convert(model, x[:32], progress=False), x[32:].numpy()


@pytest.mark.parametrize("mask", [
    torch.where(HIDDEN, float("-inf"), 0.0),
    torch.where(HIDDEN, torch.finfo(torch.float32).min, 0.0),
    torch.where(HIDDEN, -1e4, 0.0), torch.where(HIDDEN, -1e9, 0.0),
    torch.where(HIDDEN, -100.0, 0.0)],  # Swin's: exp(-100) is not 0
    ids=["-inf", "finfo.min", "-1e4", "-1e9", "-100"])
def test_every_way_of_writing_a_mask_is_a_mask(mask):
    """Additive masks give the very network of the boolean mask: the same
    masked entries, no bias, the logits' scale from the real logits."""
    _, ref, x = _masked_net(HIDDEN)
    model, net, _ = _masked_net(mask)
    op, = net.plan.attention
    np.testing.assert_array_equal(op.mask.reshape(6, 6), HIDDEN.numpy())
    assert (op.logit_bias == 0).all() and op.logit_scale.max() < 5
    np.testing.assert_array_equal(op.logit_scale,
                                  ref.plan.attention[0].logit_scale)
    np.testing.assert_array_equal(Engine(net, "fixed")(x, warn=False).logits,
                                  Engine(ref, "fixed")(x, warn=False).logits)
    with torch.no_grad():
        np.testing.assert_allclose(net.ann(x), model(torch.from_numpy(x)),
                                   rtol=1e-5, atol=1e-6)


def test_a_small_negative_bias_stays_a_bias():
    bias = torch.where(HIDDEN, -3.0, 0.0)  # softmax weight e**-3: not 0
    torch.manual_seed(0)
    net = convert(MaskedAttention(bias).eval(), torch.randn(32, 6, 8),
                  progress=False)
    op, = net.plan.attention
    assert not op.mask.any()
    np.testing.assert_allclose((op.logit_bias * op.logit_scale).reshape(
        6, 6), bias.numpy())


def test_integer_index_buffers_stay_integer():
    """Position ids kept as an integer buffer index a parameter (by
    subscript and by index_select): capture keeps them integer."""
    class Positions(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.randn(10, 8))
            self.register_buffer("ids", torch.arange(5) * 2)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = x + self.pos[self.ids] + self.pos.index_select(0, self.ids)
            return self.fc(torch.relu(x)).mean(1)

    torch.manual_seed(0)
    model = Positions().eval()
    x = torch.randn(4, 5, 8, dtype=torch.float64)
    graph = capture(model, (5, 8))
    assert model.ids.dtype == torch.int64
    with torch.no_grad():
        want = model.double()(x).numpy()
    np.testing.assert_allclose(run_graph(graph, x).numpy(), want, rtol=1e-9,
                               atol=1e-12)


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


@pytest.mark.parametrize("tag", TAGS)
def test_outlier_channel_keeps_the_other_rows(tag):
    """One channel into a LayerNorm 1000x larger than the rest (MiniLM's
    outlier features; the LayerNorm membrane has one scale): its row gets
    its own exponent, the other rows keep their mantissas, Lava realises
    the two exponents as two connections, and Lava, the golden models and
    the engine agree."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight[0] *= 1000.0
        model[0].bias[0] *= 1000.0
    model = model.double().eval()
    data = torch.randn(64, 6, dtype=torch.float64)
    net = convert(model, data, progress=False)
    (syn,) = net.plan[net.plan.layers[1].name].synapses
    assert syn.shift[0] >= 8 and (syn.shift[1:] <= 2).all()
    assert np.count_nonzero(syn.weight[1:]) > 0.9 * syn.weight[1:].size
    assert len(syn.split()) >= 2
    res = Engine(net, "fixed")(data[:2], warn=False)
    got = _assert_lava_equals_golden(net, data[:2].numpy(), tag)
    if tag == "fixed_pt":
        np.testing.assert_array_equal(np.stack(got), res.logits.numpy())


@pytest.mark.slow
def test_samples_stream_through_lava(small_vit):
    """A new sample enters every stream_period (3T + 1 here: V's traces
    wait for the softmax) steps: 3 samples take 2 periods plus the
    readout's latency, not 3 whole sample lengths, and give the golden
    model's logits, also after a run of another length; with probes,
    samples go one at a time and agree."""
    from lava.magma.core.run_conditions import RunSteps

    from lava_spiked.network import SpikingNetwork
    model, calib, test = small_vit
    net = convert(model, calib, T=12, B=1.25, progress=False)
    period, fire = net.plan.stream_period, \
        net.plan[net.plan.output].window.fire
    assert period == 3 * 12 + 1 < net.num_steps
    x = test[:3]
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    with net:
        got = net.infer(x, cfg, progress=False)
        # to the last readout, and on until every process has finished
        # the last sample (its event counters are read then)
        assert 2 * period + fire + 1 <= net.lava("fixed_pt").steps < \
            3 * period + fire + 1
        again = net.infer(x[2:], cfg, progress=False)  # after a stream
        net.run(RunSteps(num_steps=5), cfg)  # a user's run of odd length
        last = net.infer(x[:1], cfg, progress=False)
    for out, sample in zip(got, x):
        np.testing.assert_array_equal(out, net.golden_fixed(sample))
    np.testing.assert_array_equal(again[0], got[2])
    np.testing.assert_array_equal(last[0], got[0])
    probed = SpikingNetwork(net.plan, record=True)
    with probed:
        np.testing.assert_array_equal(
            probed.infer(x, cfg, progress=False), got)
    assert not probed.lava("fixed_pt").streams and len(probed.recorded) == 3


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


class AdditiveCausal(nn.Module):
    """Attention with a causal mask added as the lowest float (as
    transformers 5 writes GPT-2's) and a bias of -3 on the last key."""

    def __init__(self, n=6):
        super().__init__()
        self.qkv, self.out = nn.Linear(4, 12), nn.Linear(4, 3)
        low = torch.finfo(torch.float32).min
        bias = torch.zeros(n, n).masked_fill(
            torch.ones(n, n, dtype=torch.bool).triu(1), low)
        bias[:, -1] = torch.where(bias[:, -1] == 0, -3.0, bias[:, -1])
        self.register_buffer("bias", bias)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        a = torch.softmax(q @ k.transpose(1, 2) + self.bias, -1)
        return self.out(a @ v)


def test_additive_masks_are_found_under_runtime_padding():
    """The calibration texts are all shorter than the network (the last
    key is always padded): padded keys say nothing about a mask, so every
    lowest-float entry is still found a mask, and the -3 on the last key,
    never seen, stays a bias."""
    torch.manual_seed(0)
    model = AdditiveCausal().double().eval()
    x = torch.randn(16, 6, 4, dtype=torch.float64)
    count = torch.randint(2, 6, (16,))
    mask = (torch.arange(6)[None, :] < count[:, None]).long()
    net = convert(model, x, attention_mask=mask.numpy(), T=12, B=1.4,
                  progress=False)
    op, = net.graph.attention
    upper = np.triu(np.ones((6, 6), bool), 1)
    assert (op.mask == upper).all()
    assert (op.bias[:, -1, -1] == -3.0).all()  # the diagonal's last entry
    Engine(net, "fixed")(x.numpy()[:2], attention_mask=mask.numpy()[:2],
                         warn=False)  # the scales stay small: it runs
