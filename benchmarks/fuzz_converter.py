"""Fuzz the converter with generated transformers and write what it found.

Each seed is one architecture of ``tests/fuzz.py`` (attention written by
hand, through ``scaled_dot_product_attention``, ``nn.MultiheadAttention`` or
``nn.TransformerEncoder``; LayerNorm or BatchNorm, pre- or post-norm; ReLU,
GELU, GELU's tanh form, SiLU; class token, mean, first-token or per-token
outputs; causal masks in four forms; padding masks that ``forward`` takes
in three conventions), with random weights. ``fuzz.check`` converts it and
asserts that the captured graph equals the model, that the engine equals
the golden models in fixed and float mode, and that nothing else is
raised. Every outcome is one of:

- ok;
- refused: the library's own error (``UnsupportedModelError``,
  ``ValueError``) for an architecture it promises to convert;
- wrong: an assertion of the check failed;
- crash: any other exception.

Results go to ``benchmarks/results/fuzz_converter.md`` with the command,
each finding with the seeds that show it (``fuzz.check(fuzz.from_seed(S))``
reproduces one). ``--shrink`` instead runs hypothesis over the same space
(``fuzz.architectures()``), which reduces a failure to a small
architecture and prints it.

Usage::

    python benchmarks/fuzz_converter.py [--seeds 2000] [--start 0] \
        [--workers 2] [--minutes 60] [--shrink 200]
"""
import argparse
import collections
import concurrent.futures
import pathlib
import platform
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
RESULTS = HERE / "results" / "fuzz_converter.md"


def outcome(seed: int):
    """(seed, kind, message, seconds, architecture) of one seed."""
    import torch

    import fuzz
    from lava_spiked.capture import UnsupportedModelError

    torch.set_num_threads(1)
    arch = fuzz.from_seed(seed)
    t0 = time.perf_counter()
    try:
        fuzz.check(arch)
        kind, message = "ok", ""
    except (UnsupportedModelError, ValueError) as err:
        kind, message = "refused", f"{type(err).__name__}: {err}"
    except AssertionError as err:
        kind, message = "wrong", str(err).strip()
    except Exception as err:
        kind, message = "crash", f"{type(err).__name__}: {err}"
    return seed, kind, message, time.perf_counter() - t0, arch


def shrink(examples: int) -> None:
    """Hypothesis over the architectures: raises with the smallest failing
    one it finds."""
    from hypothesis import given, settings

    import fuzz

    @settings(max_examples=examples, deadline=None, database=None)
    @given(fuzz.architectures())
    def converts(arch):
        fuzz.check(arch)

    converts()
    print(f"no failure in {examples} examples")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="stop starting seeds after this long")
    parser.add_argument("--shrink", type=int, metavar="EXAMPLES",
                        help="run hypothesis for this many examples instead")
    args = parser.parse_args(argv)
    if args.shrink:
        return shrink(args.shrink)

    import torch
    from tqdm import tqdm

    t0 = time.perf_counter()
    seeds = range(args.start, args.start + args.seeds)
    results = []
    with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        pending = set()
        queue = iter(seeds)
        bar = tqdm(total=len(seeds), desc="fuzzing", unit="model")
        while True:
            while len(pending) < 2 * args.workers and \
                    time.perf_counter() - t0 < 60 * args.minutes:
                seed = next(queue, None)
                if seed is None:
                    break
                pending.add(pool.submit(outcome, seed))
            if not pending:
                break
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                results.append(future.result())
                bar.update()
        bar.close()
    elapsed = time.perf_counter() - t0
    results.sort()

    kinds = collections.Counter(r[1] for r in results)
    findings = collections.defaultdict(list)
    for seed, kind, message, _, arch in results:
        if kind != "ok":
            findings[(kind, message.splitlines()[0][:300])].append(
                (seed, arch))
    coverage = collections.defaultdict(collections.Counter)
    for *_, arch in results:
        for field in ("attention", "norm", "order", "activation", "pooling",
                      "causal", "padding", "depth", "T"):
            coverage[field][getattr(arch, field)] += 1
    command = " ".join(["python benchmarks/fuzz_converter.py"] +
                       (argv if argv is not None else sys.argv[1:]))
    lines = [
        f"\n## Seeds {results[0][0]} to {results[-1][0]}\n" if results else
        "\n## No seed ran\n",
        f"`{command}` ({time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, {args.workers} workers)\n",
        f"- {len(results)} architectures in {elapsed / 60:.1f} min "
        f"({sum(r[3] for r in results) / max(1, len(results)):.1f} s each "
        "on one thread)",
        "- " + ", ".join(f"{kind} {kinds[kind]}" for kind in
                         ("ok", "refused", "wrong", "crash")),
        "- drawn: " + "; ".join(
            f"{field} " + ", ".join(f"{value} {count}" for value, count in
                                    sorted(counts.items(), key=str))
            for field, counts in coverage.items())]
    if findings:
        lines.append("\nFindings (kind, first line of the message, seeds):\n")
        for (kind, message), found in sorted(findings.items(),
                                             key=lambda f: -len(f[1])):
            lines.append(f"- **{kind}** ({len(found)}): {message}; seeds "
                         f"{', '.join(str(s) for s, _ in found[:8])}; first "
                         f"`{found[0][1]}`")
    else:
        lines.append("\nNo findings.")
    text = "\n".join(lines) + "\n"
    print(text)
    if not RESULTS.exists():
        RESULTS.write_text("# Converter fuzzing\n\n" +
                           "\n\n".join(__doc__.split("\n\n")[1:4]) + "\n")
    with RESULTS.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
