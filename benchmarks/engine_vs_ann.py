"""Engine time vs the ANN's own forward time, same batch and device.

The bundled DigitsViT converted at T=40, B=1.15; batch of 256 test images
(the test split repeated if needed); median of --repeats timed runs after
warm-up. The ANN runs in float32 (its own dtype); the engine runs in
float64 (exact integer arithmetic for fixed mode).

Usage: .venv/bin/python benchmarks/engine_vs_ann.py [--device cpu|cuda]
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
from lava_spiked.network import convert

HERE = pathlib.Path(__file__).resolve().parent


def timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn()`` after two warm-up calls."""
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    splits = digits_splits()
    x = np.resize(splits["test"][0], (args.batch, 1, 8, 8))
    model = load_default()
    net = convert(model, splits["calibration"][0], progress=False)
    model = model.to(device)
    xt = torch.from_numpy(x).to(device)
    x64 = xt.double()  # both sides get their input ready on the device
    with torch.no_grad():
        ann = timed(lambda: model(xt), device, args.repeats)
    rows = [("ANN forward (float32)", ann)]
    for mode in ("fixed", "float"):
        engine = Engine(net, mode, device)
        rows.append((f"engine {mode} (float64)",
                     timed(lambda: engine(x64), device, args.repeats)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" \
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    lines = [f"## {name}, batch {args.batch}, {time.strftime('%Y-%m-%d')}",
             "", f"Command: `.venv/bin/python benchmarks/engine_vs_ann.py "
             f"--device {args.device} --batch {args.batch} --repeats "
             f"{args.repeats}`", "", "| what | ms per batch | x ANN |",
             "|---|---|---|"]
    lines += [f"| {what} | {t * 1e3:.2f} | {t / ann:.2f} |"
              for what, t in rows]
    out = HERE / "results" / "engine_vs_ann.md"
    text = out.read_text() if out.exists() else \
        "# Engine vs ANN forward time\n\n"
    out.write_text(text + "\n".join(lines) + "\n\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
