"""``convert(..., B="auto")`` measured (issue 33): the base it chooses,
the time the choice takes and the test accuracy drop of
``Engine(net, 'fixed')`` against the ANN, next to fixed bases.

Models and splits are those of ``benchmarks/lowt_calibration.py``: the
bundled DigitsViT (200 calibration, 397 test images) and the 3-block
Fashion-MNIST ViT whose weights are ``benchmarks/results/
lowt_fashion_vit.pt`` (512 calibration images, the 10k test images).
Usage::

    OMP_NUM_THREADS=1 python benchmarks/auto_base.py --models digits fashion

prints a markdown table (written up in
``benchmarks/results/lowt_calibration.md``).
"""
import argparse
import pathlib
import sys
import time

import numpy as np
import torch

from lava_spiked import Engine, convert
from lava_spiked.code_error import AUTO_SAMPLES

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from lowt_calibration import digits, fashion  # noqa: E402


def accuracy(net, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy of ``Engine(net, 'fixed')`` (bit-exact with Lava
    fixed_pt)."""
    eng = Engine(net, "fixed", compile=False)
    logits = np.concatenate([
        eng(x[i:i + batch], record=False, warn=False).logits.numpy()
        for i in range(0, len(x), batch)])
    return float((logits.argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits", "fashion"])
    ap.add_argument("--steps", nargs="+", type=int, default=[16, 24])
    ap.add_argument("--compare", nargs="*", type=float, default=[1.15, 1.4],
                    help="fixed bases measured beside the chosen one")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| model | T | B | chosen by | readout error calib | "
          "ANN acc | SNN acc | drop (pp) | choice (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        if name == "digits":
            model, xc, (xt, yt) = digits()
        else:
            model, xc, (xt, yt) = fashion(
                pathlib.Path(__file__).parent / "results", 12, 512)
        with torch.no_grad():
            ann = model(torch.from_numpy(xt)).numpy()
        ann_acc = float((ann.argmax(1) == yt).mean())
        for T in args.steps:
            t0 = time.perf_counter()
            net = convert(model, xc, B="auto", T=T, progress=False)
            t_auto = time.perf_counter() - t0
            t0 = time.perf_counter()
            given = convert(model, xc, B=1.4, T=T, progress=False)
            t_fixed = time.perf_counter() - t0
            t0 = time.perf_counter()  # the choice alone
            again = given.recode(B="auto", calibration_data=xc,
                                 progress=False)
            t_choice = time.perf_counter() - t0
            assert again.plan.code_choice == net.plan.code_choice
            choice = net.plan.code_choice
            errors = dict(zip(choice.grid, choice.errors))
            print(f"<!-- {name} T={T}: grid {choice.grid}, errors "
                  f"{[round(e, 4) for e in choice.errors]}, "
                  f"{choice.samples} samples (cap {AUTO_SAMPLES}); convert "
                  f"{t_auto:.1f} s auto, {t_fixed:.1f} s at B = 1.4 -->",
                  flush=True)
            for B in [choice.chosen] + [b for b in args.compare
                                        if b != choice.chosen]:
                acc = accuracy(net if B == choice.chosen
                               else net.recode(B=B), xt, yt)
                err = errors.get(B, float("nan"))
                print(f"| {name} | {T} | {B} | "
                      f"{'auto' if B == choice.chosen else 'given'} | "
                      f"{err:.4f} | {100 * ann_acc:.2f}% | {100 * acc:.2f}% "
                      f"| {100 * (ann_acc - acc):+.2f} | "
                      + (f"{t_choice:.1f}" if B == choice.chosen
                         else "") + " |", flush=True)


if __name__ == "__main__":
    main()
