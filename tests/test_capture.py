"""Capture (:mod:`lava_spiked.capture`) of every supported operation,
checked by exact, unquantised runs against the PyTorch model
(:func:`~lava_spiked.capture.graph.run_graph`), the masks a model writes,
and the refusals of what cannot convert."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from lava_spiked.bundled.digits_vit import DigitsViT
from lava_spiked.capture import UnsupportedModelError, capture, run_graph
from lava_spiked.conversion import convert
from lava_spiked.engine import Engine
from toy_models import (MLP, EncoderLayer, MHABlock, PatchMean, TimmAttention,
                        randomize_norms)


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
    model = randomize_norms(build()).double().train()
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
    graph = capture(randomize_norms(DigitsViT(dim=8, heads=2, mlp=16)),
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


def test_more_than_one_required_input_is_refused():
    class ThreeInputs(nn.Module):
        def forward(self, x, mask, positions):
            return x

    with pytest.raises(UnsupportedModelError,
                       match="also requires mask, positions"):
        capture(ThreeInputs(), (4,))


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
