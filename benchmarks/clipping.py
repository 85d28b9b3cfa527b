"""How much ordinary data clips, to place the clipping warning's threshold.

The bundled DigitsViT, calibrated with max on the whole calibration split
and on three disjoint 32-sample slices of it, runs the whole test split
through the engine (fixed and float); per population, the fraction of
neurons x samples beyond the calibrated range (``EngineResult.clipped``).
The last row feeds the calibration split at 20x its range.

Usage: .venv/bin/python benchmarks/clipping.py
Writes benchmarks/results/clipping.md.
"""
import pathlib
import platform
import time

from lava_spiked import convert
from lava_spiked.bundled.digits_vit import digits_splits, load_default
from lava_spiked.engine import Engine
from lava_spiked.golden.models import CLIP_WARN_FRACTION, clip_sizes

HERE = pathlib.Path(__file__).resolve().parent


def fractions(net, x, mode: str) -> dict:
    """Population -> clipped fraction of ``x`` in the engine."""
    res = Engine(net, mode)(x, warn=False)
    sizes = clip_sizes(net.plan)
    return {name: float(c.sum()) / (sizes[name] * len(x))
            for name, c in res.clipped.items()}


def main() -> None:
    splits = digits_splits()
    calib, test = splits["calibration"][0], splits["test"][0]
    model = load_default()
    cases = [("whole calibration split", calib, test)]
    cases += [(f"calibration samples {i}-{i + 31}", calib[i:i + 32], test)
              for i in (0, 32, 64)]
    cases.append(("whole split, calibration data x 20", calib, calib * 20))
    lines = ["# Clipped fraction of ordinary data", "",
             "Command: `.venv/bin/python benchmarks/clipping.py`  ",
             f"Machine: {platform.machine()}, "
             f"{time.strftime('%Y-%m-%d')}; bundled DigitsViT, max "
             f"calibration, T = 40, B = 1.15; warning threshold "
             f"CLIP_WARN_FRACTION = {CLIP_WARN_FRACTION:.0%}.", "",
             "| calibrated on | data | mode | largest population fraction "
             "| population | input |", "|---|---|---|---|---|---|"]
    for label, cal, data in cases:
        net = convert(model, cal, progress=False)
        for mode in ("fixed", "float"):
            frac = fractions(net, data, mode)
            worst = max(frac, key=frac.get)
            what = "test split" if data is test else "calibration x 20"
            lines.append(f"| {label} | {what} | {mode} | "
                         f"{frac[worst]:.2%} | {worst} | "
                         f"{frac[net.plan.input]:.2%} |")
    out = HERE / "results" / "clipping.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
