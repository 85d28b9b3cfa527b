"""Demo: a vector through two phase-coded layers in Lava.

``python -m lava_spiked`` encodes a random vector into one spike per element,
passes it through a ReLU layer and a readout layer built from Lava processes
(PhaseEncoder -> Dense -> PhaseNeuron -> Dense -> PhaseNeuron(readout)),
runs it under ``fixed_pt`` and ``floating_pt``, and prints the ANN values
next to the decoded spike values and spike times.
"""
import argparse
import time

import numpy as np

from lava_spiked import phase
from lava_spiked.chain import PhaseChain


def build_demo(seed: int, B: float, T: int):
    """Random 2-layer MLP (8 -> 12 ReLU -> 4) with sigma set to the max
    |activation| of this input, and its input."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, 8)
    w1, b1 = rng.normal(0, 0.5, (12, 8)), rng.normal(0, 0.1, 12)
    w2, b2 = rng.normal(0, 0.5, (4, 12)), rng.normal(0, 0.1, 4)
    hidden = np.maximum(w1 @ x + b1, 0.0)
    out = w2 @ hidden + b2
    scales = [np.abs(x).max(), hidden.max(), np.abs(out).max()]
    chain = PhaseChain([w1, w2], [b1, b2], scales, B=B, T=T, unipolar=[True])
    return chain, x, [x, hidden, out]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=float, default=1.15, help="base (1, 2]")
    parser.add_argument("--T", type=int, default=40, help="window steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    chain, x, ann = build_demo(args.seed, args.B, args.T)
    print(f"lava-spiked demo: B={args.B}, T={args.T}, layers "
          f"{' -> '.join(map(str, chain.sizes))}, {chain.num_steps} Lava "
          f"steps per sample")
    print(f"phase-code rounding bound (B-1)/(B+1) = "
          f"{phase.quantization_bound(args.B):.2%}\n")
    results = {}
    for tag in ("fixed_pt", "floating_pt"):
        t0 = time.perf_counter()
        results[tag] = chain.run(x, tag)
        print(f"{tag:>11}: ran in {time.perf_counter() - t0:.2f} s "
              f"(compile, fork, {chain.num_steps} steps, stop)")
    fx, fl = results["fixed_pt"], results["floating_pt"]

    names = ["input (encoder)", "hidden (ReLU)"]
    for k, name in enumerate(names):
        print(f"\n{name}: ANN value | decoded spike, fire step "
              f"(fixed_pt) | (floating_pt)")
        for i, a in enumerate(ann[k]):
            print(f"  [{i:2d}] {a:+.4f} | {fx.values[k][i]:+.4f} @ "
                  f"{_step(fx.steps[k][i])} | {fl.values[k][i]:+.4f} @ "
                  f"{_step(fl.steps[k][i])}")
    print("\nreadout (decoded membrane, no spikes): ANN | fixed_pt | "
          "floating_pt")
    for i, a in enumerate(ann[2]):
        print(f"  [{i:2d}] {a:+.4f} | {fx.output[i]:+.4f} | "
              f"{fl.output[i]:+.4f}")
    agree = np.argmax(fx.output) == np.argmax(ann[2])
    print(f"\nargmax: ANN {np.argmax(ann[2])}, SNN fixed_pt "
          f"{np.argmax(fx.output)} ({'agree' if agree else 'DISAGREE'}); "
          f"saturation events: {fx.saturated}")


def _step(step: int) -> str:
    return " -" if step < 0 else f"{step:2d}"


if __name__ == "__main__":
    main()
