"""Each op rule of capture (lava_spiked.capture.rules) on a model that
needs it: the captured graph, evaluated exactly in float64, equals the
model; or the model is refused by one UnsupportedModelError that names the
module and what it lacks. Without its rule, each of these models is
refused (no rule) or wrong (a generic rule)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

from lava_spiked.capture import (RULES, UnsupportedModelError, capture,
                                 run_graph, export_program)
from lava_spiked.capture.frontend import op_name
from lava_spiked.numerics import nonlinear


class Wrap(nn.Module):
    """``fn(self, fc(x))``: a Linear first, so that every rule sees a
    weighted term, not the input."""

    def __init__(self, fn, dim=4):
        super().__init__()
        self.fn, self.fc = fn, nn.Linear(dim, dim)
        self.register_buffer("idx", torch.tensor([3, 0, 0, 2]))
        self.register_buffer("hidden", torch.tensor([True, False] * 2))
        self.register_buffer("w1", torch.randn(2, dim, 3))
        self.cls = nn.Parameter(torch.randn(1, 1, dim))

    def forward(self, x):
        return self.fn(self, self.fc(x))


MOVES = {
    "view after permute and contiguous":
        lambda m, x: x.permute(0, 2, 1).contiguous().view(len(x), -1),
    "strided slice": lambda m, x: x[:, ::2, 1::2],
    "pad with zeros": lambda m, x: F.pad(x, (1, 2, 0, 1)),
    "pad with a value": lambda m, x: F.pad(x, (1, 1), value=0.5),
    "pad by replication": lambda m, x: F.pad(x, (2, 1), mode="replicate"),
    "pad by reflection": lambda m, x: F.pad(x, (1, 1), mode="reflect"),
    "roll": lambda m, x: torch.roll(x, shifts=(2, -1), dims=(1, 2)),
    "flip": lambda m, x: x.flip(1),
    "cat with a parameter":
        lambda m, x: torch.cat([m.cls.expand(len(x), 1, -1), x], 1),
    "stack": lambda m, x: torch.stack([x, 2 * x], 1),
    "chunk": lambda m, x: x.chunk(2, -1)[1],
    "index_select with a buffer": lambda m, x: x.index_select(1, m.idx),
    "gather with a buffer": lambda m, x: torch.gather(
        x, 1, m.idx.view(1, -1, 1).expand(len(x), -1, x.shape[-1])),
    "advanced indexing": lambda m, x: x[:, m.idx, 1:],
    "masked_fill with a constant mask":
        lambda m, x: x.masked_fill(m.hidden[:, None], 0.25),
    "in-place add and mul": lambda m, x: x.relu().add_(1.0).mul_(2.0),
    "adaptive average pooling":
        lambda m, x: F.adaptive_avg_pool2d(x.unsqueeze(1), (2, 2)),
    "adaptive average pooling 1d": lambda m, x: F.adaptive_avg_pool1d(x, 2),
    "sum": lambda m, x: x.sum(1),
    "repeat": lambda m, x: x.repeat(1, 2, 1),
    "unfold": lambda m, x: x.unfold(1, 2, 1),
    "split with sizes": lambda m, x: x.split([1, 3], 1)[1],
    "squeeze and unsqueeze": lambda m, x: x[:, :1].squeeze(1).unsqueeze(-1),
    "detach": lambda m, x: x.detach() * 2,
    "type_as": lambda m, x: x.type_as(m.cls),
    "alias": lambda m, x: x[...],
    "expand": lambda m, x: x[:, :1].expand(-1, 4, -1),
    "conv1d": lambda m, x: F.conv1d(x, m.w1, padding=1),
    "bmm": lambda m, x: torch.bmm(torch.softmax(torch.bmm(
        x, x.transpose(1, 2)), -1), x),
    "tanh, sigmoid, silu, gelu": lambda m, x: torch.tanh(x) + torch.sigmoid(
        x.flip(1)) + F.silu(x.roll(1, 2)) + F.gelu(2 * x),
}

# ops that read only the shape of an activation: their results are
# constants, and so is what is built from them
SHAPE_ONLY = {
    "new_zeros": lambda x: x.new_zeros(4),
    "new_ones": lambda x: x.new_ones(4),
    "new_full": lambda x: x.new_full((4,), 2.0),
    "new_empty": lambda x: x.new_empty(4).fill_(1.5),
    "zeros_like": lambda x: torch.zeros_like(x),
    "ones_like": lambda x: torch.ones_like(x),
    "full_like": lambda x: torch.full_like(x, -0.5),
    "empty_like": lambda x: torch.empty_like(x).fill_(0.25),
}


def _exact(model, shape, n=5):
    torch.manual_seed(0)
    model = model.double().eval()
    x = torch.randn((n,) + shape, dtype=torch.float64)
    graph = capture(model, shape)
    with torch.no_grad():
        want = model(x)
    np.testing.assert_allclose(run_graph(graph, x).reshape(want.shape),
                               want, rtol=1e-9, atol=1e-12)
    return graph


@pytest.mark.parametrize("case", MOVES)
def test_ops_that_move_values(case):
    _exact(Wrap(MOVES[case]), (4, 4))


@pytest.mark.parametrize("case", SHAPE_ONLY)
def test_constants_built_from_an_activations_shape(case):
    _exact(Wrap(lambda m, x: x.relu() + 3 * SHAPE_ONLY[case](x)), (4, 4))


# pointwise functions of one activation, written out as models write them
# (name -> (forward, the activation stage it must become))
WRITTEN_OUT = {
    "GELU's tanh form with pow (Hugging Face's NewGELUActivation)": (
        lambda m, x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (
            x + 0.044715 * torch.pow(x, 3.0)))), "gelu_tanh"),
    "GELU's tanh form with x * x (FastGELUActivation)": (
        lambda m, x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608028654 * (
            1.0 + 0.044715 * x * x))), "gelu_tanh"),
    "SiLU as x * sigmoid(x)": (
        lambda m, x: x * torch.sigmoid(x), "silu"),
    "x * sigmoid(1.702 x) (QuickGELU)": (
        lambda m, x: x * torch.sigmoid(1.702 * x), "silu"),
    "a scaled and shifted tanh": (
        lambda m, x: 1.0 - 2.0 * torch.tanh(x), "tanh"),
    "GELU by erf, as F.gelu": (lambda m, x: F.gelu(x), "gelu"),
}


@pytest.mark.parametrize("case", WRITTEN_OUT)
def test_activations_written_out_are_recognised_by_what_they_compute(case):
    """A chain of pointwise ops on one activation becomes one activation
    population whose stage computes the chain (up to a scale and shift
    folded into its readers), whatever the module is called."""
    fn, name = WRITTEN_OUT[case]
    graph = _exact(Wrap(fn), (3, 4))
    stages = [p for p in graph.populations if p.kind == "activation"]
    assert [p.fn for p in stages] == [name]


def test_identify_finds_the_scale_and_shift():
    assert nonlinear.identify(lambda x: 1.0 - 2.0 * np.tanh(x)) == (
        "tanh", -2.0, 1.0)
    assert nonlinear.identify(lambda x: x * x) is None
    assert nonlinear.identify(np.exp) is None


def test_compositions_that_are_no_activation_split_into_stages():
    """GELU of GELU is two stages; ``x + gelu(x)`` a stage and a sum;
    ``x * gelu(x)`` and a bare ``x ** 2`` are refused by name."""
    graph = _exact(Wrap(lambda m, x: F.gelu(F.gelu(x))), (3, 4))
    assert [p.kind for p in graph.populations].count("activation") == 2
    graph = _exact(Wrap(lambda m, x: x + F.gelu(x)), (3, 4))
    assert [p.kind for p in graph.populations].count("activation") == 1
    with pytest.raises(UnsupportedModelError,
                       match="product of two activations"):
        capture(Wrap(lambda m, x: x * F.gelu(x)).double(), (3, 4))
    with pytest.raises(UnsupportedModelError,
                       match=r"\(Wrap: pow\): a pointwise function of an "
                             "activation that is none of gelu"):
        capture(Wrap(lambda m, x: (x ** 2).mean(-1)).double(), (3, 4))


def test_where_masks_logits_and_moves_activations():
    """``torch.where`` with a constant condition, as GPT-2's eager
    attention masks its causal logits with the dtype's lowest value: a
    masked product; on an activation it selects, like masked_fill."""
    def causal(m, x):
        logits = x @ x.transpose(1, 2)
        keep = torch.ones(4, 4, dtype=torch.bool).tril()
        logits = torch.where(keep, logits, torch.finfo(x.dtype).min)
        return torch.softmax(logits, -1) @ x
    graph = _exact(Wrap(causal), (4, 4))
    assert graph.attention[0].mask.sum() == 6  # above the diagonal
    _exact(Wrap(lambda m, x: torch.where(m.hidden[:, None], x, -0.5)),
           (4, 4))
    _exact(Wrap(lambda m, x: torch.where(m.hidden[:, None], x.relu(),
                                         x.flip(1))), (4, 4))
    with pytest.raises(UnsupportedModelError, match="only -inf or the "
                                                    "lowest float masks"):
        capture(Wrap(lambda m, x: torch.softmax(torch.where(
            m.hidden[:, None], x @ x.transpose(1, 2), -5.0), -1) @ x
        ).double(), (4, 4))


def test_every_op_has_one_rule_of_a_known_kind():
    assert {r.kind for r in RULES.values()} == {"value", "shape", "meta"}
    for name in ("pad", "roll", "index", "new_zeros", "view",
                 "_assert_tensor_metadata"):
        assert name in RULES


def test_in_place_ops_are_functionalised():
    """``add_`` and ``mul_`` never reach a rule: the export is
    functionalised first, so no in-place op needs one."""
    ep, _ = export_program(Wrap(MOVES["in-place add and mul"]).double(),
                           (4, 4))
    names = {op_name(n.target) for n in ep.graph.nodes
             if n.op == "call_function"}
    assert {"add", "mul"} <= names and not {"add_", "mul_"} & names
    assert "add_" not in RULES and "mul_" not in RULES


def test_casts_between_floats_pass_values_on():
    model = Wrap(lambda m, x: x.double()).float().eval()
    ep, _ = export_program(model, (4, 4))
    assert "_to_copy" in {op_name(n.target) for n in ep.graph.nodes}
    x = torch.randn(5, 4, 4)
    with torch.no_grad():
        want = model(x)
    np.testing.assert_allclose(run_graph(capture(model, (4, 4)), x).reshape(
        want.shape), want, rtol=1e-6, atol=1e-6)


def test_metadata_asserts_are_dropped():
    """A cast as Hugging Face's eager attention writes it exports an
    ``_assert_tensor_metadata``, which converts as nothing."""
    model = Wrap(lambda m, x: x.to(torch.float32)).float().eval()
    ep, _ = export_program(model, (4, 4))
    assert "_assert_tensor_metadata" in {op_name(n.target)
                                         for n in ep.graph.nodes}
    x = torch.randn(5, 4, 4)
    with torch.no_grad():
        want = model(x)
    np.testing.assert_allclose(run_graph(capture(model, (4, 4)), x).reshape(
        want.shape), want, rtol=1e-5, atol=1e-6)


class WindowAttention(nn.Module):
    """Attention in windows, as Swin writes it: window partition by
    ``view``/``permute``/``contiguous``, a relative bias from a lookup, a
    mask built in ``forward`` from ``x.new_zeros`` by slice assignment and
    added per window through a regrouping of the logits' leading axes,
    and the windows merged back and rolled."""

    def __init__(self, dim=4, window=2, heads=2):
        super().__init__()
        self.w, self.h = window, heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn(2 * window - 1, heads))
        ids = torch.arange(window)
        self.register_buffer("rel", ids[:, None] - ids[None, :] + window - 1)

    def forward(self, x):  # (B, L, C), L a multiple of the window
        b, n, c = x.shape
        x = torch.roll(x, -1, 1)
        nw = n // self.w
        wins = x.view(b, nw, self.w, c).contiguous().view(b * nw, self.w, c)
        q, k, v = self.qkv(wins).view(b * nw, self.w, 3, self.h, -1).permute(
            2, 0, 3, 1, 4)
        attn = q @ k.transpose(-2, -1) * 0.5
        attn = attn + self.table[self.rel].permute(2, 0, 1).unsqueeze(0)
        mask = x.new_zeros(nw, self.w, self.w)
        mask[-1, :, -1] = -100.0
        attn = attn.view(b, nw, self.h, self.w, self.w) + mask.unsqueeze(1)
        attn = attn.view(-1, self.h, self.w, self.w).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return torch.roll(self.proj(y), 1, 1)


def test_window_attention_with_constant_mask_and_bias():
    graph = _exact(WindowAttention(), (6, 4))
    op, = graph.attention
    assert op.coef.shape == (3 * 2, 2, 2)  # windows x heads of 2 x 2
    # the -100 entries are a bias until calibration shows they are masks
    assert (op.bias.reshape(3, 2, 2, 2)[-1, :, :, -1] < -95).all()


def test_a_strided_slice_keeps_only_the_rows_it_reads():
    graph = _exact(Wrap(lambda m, x: x[:, ::2]), (8, 4))
    syn, = graph[graph.output].synapses
    assert syn.rows.shape == (4, 4)  # 4 of the 8 tokens, not all 8


def test_a_concatenated_part_keeps_only_its_channels():
    graph = _exact(Wrap(lambda m, x: torch.cat([x, x.relu()], -1)), (3, 4))
    for syn in graph[graph.output].synapses:
        assert syn.weight.shape[0] == 4  # its 4 channels of the 8


def test_per_channel_scale_read_in_another_layout():
    """A residual sum scaled per channel (an eval BatchNorm), read after a
    permute: the direct read folds the scale per source channel."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            y = x + self.fc(x).relu()
            y = self.bn(y.reshape(-1, 4)).reshape(y.shape)
            return self.head(y.permute(0, 2, 1) + 1.0)
    _exact(Model(), (3, 4))


