"""Streaming samples through Lava against one sample at a time.

    .venv/bin/python benchmarks/lava_streaming.py [--samples 20]

The bundled DigitsViT (T = 40, B = 1.15) under ``fixed_pt``. After one
warm-up sample (compile and start-up, reported separately), the same
``--samples`` test images run twice, alternating order per repeat:

- streamed: one ``net.infer(x)`` call, a new sample every
  ``plan.stream_period`` steps;
- one at a time: ``net.infer(x[i:i + 1])`` per image, each waiting for the
  previous one to leave the network.

Both must give the integer golden model's logits. Reports Lava steps,
wall time, samples per step and per second. Writes
``benchmarks/results/lava_streaming.md``.
"""
import argparse
import os
import pathlib
import time

import numpy as np

from lava_spiked import convert
from lava_spiked.bundled.digits_vit import digits_splits, load_default
from lava_spiked.lava_backend.imports import Loihi2SimCfg

OUT = pathlib.Path(__file__).parent / "results" / "lava_streaming.md"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("CI", "true")  # no progress bars in the timings
    splits = digits_splits()
    net = convert(load_default(), splits["calibration"][0], progress=False)
    x = splits["test"][0][:args.samples]
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    rows = {}
    with net:
        t0 = time.perf_counter()
        net.infer(x[:1], cfg)
        startup = time.perf_counter() - t0
        lava = net.lava("fixed_pt")
        for how in ("streamed", "one at a time", "streamed",
                    "one at a time"):
            steps, t0 = lava.steps, time.perf_counter()
            if how == "streamed":
                got = net.infer(x, cfg)
            else:
                got = np.concatenate([net.infer(x[i:i + 1], cfg)
                                      for i in range(len(x))])
            wall = time.perf_counter() - t0
            for out, sample in zip(got, x):
                np.testing.assert_array_equal(out, net.golden_fixed(sample))
            rows.setdefault(how, []).append((lava.steps - steps, wall))
    n, plan = len(x), net.plan
    lines = [
        "# Streaming samples through Lava", "",
        f"Command: `python benchmarks/lava_streaming.py --samples {n}`; the "
        f"bundled DigitsViT, T = 40, B = 1.15, `fixed_pt`, "
        f"{len(net.processes)} Lava processes, {plan.num_steps} steps per "
        f"sample, stream period {plan.stream_period} steps. Compile, "
        f"start-up and the first sample: {startup:.1f} s. Two repeats, "
        "alternating; every output equals the integer golden model.", "",
        "| how | repeat | Lava steps | wall s | samples per 1000 steps | "
        "samples per s |", "|---|---|---|---|---|---|"]
    for how, runs in rows.items():
        for i, (steps, wall) in enumerate(runs):
            lines.append(f"| {how} | {i + 1} | {steps} | {wall:.1f} | "
                         f"{1000 * n / steps:.2f} | {n / wall:.3f} |")
    s, o = (np.mean([w for _, w in rows[k]]) for k in
            ("streamed", "one at a time"))
    lines += ["", f"Streaming is {o / s:.2f}x faster in wall time "
              f"(mean of the repeats); in steps "
              f"{rows['one at a time'][0][0] / rows['streamed'][0][0]:.2f}x "
              "(a call runs on until every process has finished its last "
              "sample, so one sample alone takes more than its "
              f"{plan.num_steps} steps)."]
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
