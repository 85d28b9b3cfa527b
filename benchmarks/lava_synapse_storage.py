"""Storage of token-shared synapses in Lava: Dense vs Sparse vs 1x1 Conv.

A token-shared synapse applies one (C, K) weight to each of N tokens: token
n reads source neurons n*K .. n*K+K-1 and writes n*C .. n*C+C-1. Lava can
hold it as

- dense:  ``Dense`` with the block-diagonal (N*C, N*K) ndarray (N copies),
- sparse: ``Sparse`` with the block-diagonal csr (N copies; what
  lava_spiked.lava_backend.lifecycle builds today),
- conv:   ``Conv`` with a 1x1 kernel of shape (C, 1, 1, K) over input shape
  (N, 1, K) -> (N, 1, C): the weight stored once (as lava-dl netx does).

Each variant runs as the minimal network
``RingBuffer source (graded int spikes) -> synapse -> RingBuffer sink`` under
Loihi2SimCfg(select_tag="fixed_pt") and "floating_pt". Weights are
lava_spiked's Dense-form mantissas ``2k``, k uniform in [-127, 127]
(fixed.WEIGHT_MANT_MAX); spikes are graded payloads in {-1, 0, +1}
(fixed.SPIKE_PAYLOAD_BITS = 2), ``num_message_bits=2``,
``sign_mode=SignMode.MIXED`` for Dense/Sparse, as
lava_spiked/lava_backend/build.py does.

Per run: build the processes, compile, create the runtime, run ``--warmup``
steps, then time ``--steps`` steps (``--conv-steps`` for conv, whose step is
compute-bound at 10-400 ms), read the sink, stop (always). Variants
alternate (dense, sparse, conv, dense, ...) inside one interpreter per
(shape, tag, threads); the table gives medians over ``--repeats`` rounds.
Every run's sink is compared with a numpy int64 reference (outputs must be
identical, under both tags).

Usage: .venv/bin/python benchmarks/lava_synapse_storage.py [--steps 200]
Writes benchmarks/results/lava_synapse_storage.md.
"""
import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "results" / "lava_synapse_storage.md"
SHAPES = [(17, 64, 64), (17, 64, 256), (50, 64, 64), (65, 16, 16)]  # N, K, C
VARIANTS = ("dense", "sparse", "conv")
TAGS = ("fixed_pt", "floating_pt")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def make_data(N: int, K: int, C: int, length: int, seed: int = 0):
    """Weight (C, K) of even mantissas 2k and graded spikes (N*K, length)."""
    from lava_spiked.numerics import fixed
    rng = np.random.default_rng(seed)
    m = fixed.WEIGHT_MANT_MAX
    w = 2 * rng.integers(-m, m + 1, size=(C, K)).astype(np.int32)
    spikes = rng.choice([-1, 0, 0, 1], size=(N * K, length)).astype(np.int32)
    return w, spikes


def block_diag_csr(w: np.ndarray, N: int):
    """(N*C, N*K) csr with N copies of w on the diagonal."""
    import scipy.sparse
    return scipy.sparse.block_diag([w] * N, format="csr", dtype=w.dtype)


def weight_bytes(variant: str, tag: str, N: int, K: int, C: int) -> int:
    """Bytes of weights the synapse's ProcessModel holds.

    Dense/Sparse/Conv fixed_pt models type weights as int32, floating_pt as
    float (float64); Sparse also holds int32 indices and indptr (scipy csr).
    Assumes a dense w (no zero mantissas; random 2k has ~1/255 zeros).
    """
    item = 4 if tag == "fixed_pt" else 8
    if variant == "dense":
        return N * C * N * K * item
    if variant == "sparse":
        nnz = N * C * K
        return nnz * item + nnz * 4 + (N * C + 1) * 4
    return C * K * item


