"""Dataset-scale evaluation of the bundled model: ANN vs SNN.

``python -m lava_spiked.evaluate`` converts the bundled DigitsViT for every
(T, B) of a sweep (``--B auto`` lets each T choose its base on the
calibration split, :func:`lava_spiked.code_error.choose_base`), runs the
whole test split through the batched engine
(bit-exact with Lava's ``fixed_pt`` by default), and writes to ``--out``:

- ``accuracy_sweep.md``: ANN and SNN accuracy, ANN/SNN agreement, accuracy
  drop and energy per sample (over the whole split) for every (T, B), the
  per-layer energy table of the first configuration, and the command that
  made it;
- ``accuracy_vs_T.png``, ``accuracy_vs_energy.png``;
- ``correlation.png``: decoded spike values against ANN activations per
  stage (input, Q/K/V operands, logits, attention output, ReLU) for the
  first configuration, like the paper's correlation figure.

Data-parallel: ``torchrun --nproc_per_node=K -m lava_spiked.evaluate ...``
gives each process a shard of the test split (``DistributedSampler``; its
padding repeats are dropped, so no sample counts twice), gathers logits
and energy counts, and the first process writes the same table as one
process would. CPU processes talk over gloo, CUDA ones (``--device cuda``,
one GPU per process) over nccl.
"""
import argparse
import os
import pathlib
import platform
import sys
import time
import typing as ty

import matplotlib
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lava_spiked import capture  # noqa: E402
from lava_spiked.bundled.digits_vit import (  # noqa: E402
    digits_splits, load_default)
from lava_spiked.conversion import convert  # noqa: E402
from lava_spiked.energy import energy, mean_report  # noqa: E402
from lava_spiked.engine import Engine, keep_freed_memory  # noqa: E402
from lava_spiked.numerics import phase  # noqa: E402
from lava_spiked.progress import bar  # noqa: E402
from lava_spiked.validation import (  # noqa: E402
    check_base_choice, check_count, check_steps, cli_type)


def _shard(n: int) -> np.ndarray:
    """Indices of the samples of this process: all of them, or under
    torchrun its ``DistributedSampler`` shard without the padding repeats
    (positions past ``n`` in the sampler's padded order)."""
    if not dist.is_initialized():
        return np.arange(n)
    rank, world = dist.get_rank(), dist.get_world_size()
    idx = np.fromiter(DistributedSampler(range(n), world, rank,
                                         shuffle=False), np.int64)
    return idx[rank + world * np.arange(len(idx)) < n]


def _run_split(net, engine, x: np.ndarray, desc: str):
    """Logits of the whole split (gathered from every process) and the
    energy report over all of it; the first batch of this process and its
    inputs for the figures."""
    idx = _shard(len(x))
    batches = [idx[i:i + 256] for i in range(0, len(idx), 256)]
    results, reports = [], []
    for b in bar(batches, desc, not dist.is_initialized() or
                 dist.get_rank() == 0):
        results.append(engine(x[b]))
        reports.append(energy(net, results[-1]))
    part = (idx, np.concatenate([r.logits.cpu().numpy() for r in results]),
            reports, [len(b) for b in batches])
    parts = [part]
    if dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, part)
    logits = np.zeros((len(x),) + part[1].shape[1:])
    for i, lg, _, _ in parts:
        logits[i] = lg
    report = mean_report([r for p in parts for r in p[2]],
                         [c for p in parts for c in p[3]])
    return logits, report, (results[0], x[batches[0]])


def sweep(Ts: ty.Sequence[int], Bs: ty.Sequence[ty.Union[float, str]],
          mode: str, device: str, samples: ty.Optional[int] = None) -> dict:
    """Evaluate every (T, B); returns rows and what the figures need.

    A B of ``'auto'`` is chosen per T on the calibration split
    (:func:`lava_spiked.code_error.choose_base`); its rows say so."""
    splits = digits_splits()
    model = load_default()
    x, y = splits["test"]
    if samples:
        x, y = x[:samples], y[:samples]
    with torch.no_grad():
        ann_logits = model(torch.from_numpy(x)).numpy()
    ann_acc = float((ann_logits.argmax(1) == y).mean())
    rows, first = [], None
    x_cal = splits["calibration"][0]
    calibrated = convert(model, x_cal, T=Ts[0], progress=False)
    for T in Ts:
        for given in Bs:
            net = calibrated.recode(given, T, calibration_data=x_cal,
                                    progress=False)
            B = net.B
            logits, report, batch = _run_split(
                net, Engine(net, mode, device), x, f"T={T} B={B}")
            acc = float((logits.argmax(1) == y).mean())
            rows.append(dict(T=T, B=B, given=given, acc=acc,
                             drop=ann_acc - acc,
                             agree=float((logits.argmax(1) ==
                                          ann_logits.argmax(1)).mean()),
                             snn_nj=report.snn_joules * 1e9,
                             ann_nj=report.ann_joules * 1e9))
            if first is None:
                first = (net, report) + batch
    return dict(rows=rows, ann_acc=ann_acc, n=len(y), first=first)


