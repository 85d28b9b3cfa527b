"""Accuracy of the spiking attention block against exact softmax attention.

For every (T, B) the block's scales are calibrated on calibration samples
(max |activation|, per the granularities the block takes) and its output is
compared with ``softmax(q k^T / sqrt(d)) v`` on separate test samples. The
block's closed-form golden models stand in for Lava runs: the test suite
checks that ``floating_pt`` equals ``golden_float`` and ``fixed_pt`` equals
``golden_fixed`` spike for spike.

Inputs, h = 4 heads, N = 16 tokens, d = 16:
- gaussian: q, k, v ~ N(0, 1);
- spread: heavy-tailed (Laplace) q, k scaled by 2 per head 0..3 ** 0.5 so
  logits span a few nats, as in trained transformers.

Error: ||out - exact|| / ||exact|| (Frobenius over all heads), mean over
test samples.

Usage: .venv/bin/python benchmarks/attention_accuracy.py [--samples 16]
Writes benchmarks/results/attention_accuracy.md.
"""
import argparse
import pathlib
import time

import numpy as np

from lava_spiked.golden.attention import softmax_attention
from lava_spiked.lava_backend.self_attention import SpikingSelfAttention
from lava_spiked.numerics import phase

HERE = pathlib.Path(__file__).resolve().parent
H, N, D = 4, 16, 16
TS = (16, 24, 40)
BS = (1.1, 1.15, 1.2, 1.4)


def sample(kind: str, rng: np.random.Generator):
    if kind == "gaussian":
        return tuple(rng.normal(0, 1, (H, N, D)) for _ in range(3))
    head_gain = np.sqrt(2.0 ** np.arange(H))[:, None, None]
    q, k = (rng.laplace(0, 1, (H, N, D)) * head_gain for _ in range(2))
    return q, k, rng.normal(0, 1, (H, N, D))


def calibrate(samples):
    """Max |activation| over calibration samples at the block's
    granularities."""
    def amax(arrays, axis):
        return np.max([np.abs(a).max(axis, keepdims=True) for a in arrays], 0)
    qs, ks, vs = zip(*samples)
    zs = [q @ np.swapaxes(k, 1, 2) / np.sqrt(D) for q, k, _ in samples]
    outs = [softmax_attention(*s) for s in samples]
    return dict(q_scale=amax(qs, 2), k_scale=amax(ks, 2), v_scale=amax(vs, 1),
                logit_scale=amax(zs, 2), out_scale=amax(outs, (1, 2)))


def errors(kind: str, T: int, B: float, n: int) -> tuple:
    rng = np.random.default_rng(0)
    scales = calibrate([sample(kind, rng) for _ in range(n)])
    att = SpikingSelfAttention(heads=H, tokens=N, head_dim=D, B=B, T=T,
                               start=0, **scales)
    err_float, err_fixed = [], []
    for _ in range(n):
        q, k, v = sample(kind, rng)
        exact = softmax_attention(q, k, v)
        codes = [phase.quantize(x, B, T, s) for x, s in
                 zip((q, k, v), (att.q_scale, att.k_scale, att.v_scale))]
        fl = att.golden_float(*(c.value for c in codes)).output
        fx = att.golden_fixed(*(a for c in codes
                                for a in (c.step, c.sign))).output
        norm = np.linalg.norm(exact)
        err_float.append(np.linalg.norm(fl - exact) / norm)
        err_fixed.append(np.linalg.norm(fx - exact) / norm)
    return float(np.mean(err_float)), float(np.mean(err_fixed))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=16,
                        help="calibration samples = test samples")
    args = parser.parse_args()
    t0 = time.time()
    lines = [
        "# Spiking attention vs exact softmax attention",
        "",
        f"Command: `.venv/bin/python benchmarks/attention_accuracy.py "
        f"--samples {args.samples}`  ",
        f"h={H}, N={N}, d={D}; {args.samples} calibration and "
        f"{args.samples} disjoint test samples; relative Frobenius error "
        "||SNN - exact|| / ||exact||, mean over test samples; float = "
        "floating_pt (golden_float), fixed = fixed_pt (golden_fixed).",
        "",
    ]
    for kind in ("gaussian", "spread"):
        lines += [f"## {kind} inputs", "",
                  "| T \\\\ B | " + " | ".join(f"{b} float / fixed"
                                              for b in BS) + " |",
                  "|---|" + "---|" * len(BS)]
        for T in TS:
            cells = [errors(kind, T, B, args.samples) for B in BS]
            lines.append(f"| {T} | " + " | ".join(
                f"{a:.3f} / {b:.3f}" for a, b in cells) + " |")
        lines.append("")
    lines.append(f"Run time: {time.time() - t0:.0f} s.")
    out = HERE / "results" / "attention_accuracy.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
