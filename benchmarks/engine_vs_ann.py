"""Engine time vs the ANN's own forward time, same batch and device.

The bundled DigitsViT converted at T=40, B=1.15; a batch of 256 test images
(the test split repeated if needed). The ANN runs in float32 (its own
dtype); the engine runs in float64 (exact integer arithmetic in fixed mode).
Two timings of each, medians of --repeats calls after two warm-up calls:
back to back (each one alone, its data warm in cache), and interleaved (the
three in turn inside each repeat, so that a slow spell of a shared machine
hits all of them; ratio = median of the per-repeat ratios).

Usage: .venv/bin/python benchmarks/engine_vs_ann.py [--device cpu|cuda]
       [--threads N]
Appends a section to benchmarks/results/engine_vs_ann.md.
"""
import argparse
import pathlib
import platform
import statistics
import time

import numpy as np
import torch

from lava_spiked.engine import Engine
from lava_spiked.models import digits_splits, load_default
from lava_spiked import convert

HERE = pathlib.Path(__file__).resolve().parent


def seconds(fn, device) -> float:
    """Wall time of one call of ``fn`` (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    splits = digits_splits()
    x = np.resize(splits["test"][0], (args.batch, 1, 8, 8))
    model = load_default()
    net = convert(model, splits["calibration"][0], progress=False)
    model = model.to(device)
    xt = torch.from_numpy(x).to(device)
    x64 = xt.double()  # both sides get their input ready on the device
    engines = {mode: Engine(net, mode, device) for mode in ("fixed", "float")}
    runs = {"ANN forward (float32)": lambda: model(xt)}
    runs.update({f"engine {mode} (float64)": (lambda e=e: e(x64))
                 for mode, e in engines.items()})
    alone = {name: [] for name in runs}
    mixed = {name: [] for name in runs}
    with torch.no_grad():
        for name, fn in runs.items():
            for i in range(args.repeats + 2):
                t = seconds(fn, device)
                if i >= 2:
                    alone[name].append(t)
        for i in range(args.repeats + 2):
            for name, fn in runs.items():
                t = seconds(fn, device)
                if i >= 2:
                    mixed[name].append(t)
    ann_alone = statistics.median(alone["ANN forward (float32)"])
    ann = mixed["ANN forward (float32)"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" \
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    threads = f" --threads {args.threads}" if args.threads else ""
    lines = [f"## {name}, batch {args.batch}, {time.strftime('%Y-%m-%d')}",
             "", f"Command: `.venv/bin/python benchmarks/engine_vs_ann.py "
             f"--device {args.device} --batch {args.batch} --repeats "
             f"{args.repeats}{threads}`", "",
             "| what | back to back: ms | x ANN | interleaved: ms | x ANN |",
             "|---|---|---|---|---|"]
    for what in runs:
        t_alone = statistics.median(alone[what])
        ratio = statistics.median(t / a for t, a in zip(mixed[what], ann))
        lines.append(f"| {what} | {t_alone * 1e3:.2f} | "
                     f"{t_alone / ann_alone:.2f} | "
                     f"{statistics.median(mixed[what]) * 1e3:.2f} | "
                     f"{ratio:.2f} |")
    out = HERE / "results" / "engine_vs_ann.md"
    text = out.read_text() if out.exists() else \
        "# Engine vs ANN forward time\n\n"
    out.write_text(text + "\n".join(lines) + "\n\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
