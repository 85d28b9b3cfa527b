"""A base B per population (issue 33, item 2), measured on the model of
the code before building it into the Plan.

A population's code is its own (its levels ``sigma * B**-m``, its
thresholds, its gain table), so B could differ per population. This
measures what that would gain: per model and T, the best single B of a
grid by the readout error on the calibration samples (what
``convert(B='auto')`` does), then a greedy coordinate search that gives
each code (every population, every attention's logits and its WOSS
softmax, in graph order) the B of the grid with the least calibration
error, the others held; ``--sweeps`` passes. Both are evaluated on the
float semantics of the code (:func:`lowt_calibration.quant_forward`, the
graph's own weights, so both sides carry the same weight error): the
readout error and the top-1 accuracy on the full test split.

    OMP_NUM_THREADS=1 python benchmarks/population_bases.py \\
        --models digits fashion

writes ``benchmarks/results/population_bases.md``.
"""
import argparse
import functools
import pathlib
import platform
import sys
import time

import torch

from lava_spiked.calibration import absorb_masks, calibrate
from lava_spiked.capture import capture

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from lowt_calibration import (Code, PerPopulation, digits, fashion,  # noqa
                              logit_error, quant_forward)

RESULTS = pathlib.Path(__file__).parent / "results"
GRID = (1.15, 1.2, 1.25, 1.3, 1.4)


def code_keys(graph) -> list:
    """Every code of the graph, in order: populations (not the readout),
    and before each attention's output its logits and its softmax."""
    keys = [p.name for p in graph.populations if p.name != graph.output]
    for op in graph.attention:
        i = keys.index(op.out)
        keys[i:i] = [op.logits, op.out + ":softmax"]
    return keys


def accuracy(graph, sig, code, x, y, batch=1000) -> float:
    sig = {k: torch.as_tensor(v) for k, v in sig.items()}
    hits = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = quant_forward(graph, sig, code, torch.from_numpy(
                x[i:i + batch]))
            hits += int((out.reshape(len(out), -1).argmax(1).numpy()
                         == y[i:i + batch]).sum())
    return hits / len(x)


def per_population(graph, sig, T, start, xc, sweeps, log):
    """Greedy coordinate search of one B per code (see the docstring)."""
    codes = {B: Code(B, T) for B in GRID}
    chosen = PerPopulation(codes[start])
    x = torch.from_numpy(xc).reshape(len(xc), -1).double()
    with torch.no_grad():
        ref = quant_forward(graph, None, None, x)
    best = logit_error(graph, sig, chosen, x, ref)
    for sweep in range(sweeps):
        for key in code_keys(graph):
            keep = chosen.of(key)
            for B in GRID:
                if codes[B] is keep:
                    continue
                chosen[key] = codes[B]
                err = logit_error(graph, sig, chosen, x, ref)
                if err < best - 1e-12:
                    best, keep = err, codes[B]
            chosen[key] = keep
        log(f"  sweep {sweep}: calibration error {best:.4f}")
    return chosen, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits", "fashion"])
    ap.add_argument("--steps", nargs="+", type=int, default=[16, 24])
    ap.add_argument("--sweeps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, picks = [], []
    log = functools.partial(print, flush=True)
    for name in args.models:
        if name == "digits":
            model, xc, (xt, yt) = digits()
        else:
            model, xc, (xt, yt) = fashion(RESULTS, 12, 512)
        graph = absorb_masks(capture(model, tuple(xc.shape[1:])), xc,
                             progress=False)
        sig = calibrate(graph, xc, progress=False)
        with torch.no_grad():
            ann = model(torch.from_numpy(xt)).numpy()
        ann_acc = float((ann.argmax(1) == yt).mean())
        xct = torch.from_numpy(xc)
        test_x = torch.from_numpy(xt[:2000])
        for T in args.steps:
            errs = {B: logit_error(graph, sig, Code(B, T), xct)
                    for B in GRID}
            B0 = min(errs, key=errs.get)
            log(f"{name} T={T}: single B errors {errs} -> {B0}")
            t0 = time.perf_counter()
            chosen, err = per_population(graph, sig, T, B0, xc,
                                         args.sweeps, log)
            took = time.perf_counter() - t0
            for label, code, err_c in (
                    (f"one B = {B0}", Code(B0, T), errs[B0]),
                    ("B per population", chosen, err)):
                err_t = logit_error(graph, sig, code, test_x)
                acc = accuracy(graph, sig, code, xt, yt)
                rows.append((name, T, label, err_c, err_t, ann_acc, acc,
                             took if code is chosen else 0.0))
                log(f"RESULT {rows[-1]}")
            picks.append((name, T, B0, {k: c.B for k, c in chosen.items()
                                        if c.B != B0}))
    write(args, rows, picks)


def write(args, rows, picks) -> None:
    cpu = next((line.split(":", 1)[1].strip()
                for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.machine())
    out = ["# A base B per population (issue 33, item 2)", "",
           "Command: `OMP_NUM_THREADS=1 python benchmarks/population_bases.py "
           + " ".join(sys.argv[1:]) + "`  ",
           f"Machine: {cpu}, one thread, Python {platform.python_version()}, "
           f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. "
           f"Grid {GRID}. Readout error on the calibration samples and "
           "on the first 2000 test samples; accuracy of the code's float "
           "semantics (the graph's own weights) on the full test split.",
           "", "| model | T | code | readout error calib | readout error "
           "test | ANN acc | coded acc | drop (pp) | search (s) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, T, label, ec, et, a, acc, took in rows:
        out.append(f"| {name} | {T} | {label} | {ec:.4f} | {et:.4f} | "
                   f"{a:.2%} | {acc:.2%} | {100 * (a - acc):+.2f} | "
                   f"{took:.0f} |")
    out += ["", "Codes whose B the search moved from the single B:", ""]
    for name, T, B0, moved in picks:
        out.append(f"- {name}, T = {T} (one B = {B0}): " + (", ".join(
            f"`{k}` {b}" for k, b in moved.items()) or "none"))
    (RESULTS / "population_bases.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