@pytest.mark.parametrize("fn, words", [
    (lambda m, x: x * x.flip(1), ["mul (Wrap: mul)",
                                  "product of two activations"]),
    (lambda m, x: x.long().double(), ["cast", "torch.int64"]),
    (lambda m, x: torch.div(x, 2, rounding_mode="floor"),
     ["rounding_mode='floor'"]),
    (lambda m, x: x.softmax(-1), ["softmax must act on", "q @ k"]),
], ids=["product of activations", "integer cast", "rounded division",
        "softmax of a non-product"])
def test_refusals_name_the_module_and_what_it_lacks(fn, words):
    with pytest.raises(UnsupportedModelError) as err:
        capture(Wrap(fn).double(), (4, 4))
    for word in words:
        assert word in str(err.value)


def test_an_op_a_rule_cannot_handle_is_refused_not_crashed(monkeypatch):
    """A rule that fails inside (here made to) surfaces as an
    UnsupportedModelError naming the node, never a bare RuntimeError."""
    def broken(cap, node, *args, **kwargs):
        raise RuntimeError("deep inside")
    monkeypatch.setitem(RULES, "flip", RULES["flip"].__class__(broken))
    with pytest.raises(UnsupportedModelError,
                       match=r"\(Wrap: flip\): capture failed \(RuntimeError"
                             r": deep inside\)"):
        capture(Wrap(MOVES["flip"]).double(), (4, 4))


