"""Lava cost of lava-spiked networks: compile, start-up, ms per step, stop.

Networks:
- chain: PhaseEncoder(64) -> 4 x [Sparse(64x64) -> PhaseNeuron(64)], the
  last one a readout (T = 40), built from a PhaseChain's Plan.
- attention: one SpikingSelfAttention block, h = 4, N = 16, d = 16, fed by
  three PhaseEncoders (T = 16).
- vit: the bundled DigitsViT converted at T = 40, B = 1.15; seconds per
  sample = steps x ms/step (compile and start-up are paid once per run).

Every Process runs in its own OS process (``select_sub_proc_model=True``;
``benchmarks/lava_fused.py`` measures the fused blocks).

Each point is the median over fresh interpreters (Lava forks its processes
per run), both tags.

Usage: .venv/bin/python benchmarks/lava_step_time.py [--repeats 3]
Writes benchmarks/results/lava_step_time.md.
"""
import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
B = 1.15
NETWORKS = {
    "chain": "PhaseEncoder(64) -> 4 x [Sparse(64x64) -> PhaseNeuron(64)], "
             "last one readout, T=40",
    "attention": "3 PhaseEncoders -> SpikingSelfAttention(h=4, N=16, d=16), "
                 "T=16",
    "vit": "the bundled DigitsViT converted at T=40, B=1.15 (one sample)",
}


def build(network: str, tag: str):
    """Return (process to run, number of steps) for ``network``."""
    import numpy as np

    rng = np.random.default_rng(0)
    if network == "chain":
        from lava_spiked.lava_backend.chain import PhaseChain
        width, layers = 64, 4
        ws = [rng.normal(0, 1 / np.sqrt(width), (width, width))
              for _ in range(layers)]
        chain = PhaseChain(ws, [0.0] * layers, [1.0] * (layers + 1), B, 40,
                           unipolar=[False] * (layers - 1))
        from lava_spiked.lava_backend.runs import LavaNetwork
        lava = LavaNetwork(chain.plan, tag, record=False)
        lava.encoder.data.init = rng.uniform(-1, 1, width)
        return lava.encoder, chain.plan.num_steps
    if network == "vit":
        from lava_spiked.bundled.digits_vit import digits_splits, load_default
        from lava_spiked import convert
        splits = digits_splits()
        net = convert(load_default(), splits["calibration"][0],
                      progress=False)
        lava = net.lava(tag)
        lava.encoder.data.init = splits["test"][0][0]
        return lava.encoder, net.num_steps
    from lava_spiked.lava_backend.self_attention import SpikingSelfAttention
    q, k, v = (rng.normal(0, 1, (4, 16, 16)) for _ in range(3))
    att = SpikingSelfAttention(
        heads=4, tokens=16, head_dim=16, B=B, T=16, start=0,
        q_scale=np.abs(q).max(2, keepdims=True),
        k_scale=np.abs(k).max(2, keepdims=True),
        v_scale=np.abs(v).max(1, keepdims=True), logit_scale=4.0,
        out_scale=1.0)
    att.connect_inputs(q, k, v)
    return att.q, att.num_steps


def measure(network: str, tag: str) -> dict:
    """One fresh-interpreter measurement (run in a subprocess)."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    proc, steps = build(network, tag)
    # every process on its own (benchmarks/lava_fused.py compares blocks)
    cfg = Loihi2SimCfg(select_tag=tag, select_sub_proc_model=True)
    t0 = time.perf_counter()
    exe = proc.compile(cfg)
    t1 = time.perf_counter()
    proc.create_runtime(executable=exe)
    t2 = time.perf_counter()
    proc.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
    t3 = time.perf_counter()
    proc.stop()
    t4 = time.perf_counter()
    return dict(compile_s=t1 - t0, init_s=t2 - t1,
                ms_per_step=(t3 - t2) / steps * 1e3, steps=steps,
                stop_s=t4 - t3, processes=len(exe.proc_builders))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("NETWORK", "TAG"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    lines = [
        "# Lava cost of lava-spiked networks",
        "",
        f"Command: `.venv/bin/python benchmarks/lava_step_time.py "
        f"--repeats {args.repeats}`  ",
        f"Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPU "
        f"cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; medians of {args.repeats} fresh "
        "interpreters; B = 1.15.",
        "",
    ]
    lines += [f"- {name}: {desc}" for name, desc in NETWORKS.items()]
    lines += ["", "| network | tag | processes | steps | compile s | "
              "runtime start s | ms/step | stop s |",
              "|---|---|---|---|---|---|---|---|"]
    for network in NETWORKS:
        for tag in ("floating_pt", "fixed_pt"):
            runs = [json.loads(subprocess.run(
                [sys.executable, __file__, "--child", network, tag],
                check=True, capture_output=True, text=True
            ).stdout.splitlines()[-1]) for _ in range(args.repeats)]
            m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            lines.append(
                f"| {network} | {tag} | {m['processes']:.0f} | "
                f"{m['steps']:.0f} | {m['compile_s']:.3f} | "
                f"{m['init_s']:.3f} | {m['ms_per_step']:.2f} | "
                f"{m['stop_s']:.3f} |")
    out = HERE / "results" / "lava_step_time.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
