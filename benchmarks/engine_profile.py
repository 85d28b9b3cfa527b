"""Where an engine call spends its time, by kind of kernel.

One model of ``benchmarks/engine_vs_ann.py`` (default: the pretrained
MiniLM pipeline), one batch size, one thread: a compiled engine in each
mode is warmed up (it compiles), then ``--repeats`` calls run under
``torch.profiler`` with Inductor's per-kernel profiling on. With
``--eager`` the engines run eagerly (what ``compile='auto'`` does where a
compile would not fit in memory), the stages' numpy calls are timed as
one bucket, and the largest torch operators are listed in place of
fused kernels. Every CPU kernel's self time goes into one of:

- BLAS products: ``aten::mm`` / ``bmm`` / ``addmm`` (the synapses' shared
  products; Inductor calls them as extern kernels),
- the LayerNorm's inverse square root (``lava_spiked::inverse_sqrt``),
- Inductor's fused kernels (``cpp_fused_*``: traces, rounding, clamps,
  gathers, attention sums, stages), listed one by one,
- (eager) the LayerNorm and activation stages in numpy,
- the rest (copies, allocations, the Python around the graph).

Usage: .venv/bin/python benchmarks/engine_profile.py [--models minilm]
       [--batch 64] [--repeats 3] [--eager]
Appends a section to benchmarks/results/engine_profile.md.
"""
import argparse
import collections
import platform
import time

import torch
import torch._inductor.config as inductor_config

from engine_vs_ann import append_section, load
from lava_spiked.engine import Engine, arithmetic

BLAS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")


def kind(name: str) -> str:
    """The bucket of a profiler event's name."""
    if name in BLAS:
        return "BLAS products"
    if "inverse_sqrt" in name:
        return "LayerNorm inverse square root"
    if "cpp_fused" in name:
        return "Inductor fused kernels"
    if name == STAGES:
        return "stages in numpy"
    return "rest"


STAGES = "numpy stages"


def labelled(run_numpy):
    """``run_numpy`` inside a profiler range of its own: numpy's time is
    otherwise the self time of no operator."""
    def run(*args):
        with torch.profiler.record_function(STAGES):
            return run_numpy(*args)
    return run


def profile(engine, inputs: dict, repeats: int):
    """Per-call ms of each bucket, of each fused kernel, and of the
    call."""
    with torch.inference_mode():
        for _ in range(2):  # compiles, then warms up
            engine(**inputs, record=False, warn=False)
        t0 = time.perf_counter()
        with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                engine(**inputs, record=False, warn=False)
        wall = (time.perf_counter() - t0) / repeats
    buckets, kernels = collections.Counter(), collections.Counter()
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / 1e3 / repeats
        b = kind(e.key)
        buckets[b] += ms
        if b == "Inductor fused kernels" or b == "rest" and \
                e.key.startswith("aten::"):
            kernels[e.key] += ms
    return wall * 1e3, buckets, kernels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["minilm"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eager", action="store_true",
                        help="profile eager engines (compile=False)")
    args = parser.parse_args()
    how = "eager" if args.eager else "compiled"
    if args.eager:
        arithmetic.run_numpy = labelled(arithmetic.run_numpy)
    torch.set_num_threads(1)
    torch.backends.mha.set_fastpath_enabled(False)
    inductor_config.cpp.enable_kernel_profile = True
    lines = []
    for name in args.models:
        net, make_batch = load(name)
        _, inputs = make_batch(args.batch)
        for mode in ("fixed", "float"):
            engine = Engine(net, mode, compile=not args.eager)
            wall, buckets, kernels = profile(engine, inputs, args.repeats)
            del engine  # and its compiled code: MiniLM's kept 8.1 GB
            total = sum(buckets.values())
            lines += [f"### {name}, batch {args.batch}, {mode}, {how}: "
                      f"{wall:.0f} ms per call (profiled)", "",
                      "| kernels | ms per call | share |", "|---|---|---|"]
            lines += [f"| {b} | {ms:.1f} | {ms / total:.0%} |"
                      for b, ms in buckets.most_common()]
            lines += ["", "Largest " + ("torch operators (self time):"
                                        if args.eager else "fused kernels:"),
                      "",
                      "| kernel | ms per call | share |", "|---|---|---|"]
            lines += [f"| `{k[:90]}` | {ms:.1f} | {ms / total:.0%} |"
                      for k, ms in kernels.most_common(8)]
            lines.append("")
            print("\n".join(lines[-20:]), flush=True)
    append_section("engine_profile.md", "Where an engine call spends its "
                   "time",
                   f"## {platform.machine()} CPU, 1 thread, "
                   f"{time.strftime('%Y-%m-%d')}", lines)


if __name__ == "__main__":
    main()