def test_sums_and_differences_with_constants_on_either_side():
    _exact(Wrap(lambda m, x: torch.rsub(x, 2.0, alpha=3.0) -
                torch.sub(1.5, x.relu(), alpha=0.5) +
                torch.add(x, x.flip(1), alpha=-2.0)), (4, 4))


# ops for random chains on a (batch, 4, 4) activation: every one keeps
# that shape, so that any sequence of them is a valid model
CHAIN = {
    **{name: MOVES[name] for name in (
        "roll", "flip", "index_select with a buffer",
        "gather with a buffer", "masked_fill with a constant mask",
        "in-place add and mul")},
    "transpose": lambda m, x: x.transpose(1, 2).contiguous(),
    "pad then slice": lambda m, x: F.pad(x, (1, 1, 2, 0))[:, 1:-1, 1:-1],
    "cat then strided slice": lambda m, x: torch.cat([x, m.cls.expand(
        len(x), 4, -1)], 1)[:, ::2],
    "scale and shift": lambda m, x: 0.5 * x - 1.0,
    "residual": lambda m, x: x + m.fc(x).relu(),
    "gelu": lambda m, x: F.gelu(x),
    "layernorm": lambda m, x: F.layer_norm(x, (4,)),
    "mean over tokens": lambda m, x: x.mean(1, keepdim=True).expand(
        -1, 4, -1),
    "attention": lambda m, x: torch.softmax(x @ x.transpose(1, 2), -1) @ x,
    "product of activations": lambda m, x: x * x.flip(2),
    "exp": lambda m, x: x.exp(),
    "square": lambda m, x: x ** 2,
    "gelu written out": WRITTEN_OUT[next(iter(WRITTEN_OUT))][0],
}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(sorted(CHAIN)), min_size=1, max_size=4))
def test_any_chain_of_ops_captures_exactly_or_is_refused(chain):
    """The converter's guarantee on any model: its captured graph equals it,
    or one UnsupportedModelError names why; never another exception."""
    def forward(m, x):
        for name in chain:
            x = CHAIN[name](m, x)
        return x
    try:
        _exact(Wrap(forward), (4, 4), n=3)
    except UnsupportedModelError as err:
        assert any(bad in chain for bad in (
            "product of activations", "exp", "square")), (chain, err)


def test_addmm_is_a_linear():
    """Hugging Face's Conv1D (GPT-2) writes its Linear as addmm."""
    w, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(3)
    _exact(Wrap(lambda m, x: torch.addmm(b.double(), x.reshape(-1, 4), w,
                                         beta=0.5, alpha=2.0)), (1, 4))
