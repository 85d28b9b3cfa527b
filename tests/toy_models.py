"""Small models that the converter's tests share (imported by the test
files as ``toy_models``)."""
import torch
import torch.nn.functional as F
from torch import nn

from lava_spiked.bundled.digits_vit import TokenBatchNorm


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
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
