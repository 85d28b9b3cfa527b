"""Generated transformers for fuzzing the converter.

One generator, :func:`architecture`, draws every choice through a
``choose(name, options)`` callable, so that the same space is searched two
ways: :func:`architectures` is its hypothesis strategy (shrinking a failure
to a small architecture), :func:`from_seed` draws it from a seeded random
generator (a failure is reproduced by its seed alone, which the tests carry
in their names). :func:`build` makes the PyTorch model with random weights
and :func:`check` converts it and asserts what every converted model must
satisfy:

1. the captured graph, evaluated without quantisation, equals the model
   (relative 1e-5; at real tokens where padding applies);
2. the engine in fixed mode equals ``golden_fixed`` bit for bit, and in
   float mode equals ``golden_float`` up to float rounding: where they
   differ, a membrane must lie on a level (``conftest.level_gap``), so
   that rounding decides its spike;
3. nothing but the library's own errors is raised: a model with
   something the phase code cannot carry (:data:`UNSUPPORTED`) is refused
   with ``UnsupportedModelError`` naming its module, and anything raised
   by a supported one fails the check (``benchmarks/fuzz_converter.py``
   sorts what it finds).

``python benchmarks/fuzz_converter.py`` runs thousands of seeds.
"""
import dataclasses
import random
import typing as ty

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from conftest import DECIDED, level_gap
from lava_spiked import Engine, convert
from lava_spiked.bundled.digits_vit import TokenBatchNorm
from lava_spiked.capture import UnsupportedModelError

#: Causal masks as models write them: a boolean mask for ``masked_fill``
#: (or ``attn_mask``), or added to the logits
CAUSAL = ("none", "bool", "-inf", "finfo", "-1e4")
#: How ``forward`` takes the padding mask: not at all; Hugging Face's
#: ``attention_mask`` (1 = real) added as -1e4; ``mask`` (1 = real) through
#: ``masked_fill``; PyTorch's ``key_padding_mask`` (True = padding)
PADDING = ("none", "additive", "fill", "key_padding")
#: Something the phase code cannot carry, put in the last block's MLP,
#: which must be refused naming that MLP: an activation with no stage
#: (ELU), a product of two activations (a gated MLP), neither ("none",
#: drawn most often)
UNSUPPORTED = ("none", "elu", "gated")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One generated transformer (see :func:`architecture`)."""

    seed: int
    tokens: int
    features: int
    width: int
    heads: int
    depth: int
    hidden: int
    attention: str   # hand, sdpa, mha (nn.MultiheadAttention), encoder
    norm: str        # layer, batch
    order: str       # pre, post
    activation: str  # relu, gelu, gelu_tanh, silu
    pooling: str     # cls, mean, first, tokens
    causal: str      # CAUSAL
    padding: str     # PADDING
    unsupported: str  # UNSUPPORTED
    T: int
    B: float


def architecture(choose: ty.Callable[[str, ty.Sequence], ty.Any]
                 ) -> Architecture:
    """Draw an architecture, each field by ``choose(name, options)``,
    within what the converter promises to convert."""
    attention = choose("attention", ["hand", "sdpa", "mha", "encoder"])
    width = choose("width", [8, 16, 24])
    heads = choose("heads", [h for h in (1, 2, 4) if width % h == 0])
    torch_module = attention in ("mha", "encoder")
    pooling = choose("pooling", ["cls", "mean", "first", "tokens"])
    if pooling == "cls":  # the runtime mask covers the input's tokens
        padding = "none"
    else:
        padding = choose("padding", ["none", "key_padding"] if torch_module
                         else ["none", "additive", "fill"])
    causal = choose("causal", ["none", "bool", "-inf"] if torch_module
                    else list(CAUSAL))
    return Architecture(
        seed=choose("seed", range(2 ** 16)),
        tokens=choose("tokens", range(3, 9)),
        features=choose("features", [4, 8]), width=width, heads=heads,
        depth=choose("depth", [1, 2, 3]),
        hidden=width * choose("mlp ratio", [1, 2]), attention=attention,
        norm="layer" if attention == "encoder" else choose(
            "norm", ["layer", "batch"]),
        order=choose("order", ["pre", "post"]),
        activation=choose("activation", ["relu", "gelu"]
                          if attention == "encoder" else
                          ["relu", "gelu", "gelu_tanh", "silu"]),
        pooling=pooling, causal=causal, padding=padding,
        unsupported=choose("unsupported", ["none"] * 4 + ["elu", "gated"])
        if attention != "encoder" else "none",
        T=choose("T", [16, 40]), B=1.15)


def architectures():
    """The hypothesis strategy of :func:`architecture`."""
    from hypothesis import strategies as st

    return st.composite(lambda draw: architecture(
        lambda name, options: draw(st.sampled_from(list(options)))))()


def from_seed(seed: int) -> Architecture:
    """:func:`architecture` drawn by ``random.Random(seed)``."""
    rng = random.Random(seed)
    return architecture(lambda name, options: rng.choice(list(options)))


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU,
                "gelu_tanh": lambda: nn.GELU(approximate="tanh")}


class _Attention(nn.Module):
    """Self-attention written by hand (``softmax(q @ k^T * s)``), through
    ``scaled_dot_product_attention`` or ``nn.MultiheadAttention``, with the
    architecture's causal and padding masks in its forms."""

    def __init__(self, arch: Architecture, n: int):
        super().__init__()
        self.arch, d = arch, arch.width
        if arch.attention == "mha":
            self.mha = nn.MultiheadAttention(d, arch.heads, batch_first=True)
        else:
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        later = torch.ones(n, n, dtype=torch.bool).triu(1)
        low = {"-inf": float("-inf"), "finfo": torch.finfo(torch.float32).min,
               "-1e4": -1e4}.get(arch.causal, float("-inf"))
        self.register_buffer("later", later)
        self.register_buffer("causal_bias", torch.zeros(n, n).masked_fill(
            later, low))

    def forward(self, x, mask):
        arch, (b, n, d) = self.arch, x.shape
        if arch.attention == "mha":
            causal = None if arch.causal == "none" else self.later \
                if arch.causal == "bool" else self.causal_bias
            return self.mha(x, x, x, attn_mask=causal, key_padding_mask=mask,
                            need_weights=False)[0]
        h = arch.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, d // h).permute(
            2, 0, 3, 1, 4)
        if arch.attention == "sdpa":
            if mask is None and arch.causal in ("none", "bool"):
                keep = None if arch.causal == "none" else ~self.later
            else:  # a float mask: the causal one and the padded keys
                keep = torch.zeros(b, 1, n, n)
                if arch.causal != "none":
                    keep = keep + self.causal_bias
                if mask is not None:
                    keep = keep.masked_fill(mask[:, None, None, :] == 0,
                                            float("-inf"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        else:
            z = q @ k.transpose(-2, -1) * (d // h) ** -0.5
            if arch.causal == "bool":
                z = z.masked_fill(self.later, float("-inf"))
            elif arch.causal != "none":
                z = z + self.causal_bias
            if arch.padding == "additive":
                z = z + (1.0 - mask[:, None, None, :].float()) * -1e4
            elif arch.padding == "fill":
                z = z.masked_fill(mask[:, None, None, :] == 0,
                                  float("-inf"))
            y = z.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, arch: Architecture, n: int, last: bool):
        super().__init__()
        d, self.pre = arch.width, arch.order == "pre"
        norm = nn.LayerNorm if arch.norm == "layer" else TokenBatchNorm
        self.norm1, self.norm2 = norm(d), norm(d)
        self.attn = _Attention(arch, n)
        self.mlp = _MLP(arch, arch.unsupported if last else "none")

    def forward(self, x, mask):
        if self.pre:
            x = x + self.attn(self.norm1(x), mask)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, mask))
        return self.norm2(x + self.mlp(x))


