"""What three converted models ask of Loihi 2: resources and violations.

    .venv/bin/python benchmarks/loihi2_resources.py

Models, each converted at T = 40, B = 1.15:

``bundled``
    The bundled digits ViT (1 block, 17 tokens x 32), calibrated on its
    calibration split.
``fashion-vit shape``
    An unmodified ``nn.TransformerEncoder`` ViT of the Fashion-MNIST shape:
    28 x 28 images, 7 x 7 patches (16 + CLS = 17 tokens) x 64, 4 heads, MLP
    128, 3 pre-norm layers with LayerNorm and GELU, random weights,
    calibrated on 32 random images (the shape, not the accuracy, matters).
``minilm-l6``
    all-MiniLM-L6-v2 with the sentiment head (64 tokens x 384, 6 layers),
    calibrated on the 512 calibration tweets.

For each: :func:`lava_spiked.plan.resources.resources` (neurons, synapses
stored per token, product inputs, spikes, steps, cores and chips from the
public per-chip figures) and :func:`lava_spiked.plan.loihi2.check` of the Plan
lowered with Lava's formats and with ``target='loihi2'``, grouped by quantity
(how many layers, the worst value against its limit). Writes
``benchmarks/results/loihi2_resources.md``.
"""
import collections
import pathlib
import time

import torch
from torch import nn

from lava_spiked import convert
from lava_spiked.bundled.digits_vit import digits_splits, load_default
from lava_spiked.bundled.text_data import convert_minilm
from lava_spiked.plan import loihi2
from lava_spiked.plan.resources import resources

OUT = pathlib.Path(__file__).parent / "results" / "loihi2_resources.md"
T, B = 40, 1.15


class FashionViT(nn.Module):
    """Patches by a strided Conv2d, a CLS token, learned positions, a stock
    pre-norm ``nn.TransformerEncoder`` and a linear head on CLS."""

    def __init__(self, dim=64, heads=4, mlp=128, layers=3, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 7, stride=7)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.1)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0,
                                           activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers,
                                             enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.head(self.encoder(x)[:, 0])


def _models():
    yield "bundled", lambda: convert(
        load_default(), digits_splits()["calibration"][0], T=T, B=B,
        progress=False)
    torch.manual_seed(0)
    data = torch.rand(32, 1, 28, 28)
    yield "fashion-vit shape", lambda: convert(
        FashionViT().eval(), data, T=T, B=B, progress=False)
    yield "minilm-l6", lambda: convert_minilm(T=T, B=B, progress=False)


def _violations(net):
    """:func:`loihi2.check` grouped by quantity, as markdown lines."""
    groups = collections.defaultdict(list)
    for v in loihi2.check(net):
        groups[v.quantity].append(v)
    if not groups:
        return ["Fits the Loihi 2 conventions checked.", ""]
    lines = ["| does not fit | layers | worst value | limit |",
             "|---|---|---|---|"]
    for quantity, found in groups.items():
        worst = max(found, key=lambda v: abs(v.value))
        note = "" if worst.certain else " (unverified limit)"
        lines.append(f"| {quantity} | {len(found)} | "
                     f"{worst.value:,.0f} ({worst.where}) | "
                     f"{worst.limit:,.0f}{note} |")
    return lines + [""]


def main():
    t0 = time.time()
    lines = ["# Loihi 2 resources and violations of three converted models",
             "", "Command: `python benchmarks/loihi2_resources.py`, T = 40, "
             "B = 1.15.", ""]
    for name, build in _models():
        net = build()
        lines += [f"## {name}", "", resources(net).to_markdown(), ""]
        for target in ("lava", "loihi2"):
            lines += [f"Lowered with `target='{target}'`:", ""]
            lines += _violations(net.recode(target=target))
        print("\n".join(lines), flush=True)
    lines.append(f"Took {time.time() - t0:.0f} s on this 2-core machine.")
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