def build(variant: str, w: np.ndarray, spikes: np.ndarray, N: int,
          buffer: int):
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.sparse.process import Sparse
    from lava.utils.weightutils import SignMode
    from lava_spiked.numerics import fixed

    C, K = w.shape
    src = Source(data=spikes)
    sink = Sink(shape=(N * C,), buffer=buffer)
    if variant == "conv":
        syn = Conv(weight=w.reshape(C, 1, 1, K), input_shape=(N, 1, K),
                   num_message_bits=fixed.SPIKE_PAYLOAD_BITS)
        src.s_out.reshape((N, 1, K)).connect(syn.s_in)
        syn.a_out.reshape((N * C,)).connect(sink.a_in)
        return src, syn, sink
    if variant == "dense":
        syn = Dense(weights=block_diag_csr(w, N).toarray(),
                    num_message_bits=fixed.SPIKE_PAYLOAD_BITS,
                    sign_mode=SignMode.MIXED)
    else:
        syn = Sparse(weights=block_diag_csr(w, N),
                     num_message_bits=fixed.SPIKE_PAYLOAD_BITS,
                     sign_mode=SignMode.MIXED)
    src.s_out.connect(syn.s_in)
    syn.a_out.connect(sink.a_in)
    return src, syn, sink


def reference(w: np.ndarray, spikes: np.ndarray, N: int,
              buffer: int) -> np.ndarray:
    """Sink contents: column t (time step t+1) holds W . s[:, t-1]; the
    synapse sends its a_buff one step late, column 0 is 0."""
    C, K = w.shape
    L = spikes.shape[1]
    s = spikes[:, np.arange(buffer) % L].astype(np.int64)
    y = np.einsum("ck,nkt->nct", w.astype(np.int64),
                  s.reshape(N, K, buffer)).reshape(N * C, buffer)
    out = np.zeros_like(y)
    out[:, 1:] = y[:, :-1]
    return out


def run_one(variant: str, tag: str, N: int, K: int, C: int, warmup: int,
            steps: int) -> dict:
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    buffer = warmup + steps
    w, spikes = make_data(N, K, C, buffer)
    t0 = time.perf_counter()
    src, syn, sink = build(variant, w, spikes, N, buffer)
    t1 = time.perf_counter()
    cfg = Loihi2SimCfg(select_tag=tag)
    try:
        exe = sink.compile(cfg)
        t2 = time.perf_counter()
        sink.create_runtime(executable=exe)
        t3 = time.perf_counter()
        sink.run(condition=RunSteps(num_steps=warmup), run_cfg=cfg)
        t4 = time.perf_counter()
        sink.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
        t5 = time.perf_counter()
        got = np.asarray(sink.data.get())
    finally:
        sink.stop()     # no-op when no runtime was created
    ref = reference(w, spikes, N, buffer)
    exact = bool(np.array_equal(got.astype(np.int64), ref))
    return dict(build_s=t1 - t0, compile_s=t2 - t1, runtime_s=t3 - t2,
                warmup_ms_per_step=(t4 - t3) / warmup * 1e3,
                ms_per_step=(t5 - t4) / steps * 1e3,
                exact=exact, max_abs_err=float(np.abs(
                    got.astype(np.float64) - ref).max()))


