"""Scale benchmark: convert time, peak memory and engine time of
random-weight transformers of real model shapes.

Models (random weights; BatchNorm statistics made non-trivial by a few
train-mode passes on random data, then eval()):

``vit-tiny``
    ViT-Tiny shape: 3x224x224 images, 16x16 Conv2d patches (196 + CLS =
    197 tokens), dim 192, 3 heads, MLP 768, 12 pre-norm blocks, a 10-class
    head on CLS.
``minilm``
    MiniLM shape: 64 already-embedded tokens x 384 (float input, no
    embedding lookup), 12 heads, MLP 1536, 6 pre-norm layers, a 10-class
    head on the first token.
``swin-t-stage1``
    Stage 1 of a Swin-T shape, as torchvision builds it (LayerNorm, GELU):
    3x224x224 images, 4x4 patches (56 x 56 = 3,136 tokens), dim 96, 3
    heads, windows of 7 x 7 (64 windows, shifted in the second block, with
    Swin's -100 mask), 2 blocks, then norm, average pooling and a 10-class
    head.
``tokens-N``
    The N-table: 2 blocks of dim 192, 3 heads, MLP 768 on N embedded
    tokens, N in {17, 50, 197}, to show memory growing with the activations
    (N x C, heads x N^2 in attention), not with (N x C)^2.

The ViT, MiniLM and N-table models use token-wise BatchNorm (BatchNorm1d
over channels) in place of LayerNorm and ReLU in place of GELU ("BN/ReLU"
in the tables), as they did before LayerNorm and GELU converted, so that
their rows stay comparable across runs; the Swin is torchvision's own.

Each model is measured in a fresh subprocess, so that peak RSS
(``ru_maxrss``) is that model's alone: baseline after building the model
and the calibration data, then capture / calibrate / lower timed
separately (what ``lava_spiked.convert`` does, step by step), peak RSS
after conversion; then the torch engine (fixed and float mode) against the
ANN's own forward (float32, ``torch.inference_mode``) at a small batch,
timed interleaved (median of per-repeat times), and the latency in steps.

Usage::

    .venv/bin/python benchmarks/convert_scale.py            # full run
    .venv/bin/python benchmarks/convert_scale.py --quick    # small sizes

The full run writes benchmarks/results/convert_scale.md; both print the
tables.
"""
import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import typing as ty

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CALIBRATION = 32
TIME_TARGET_S = 120.0
RSS_TARGET_MB = 4096.0
ENGINE_BUDGET_S = 240.0  # stop repeating engine rounds after this


