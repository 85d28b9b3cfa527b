"""Fixed mode's exact products as int8 products or in float64, side by
side: one model of ``benchmarks/engine_vs_ann.py``, batch 64, one thread,
two fixed-mode engines in one process, one with the int8 products that a
CPU with int8 instructions gets (:func:`lava_spiked.engine.products.
int8_products`), one with them switched off (float64, what other CPUs
get), and the ANN, timed in turn (median of ``--repeats`` after one
warm-up round); the two engines' logits are asserted equal.

Usage: .venv/bin/python benchmarks/int8_products.py [--models minilm]
       [--repeats 3] [--compile]
Appends a section to benchmarks/results/engine_vs_ann.md.
"""
import argparse
import platform
import statistics
import time

import torch

from engine_vs_ann import append_section, load
from lava_spiked.engine import Engine, products


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["minilm"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    assert products.int8_instructions(), "this CPU has no int8 instructions"
    how = "compiled" if args.compile else "eager"
    rows = ["| model | batch | what | ms | x ANN |", "|---|---|---|---|---|"]
    for name in args.models:
        net, make_batch = load(name)
        ann, inputs = make_batch(64)
        int8 = Engine(net, "fixed", compile=args.compile)
        has_int8, products.int8_instructions = \
            products.int8_instructions, lambda: False
        f64 = Engine(net, "fixed", compile=args.compile)
        products.int8_instructions = has_int8
        runs = {"ANN (float32)": ann}
        for what, e in (("int8", int8), ("float64", f64)):
            runs[f"engine fixed, {how}, {what} products"] = (
                lambda e=e: e(**inputs, record=False, warn=False))
        times = {what: [] for what in runs}
        with torch.inference_mode():
            a, b = (e(**inputs, record=False, warn=False)
                    for e in (int8, f64))  # compiles
            assert torch.equal(a.logits, b.logits)
            for i in range(args.repeats + 1):
                for what, fn in runs.items():
                    t0 = time.perf_counter()
                    fn()
                    if i:
                        times[what].append(time.perf_counter() - t0)
        base = times["ANN (float32)"]
        for what, ts in times.items():
            ratio = statistics.median(t / a for t, a in zip(ts, base))
            rows.append(f"| {name} | 64 | {what} | "
                        f"{statistics.median(ts) * 1e3:.0f} | {ratio:.2f} |")
        print("\n".join(rows[-3:]), flush=True)
    append_section("engine_vs_ann.md", "Engine vs ANN forward time",
                   f"## {platform.machine()} CPU, 1 thread, "
                   f"{time.strftime('%Y-%m-%d')}", rows)


if __name__ == "__main__":
    main()
