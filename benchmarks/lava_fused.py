"""Fused blocks vs neuron level in Lava: seconds per sample, OS processes.

A converted network's blocks (:class:`lava_spiked.processes.SpikingBlock`)
run fused, each in one OS process (``Loihi2SimCfg(select_tag="fixed_pt")``),
or at neuron level, every Process in its own OS process (the same with
``select_sub_proc_model=True``). Networks:

- bundled: the DigitsViT (17 tokens x 32, one block) at T = 40, B = 1.15;
- 2-block: ``nn.TransformerEncoder``, 2 layers of ``nn.MultiheadAttention``
  (17 tokens x 32, 4 heads, MLP 64) with token-wise BatchNorm and ReLU,
  random weights, calibrated on normal noise, at T = 40, B = 1.15;
- MiniLM layer: the first layer of the stock all-MiniLM-L6-v2 (64 tokens
  x 384, 12 heads, LayerNorm, GELU) with the sentiment head, calibrated on
  the calibration tweets, at T = 40, B = 1.2; one tweet at a time (its
  token mask is set per tweet).

Each point: build (the Lava Processes), compile, start-up (Lava's
runtime: forking, building the models), then warm seconds per sample over
the next samples (streamed where the network streams), in one interpreter,
fused and neuron level alternating; the readouts of both are checked equal
bit for bit. OS processes: Lava's children of this interpreter while it
runs.

Usage: .venv/bin/python benchmarks/lava_fused.py [--repeats 2]
Writes benchmarks/results/lava_fused.md.
"""
import argparse
import os
import pathlib
import platform
import statistics
import time

import numpy as np
import psutil
import torch
from lava.magma.core.run_configs import Loihi2SimCfg

from lava_spiked import convert

HERE = pathlib.Path(__file__).resolve().parent
MODES = {"fused": {}, "neuron level": {"select_sub_proc_model": True}}


def bundled():
    """(network, samples, masks) of the bundled ViT; 21 test digits."""
    from lava_spiked.bundled.digits_vit import digits_splits, load_default
    splits = digits_splits()
    net = convert(load_default(), splits["calibration"][0], T=40, B=1.15,
                  progress=False)
    return net, splits["test"][0][:21], None


def two_blocks():
    """(network, samples, masks) of a random 2-layer nn.TransformerEncoder."""
    from torch import nn

    from lava_spiked.bundled.digits_vit import TokenBatchNorm

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0,
                                               batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2,
                                                 enable_nested_tensor=False)
            for each in self.encoder.layers:
                each.norm1, each.norm2 = TokenBatchNorm(32), \
                    TokenBatchNorm(32)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            return self.head(self.encoder(x)[:, 0])

    torch.manual_seed(0)
    model = Encoder().eval()
    data = np.random.default_rng(0).normal(0, 1, (149, 17, 32)) \
        .astype(np.float32)
    return convert(model, data[:128], T=40, B=1.15, progress=False), \
        data[128:], None


def minilm_layer():
    """(network, samples, masks) of MiniLM's first layer and 3 tweets."""
    from lava_spiked.huggingface import embed
    from lava_spiked.bundled.text_data import (MAX_LENGTH, convert_minilm,
                                               load_minilm, tweets)
    model, tokenizer = load_minilm()
    model.encoder.layer = model.encoder.layer[:1]
    net = convert_minilm(model, tokenizer, T=40, B=1.2, progress=False)
    texts, _ = tweets("test")
    enc = tokenizer(texts[:3], padding="max_length", truncation=True,
                    max_length=MAX_LENGTH, return_tensors="pt")
    hidden, mask = embed(model, enc, MAX_LENGTH)
    return net, hidden, mask


NETWORKS = {"bundled": bundled, "2-block": two_blocks,
            "MiniLM layer": minilm_layer}


def measure(net, x, mask, mode: str) -> dict:
    """Build, compile, start-up, warm s/sample and OS processes."""
    cfg = Loihi2SimCfg(select_tag="fixed_pt", **MODES[mode])
    t0 = time.perf_counter()
    lava = net.lava("fixed_pt")
    build = time.perf_counter() - t0
    with net:
        m = None if mask is None else mask[:1]
        first = net.infer(x[:1], cfg, attention_mask=m, progress=False)
        processes = len([c for c in psutil.Process().children(recursive=True)
                         if "resource_tracker" not in " ".join(c.cmdline())])
        steps0, t1 = lava.steps, time.perf_counter()
        m = None if mask is None else mask[1:]
        rest = net.infer(x[1:], cfg, attention_mask=m, progress=False)
        warm = time.perf_counter() - t1
        steps = (lava.steps - steps0) / (len(x) - 1)
    return dict(build_s=build, **lava.runner.timings,
                s_per_sample=warm / (len(x) - 1), steps=steps,
                processes=processes, logits=np.concatenate([first, rest]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS))
    args = parser.parse_args()
    lines = [
        "# Fused blocks vs neuron level in Lava (fixed_pt)",
        "",
        f"Command: `.venv/bin/python benchmarks/lava_fused.py --repeats "
        f"{args.repeats}`  ",
        f"Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPU "
        f"cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; medians of {args.repeats} runs, fused "
        "and neuron level alternating in one interpreter. Build, compile "
        "and start-up are paid once per network; s/sample is warm, over the "
        "samples after the first (streamed unless the network takes a "
        "token mask); steps/sample likewise. OS processes: Lava's children "
        "of the interpreter, its runtime service and shared-memory manager "
        "included (2 of the 5 of a fused one-block network). Readouts equal "
        "bit for bit in every run.",
        "",
        "| network | mode | OS processes | blocks | steps/sample | build s "
        "| compile s | start-up s | warm s/sample | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.networks:
        net, x, mask = NETWORKS[name]()
        runs = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode in MODES:
                runs[mode].append(measure(net, x, mask, mode))
                print(name, mode, {k: v for k, v in runs[mode][-1].items()
                                   if k != "logits"}, flush=True)
        want = runs["neuron level"][0]["logits"]
        assert all(np.array_equal(r["logits"], want)
                   for rs in runs.values() for r in rs), "fused != neuron"
        med = {mode: {k: statistics.median(r[k] for r in rs)
                      for k in rs[0] if k != "logits"}
               for mode, rs in runs.items()}
        blocks = len(net.plan.blocks())
        for mode, m in med.items():
            ratio = med["neuron level"]["s_per_sample"] / m["s_per_sample"]
            lines.append(
                f"| {name} | {mode} | {m['processes']:.0f} | {blocks} | "
                f"{m['steps']:.0f} | {m['build_s']:.2f} | "
                f"{m['compile_s']:.2f} | {m['start_s']:.2f} | "
                f"{m['s_per_sample']:.3f} | {ratio:.1f}x |")
    out = HERE / "results" / "lava_fused.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