# --------------------------------------------------------------- models
def build_models():
    """Model classes (imported lazily so the parent process stays light)."""
    import torch
    from torch import nn

    class TokenBatchNorm(nn.Module):
        """BatchNorm1d over the channels of (batch, tokens, channels): the
        stand-in for LayerNorm until LayerNorm converts."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(dim)

        def forward(self, x):
            return self.bn(x.transpose(1, 2)).transpose(1, 2)

    class Attention(nn.Module):
        """timm-style attention: one qkv Linear split into heads,
        scaled_dot_product_attention, proj."""

        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.proj(y.transpose(1, 2).reshape(b, n, c))

    class Block(nn.Module):
        """Pre-norm block, BatchNorm for LayerNorm, ReLU for GELU."""

        def __init__(self, dim: int, heads: int, mlp: int) -> None:
            super().__init__()
            self.norm1 = TokenBatchNorm(dim)
            self.attn = Attention(dim, heads)
            self.norm2 = TokenBatchNorm(dim)
            self.fc1 = nn.Linear(dim, mlp)
            self.act = nn.ReLU()
            self.fc2 = nn.Linear(mlp, dim)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.fc2(self.act(self.fc1(self.norm2(x))))

    class ViT(nn.Module):
        """ViT: Conv2d patch embedding, CLS token, position embedding,
        blocks, final norm, head on CLS."""

        def __init__(self, image=224, patch=16, dim=192, depth=12, heads=3,
                     mlp=768, classes=10) -> None:
            super().__init__()
            tokens = (image // patch) ** 2
            self.embed = nn.Conv2d(3, dim, patch, stride=patch)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*(Block(dim, heads, mlp)
                                          for _ in range(depth)))
            self.norm = TokenBatchNorm(dim)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
            x = self.blocks(x + self.pos)
            return self.head(self.norm(x)[:, 0])

    class TokenEncoder(nn.Module):
        """Encoder on already-embedded tokens (batch, N, dim): blocks,
        final norm, head on the first token."""

        def __init__(self, dim=384, depth=6, heads=12, mlp=1536,
                     classes=10) -> None:
            super().__init__()
            self.blocks = nn.Sequential(*(Block(dim, heads, mlp)
                                          for _ in range(depth)))
            self.norm = TokenBatchNorm(dim)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            return self.head(self.norm(self.blocks(x))[:, 0])

    return ViT, TokenEncoder


# model name -> (description, constructor kwargs, sample shape, heads,
# tokens, channels, blocks)
def configs(quick: bool) -> ty.Dict[str, dict]:
    if quick:
        vit = dict(kind="vit", kw=dict(image=64, patch=16, dim=64, depth=2,
                                       heads=2, mlp=128),
                   sample=[3, 64, 64], heads=2, tokens=17, dim=64, depth=2,
                   batch=8)
        lm = dict(kind="tokens", kw=dict(dim=96, depth=2, heads=4, mlp=192),
                  sample=[16, 96], heads=4, tokens=16, dim=96, depth=2,
                  batch=8)
        n_table = [9, 17, 33]
        n_dim = dict(dim=64, depth=1, heads=2, mlp=128)
    else:
        vit = dict(kind="vit", kw=dict(image=224, patch=16, dim=192,
                                       depth=12, heads=3, mlp=768),
                   sample=[3, 224, 224], heads=3, tokens=197, dim=192,
                   depth=12, batch=8)
        lm = dict(kind="tokens", kw=dict(dim=384, depth=6, heads=12,
                                         mlp=1536),
                  sample=[64, 384], heads=12, tokens=64, dim=384, depth=6,
                  batch=16)
        n_table = [17, 50, 197]
        n_dim = dict(dim=192, depth=2, heads=3, mlp=768)
    out = {
        "vit-tiny" + ("-quick" if quick else ""): dict(
            vit, title="ViT-Tiny shape (BN/ReLU), 3x224x224 images, "
            "16x16 patches" if not quick else "small ViT (BN/ReLU)"),
        "minilm" + ("-quick" if quick else ""): dict(
            lm, title="MiniLM shape (BN/ReLU), pre-embedded float tokens, "
            "no embedding lookup" if not quick else
            "small token encoder (BN/ReLU)"),
    }
    if not quick:
        out["swin-t-stage1"] = dict(
            kind="swin", kw=dict(patch_size=[4, 4], embed_dim=96,
                                 depths=[2], num_heads=[3],
                                 window_size=[7, 7], num_classes=10),
            sample=[3, 224, 224], heads=3, tokens=3136, dim=96, depth=2,
            batch=8, title="Swin-T stage 1 shape (LayerNorm/GELU, "
            "torchvision), 56 x 56 tokens, 7 x 7 windows")
    for n in n_table:
        out[f"tokens-{n}"] = dict(
            kind="tokens", kw=dict(n_dim), sample=[n, n_dim["dim"]],
            heads=n_dim["heads"], tokens=n, dim=n_dim["dim"],
            depth=n_dim["depth"], batch=8, table="N",
            title=f"{n_dim['depth']} blocks, dim {n_dim['dim']}, "
            f"{n_dim['heads']} heads (BN/ReLU), {n} tokens")
    return out


# --------------------------------------------------------------- worker
def rss_mb() -> float:
    """Current resident set size (MB) from /proc."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_mb() -> float:
    """Peak RSS so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def nbytes(obj, seen=None) -> int:
    """Bytes of the numpy arrays and torch tensors reachable through the
    lists, dicts and dataclasses of a Graph or Plan."""
    import dataclasses

    import numpy as np
    import torch
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v, seen) for v in obj)
    if dataclasses.is_dataclass(obj):
        return sum(nbytes(getattr(obj, f.name), seen)
                   for f in dataclasses.fields(obj))
    return 0


def worker(name: str, cfg: dict, repeats: int, profile: bool) -> dict:
    import torch

    from lava_spiked.calibration import absorb_masks, calibrate
    from lava_spiked.capture import capture
    from lava_spiked.engine import Engine
    from lava_spiked.network import SpikingNetwork
    from lava_spiked.plan import lower

    import faulthandler
    import signal
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1
    torch.manual_seed(0)
    ViT, TokenEncoder = build_models()
    if cfg["kind"] == "swin":
        from torchvision.models.swin_transformer import SwinTransformer
        model = SwinTransformer(**cfg["kw"])
    else:
        model = ViT(**cfg["kw"]) if cfg["kind"] == "vit" else \
            TokenEncoder(**cfg["kw"])
    sample = tuple(cfg["sample"])
    # non-trivial BatchNorm statistics: cumulative averages over a few
    # train-mode passes on random data, random affine parameters
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.momentum = None
            m.weight.data.copy_(torch.rand(m.num_features, generator=g)
                                + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn((8,) + sample, generator=g))
    model.eval()
    calib = torch.randn((CALIBRATION,) + sample, generator=g).numpy()
    test = torch.randn((cfg["batch"],) + sample, generator=g)
    params = sum(p.numel() for p in model.parameters())
    res = dict(name=name, params=params, baseline_mb=rss_mb(),
               baseline_peak_mb=peak_mb())

    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    c0, t0 = time.process_time(), time.perf_counter()
    log(name, "capture")
    graph = capture(model, sample)
    c1, t1 = time.process_time(), time.perf_counter()
    res["capture_peak_mb"] = peak_mb()
    log(name, "calibrate")
    graph = absorb_masks(graph, calib, progress=False)
    sigmas = calibrate(graph, calib, progress=False)
    c2, t2 = time.process_time(), time.perf_counter()
    res["calibrate_peak_mb"] = peak_mb()
    log(name, "lower")
    net = SpikingNetwork(lower(graph, sigmas, 1.15, 40), graph, sigmas)
    c3, t3 = time.process_time(), time.perf_counter()
    log(name, "converted")
    res.update(capture_cpu_s=c1 - c0, calibrate_cpu_s=c2 - c1,
               lower_cpu_s=c3 - c2, convert_cpu_s=c3 - c0)
    if prof is not None:
        prof.disable()
        import io
        import pstats
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(30)
        res["profile"] = s.getvalue()
    res.update(capture_s=t1 - t0, calibrate_s=t2 - t1, lower_s=t3 - t2,
               convert_s=t3 - t0, convert_peak_mb=peak_mb(),
               after_convert_mb=rss_mb(), graph_mb=nbytes(graph) / 2 ** 20,
               plan_mb=nbytes(net.plan) / 2 ** 20,
               populations=len(graph.populations),
               neurons=sum(p.size for p in graph.populations),
               num_steps=net.plan.num_steps)
    emit(res)  # conversion results survive a later failure

    # ---------------------------------------------------- engine vs ANN
    runs: ty.Dict[str, ty.Callable] = {}
    runs["ANN float32"] = lambda: model(test)
    x64 = test.double()
    engines = {}
    # logits only, as the ANN (record=False, where the engine has it)
    import inspect
    bare = {"record": False} if "record" in inspect.signature(
        Engine.__call__).parameters else {}
    res["engine_record_false"] = bool(bare)
    # eager (the default compiles once eager calls took long enough)
    eager = {"compile": False} if "compile" in inspect.signature(
        Engine.__init__).parameters else {}
    for mode in ("fixed", "float"):
        t0 = time.perf_counter()
        try:
            engines[mode] = Engine(net, mode, **eager)
        except ValueError as err:
            res[f"engine_{mode}_error"] = str(err)
            continue
        res[f"engine_{mode}_build_s"] = time.perf_counter() - t0
        runs[f"engine {mode}"] = (lambda e=engines[mode]: e(x64, **bare))
    times: ty.Dict[str, ty.List[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        model(test[:1])  # warm-up on one sample
        for e in engines.values():
            e(x64[:1])
        start = time.perf_counter()
        for i in range(repeats):  # interleaved, within a time budget
            log(name, f"engine round {i}")
            for what, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[what].append(time.perf_counter() - t0)
            if time.perf_counter() - start > ENGINE_BUDGET_S:
                break
        res["engine_rounds"] = len(times["ANN float32"])
        ann = model(test).double()
        if "float" in engines:
            snn = engines["float"](x64, **bare).logits
            res["float_rel_err"] = float((snn - ann).abs().max() /
                                         ann.abs().max())
        if "fixed" in engines:
            snn = engines["fixed"](x64, **bare).logits
            res["fixed_rel_err"] = float((snn - ann).abs().max() /
                                         ann.abs().max())
    res["times_ms"] = {k: statistics.median(v) * 1e3
                       for k, v in times.items()}
    res["ratio"] = {k: statistics.median(t / a for t, a in zip(
        v, times["ANN float32"])) for k, v in times.items()}
    res["final_peak_mb"] = peak_mb()
    return res


def log(name: str, what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {name}: {what} (peak "
          f"{peak_mb():.0f} MB)", file=sys.stderr, flush=True)


def emit(res: dict) -> None:
    print("RESULT " + json.dumps(res), flush=True)


# --------------------------------------------------------------- parent
def watch(proc: subprocess.Popen, limit_mb: float, box: dict) -> None:
    """Kill the child when its RSS passes ``limit_mb`` (a shared
    machine)."""
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/statm") as f:
                mb = int(f.read().split()[1]) * os.sysconf(
                    "SC_PAGE_SIZE") / 2 ** 20
        except (FileNotFoundError, ProcessLookupError):
            return
        box["max_mb"] = max(box.get("max_mb", 0.0), mb)
        if mb > limit_mb:
            box["killed"] = f"RSS {mb:.0f} MB > {limit_mb:.0f} MB limit"
            proc.kill()
            return
        time.sleep(0.1)


def run_one(name: str, cfg: dict, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--config",
           json.dumps(cfg), "--repeats", str(args.repeats)]
    if args.profile:
        cmd.append("--profile")
    import tempfile
    log_path = pathlib.Path(tempfile.gettempdir()) / \
        f"convert_scale_{name}.log"
    err_file = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file,
                            text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    box: dict = {}
    t = threading.Thread(target=watch, args=(proc, args.kill_mb, box),
                         daemon=True)
    t.start()
    try:
        out, _ = proc.communicate(timeout=args.kill_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        box["killed"] = f"ran past {args.kill_s} s"
    t.join()
    err_file.close()
    err = log_path.read_text()
    res = dict(name=name)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
    if proc.returncode != 0:
        res["error"] = box.get("killed") or (err.strip().splitlines() or
                                             ["?"])[-1]
        res["stderr_tail"] = "\n".join(err.strip().splitlines()[-15:])
    return res


def fmt(v, spec=".1f", missing="-"):
    return missing if v is None else format(v, spec)


def report(results: ty.Dict[str, dict], cfgs: dict, args,
           started: str) -> str:
    import torch
    quick = " --quick" if args.quick else ""
    lines = [
        "# Convert at scale: time, memory, engine vs ANN", "",
        f"Run {started} on {platform.machine()} CPU, {os.cpu_count()} cores "
        f"(shared machine), torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, Python "
        f"{platform.python_version()}, load average "
        f"{os.getloadavg()[2]:.1f} (15 min) at the end, lava_spiked at "
        f"{git_head()}.", "",
        f"Command: `.venv/bin/python benchmarks/convert_scale.py{quick}`", "",
        "Random weights. The ViT, MiniLM and N-table models use "
        "**BatchNorm1d over channels (BN) in place of LayerNorm and ReLU "
        "in place of GELU** (BN/ReLU), as before LayerNorm converted, so "
        "that their rows stay comparable; the Swin is torchvision's own "
        "(LayerNorm, GELU, the -100 shifted-window mask). "
        f"{CALIBRATION} random calibration samples, B = 1.15, T = 40. Each "
        "model runs in a fresh subprocess: *baseline* is the RSS after "
        "building the model and its data, *peak* is `ru_maxrss` after "
        "conversion (capture + calibrate + lower, as `lava_spiked.convert`"
        " does them), *growth* = peak - baseline. Graph / Plan MB: bytes "
        "of the arrays held by the captured graph and by the Plan. Targets: "
        f"convert <= {TIME_TARGET_S:.0f} s and peak <= "
        f"{RSS_TARGET_MB / 1024:.0f} GB.", "",
        "## Models", "",
        "| model | params | neurons | capture s | calibrate s | lower s | "
        "convert s (CPU s) | baseline MB | peak after capture MB | peak MB "
        "| growth MB | graph MB | Plan MB | steps | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def target(r):
        if "convert_s" not in r:
            return "FAIL: " + r.get("error", "?")
        missed = []
        if r["convert_s"] > TIME_TARGET_S:
            missed.append(f"time: {r['convert_s']:.0f} s wall > "
                          f"{TIME_TARGET_S:.0f} s")
        if r["convert_peak_mb"] > RSS_TARGET_MB:
            missed.append(f"memory: {r['convert_peak_mb']:.0f} MB > "
                          f"{RSS_TARGET_MB:.0f} MB")
        return "MISSED " + "; ".join(missed) if missed else "met"

    for name, r in results.items():
        c = cfgs[name]
        lines.append(
            f"| {c['title']} | {fmt(r.get('params'), ',')} | "
            f"{fmt(r.get('neurons'), ',')} | "
            f"{fmt(r.get('capture_s'))} | {fmt(r.get('calibrate_s'))} | "
            f"{fmt(r.get('lower_s'))} | {fmt(r.get('convert_s'))} "
            f"({fmt(r.get('convert_cpu_s'))}) | "
            f"{fmt(r.get('baseline_mb'), '.0f')} | "
            f"{fmt(r.get('capture_peak_mb'), '.0f')} | "
            f"{fmt(r.get('convert_peak_mb'), '.0f')} | "
            f"{fmt(_sub(r, 'convert_peak_mb', 'baseline_mb'), '.0f')} | "
            f"{fmt(r.get('graph_mb'))} | {fmt(r.get('plan_mb'))} | "
            f"{fmt(r.get('num_steps'), 'd')} | {target(r)} |")
    lines += ["", "## Engine vs ANN", "",
              "Medians of interleaved calls (ANN float32 under "
              "`torch.inference_mode`; engine float64 (its fixed-mode traces "
              "may run in float32), logits only (`record=False`)), after a "
              f"warm-up call on one sample; up to {args.repeats} rounds "
              f"within {ENGINE_BUDGET_S:.0f} s; x ANN = median of per-round "
              "ratios. rel. err = max |engine logits - ANN logits| / "
              "max |ANN logits| (random weights: a sanity value, not an "
              "accuracy).", "",
              "| model | batch | rounds | ANN ms | engine fixed ms | x ANN | "
              "engine float ms | x ANN | rel. err fixed | rel. err float |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        t, q = r.get("times_ms", {}), r.get("ratio", {})
        fixed_err = r.get("engine_fixed_error", "-")
        float_err = r.get("engine_float_error", "-")
        lines.append(
            f"| {cfgs[name]['title']} | {cfgs[name]['batch']} | "
            f"{fmt(r.get('engine_rounds'), 'd')} | "
            f"{fmt(t.get('ANN float32'), '.1f')} | "
            f"{fmt(t.get('engine fixed'), '.1f', fixed_err)} | "
            f"{fmt(q.get('engine fixed'), '.2f')} | "
            f"{fmt(t.get('engine float'), '.1f', float_err)} | "
            f"{fmt(q.get('engine float'), '.2f')} | "
            f"{fmt(r.get('fixed_rel_err'), '.3f')} | "
            f"{fmt(r.get('float_rel_err'), '.3f')} |")
    n_rows = [n for n in results if cfgs[n].get("table") == "N"]
    if n_rows:
        c0 = cfgs[n_rows[0]]
        lines += [
            "", "## Memory against tokens N", "",
            f"{c0['depth']} blocks, dim C = {c0['dim']}, {c0['heads']} "
            "heads, MLP 4C, BN/ReLU, on N embedded tokens. Reference "
            "columns in MB of float64: N x C (one activation), heads x N^2 "
            "(one attention's logits), (N x C)^2 (what a dense all-neuron "
            "weight matrix of one layer would take).", "",
            "| N | N x C MB | heads x N^2 MB | (N x C)^2 MB | convert s | "
            "peak MB | growth MB | graph MB | Plan MB | growth / "
            "(N x C)^2 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
        for name in n_rows:
            c, r = cfgs[name], results[name]
            n, ch, h = c["tokens"], c["dim"], c["heads"]
            nc = n * ch * 8 / 2 ** 20
            hn2 = h * n * n * 8 / 2 ** 20
            nc2 = (n * ch) ** 2 * 8 / 2 ** 20
            growth = _sub(r, "convert_peak_mb", "baseline_mb")
            lines.append(
                f"| {n} | {nc:.3f} | {hn2:.3f} | {nc2:,.0f} | "
                f"{fmt(r.get('convert_s'))} | "
                f"{fmt(r.get('convert_peak_mb'), '.0f')} | "
                f"{fmt(growth, '.0f')} | {fmt(r.get('graph_mb'), '.2f')} | "
                f"{fmt(r.get('plan_mb'), '.2f')} | "
                f"{fmt(None if growth is None else growth / nc2, '.4f')} |")
    errors = {n: r for n, r in results.items() if "error" in r}
    if errors:
        lines += ["", "## Failures", ""]
        for name, r in errors.items():
            lines += [f"- {cfgs[name]['title']}: {r['error']}"]
    return "\n".join(lines) + "\n"


def git_head() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                              cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--",
                                "lava_spiked"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + (" with uncommitted changes in lava_spiked/" if dirty
                       else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


def _sub(r, a, b):
    return r[a] - r[b] if a in r and b in r else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (a smoke test)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="model names to run (default: all)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="engine/ANN rounds (within a 240 s budget)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the conversion, print the top")
    parser.add_argument("--kill-mb", type=float, default=12000,
                        help="kill a model's subprocess above this RSS")
    parser.add_argument("--kill-s", type=float, default=1800,
                        help="kill a model's subprocess after this long")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        res = worker(args.worker, json.loads(args.config), args.repeats,
                     args.profile)
        emit(res)
        return
    from tqdm.auto import tqdm
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cfgs = configs(args.quick)
    names = [n for n in cfgs if args.only is None or n in args.only]
    results = {}
    for name in tqdm(names, desc="models"):
        res = run_one(name, cfgs[name], args)
        results[name] = res
        tqdm.write(f"{name}: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in res.items()
            if k not in ("profile", "stderr_tail", "times_ms", "ratio"))
            + f" times_ms={res.get('times_ms')}")
        if "profile" in res:
            tqdm.write(res["profile"])
        if "stderr_tail" in res:
            tqdm.write(res["stderr_tail"])
    text = report(results, cfgs, args, started)
    print(text)
    if not (args.no_write or args.quick):
        out = HERE / "results" / "convert_scale.md"
        out.write_text(text)
        print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
