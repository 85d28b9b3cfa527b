"""Lava cost of a phase-coded chain: compile, start-up, ms per step, stop.

Chain: PhaseEncoder(64) -> 4 x [Dense(64x64) -> PhaseNeuron(64)], the last
one a readout, so 10 Lava processes plus sinks. Each point is the median of
fresh interpreters (Lava forks its processes per run).

Usage: .venv/bin/python benchmarks/chain_step_time.py [--repeats 3]
Writes benchmarks/results/chain_step_time.md.
"""
import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
WIDTH, LAYERS, B, T = 64, 4, 1.15, 40


def measure(tag: str) -> dict:
    """One fresh-interpreter measurement (run in a subprocess)."""
    import numpy as np
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    from lava_spiked.chain import PhaseChain

    rng = np.random.default_rng(0)
    ws = [rng.normal(0, 1 / np.sqrt(WIDTH), (WIDTH, WIDTH))
          for _ in range(LAYERS)]
    chain = PhaseChain(ws, [0.0] * LAYERS, [1.0] * (LAYERS + 1), B, T,
                       unipolar=[False] * (LAYERS - 1))
    net = chain.build(rng.uniform(-1, 1, WIDTH))
    cfg = Loihi2SimCfg(select_tag=tag)
    t0 = time.perf_counter()
    exe = net.encoder.compile(cfg)
    t1 = time.perf_counter()
    net.encoder.create_runtime(executable=exe)
    t2 = time.perf_counter()
    net.encoder.run(condition=RunSteps(num_steps=chain.num_steps),
                    run_cfg=cfg)
    t3 = time.perf_counter()
    net.encoder.stop()
    t4 = time.perf_counter()
    return dict(compile_s=t1 - t0, init_s=t2 - t1,
                ms_per_step=(t3 - t2) / chain.num_steps * 1e3,
                steps=chain.num_steps, stop_s=t4 - t3,
                processes=len(exe.proc_builders))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["floating_pt", "fixed_pt"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    rows = []
    for tag in ("floating_pt", "fixed_pt"):
        runs = [json.loads(subprocess.run(
            [sys.executable, __file__, "--child", tag], check=True,
            capture_output=True, text=True).stdout.splitlines()[-1])
            for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append((tag, med))
    lines = [
        "# Lava cost of a phase-coded chain",
        "",
        f"Command: `.venv/bin/python benchmarks/chain_step_time.py "
        f"--repeats {args.repeats}`  ",
        f"Machine: {platform.machine()}, {_cpus()} CPU cores, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}  ",
        f"Network: PhaseEncoder({WIDTH}) -> {LAYERS} x [Dense({WIDTH}x"
        f"{WIDTH}) -> PhaseNeuron({WIDTH})], last one readout; B={B}, T={T}; "
        f"medians of {args.repeats} fresh interpreters.",
        "",
        "| tag | processes | steps | compile s | runtime start s | ms/step "
        "| stop s |",
        "|---|---|---|---|---|---|---|",
    ]
    for tag, m in rows:
        lines.append(
            f"| {tag} | {m['processes']:.0f} | {m['steps']:.0f} | "
            f"{m['compile_s']:.3f} | {m['init_s']:.3f} | "
            f"{m['ms_per_step']:.2f} | {m['stop_s']:.3f} |")
    out = HERE / "results" / "chain_step_time.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


def _cpus() -> int:
    import os
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
