"""Main job: convert a bundled model and run it as a spiking network.

``python -m lava_spiked`` calibrates the bundled ViT (scikit-learn digits,
BatchNorm + ReLU, one block) on its calibration split, converts it into
phase-coded Lava processes, streams K test samples through Lava
(``fixed_pt`` by default; each block fused in one OS process) and prints
ANN and SNN logits, predictions, their agreement, the steps per sample and
the wall time.

``python -m lava_spiked --model minilm-sentiment`` converts the stock
all-MiniLM-L6-v2 (a Hugging Face BERT: LayerNorm, GELU, 6 layers) with the
shipped sentiment head, calibrated on 512 held-out tweets, and prints K test
tweets with their label and the ANN's and SNN's predictions. The SNN runs on
the engine in fixed mode, which equals Lava's ``fixed_pt`` bit for bit
(in Lava, even fused, one MiniLM layer takes seconds per tweet:
``benchmarks/results/lava_fused.md``).
"""
import argparse
import time
import typing as ty

import numpy as np
import torch
from lava.magma.core.run_configs import Loihi2SimCfg

from lava_spiked import convert
from lava_spiked.bundled.digits_vit import digits_splits, load_default
from lava_spiked.validation import (check_base_choice, check_count,
                                    check_steps, cli_type)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits-vit",
                        choices=["digits-vit", "minilm-sentiment"])
    parser.add_argument("--samples", type=cli_type(check_count, int),
                        default=None,
                        help="test samples to run (K; default 20 digits, 8 "
                        "tweets)")
    parser.add_argument("--T", type=cli_type(check_steps, int), default=40,
                        help="window steps")
    parser.add_argument("--B", type=cli_type(check_base_choice, str),
                        default=1.15, help="base (1, 2], or 'auto': the "
                        "base of least readout error on the calibration "
                        "samples")
    parser.add_argument("--tag", default="fixed_pt",
                        choices=["fixed_pt", "floating_pt"])
    parser.add_argument("--neuron-level", action="store_true",
                        help="run every Lava process in its own OS process "
                        "(select_sub_proc_model=True) instead of one fused "
                        "process per block")
    args = parser.parse_args(argv)
    if args.model == "minilm-sentiment":
        minilm(args.samples or 8, args.T, args.B, args.tag)
        return
    args.samples = args.samples or 20

    splits = digits_splits()
    model = load_default()
    x_cal = splits["calibration"][0]
    x, y = (a[:args.samples] for a in splits["test"])
    print(f"lava-spiked: DigitsViT ({sum(p.numel() for p in model.parameters())}"
          f" parameters) on scikit-learn digits, T={args.T}, B={args.B}")
    t0 = time.perf_counter()
    net = convert(model, x_cal, T=args.T, B=args.B)
    print(f"converted in {time.perf_counter() - t0:.1f} s{_chosen(net)}: "
          f"{len(net.plan.layers)} layers "
          f"({', '.join(layer.name for layer in net.plan.layers)}), "
          f"{net.num_steps} steps per "
          f"sample (calibrated on {len(x_cal)} held-out images)")
    with torch.no_grad():
        ann = model(torch.from_numpy(x)).numpy()
    t0 = time.perf_counter()
    cfg = Loihi2SimCfg(select_tag=args.tag,
                       select_sub_proc_model=args.neuron_level)
    with net:
        snn = net.infer(x, cfg)
        leaves = net.lava(args.tag).leaves()
    wall = time.perf_counter() - t0
    blocks = len(net.plan.blocks())
    print(f"Lava ran {len(net.processes)} processes in {leaves} OS processes"
          + (" (neuron level)" if args.neuron_level else
             f" ({blocks} block{'s' * (blocks > 1)} fused; --neuron-level "
             "runs each process on its own)"))

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


def _chosen(net) -> str:
    """What ``--B auto`` chose, for the conversion line."""
    choice = net.plan.code_choice
    return "" if choice is None else \
        f" (B = {choice.chosen} chosen of {', '.join(map(str, choice.grid))})"


def minilm(k: int, T: int, B: ty.Union[float, str], tag: str) -> None:
    """The MiniLM sentiment job (module docstring)."""
    from lava_spiked import Engine
    from lava_spiked.huggingface import embed
    from lava_spiked.bundled.text_data import (MAX_LENGTH, SPLIT_SIZES,
                                               convert_minilm, load_minilm,
                                               tweets)

    model, tok = load_minilm()
    texts, labels = (a[:k] for a in tweets("test"))
    print(f"lava-spiked: all-MiniLM-L6-v2 (Hugging Face BertModel, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          f"parameters) + linear sentiment head, T={T}, B={B}")
    t0 = time.perf_counter()
    net = convert_minilm(model, tok, T=T, B=B)
    print(f"converted in {time.perf_counter() - t0:.0f} s{_chosen(net)}: "
          f"{len(net.plan.layers)} populations, {net.num_steps} steps per "
          f"tweet (calibrated on {SPLIT_SIZES['calibration']} held-out "
          f"tweets, {MAX_LENGTH} tokens)")
    hidden, mask = embed(model, tok(texts, padding=True, truncation=True,
                                    max_length=MAX_LENGTH), MAX_LENGTH)
    ann = net.ann(hidden, attention_mask=mask)
    mode = "fixed" if tag == "fixed_pt" else "float"
    t0 = time.perf_counter()
    snn = Engine(net, mode)(hidden, attention_mask=mask).logits.numpy()
    wall = time.perf_counter() - t0
    names = ("negative", "positive")
    print(f"\n{'label':>8} {'ANN':>8} {'SNN':>8}  tweet (SNN: engine, "
          f"= Lava {tag} bit for bit)" if mode == "fixed" else
          f"\n{'label':>8} {'ANN':>8} {'SNN':>8}  tweet (SNN: engine, "
          f"{tag})")
    for text, label, a, s in zip(texts, labels, ann, snn):
        print(f"{names[label]:>8} {names[a.argmax()]:>8} "
              f"{names[s.argmax()]:>8}  {text[:70]}")
    print(f"\nANN accuracy {np.mean(ann.argmax(1) == labels):.0%}, SNN "
          f"accuracy {np.mean(snn.argmax(1) == labels):.0%}, agreement "
          f"{np.mean(ann.argmax(1) == snn.argmax(1)):.0%} on {k} test "
          f"tweets; engine {wall / k * 1000:.0f} ms per tweet. Test-split "
          "figures: benchmarks/results/minilm_sentiment.md")


if __name__ == "__main__":
    main()
