"""The bundled default model: a small ViT of the paper's family.

SpikedAttention converts transformers whose LayerNorm and GELU are replaced
by BatchNorm and ReLU. ``DigitsViT`` is such a model for
scikit-learn's 8x8 digits: 2x2 patches (16 tokens + CLS), pre-norm blocks
with token-wise BatchNorm, plain q/k/v/proj attention and a ReLU MLP. Its
weights were trained by ``scripts/train_default_model.py`` and ship in
``lava_spiked/data/digits_vit.pt``.
"""
import pathlib
import typing as ty

import numpy as np
import torch
from torch import nn

WEIGHTS = pathlib.Path(__file__).resolve().parent / "data" / "digits_vit.pt"
SPLIT_SEED = 0
CALIBRATION_SIZE = 200
TEST_SIZE = 397


class TokenBatchNorm(nn.Module):
    """BatchNorm over the channels of (batch, tokens, channels) tensors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention written out with q, k, v and proj."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.dim // self.heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, self.dim)
        return self.proj(x)


class Block(nn.Module):
    """Pre-norm transformer block with BatchNorm and a ReLU MLP."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = TokenBatchNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = TokenBatchNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class DigitsViT(nn.Module):
    """ViT for 1x8x8 images: patch embedding, CLS token, blocks, head."""

    def __init__(self, dim: int = 32, depth: int = 1, heads: int = 2,
                 mlp: int = 64, patch: int = 2, classes: int = 10) -> None:
        super().__init__()
        tokens = (8 // patch) ** 2
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp)
                                      for _ in range(depth)))
        self.norm = TokenBatchNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos)
        return self.head(self.norm(x)[:, 0])


def digits_splits() -> ty.Dict[str, ty.Tuple[np.ndarray, np.ndarray]]:
    """scikit-learn digits as float32 (n, 1, 8, 8) images scaled to [0, 1],
    split with a fixed seed into disjoint train, calibration and test
    parts."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    test = order[:TEST_SIZE]
    calib = order[TEST_SIZE:TEST_SIZE + CALIBRATION_SIZE]
    train = order[TEST_SIZE + CALIBRATION_SIZE:]
    return {"train": (x[train], y[train]), "calibration": (x[calib], y[calib]),
            "test": (x[test], y[test])}


def load_default() -> DigitsViT:
    """The bundled, trained DigitsViT in eval mode."""
    model = DigitsViT()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return model.eval()
