"""Engine time vs the ANN's own forward time on CPU, same batch and threads.

Four models, each converted at T=40, B=1.15:

``digits``
    The bundled DigitsViT (1x8x8 inputs, 17 tokens x 32 channels, one
    block), on the test split repeated to the batch size.
``fashion-vit``
    :class:`FashionViT`: a 3-layer encoder ViT of 17 tokens x 64 channels
    on Fashion-MNIST-sized 1x28x28 inputs (7x7 stride-7 patches and a CLS
    token), built from ``nn.TransformerEncoderLayer`` with BatchNorm over
    channels in place of LayerNorm and ReLU (what the converter supports).
    Random weights and random images (no dataset download): its BatchNorm
    statistics come from a few train-mode passes over random images, so
    calibration sees realistic activations; speed does not depend on
    accuracy.
``minilm`` (only when asked for, ``--models minilm``)
    The pretrained MiniLM-L6 sentiment pipeline of the stock transformers
    benchmark (LayerNorm, GELU, attention mask, mean pooling; 64 tokens x
    384 channels, 6 layers) on test tweets. Its ANN runs from token ids
    (embeddings included), its engine from the embedding outputs.
``vit-tiny`` (only when asked for)
    timm's stock ``vit_tiny_patch16_224`` (LayerNorm, GELU; 197 tokens x
    192 channels, 12 blocks), random weights and random images.

The ANN is the user's original module in float32 under
``torch.inference_mode``; the engines run with ``record=False`` (logits
and saturation counts only, like the ANN's logits). Timing is interleaved:
each repeat runs the ANN and the engines in turn, so that a slow spell of
the shared machine hits all of them, and a ratio is the median of the
per-repeat ratios (time / the ANN's time in the same repeat). Steps per
sample (``plan.num_steps``) is the latency of one sample on Loihi, in
time steps.

Each model and batch size runs in a fresh process, so that no earlier
round colours its times. With ``--compile``, each batch size gets fresh
compiled engines (a graph specialised to that size, as an evaluation at
one batch size runs) and, apart, engines compiled at the other batch
size first, which run the graph with a dynamic batch dimension that
torch.compile makes for a second size (the last, smaller batch of a
dataset, say). The rows "engine fixed" and "engine float" are eager
engines (``compile=False``).

``--evaluate N`` adds what the default engine (``compile='auto'``) costs
over an evaluation of N samples in batches of the batch size: fresh
engines and the ANN run the same ceil(N / batch) calls in turn, and the
row's ms is the engine's mean per call (its eager calls, the call that
compiles and the compiled ones), its ratio the engine's total over the
ANN's. Every process gets an empty TorchInductor cache directory, so
each first compile is an uncached one, as on a fresh machine. Each
compile keeps memory (MiniLM's 8.1 GB, ``compile_memory.py``): on MiniLM
run ``--evaluate`` and ``--compile`` apart, since four of its compiles in
one process did not fit in 24 GB.

Usage: .venv/bin/python benchmarks/engine_vs_ann.py [--threads N]
       [--batch 64 256] [--repeats R]
       [--models digits fashion-vit minilm vit-tiny]
       [--keep-freed-memory] [--compile] [--evaluate N]
Appends a section to benchmarks/results/engine_vs_ann.md.
"""
import argparse
import json
import pathlib
import platform
import statistics
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

from lava_spiked import convert
from lava_spiked.bundled.digits_vit import (TokenBatchNorm, digits_splits,
                                            load_default)
from lava_spiked.engine import Engine, keep_freed_memory

HERE = pathlib.Path(__file__).resolve().parent


class FashionViT(nn.Module):
    """ViT for 1x28x28 images: 16 patches of 7x7 plus a CLS token, a
    ``depth``-layer ``nn.TransformerEncoder`` (post-norm, ReLU) whose
    LayerNorms are replaced by BatchNorm over channels, a final BatchNorm
    and a linear head on the CLS token."""

    def __init__(self, dim: int = 64, heads: int = 4, mlp: int = 128,
                 depth: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 7, stride=7)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.1)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth,
                                             enable_nested_tensor=False)
        for each in self.encoder.layers:
            each.norm1, each.norm2 = TokenBatchNorm(dim), TokenBatchNorm(dim)
        self.norm = TokenBatchNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.encoder(x + self.pos)
        return self.head(self.norm(x)[:, 0])


def fashion_vit(seed: int = 0):
    """A random :class:`FashionViT` with BatchNorm statistics of random
    images, and those images (calibration first, then test)."""
    torch.manual_seed(seed)
    model = FashionViT()
    x = torch.rand(1024, 1, 28, 28,
                   generator=torch.Generator().manual_seed(seed))
    model.train()
    with torch.no_grad():
        for batch in x[:512].split(128):
            model(batch)
    return model.eval(), x[:256].numpy(), x[512:].numpy()


