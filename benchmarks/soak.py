"""Soak: memory over a long Lava stream and a long engine evaluation.

    .venv/bin/python benchmarks/soak.py [--lava-samples 2000] [--chunk 100]
        [--engine-samples 100000] [--batch 256]

Lava: the bundled DigitsViT (T = 40, B = 1.15, ``fixed_pt``, fused
blocks), one network kept running (``with net:``) while the test images,
cycled, go through ``net.infer`` calls of ``--chunk`` samples. After each
call: the resident memory of this process, the proportional set size of
Lava's child processes (summed: forked processes share pages, which their
resident sizes would count once each), the shared-memory segments they
map, this process's open file descriptors and threads, and whether the
call's outputs equal the engine's (fixed mode, bit for bit). Engine: the
same images in batches of ``--batch`` up to ``--engine-samples``,
``record=False`` as a dataset evaluation runs, resident memory after every
call.

Memory is flat when it grows by at most :data:`BOUND_MB` from the end of
the second call (the first ones allocate what every later call reuses) to
the end of the last; the script says so and exits with status 1 if not.
Writes ``benchmarks/results/soak.md`` and ``soak.png``.
"""
import argparse
import os
import pathlib
import sys
import time

import numpy as np
import psutil

HERE = pathlib.Path(__file__).parent
OUT = HERE / "results" / "soak.md"
FIGURE = HERE / "results" / "soak.png"
BOUND_MB = 20.0  # growth after the second call that still counts as flat


def _mb(n: float) -> float:
    return n / 2 ** 20


def _shm(processes) -> int:
    """Shared-memory segments that ``processes`` map (other programs on
    the machine have theirs)."""
    names = set()
    for proc in processes:
        try:
            with open(f"/proc/{proc.pid}/maps") as maps:
                names.update(line.rsplit("/", 1)[-1].strip()
                             for line in maps if "/dev/shm/psm_" in line)
        except OSError:  # ended meanwhile
            continue
    return len(names)


def soak_lava(net, x, samples: int, chunk: int) -> list:
    """One row per ``infer`` call of the running network."""
    from lava_spiked.engine import Engine
    from lava_spiked.lava_backend.imports import Loihi2SimCfg
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    engine, me, rows = Engine(net, "fixed"), psutil.Process(), []
    t0 = time.perf_counter()
    with net:
        for start in range(0, samples, chunk):
            batch = np.take(x, np.arange(start, start + chunk), axis=0,
                            mode="wrap")
            got = net.infer(batch, cfg, progress=False)
            same = np.array_equal(got, engine(batch, warn=False).logits)
            kids = me.children(recursive=True)
            rows.append(dict(
                samples=start + chunk, wall=time.perf_counter() - t0,
                parent=_mb(me.memory_info().rss),
                children=_mb(sum(c.memory_full_info().pss for c in kids)),
                processes=len(kids), shm=_shm([me, *kids]),
                fds=me.num_fds(), threads=me.num_threads(), same=same))
            print(f"lava {rows[-1]['samples']:>6} samples "
                  f"{rows[-1]['parent']:.0f} + {rows[-1]['children']:.0f} "
                  f"MB, {rows[-1]['shm']} segments, same={same}",
                  flush=True)
    return rows


def soak_engine(net, x, samples: int, batch: int) -> list:
    """One row per engine call."""
    from lava_spiked.engine import Engine
    engine, me, rows = Engine(net, "fixed", compile=False), \
        psutil.Process(), []
    t0 = time.perf_counter()
    for start in range(0, samples, batch):
        n = min(batch, samples - start)
        engine(np.take(x, np.arange(start, start + n), axis=0, mode="wrap"),
               record=False, warn=False)
        rows.append(dict(samples=start + n, wall=time.perf_counter() - t0,
                         rss=_mb(me.memory_info().rss)))
    return rows