class _MLP(nn.Module):
    def __init__(self, arch: Architecture, unsupported: str):
        super().__init__()
        self.fc1 = nn.Linear(arch.width, arch.hidden)
        self.act = nn.ELU() if unsupported == "elu" else \
            _ACTIVATIONS[arch.activation]()
        self.gate = nn.Linear(arch.width, arch.hidden) \
            if unsupported == "gated" else None
        self.fc2 = nn.Linear(arch.hidden, arch.width)

    def forward(self, x):
        h = self.act(self.fc1(x))
        return self.fc2(h if self.gate is None else h * self.gate(x))


class Generated(nn.Module):
    """The model of an :class:`Architecture`: a Linear embedding with
    position embeddings (and a class token), ``depth`` blocks, a head of 3
    outputs on the pooled features or on every token."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch, d = arch, arch.width
        n = arch.tokens + (arch.pooling == "cls")
        self.embed = nn.Linear(arch.features, d)
        self.pos = nn.Parameter(torch.randn(1, n, d) * 0.5)
        self.cls = nn.Parameter(torch.randn(1, 1, d)) \
            if arch.pooling == "cls" else None
        if arch.attention == "encoder":
            self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(
                d, arch.heads, arch.hidden, dropout=0.0,
                activation=arch.activation, batch_first=True,
                norm_first=arch.order == "pre"), arch.depth,
                enable_nested_tensor=False)
            self.register_buffer("later", torch.ones(
                n, n, dtype=torch.bool).triu(1))
        else:
            self.blocks = nn.ModuleList(_Block(arch, n, i == arch.depth - 1)
                                        for i in range(arch.depth))
        self.norm = (nn.LayerNorm(d) if arch.norm == "layer" else
                     TokenBatchNorm(d)) if arch.order == "pre" else None
        self.head = nn.Linear(d, 3)

    def forward(self, x, mask=None):
        arch = self.arch
        x = self.embed(x)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1)
        x = x + self.pos
        if arch.attention == "encoder":
            causal = None if arch.causal == "none" else self.later \
                if arch.causal == "bool" else torch.zeros(
                    self.later.shape).masked_fill(self.later, float("-inf"))
            x = self.encoder(x, mask=causal, src_key_padding_mask=mask)
        else:
            for block in self.blocks:
                x = block(x, mask)
        if self.norm is not None:
            x = self.norm(x)
        if arch.pooling in ("cls", "first"):
            return self.head(x[:, 0])
        if arch.pooling == "tokens":
            return self.head(x)
        if mask is None:
            return self.head(x.mean(1))
        keep = (~mask if arch.padding == "key_padding" else mask.bool()
                ).float()[..., None]
        return self.head((x * keep).sum(1) / keep.sum(1))


def build(arch: Architecture) -> nn.Module:
    """The model of ``arch`` in eval mode, with random weights and random
    norm parameters and statistics (seeded by ``arch.seed``)."""
    torch.manual_seed(arch.seed)
    model = Generated(arch)
    g = torch.Generator().manual_seed(arch.seed)
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
            n = m.weight.numel()
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.2
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean = torch.randn(n, generator=g) * 0.3
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


def _fed(arch: Architecture, real: ty.Optional[torch.Tensor]):
    """The mask as the model takes it (None without padding)."""
    if real is None:
        return None
    return ~real if arch.padding == "key_padding" else real.long()


def check(arch: Architecture, calibration: int = 24, samples: int = 2
          ) -> None:
    """Convert the model of ``arch`` and assert the three properties of
    the module docstring, or, for an unsupported model, that it is refused
    naming the module; raises whatever else the conversion raises."""
    model = build(arch)
    g = torch.Generator().manual_seed(arch.seed)
    n = arch.tokens
    x = torch.randn(calibration + samples, n, arch.features, generator=g)
    real = None
    if arch.padding != "none":
        count = torch.randint(1, n + 1, (len(x),), generator=g)
        real = torch.arange(n)[None, :] < count[:, None]
    try:
        net = convert(model, x[:calibration].numpy(),
                      attention_mask=None if real is None else
                      real[:calibration].long().numpy(),
                      T=arch.T, B=arch.B, progress=False)
    except UnsupportedModelError as err:
        if arch.unsupported == "none":
            raise
        last = f"blocks.{arch.depth - 1}.mlp"
        assert f"{last}." in str(err) or f"{last} " in str(err), (
            f"the refusal does not name {last}: {err}")
        return
    assert arch.unsupported == "none", f"{arch.unsupported} converted"
    xt = x[calibration:]
    rt = None if real is None else real[calibration:]
    mask = None if rt is None else rt.numpy()
    with torch.no_grad():
        want = (model(xt) if rt is None else model(xt, _fed(arch, rt))
                ).double()
    got = torch.from_numpy(net.ann(xt.numpy(), mask)).reshape(want.shape)
    if arch.pooling == "tokens" and rt is not None:
        got, want = got[rt], want[rt]  # padded tokens' outputs are free
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-5 * scale + 1e-9, (
        f"capture differs from the model by "
        f"{float((got - want).abs().max()) / scale:.2g} (relative)")
    fixed = Engine(net, "fixed")(xt.numpy(), attention_mask=mask,
                                 warn=False).logits.numpy()
    flt = Engine(net, "float")(xt.numpy(), attention_mask=mask,
                               warn=False, record=True)
    for i in range(samples):
        m = None if mask is None else mask[i]
        np.testing.assert_array_equal(
            fixed[i].ravel(), net.golden_fixed(xt[i].numpy(), m).ravel(),
            err_msg="engine (fixed) vs golden_fixed")
        gold = net.golden_float(xt[i].numpy(), m).ravel()
        got = flt.logits[i].numpy().ravel()
        if not np.allclose(got, gold, rtol=1e-9,
                           atol=1e-12 * max(1.0, np.abs(gold).max())):
            # float mode promises its spikes where rounding cannot decide
            # them: a difference needs a membrane on a level
            gap = level_gap(flt, net.plan, i)
            assert gap <= DECIDED, (
                f"engine (float) vs golden_float: logits differ by "
                f"{np.abs(got - gold).max():.3g} with every membrane "
                f"{gap:.3g} or more from a level")
