"""Main job: convert the bundled DigitsViT and run it as a spiking network.

``python -m lava_spiked`` calibrates the bundled ViT (scikit-learn digits,
BatchNorm + ReLU, one block) on its calibration split, converts it into
phase-coded Lava processes, runs K test samples one after another through
Lava (``fixed_pt`` by default) and prints ANN and SNN logits, predictions,
their agreement, the steps per sample and the wall time.
"""
import argparse
import time

import numpy as np
import torch
from lava.magma.core.run_configs import Loihi2SimCfg

from lava_spiked.models import digits_splits, load_default
from lava_spiked import convert
from lava_spiked.validation import (check_base, check_count, check_steps,
                                    cli_type)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=cli_type(check_count, int),
                        default=20,
                        help="test samples to run through Lava (K)")
    parser.add_argument("--T", type=cli_type(check_steps, int), default=40,
                        help="window steps")
    parser.add_argument("--B", type=cli_type(check_base, float),
                        default=1.15, help="base (1, 2]")
    parser.add_argument("--tag", default="fixed_pt",
                        choices=["fixed_pt", "floating_pt"])
    args = parser.parse_args(argv)

    splits = digits_splits()
    model = load_default()
    x_cal = splits["calibration"][0]
    x, y = (a[:args.samples] for a in splits["test"])
    print(f"lava-spiked: DigitsViT ({sum(p.numel() for p in model.parameters())}"
          f" parameters) on scikit-learn digits, T={args.T}, B={args.B}")
    t0 = time.perf_counter()
    net = convert(model, x_cal, T=args.T, B=args.B)
    print(f"converted in {time.perf_counter() - t0:.1f} s: "
          f"{len(net.plan.layers)} layers "
          f"({', '.join(layer.name for layer in net.plan.layers)}), "
          f"{net.num_steps} steps per "
          f"sample (calibrated on {len(x_cal)} held-out images)")
    with torch.no_grad():
        ann = model(torch.from_numpy(x)).numpy()
    t0 = time.perf_counter()
    with net:
        snn = net.infer(x, Loihi2SimCfg(select_tag=args.tag))
    wall = time.perf_counter() - t0
    print(f"Lava ran {len(net.processes)} processes")

    print(f"\n{'#':>3} {'label':>5} {'ANN':>4} {'SNN':>4}  ANN logits | SNN "
          f"logits ({args.tag})")
    for i in range(len(x)):
        print(f"{i:3d} {y[i]:5d} {ann[i].argmax():4d} {snn[i].argmax():4d}  "
              + " ".join(f"{v:+5.1f}" for v in ann[i]) + " | "
              + " ".join(f"{v:+5.1f}" for v in snn[i]))
    agree = (ann.argmax(1) == snn.argmax(1)).mean()
    print(f"\nANN accuracy {np.mean(ann.argmax(1) == y):.1%}, SNN accuracy "
          f"{np.mean(snn.argmax(1) == y):.1%}, ANN/SNN agreement {agree:.1%} "
          f"on {len(x)} test samples")
    print(f"max |SNN - ANN| logit: {np.abs(snn - ann).max():.2f}; "
          f"{net.num_steps} steps per sample; Lava wall time "
          f"{wall:.1f} s ({wall / len(x):.2f} s per sample, compile and "
          "start-up included)")


if __name__ == "__main__":
    main()
