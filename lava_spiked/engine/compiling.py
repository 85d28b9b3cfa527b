"""Compiling the engine's layers with ``torch.compile``: TorchInductor's
options for the engine's code, the guards it keeps, and
:class:`Compiler`, the rule that decides which calls run compiled."""
import time
import types
import typing as ty
import warnings

import torch

from lava_spiked.progress import bar

# seconds a first compile takes per layer of a network, on the 2-core
# AVX-512 CPU measured (benchmarks/results/engine_vs_ann.md, first calls):
# DigitsViT 9 layers 8-11 s, the encoder ViT 23 layers 19-25 s, MiniLM 44
# layers 42-74 s
COMPILE_S_PER_LAYER = 1.2
# memory a compile keeps per layer, the most measured (resident memory of
# the process before and after the first call,
# benchmarks/results/compile_memory.md): MiniLM 8.1 GB for 44 layers
# (0.184 GB each); DigitsViT 0.07 GB for 9, the encoder ViT 0.25 GB for 23
COMPILE_BYTES_PER_LAYER = 0.19 * 2 ** 30


def available_memory() -> ty.Optional[int]:
    """Bytes the OS can still give (Linux's ``MemAvailable``), or None
    where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def inductor_options(device: torch.device) -> dict:
    """TorchInductor options of a compiled engine.

    Inductor inlines a pointwise result into every gather that reads it,
    recomputing a layer's trace once per reader (a synapse's row gather, a
    fused weight's three picks): realizing whatever is read more than once
    computes it once, measured at about half the compiled call on the
    3-layer ViT. A loop's remainder runs as scalar code, not as a vector
    of partial loads and stores: rows of 17 tokens leave a remainder of
    one in every loop over keys (the encoder ViT, batch 256, one thread,
    side by side: fixed 1.03x, float 1.05x faster). On an AVX-512 CPU the
    C++ code runs 256-bit vectors: with 512-bit ones, the engine's mix of
    int32, int64 and float64 lanes, its 17-wide rows and its table gathers
    (scalar loops either way) made a call 1.3-1.5x slower (same model;
    ``benchmarks/results/engine_vs_ann.md``). Gathers run without a
    bounds check on every index: each index is a constant the constructor
    built or a value clamped to its table (with
    :func:`lava_spiked.engine.ops.select`'s gathers,
    a call 1.10x faster, fixed, side by side; float 1.08x)."""
    options = {"realize_reads_threshold": 1, "realize_opcount_threshold": 4,
               "cpp.enable_loop_tail_vec": False,
               "assert_indirect_indexing": False}
    if device.type == "cpu" and \
            torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        options["cpp.simdlen"] = 256
    return options


def tensor_guards_of_self(entries) -> ty.List[bool]:
    """Dynamo guards a compiled engine keeps: those on its arguments and
    on global state, and of its own state (``self``) only the tensor
    guards. The rest check Python values that the constructor fixed
    (layer names, kinds, bounds: about 1,700 guards on the encoder ViT),
    0.7 ms per call, 4 % of a call at batch 64 (measured)."""
    return [not e.name.startswith("L['self']") or
            e.guard_type == "TENSOR_MATCH" for e in entries]


class Compiler:
    """Runs an engine's layers eagerly or compiled.

    Parameters
    ----------
    engine : Engine
        Whose ``_layers`` it runs.
    compile : bool or 'auto'
        See :class:`lava_spiked.engine.Engine`.
    layers : int
        The network's layers (the expected compile time).
    """

    def __init__(self, engine: ty.Any, compile: ty.Union[bool, str],
                 layers: int) -> None:
        if compile not in (True, False, "auto"):
            raise ValueError("compile must be True, False or 'auto', got "
                             f"{compile!r}")
        self.engine, self.compile = engine, compile
        self.estimate_s = COMPILE_S_PER_LAYER * layers
        self.estimate_bytes = COMPILE_BYTES_PER_LAYER * layers
        self._short_of_memory = False  # 'auto' declined to compile
        self.batch_sizes: ty.Set[int] = set()  # that have run compiled
        self._eager_s: ty.Dict[int, float] = {}  # by batch size
        self._compiled = None

    def _compiled_layers(self):
        """The engine's ``_layers`` through ``torch.compile``, built once.
        Each engine compiles its own copy of the code: Dynamo keeps at
        most recompile_limit (8) graphs per code object, and engines of
        other networks, modes or batch sizes in one process (a sweep, a
        benchmark) would use up a shared budget and then run eagerly,
        with only a logged warning."""
        if self._compiled is None:
            fn = type(self.engine)._layers
            self._compiled = torch.compile(
                types.MethodType(types.FunctionType(
                    fn.__code__.replace(), fn.__globals__, fn.__name__,
                    fn.__defaults__), self.engine),
                options=dict(inductor_options(self.engine.device),
                             guard_filter_fn=tensor_guards_of_self))
        return self._compiled

    def runs_compiled(self, n: int) -> bool:
        """Whether a batch of ``n`` runs compiled. ``'auto'`` is the ski
        rental rule: rent (run eagerly) until the rent paid equals the
        price (the expected compile), then buy; one batch size only; and
        not where the OS has less than twice the memory a compile may
        keep (:data:`COMPILE_BYTES_PER_LAYER`): it warns once and stays
        eager."""
        if self.compile != "auto":
            return self.compile
        if not self.batch_sizes and not self._short_of_memory and \
                self._eager_s.get(n, 0.0) >= self.estimate_s:
            free = available_memory()
            if free is None or free >= 2 * self.estimate_bytes:
                return True
            self._short_of_memory = True
            warnings.warn(
                f"Engine(compile='auto') keeps running eagerly: compiling "
                f"this network may take up to about "
                f"{self.estimate_bytes / 2 ** 30:.1f} GB and "
                f"{free / 2 ** 30:.1f} GB are available. Pass compile=True "
                "to compile anyway, or compile=False to silence this",
                RuntimeWarning, stacklevel=6)
        return n in self.batch_sizes

    def __call__(self, x: torch.Tensor, *args):
        """The engine's ``_layers(x, *args)``, eager or compiled
        (:meth:`runs_compiled`); a call that compiles shows a progress
        bar."""
        n = len(x)
        if not self.runs_compiled(n):
            start = time.perf_counter()
            out = self.engine._layers(x, *args)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            self._eager_s[n] = self._eager_s.get(n, 0.0) + \
                time.perf_counter() - start
            return out
        compiled = self._compiled_layers()
        # Dynamo compiles a first batch size, and a second one with a
        # dynamic batch dimension that serves every later size
        if n in self.batch_sizes or len(self.batch_sizes) >= 2:
            self.batch_sizes.add(n)
            return compiled(x, *args)
        self.batch_sizes.add(n)
        with bar(total=1, desc=f"compiling the engine for batch {n} (about "
                 f"{self.estimate_s:.0f} s uncached)"):
            return compiled(x, *args)
