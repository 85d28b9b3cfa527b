"""Peak resident memory that one engine call adds, per model, mode and
``record``, each measured in a fresh process (the peak of a process never
falls, so every figure needs its own).

The call runs eagerly on a batch of 256 after a warm-up call on 8 samples
(which loads the libraries and allocates the engine's tables); the figure
is the process's peak resident set size after the call minus its resident
set size before it. With ``record=False`` a call keeps only the traces and
shared products that later layers still read; ``record=True`` keeps every
layer's membrane and decodes the spikes.

Usage: .venv/bin/python benchmarks/engine_memory.py
       [--models digits fashion-vit]
Appends a section to benchmarks/results/engine_memory.md.
"""
import argparse
import pathlib
import platform
import subprocess
import sys
import time

from engine_vs_ann import append_section

HERE = pathlib.Path(__file__).resolve().parent

CHILD = """
import resource, sys
import torch
sys.path.insert(0, {here!r})
from engine_vs_ann import load
from lava_spiked.engine import Engine

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

torch.set_num_threads(1)
net, batch = load({model!r})
engine = Engine(net, {mode!r}, compile=False)
_, warm = batch(8)
_, inputs = batch(256)
res = engine(**warm, record={record}, warn=False)
del res
before = rss_mb()
res = engine(**inputs, record={record}, warn=False)
if {record}:
    res.steps
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(peak - before)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+",
                        default=["digits", "fashion-vit"])
    args = parser.parse_args()
    rows = ["| model | mode | record | MB added by one call (batch 256) |",
            "|---|---|---|---|"]
    for model in args.models:
        for mode in ("fixed", "float"):
            for record in (False, True):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD.format(
                        here=str(HERE), model=model, mode=mode,
                        record=record)],
                    check=True, capture_output=True, text=True).stdout
                rows.append(f"| {model} | {mode} | {record} | "
                            f"{float(out.split()[-1]):.0f} |")
                print(rows[-1], flush=True)
    append_section("engine_memory.md", "Memory of one engine call",
                   f"## {platform.machine()} CPU, "
                   f"{time.strftime('%Y-%m-%d')}", rows)


if __name__ == "__main__":
    main()