def minilm():
    """The pretrained MiniLM-L6 sentiment pipeline (mean pooling and the
    shipped head), converted on its calibration tweets; the ANN and the
    engine inputs of a batch of test tweets (padded to 64 tokens)."""
    from lava_spiked.huggingface import embed
    from lava_spiked.bundled.text_data import (MAX_LENGTH, convert_minilm,
                                               load_minilm, sentiment_head,
                                               tweets)

    model, tok = load_minilm()
    head = sentiment_head()
    net = convert_minilm(model, tok, progress=False)

    def batch(n):
        texts = tweets("test")[0][:n]
        enc = tok(texts, padding="max_length", truncation=True,
                  max_length=MAX_LENGTH, return_tensors="pt")
        hidden, mask = embed(model, enc, MAX_LENGTH)
        w = enc["attention_mask"][..., None].float()

        def ann():  # the user's pipeline from token ids to logits
            out = model(**enc).last_hidden_state
            return head((out * w).sum(1) / w.sum(1))
        return ann, dict(x=torch.from_numpy(hidden),
                         attention_mask=mask)
    return net, batch


def vit_tiny(seed: int = 0):
    """timm's ``vit_tiny_patch16_224`` as the library builds it
    (LayerNorm, GELU; random weights, 10 classes: no download), and
    random 3x224x224 images (32 for calibration, then test)."""
    import timm
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False,
                              num_classes=10).eval()
    x = torch.rand(96, 3, 224, 224,
                   generator=torch.Generator().manual_seed(seed))
    return model, x[:32].numpy(), x[32:].numpy()


def load(name: str):
    """The converted network and ``batch(n) -> (ann, engine_kwargs)``:
    the ANN's forward on n test samples and the engine's inputs for them
    (both ready before timing)."""
    if name == "minilm":
        return minilm()
    if name == "vit-tiny":
        model, calib, test = vit_tiny()
    elif name == "digits":
        splits = digits_splits()
        model, calib, test = (load_default(), splits["calibration"][0],
                              splits["test"][0])
    else:
        model, calib, test = fashion_vit()

    def batch(n):
        x = torch.from_numpy(np.resize(test, (n,) + test.shape[1:]))
        return (lambda: model(x)), dict(x=x.double())
    return convert(model, calib, progress=False), batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", nargs="+",
                        default=["digits", "fashion-vit"])
    parser.add_argument("--compile", action="store_true",
                        help="also time Engine(..., compile=True) (its "
                        "first call, which compiles, reported apart)")
    parser.add_argument("--evaluate", type=int, metavar="N",
                        help="also time the default engine over N samples")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="lava_spiked.engine.keep_freed_memory() first "
                        "(for the ANN as for the engine)")
    parser.add_argument("--only", nargs=2, metavar=("MODEL", "BATCH"),
                        help=argparse.SUPPRESS)  # one process's share
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args, args.only[0], int(args.only[1]))))
        return
    # each model and batch size in a fresh process: in one process, the
    # ANN at batch 256 took 1.3x longer after the batch-64 round (36 vs
    # 28 ms; the engines' times unchanged), which flattered the engines
    rows = ["| model | batch | steps/sample | what | ms | x ANN |",
            "|---|---|---|---|---|---|"]
    compile_s, threads = {}, None
    for name in args.models:
        for batch in args.batch:
            with tempfile.TemporaryDirectory() as cache:
                out = subprocess.run(
                    [sys.executable, __file__, *sys.argv[1:], "--only", name,
                     str(batch)], stdout=subprocess.PIPE, text=True,
                    check=True, env=dict(os.environ,
                                         TORCHINDUCTOR_CACHE_DIR=cache))
            part = json.loads(out.stdout.splitlines()[-1])
            rows += part["rows"]
            compile_s.update(part["compile_s"])
            threads = part["threads"]
            print("\n".join(part["rows"]), flush=True)
    lines = rows
    if compile_s:
        lines += ["", "First call of a compiled engine at this batch size "
                  "(compiles, uncached; the call of a default engine that "
                  "compiles): " + "; ".join(
                      f"{k} {v:.1f} s" for k, v in compile_s.items())]
    append_section("engine_vs_ann.md", "Engine vs ANN forward time",
                   f"## {platform.machine()} CPU, {threads} thread"
                   f"{'s' if threads > 1 else ''}, "
                   f"{time.strftime('%Y-%m-%d')}", lines)


