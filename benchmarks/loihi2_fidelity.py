"""What lowering for Loihi 2 costs: accuracy and engine time, default
formats vs ``target='loihi2'`` (:func:`lava_spiked.plan.loihi2.conform`).

    .venv/bin/python benchmarks/loihi2_fidelity.py [--tweets N]

Models, each calibrated once and lowered both ways (``recode``):

``bundled``
    The bundled digits ViT at T = 40, B = 1.15, on its whole test split.
``minilm-sentiment``
    all-MiniLM-L6-v2 with the sentiment head at T = 40, B = 1.2 (the code
    ``minilm_sentiment.py`` chose), on the first ``--tweets`` validation
    tweets.

For each: the gain bits the conformant lowering chose, accuracy and
agreement with the ANN under both targets (engine, fixed mode: Lava
``fixed_pt`` bit for bit), the samples whose prediction changed, and the
engine's time per sample for both targets, measured alternately in one run
with one thread and with two. Writes
``benchmarks/results/loihi2_fidelity.md``.
"""
import argparse
import pathlib
import time
import warnings

import numpy as np
import torch

from lava_spiked import Engine, convert
from lava_spiked.bundled.digits_vit import digits_splits, load_default
from lava_spiked.plan import loihi2

OUT = pathlib.Path(__file__).parent / "results" / "loihi2_fidelity.md"
CHUNK = 100
REPEATS = 3


def _logits(net, x, mask):
    engine = Engine(net, "fixed")
    out = []
    for i in range(0, len(x), CHUNK):
        kw = {} if mask is None else dict(attention_mask=mask[i:i + CHUNK])
        out.append(engine(x[i:i + CHUNK], record=False, warn=False,
                          **kw).logits.numpy())
    return np.concatenate(out)


def _bundled():
    splits = digits_splits()
    net = convert(load_default(), splits["calibration"][0], T=40, B=1.15,
                  progress=False)
    x, y = splits["test"]
    return net, x, None, y, net.ann(x)


def _minilm(n):
    from minilm_sentiment import ann, inputs  # this folder
    from lava_spiked.bundled.text_data import (convert_minilm, load_minilm,
                                               tweets)
    model, tok = load_minilm()
    net = convert_minilm(model, tok, T=40, B=1.2, progress=False)
    texts, y = tweets("val")
    x, mask = inputs(model, tok, texts[:n])
    return net, x, mask, y[:n], ann(net, x, mask)


def _times(nets, x, mask, threads):
    """Seconds per sample of each net, alternating, best of REPEATS."""
    torch.set_num_threads(threads)
    best = [np.inf] * len(nets)
    for _ in range(REPEATS):
        for i, net in enumerate(nets):
            t0 = time.perf_counter()
            _logits(net, x, mask)
            best[i] = min(best[i], (time.perf_counter() - t0) / len(x))
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=300)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    t_start = time.time()
    lines = ["# Fidelity and engine time of the Loihi 2 conformant lowering",
             "", "Command: `python benchmarks/loihi2_fidelity.py --tweets "
             f"{args.tweets}`. Engine in fixed mode (Lava `fixed_pt` bit for "
             "bit). `loihi2`: every window sums in 24 bits, with the gain "
             "and trace bits shown (`lava`: 12-bit gains and traces, 48-bit "
             "sums, 32-bit product currents). Times: best of 3, the two "
             "targets alternating.", ""]
    for name, build in (("bundled", _bundled),
                        ("minilm-sentiment", lambda: _minilm(args.tweets))):
        net, x, mask, y, ann = build()
        con = net.recode(target="loihi2")
        bits = [layer.gain_bits for layer in con.plan.layers
                if layer.synapses]
        ops = con.plan.attention
        preds = {}
        lines += [f"## {name} ({len(x)} samples, T = {net.T}, B = {net.B})",
                  "", f"Gain bits of the {len(bits)} synaptic layers: "
                  f"min {min(bits)}, median {int(np.median(bits))}, max "
                  f"{max(bits)}; of the {len(ops)} attentions, logit traces "
                  f"and gains {sorted({op.qk_bits for op in ops})}, V's "
                  f"traces {sorted({op.v_bits for op in ops})}, output gains "
                  f"{sorted({con.plan[op.out].gain_bits for op in ops})}, "
                  "softmax traces "
                  f"{sorted({op.woss_bits for op in ops})} bits. "
                  "Still outside Loihi 2 after lowering: "
                  f"{len(loihi2.check(con))} quantities "
                  "(`loihi2.check`; before: "
                  f"{len(loihi2.check(net))}).", "",
                  "| target | accuracy | agreement with ANN | max abs logit "
                  "difference to `lava` |", "|---|---|---|---|"]
        ref = _logits(net, x, mask)
        for target, n in (("lava", net), ("loihi2", con)):
            out = ref if n is net else _logits(n, x, mask)
            preds[target] = out.argmax(1)
            lines.append(
                f"| {target} | {(preds[target] == y).mean():.1%} | "
                f"{(preds[target] == ann.argmax(1)).mean():.1%} | "
                f"{np.abs(out - ref).max():.3g} |")
        changed = int((preds["lava"] != preds["loihi2"]).sum())
        lines += ["", f"ANN accuracy {(ann.argmax(1) == y).mean():.1%}; "
                  f"{changed} of {len(x)} predictions differ between the "
                  "targets.", "",
                  "| threads | `lava` ms/sample | `loihi2` ms/sample | "
                  "ratio |", "|---|---|---|---|"]
        for threads in (1, 2):
            a, b = _times([net, con], x, mask, threads)
            lines.append(f"| {threads} | {a * 1e3:.2f} | {b * 1e3:.2f} | "
                         f"{b / a:.2f} |")
        lines.append("")
        print("\n".join(lines), flush=True)
    lines.append(f"Took {time.time() - t_start:.0f} s on this 2-core "
                 "machine.")
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