def child(shape: str, tag: str, repeats: int, warmup: int, steps: int,
          conv_steps: int, variants) -> None:
    N, K, C = map(int, shape.split("x"))
    runs = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            n = conv_steps if v == "conv" else steps
            w = min(warmup, max(1, n // 4)) if v == "conv" else warmup
            runs[v].append(run_one(v, tag, N, K, C, w, n))
    print(json.dumps(runs))


def odd_weight_check() -> str:
    """Dense/Sparse (MIXED, 8 bits) drop the weight LSB; Conv does not."""
    from lava.utils.weightutils import (SignMode, clip_weights,
                                        truncate_weights)
    w = np.array([[-255, -3, -1, 1, 3, 255]], dtype=np.int32)
    t = truncate_weights(clip_weights(w, SignMode.MIXED, num_bits=8),
                         SignMode.MIXED, 8)
    return (f"odd weights {w.ravel().tolist()} -> Dense/Sparse MIXED keep "
            f"{t.ravel().tolist()}; Conv keeps them unchanged")


NOTES = """\
Source facts (lava-nc 0.10.0, .venv/lib/python3.11/site-packages/lava/proc):

- Conv has graded-spike models under both tags: conv/models.py:40-43
  (`if self.num_message_bits.item() > 0: s_in = self.s_in.recv()`),
  `PyConvModelFixed` tagged 'fixed_pt' (conv/models.py:68-79, s_in/a_out
  int32, weight int32) and `PyConvModelFloat` tagged 'floating_pt'
  (conv/models.py:57-65). The payload dtype on the wire is the sender's
  (channel_builder uses the source port's d_type), so -1/+1 arrive intact,
  also into Dense/Sparse fixed_pt whose s_in is typed bool.
- Conv fixed_pt ignores weight_exp and num_weight_bits and does no MIXED
  LSB truncation/clip (Dense/Sparse do: dense/models.py:82-91,
  sparse/models.py:82-91); it wraps (modulo, not saturates) its output to
  24 bits (conv/models.py:78-79, conv/utils.py:83-84 `signed_clamp`). With
  lava_spiked's even mantissas 2k in [-254, 254], weight_exp 0 and +-1
  payloads the three are bit-exact (|sum| <= 254*K < 2**23 for K < 33027).
- Conv is slow because conv/utils.py:18 disables torch
  (`TORCH_IS_AVAILABLE = False`) and conv/utils.py:287-296 (`conv_scipy`)
  calls scipy.signal.convolve2d once per (out channel, in channel) pair:
  C*K Python-level calls per step (4096 for 64->64, 16384 for 64->256),
  whatever N. A 1x1 conv has no matrix-product fast path in Lava's CPU model.
- Weight memory: dense N*C*N*K words; sparse N*C*K values + N*C*K int32
  column indices + (N*C+1) int32 indptr (N copies); conv C*K words (one
  copy). The Python-side Var init holds the same again in the parent process.
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--conv-steps", type=int, default=20,
                   help="timed steps for conv (its step costs 10-400 ms)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shapes", default=",".join(
        f"{n}x{k}x{c}" for n, k, c in SHAPES), help="NxKxC,...")
    p.add_argument("--threads", default="default,1",
                   help="BLAS/OpenMP thread settings to compare")
    p.add_argument("--child", nargs=2, metavar=("SHAPE", "TAG"))
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    variants = args.variants.split(",")
    if args.child:
        child(*args.child, args.repeats, args.warmup, args.steps,
              args.conv_steps, variants)
        return

    shapes = args.shapes.split(",")
    threads = args.threads.split(",")
    cmd = " ".join([".venv/bin/python benchmarks/lava_synapse_storage.py"]
                   + sys.argv[1:])
    rows, all_exact = [], True
    t_start = time.time()
    for shape in shapes:
        N, K, C = map(int, shape.split("x"))
        for tag in TAGS:
            for th in threads:
                env = dict(os.environ)
                if th != "default":
                    env.update({k: th for k in THREAD_VARS})
                r = subprocess.run(
                    [sys.executable, __file__, "--child", shape, tag,
                     "--repeats", str(args.repeats), "--warmup",
                     str(args.warmup), "--steps", str(args.steps),
                     "--conv-steps", str(args.conv_steps),
                     "--variants", args.variants],
                    env=env, capture_output=True, text=True, timeout=1800)
                if r.returncode:
                    print(r.stdout, r.stderr, file=sys.stderr)
                    raise SystemExit(f"child {shape} {tag} {th} failed")
                runs = json.loads(r.stdout.strip().splitlines()[-1])
                for v in variants:
                    rs = runs[v]
                    med = {k: statistics.median(x[k] for x in rs)
                           for k in ("build_s", "compile_s", "runtime_s",
                                     "ms_per_step")}
                    ex = all(x["exact"] for x in rs)
                    all_exact &= ex
                    rows.append(dict(shape=shape, N=N, K=K, C=C, tag=tag,
                                     threads=th, variant=v, exact=ex,
                                     mn=min(x["ms_per_step"] for x in rs),
                                     mx=max(x["ms_per_step"] for x in rs),
                                     err=max(x["max_abs_err"] for x in rs),
                                     bytes=weight_bytes(v, tag, N, K, C),
                                     **med))
                    print(shape, tag, th, v, f"{med['ms_per_step']:.3f} ms",
                          "exact" if ex else "MISMATCH", flush=True)
    elapsed = time.time() - t_start

    cpus = len(os.sched_getaffinity(0))
    lines = [
        "# Token-shared synapse storage in Lava: Dense vs Sparse vs 1x1 Conv",
        "",
        f"Command: `{cmd}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"machine: {platform.machine()}, {cpus} CPU cores (shared, noisy), "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"lava-nc 0.10.0; load average at the end "
        f"{os.getloadavg()[0]:.1f}; total {elapsed:.0f} s.",
        "",
        "Network: RingBuffer source (graded spikes in {-1, 0, +1}, "
        "num_message_bits=2) -> synapse -> RingBuffer sink. Synapse: N "
        "tokens x (K in -> C out), weights 2k with k uniform in "
        "[-127, 127]. dense = `Dense` with the block-diagonal (N*C, N*K) "
        "ndarray; sparse = `Sparse` with the block-diagonal csr "
        "(lava_backend/build.py today); conv = `Conv` weight (C, 1, 1, K), "
        "input_shape (N, 1, K). "
        f"Each run: {args.warmup} warm-up steps, then {args.steps} timed "
        f"steps (conv: {min(args.warmup, max(1, args.conv_steps // 4))} "
        f"warm-up, {args.conv_steps} timed: its step is compute-bound); "
        "variants alternate inside one interpreter per (shape, tag, "
        f"threads); medians over {args.repeats} rounds (min-max in "
        "brackets). threads=1 sets OMP/OPENBLAS/MKL_NUM_THREADS=1. "
        "weight bytes = what the synapse's ProcessModel stores (int32 under "
        "fixed_pt, float64 under floating_pt; csr adds int32 indices + "
        "indptr). build = Process construction incl. the block-diagonal "
        "matrix; compile = `compile()`; runtime = `create_runtime()`. "
        "exact = the sink equals a numpy int64 reference on every run.",
        "",
        "| N x K -> C | tag | threads | variant | ms/step | weight bytes | "
        "build s | compile s | runtime s | exact |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['N']}x{r['K']}->{r['C']} | {r['tag']} | {r['threads']} | "
            f"{r['variant']} | {r['ms_per_step']:.3f} [{r['mn']:.3f}-"
            f"{r['mx']:.3f}] | {r['bytes']:,} | {r['build_s']:.3f} | "
            f"{r['compile_s']:.3f} | {r['runtime_s']:.3f} | "
            f"{'yes' if r['exact'] else 'NO (max err %g)' % r['err']} |")
    lines += ["", "Cheapest per step (median ms/step):", ""]
    for shape in shapes:
        for tag in TAGS:
            for th in threads:
                sel = [r for r in rows if r["shape"] == shape
                       and r["tag"] == tag and r["threads"] == th]
                best = min(sel, key=lambda r: r["ms_per_step"])
                others = ", ".join(f"{r['variant']} {r['ms_per_step']:.3f}"
                                   for r in sel)
                lines.append(f"- {shape} {tag} threads={th}: "
                             f"**{best['variant']}** ({others})")
    lines += ["", f"All outputs bit-exact vs reference: {all_exact}.  ",
              f"Weight truncation: {odd_weight_check()}.", "", NOTES]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