def growth(rows: list, key) -> float:
    """Memory at the last row minus that at the second (MB)."""
    value = (lambda r: r[key]) if isinstance(key, str) else key
    return value(rows[-1]) - value(rows[min(1, len(rows) - 1)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lava-samples", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--engine-samples", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    os.environ.setdefault("CI", "true")  # no progress bars in the log
    from lava_spiked import convert
    from lava_spiked.bundled.digits_vit import digits_splits, load_default
    splits = digits_splits()
    net = convert(load_default(), splits["calibration"][0], progress=False)
    x = splits["test"][0]
    lava = soak_lava(net, x, args.lava_samples, args.chunk)
    eng = soak_engine(net, x, args.engine_samples, args.batch)

    total = lambda r: r["parent"] + r["children"]  # noqa: E731
    checks = {
        "Lava, this process and its children": growth(lava, total),
        "Lava, this process": growth(lava, "parent"),
        "engine": growth(eng, "rss")}
    flat = all(g <= BOUND_MB for g in checks.values())
    same = all(r["same"] for r in lava)
    leaks = {k: (lava[1][k], lava[-1][k]) for k in
             ("shm", "fds", "threads", "processes")}
    command = " ".join([".venv/bin/python", "benchmarks/soak.py",
                        *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# Soak: memory over long runs", "",
        f"Command: `{command}`; run "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{os.cpu_count()} cores. The bundled DigitsViT (T = 40, "
        "B = 1.15), `fixed_pt`, fused blocks; test images cycled.", "",
        f"Flat means at most {BOUND_MB:.0f} MB of growth from the end of "
        "the second call to the end of the last:", "",
        "| what | growth MB | flat |", "|---|---|---|"]
    lines += [f"| {k} | {g:+.1f} | {'yes' if g <= BOUND_MB else 'NO'} |"
              for k, g in checks.items()]
    lines += [
        "", f"Lava: {lava[-1]['samples']} samples in {len(lava)} `infer` "
        f"calls of {args.chunk}, {lava[-1]['wall']:.0f} s; every call's "
        f"outputs equal the engine's bit for bit: {'yes' if same else 'NO'}."
        " From the second call to the last: " + ", ".join(
            f"{k} {a} -> {b}" for k, (a, b) in leaks.items()) +
        " (shared-memory segments mapped by this process and Lava's, open "
        "file descriptors and threads of this process, Lava's OS "
        "processes).", "",
        "| samples | s | this process MB | Lava's processes MB (PSS) | "
        "segments | "
        "fds | threads |", "|---|---|---|---|---|---|---|"]
    step = max(1, len(lava) // 10)
    for r in lava[::step] + ([lava[-1]] if (len(lava) - 1) % step else []):
        lines.append(f"| {r['samples']} | {r['wall']:.0f} | "
                     f"{r['parent']:.0f} | {r['children']:.0f} | "
                     f"{r['shm']} | {r['fds']} | {r['threads']} |")
    lines += [
        "", f"Engine: {eng[-1]['samples']} samples in {len(eng)} calls of "
        f"{args.batch} (fixed, eager, `record=False`), "
        f"{eng[-1]['wall']:.0f} s; resident memory "
        f"{eng[0]['rss']:.0f} MB after the first call, "
        f"{eng[1]['rss']:.0f} after the second, {eng[-1]['rss']:.0f} "
        f"after the last (peak {max(r['rss'] for r in eng):.0f}).", "",
        f"![resident memory per call]({FIGURE.name})"]
    OUT.write_text("\n".join(lines) + "\n")
    _figure(lava, eng)
    print(OUT.read_text())
    return 0 if flat and same else 1


def _figure(lava: list, eng: list) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    s = [r["samples"] for r in lava]
    a.plot(s, [r["parent"] for r in lava], label="this process")
    a.plot(s, [r["children"] for r in lava], label="Lava's processes (PSS)")
    a.set(title="Lava, fixed_pt, fused", xlabel="samples streamed",
          ylabel="resident memory (MB)")
    a.legend()
    b.plot([r["samples"] for r in eng], [r["rss"] for r in eng])
    b.set(title="engine, fixed, record=False", xlabel="samples evaluated",
          ylabel="resident memory (MB)")
    for ax in (a, b):
        ax.set_ylim(0, 1.2 * ax.get_ylim()[1])  # a flat line near the top
        ax.grid(alpha=0.3)  # stays inside the frame
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