def measure(args, name: str, batch: int) -> dict:
    """Time the ANN and the engines of one model at one batch size,
    interleaved: the table rows, compile times and threads."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        assert keep_freed_memory(), "glibc's mallopt is not available"
    # nn.TransformerEncoderLayer's inference fast path assumes its norms
    # are LayerNorms (it would apply layer_norm with the BatchNorms'
    # weights); the BatchNorm model runs only on the ordinary path
    torch.backends.mha.set_fastpath_enabled(False)
    net, make_batch = load(name)
    ann, inputs = make_batch(batch)
    rows, compile_s = [], {}
    if args.evaluate:  # first: nothing compiled in this process yet
        rows, compile_s = evaluation(args.evaluate, name, batch, net, ann,
                                     inputs)
    engines = {mode: Engine(net, mode, compile=False)
               for mode in ("fixed", "float")}
    if args.compile:  # fresh engines: each batch size compiles its own
        # graph, as an evaluation at one batch size does; an engine
        # compiled at another size first runs a graph with a dynamic
        # batch dimension
        other = next((b for b in args.batch if b != batch), None)
        for mode in ("fixed", "float"):
            engines[f"{mode}, compiled"] = Engine(net, mode, compile=True)
            if other is not None:
                e = Engine(net, mode, compile=True)
                with torch.inference_mode():
                    e(**make_batch(other)[1], record=False, warn=False)
                engines[f"{mode}, compiled at batch {other} first"] = e
    runs = {"ANN (float32)": ann}
    runs.update({f"engine {mode}": (
        lambda e=e: e(**inputs, record=False, warn=False))
        for mode, e in engines.items()})
    times = {what: [] for what in runs}
    with torch.inference_mode():
        for what, fn in runs.items():
            if "compiled" in what:  # compiles for this batch size
                t0 = time.perf_counter()
                fn()
                compile_s[f"{name}, batch {batch}, {what}"] = \
                    time.perf_counter() - t0
        for i in range(args.repeats + 2):  # two warm-up rounds
            for what, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                if i >= 2:
                    times[what].append(time.perf_counter() - t0)
    ann = times["ANN (float32)"]
    for what, ts in times.items():
        ratio = statistics.median(t / a for t, a in zip(ts, ann))
        rows.append(f"| {name} | {batch} | {net.plan.num_steps} | "
                    f"{what} | {statistics.median(ts) * 1e3:.2f} | "
                    f"{ratio:.2f} |")
    return dict(rows=rows, compile_s=compile_s,
                threads=torch.get_num_threads())


def evaluation(n: int, name: str, batch: int, net, ann, inputs):
    """Rows and compile times of default engines (``compile='auto'``)
    over ceil(n / batch) calls, each call of the ANN and both engines in
    turn."""
    engines = {mode: Engine(net, mode) for mode in ("fixed", "float")}
    calls = -(-n // batch)
    total = {what: 0.0 for what in ["ANN", *engines]}
    eager = dict.fromkeys(engines, 0)
    compile_s = {}
    with torch.inference_mode():
        for _ in range(calls):
            t0 = time.perf_counter()
            ann()
            total["ANN"] += time.perf_counter() - t0
            for mode, e in engines.items():
                compiled = bool(e.compiler.batch_sizes)
                t0 = time.perf_counter()
                e(**inputs, record=False, warn=False)
                took = time.perf_counter() - t0
                total[mode] += took
                eager[mode] += not e.compiler.batch_sizes
                if e.compiler.batch_sizes and not compiled:
                    compile_s[f"{name}, batch {batch}, engine {mode}, "
                              f"default"] = took
    rows = []
    for mode in engines:
        rows.append(
            f"| {name} | {batch} | {net.plan.num_steps} | engine {mode}, "
            f"default, {calls * batch} samples ({eager[mode]} of {calls} "
            "calls eager) | "
            f"{total[mode] / calls * 1e3:.2f} | "
            f"{total[mode] / total['ANN']:.2f} |")
    return rows, compile_s


def append_section(results: str, title: str, heading: str,
                   lines: list) -> None:
    """Append a section to ``benchmarks/results/<results>`` (created with
    ``title``): ``heading``, the command that ran, then ``lines``."""
    command = " ".join([".venv/bin/python",
                        f"benchmarks/{pathlib.Path(sys.argv[0]).name}",
                        *sys.argv[1:]])
    out = HERE / "results" / results
    text = out.read_text() if out.exists() else f"# {title}\n\n"
    out.write_text(text + "\n".join(
        [heading, "", f"Command: `{command}`", "", *lines]) + "\n\n")


if __name__ == "__main__":
    main()