def _base(row: dict) -> str:
    return f"{row['B']} (auto)" if row["given"] == "auto" else str(row["B"])


def write(out: pathlib.Path, res: dict, mode: str, command: str) -> None:
    """Table and figures of a :func:`sweep`."""
    out.mkdir(parents=True, exist_ok=True)
    rows, (net, report, result, x) = res["rows"], res["first"]
    lines = [
        "# ANN vs SNN on the bundled DigitsViT (scikit-learn digits)", "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, Python {platform.python_version()},"
        f" torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; engine "
        f"mode `{mode}` ({'bit-exact with Lava fixed_pt' if mode == 'fixed' else 'equal to Lava floating_pt'}); "
        f"{res['n']} test images; ANN accuracy {res['ann_acc']:.2%}.", "",
        "| T | B | SNN accuracy | drop (pp) | ANN/SNN agreement | SNN nJ | "
        "ANN nJ | SNN/ANN energy |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['T']} | {_base(r)} | {r['acc']:.2%} | "
            f"{100 * r['drop']:.2f}"
            f" | {r['agree']:.2%} | {r['snn_nj']:.1f} | {r['ann_nj']:.1f} | "
            f"{r['snn_nj'] / r['ann_nj']:.2f} |")
    lines += ["", f"Per-layer energy per sample at T={rows[0]['T']}, "
              f"B={rows[0]['B']} (all {res['n']} test images):", "",
              report.to_markdown(), ""]
    (out / "accuracy_sweep.md").write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for given in dict.fromkeys(r["given"] for r in rows):
        pts = [(r["T"], r["acc"]) for r in rows if r["given"] == given]
        ax.plot(*zip(*pts), "o-", label=f"B = {given}")
    ax.axhline(res["ann_acc"], color="k", ls="--", label="ANN")
    ax.set(xlabel="T (steps per window)", ylabel="test accuracy",
           title="SNN accuracy vs window length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_T.png", dpi=100)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in rows:
        ax.plot(r["snn_nj"], r["acc"], "o", color="C0")
        ax.annotate(f"{r['T']},{r['B']}", (r["snn_nj"], r["acc"]),
                    fontsize=7)
    ax.plot(rows[0]["ann_nj"], res["ann_acc"], "s", color="k", label="ANN")
    ax.set(xlabel="energy per sample (nJ, 45 nm model)",
           ylabel="test accuracy", title="accuracy vs energy (labels: T,B)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_energy.png", dpi=100)

    names = [p.name for p in net.graph.populations if p.kind != "readout"]
    names += [op.logits for op in net.graph.attention]
    ann: dict = {}
    capture.run_graph(net.graph, torch.from_numpy(x),
                      lambda name, v: ann.__setitem__(name, v.numpy()))
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.8))
    for ax, key in zip(np.atleast_1d(axes), names):
        snn = phase.decode(result.steps[key].cpu().numpy(),
                           result.signs[key].cpu().numpy(), net.B,
                           net.sigmas[key])
        a = ann[key].ravel()[:4000]
        ax.plot(a, snn.ravel()[:4000], ".", ms=1, alpha=0.5)
        lim = np.abs(a).max()
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.5)
        r = np.corrcoef(a, snn.ravel()[:4000])[0, 1]
        ax.set_title(f"{key}\nr = {r:.3f}", fontsize=8)
        ax.set_xlabel("ANN", fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("decoded spikes", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "correlation.png", dpi=90)
    plt.close("all")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=cli_type(check_steps, int), nargs="+",
                        default=[40, 24, 16])
    parser.add_argument("--B", type=cli_type(check_base_choice, str),
                        nargs="+", default=[1.15, 1.1, 1.2, 1.4],
                        help="bases (1, 2]; 'auto': chosen per T on the "
                        "calibration split by the code's readout error")
    parser.add_argument("--mode", choices=["fixed", "float"], default="fixed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=cli_type(check_count, int),
                        default=None,
                        help="first N test images (default: all)")
    parser.add_argument("--out", default="evaluation")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    keep_freed_memory()  # this program runs the engine on many batches
    device = args.device
    if "WORLD_SIZE" in os.environ:  # started by torchrun
        cuda = device.startswith("cuda")
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            device = f"cuda:{os.environ['LOCAL_RANK']}"
    try:
        res = sweep(args.T, args.B, args.mode, device, args.samples)
        if dist.is_initialized():
            # the ranks leave together: one tearing its group down while
            # another's gloo threads still run aborts that one ("terminate
            # called without an active exception")
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) > 0:
        return  # the first process writes
    command = ("torchrun --nproc_per_node="
               f"{os.environ['WORLD_SIZE']} -m lava_spiked.evaluate "
               if "WORLD_SIZE" in os.environ else
               "python -m lava_spiked.evaluate ") + " ".join(
        sys.argv[1:] if argv is None else argv)
    write(pathlib.Path(args.out), res, args.mode, command.strip())
    print((pathlib.Path(args.out) / "accuracy_sweep.md").read_text())
    print(f"wrote {args.out}/ in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
