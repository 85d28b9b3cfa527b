"""Memory a compiled engine keeps: the resident set size of a fresh
process before and after an engine's first compiled call (fixed mode, batch
64, one thread, an empty TorchInductor cache), per model of
``benchmarks/engine_vs_ann.py``. The allocator keeps what the compile
freed, so the difference is what a process lives with afterwards; the
peak during the compile is reported beside it.

This is what ``Engine(compile='auto')`` guards against
(:data:`lava_spiked.engine.compiling.COMPILE_BYTES_PER_LAYER`).

Usage: .venv/bin/python benchmarks/compile_memory.py
       [--models digits fashion-vit minilm]
Appends a section to benchmarks/results/compile_memory.md.
"""
import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from engine_vs_ann import append_section

HERE = pathlib.Path(__file__).resolve().parent

CHILD = """
import json, resource, sys
import torch
sys.path.insert(0, {here!r})
from engine_vs_ann import load
from lava_spiked.engine import Engine

def rss_gb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30

torch.set_num_threads(1)
net, batch = load({model!r})
_, inputs = batch(64)
engine = Engine(net, "fixed", compile=True)
before = rss_gb()
with torch.inference_mode():
    engine(**inputs, record=False, warn=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(dict(layers=len(net.plan.layers) - 1, before=before,
                      after=rss_gb(), peak=peak)))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+",
                        default=["digits", "fashion-vit", "minilm"])
    args = parser.parse_args()
    lines = ["| model | layers | RSS before GB | after GB | kept GB | "
             "kept GB per layer | peak GB |", "|---|---|---|---|---|---|---|"]
    for model in args.models:
        with tempfile.TemporaryDirectory() as cache:
            out = subprocess.run(
                [sys.executable, "-c", CHILD.format(here=str(HERE),
                                                    model=model)],
                stdout=subprocess.PIPE, text=True, check=True,
                env=dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache))
        m = json.loads(out.stdout.splitlines()[-1])
        kept = m["after"] - m["before"]
        lines.append(f"| {model} | {m['layers']} | {m['before']:.2f} | "
                     f"{m['after']:.2f} | {kept:.2f} | "
                     f"{kept / m['layers']:.3f} | {m['peak']:.2f} |")
        print(lines[-1], flush=True)
    append_section("compile_memory.md", "Memory a compiled engine keeps",
                   f"## {platform.machine()} CPU, "
                   f"{time.strftime('%Y-%m-%d')}", lines)


if __name__ == "__main__":
    main()
