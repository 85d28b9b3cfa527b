"""Scales aligned to the code's levels (issue 33): measured, not built.

A scale sigma only sets where the levels ``sigma * B**-m`` fall (they
repeat when sigma moves by a factor B), so for a smooth distribution of
values the code's error hardly depends on it, and choosing it fits noise
(``lowt_calibration.md``). A value that many samples share, such as a
normalised image's background, is different: if it falls between two
levels, every occurrence is off by the same few percent. This aligns
scales to the data: per sigma group, the factor ``k = B**(j / 8)``,
j = 0..7, of the least squared code error of the group's own values on
the first 256 calibration samples (k >= 1, so nothing new clips), either
for the input population alone (``--only input``) or for every coded
population and attention logits (default). Per model, T and B: the
readout error on those samples (:func:`lava_spiked.code_error.
readout_error`) and the validation and test drops of ``Engine(net,
'fixed')`` against the ANN, max scales and aligned side by side. Models
and splits are those of ``lowt_fidelity.py``.

    OMP_NUM_THREADS=1 python benchmarks/input_alignment.py --models swin \\
        --only input --steps 16 --bases 1.2 1.25 1.3 1.4

appends its table to ``benchmarks/results/input_alignment.md``.
"""
import argparse
import pathlib
import platform
import sys
import time
import warnings

import numpy as np
import torch

from lava_spiked import Engine
from lava_spiked.calibration import groups
from lava_spiked.capture import run_graph
from lava_spiked.code_error import AUTO_SAMPLES, readout_error
from lava_spiked.network import SpikingNetwork
from lava_spiked.numerics import phase
from lava_spiked.plan import lower

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from lowt_fidelity import RESULTS, task  # noqa: E402

PHASES = 8


def aligned(graph, sigmas, B, T, data, only=None):
    """``sigmas`` with each group multiplied by its best ``B**(j/8)``
    (see the module docstring); ``only``: the keys to align."""
    labels, n = groups(graph, "channel")
    ks = B ** (np.arange(PHASES) / PHASES)
    err = np.zeros((PHASES, n))

    def record(name, v):
        # ':pre' keys are clip levels of a membrane, not codes
        if name.endswith(":pre") or name not in sigmas or \
                (only and name not in only):
            return
        v = v.numpy()
        for j, k in enumerate(ks):
            e = ((phase.quantize(v, B, T, sigmas[name] * k).value - v) ** 2
                 ).sum(0)
            err[j] += np.bincount(labels[name], e, minlength=n)

    for i in range(0, len(data), 64):
        run_graph(graph, torch.from_numpy(data[i:i + 64]).double(), record)
    best = ks[err.argmin(0)]  # a tie (or a group not aligned) keeps k = 1
    return {name: s * best[labels[name]] for name, s in sigmas.items()}


def accuracy(net, split):
    x, y, _ = split
    eng = Engine(net, "fixed", compile=False)
    logits = np.concatenate([
        eng(x[i:i + 500], record=False, warn=False).logits.numpy()
        for i in range(0, len(x), 500)])
    return float((logits.argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=("digits", "fashion",
                                                    "swin"))
    ap.add_argument("--only", nargs="*", default=None,
                    help="keys to align (default: every code)")
    ap.add_argument("--steps", nargs="+", type=int, default=[16, 24])
    ap.add_argument("--bases", nargs="+", type=float,
                    default=[1.2, 1.25, 1.3, 1.4])
    args = ap.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    torch.set_num_threads(1)
    cpu = next((line.split(":", 1)[1].strip()
                for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.machine())
    what = "the input" if args.only == ["input"] else \
        ", ".join(args.only) if args.only else "every code"
    out = ["", f"## {what} aligned", "",
           "Command: `OMP_NUM_THREADS=1 python benchmarks/input_alignment.py "
           + " ".join(sys.argv[1:]) + "`  ",
           f"Machine: {cpu}, one thread, Python {platform.python_version()},"
           f" torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.", "",
           "| model | T | B | readout error max / aligned | val drop (pp) "
           "max / aligned | test drop (pp) max / aligned |",
           "|---|---|---|---|---|---|"]
    for name in args.models:
        t = task(name, 0)
        base = t.make("max", args.steps[0], args.bases[0])
        ann = {s: float((t.ann(base, split).argmax(1) == split[1]).mean())
               for s, split in (("val", t.val), ("test", t.test))}
        xc = t.calib[:AUTO_SAMPLES]
        for T in args.steps:
            for B in args.bases:
                s = aligned(base.graph, base.sigmas, B, T, xc, args.only)
                nets = (base.recode(B, T), SpikingNetwork(
                    lower(base.graph, s, B, T), base.graph, s))
                err = [readout_error(n, xc) for n in nets]
                val = [100 * (ann["val"] - accuracy(n, t.val)) for n in nets]
                test = [100 * (ann["test"] - accuracy(n, t.test))
                        for n in nets]
                out.append(f"| {name} | {T} | {B} | {err[0]:.4f} / "
                           f"{err[1]:.4f} | {val[0]:+.2f} / {val[1]:+.2f} | "
                           f"{test[0]:+.2f} / {test[1]:+.2f} |")
                print(out[-1], flush=True)
    path = RESULTS / "input_alignment.md"
    head = "" if path.exists() else \
        "# Scales aligned to the code's levels (issue 33)\n"
    with open(path, "a") as f:
        f.write(head + "\n".join(out) + "\n")


if __name__ == "__main__":
    main()
