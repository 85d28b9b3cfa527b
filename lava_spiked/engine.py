"""Batched torch engine that computes a converted network like its Lava
models do, on CPU or CUDA.

Every layer fires only after integrating its whole window (W = T), so its
spikes are a function of its membrane when the window closes, and that
membrane is a closed form of its sources' spikes:

``float`` (= ``floating_pt``)
    ``A = sum_s W_s @ (x_hat_s / sigma_s) + b / sigma``, then the phase
    quantiser; attention as :func:`lava_spiked.attention.attention_float`.
``fixed`` (= ``fixed_pt``, bit for bit)
    The 48-bit dendritic accumulator of a PhaseNeuron sums ``a_in * G_j``
    exactly and is rounded once when the window closes, so it equals
    ``W @ (sign * G[step])``: one matrix product per synapse. For a trace
    product, a pair of spikes at steps m and m' adds
    ``s s' G[min] * G[max] = s G[m] * s' G[m']`` whatever their order, so
    the logit accumulator is ``w * (X_G @ Y_G)`` and the attention output's
    is ``w * (P_G @ V_G)``. Products run in float64 (or float32, below),
    exact because the constructor proves every sum stays below 2**53; it
    also proves that
    no accumulator, trace-product current or WOSS membrane can saturate
    mid-window (where step order would matter) and refuses networks for
    which it cannot.

What flows between layers is the trace ``sign * G[step]`` (0 if silent),
looked up from the membrane in one table gather (fixed, the neurons and
the WOSS softmax), from a bucket of the membrane's float64 bit pattern
and one comparison (float, the neurons: :class:`_ThresholdBuckets`) or
from a closed-form estimate of the fire step, kept at or one below the
true step and corrected by one table comparison (float, the WOSS
softmax). Fire steps and signs are decoded from the stored membranes only
when a caller reads them.

Fixed mode runs a synapse's product in float32 where that is exact too:
its traces (13-bit integers) and weights (8-bit mantissas times a power of
two) are exact in float32, and so is every partial sum while the sum of
``|k| * 4096`` over a row stays at most 2**24 (proved per synapse when the
engine is built; such a product costs about a third of a float64 one on
CPU). A synapse beyond that bound and the attention products (whose
traces multiply to 24 bits) stay in float64; a layer whose summed bound
exceeds 2**24 adds its float32 products in float64. The membranes are
int32 table rows, so a layer costs its products, the rounding, a clamp and
a gather. Splitting traces into int8 halves for ``torch._int_mm`` was
measured and not taken: on a CPU without VNNI (AVX2 only) it runs about 25x
slower than a float32 product; on an AVX-512 CPU with VNNI it takes a third
of one alone, but in the compiled encoder ViT the two halves' products
took longer than the float32 ones and the split slowed the fused passes
around them (a call 1.3x slower, batch 256, one thread).

What each mode promises, on any CPU (x86-64 with AVX2 or AVX-512, eager
or compiled) and GPU:

``fixed``
    Bit for bit ``fixed_pt``: every sum is of integers times one power of
    two and stays within float64's (or float32's) exact range, so it is
    exact in any order; no BLAS kernel, vector width, fused multiply-add
    or reduction order can change a bit.
``float``
    The same formulas in float64, whose sums of non-integers round by the
    order the hardware's kernels choose: MKL's products round differently
    on AVX2 and AVX-512 CPUs, and compiled code sums some terms in its own
    order (TorchInductor turns the readout's product plus bias into one
    ``addmm``, which MKL's AVX2 kernels round differently from a product
    followed by an addition; its attention row sums reduce in their own
    order). Two such orders put a membrane of ``n`` terms at most
    ``2 n 2**-53`` times the sum of the terms' magnitudes apart (traces
    are at most 1: a row's absolute weight sum plus the bias, in units of
    sigma), at most about 1e-12 on the networks tested. So a neuron fires
    at the same step, and counts as clipped alike, unless its membrane
    lies within that distance of a threshold; given the same spikes,
    logits lie within that bound of the readout times its scale. Measured:
    on an AMD EPYC CPU (AVX2) compiled and eager logits of the bundled
    model differed by up to 3.6e-15 with every spike equal; on an Intel
    AVX-512 CPU, by nothing, and by up to 2.8e-17 (a 2-class readout of
    384 inputs) with MKL held to its AVX2 kernels there
    (``MKL_ENABLE_INSTRUCTIONS=AVX2``). The ``floating_pt`` Lava models
    and the golden models (numpy) agree with float mode in the same
    sense.

Cost: one matrix product per source and rows (the synapses of every
layer that reads a source the same way share products of up to 128
columns, see :class:`_Product`) plus a few elementwise passes per layer,
not T steps.
Counting clipped neurons (:attr:`EngineResult.clipped`, also with
``record=False``) is one of those passes, a comparison of each membrane
with one sigma: measured at about 10 % of a call (fixed, CPU, the bundled
DigitsViT, 1191 samples: 10 of 90 ms; float 16 of 199 ms).
``Engine(..., compile=True)`` fuses those passes with ``torch.compile``
(same results, as above; README, "Dataset-scale evaluation", has what it
saves).

Memory: with ``record=False`` a call keeps only the traces and shared
products that later layers still read (float32 in fixed mode, float64 in
float mode), freeing each after its last reader, plus one layer's
temporaries (a few tensors of the layer's size). Measured as the peak
resident memory a call adds, for a batch of 256
(``benchmarks/engine_memory.py``): 14 MB (fixed) / 26 MB (float) on the
bundled DigitsViT, 51-61 / 80-95 MB on a 3-layer ViT of 17 tokens x 64
channels, whose residual sources' products stay until the last layer
reads them (both scale linearly with the batch). The default
``record=True`` also keeps every layer's membrane for decoding spikes:
47 / 53 MB and 232-257 / 318-337 MB, spikes decoded (ranges: two runs;
peaks move by up to about 25 MB from run to run).
"""
import functools
import math
import time
import types
import typing as ty

import numpy as np
import torch

from lava_spiked import fixed, torch_stages
from lava_spiked.golden import (clip_sizes, stage_fixed, stage_float,
                                warn_clipped)
from lava_spiked.phase import threshold_factor
from lava_spiked.plan import ActivationStage, Synapse
from lava_spiked.progress import bar
from lava_spiked.validation import check_batch

EXACT = 2.0 ** 53  # float64 integers are exact below this
EXACT_F32 = 2.0 ** 24  # float32 integers are exact up to this
# columns of one shared product (_Product): wider, MKL's products on the
# AVX-512 CPU measured ran up to 2.2x slower per column (float64, K <= 64)
PRODUCT_COLUMNS = 128
STAGE_CHUNK = 1 << 16  # membranes per numpy stage call (int64: 512 kB)
INT32_MAX = (1 << 31) - 1  # TraceMatMul's output port
# seconds a first compile takes per layer of a network, on the 2-core
# AVX-512 CPU measured (benchmarks/results/engine_vs_ann.md, first calls):
# DigitsViT 9 layers 8-11 s, the encoder ViT 23 layers 19-25 s, MiniLM 44
# layers 42-74 s
COMPILE_S_PER_LAYER = 1.2
# float mode's closed-form fire steps are computed within about 1e-12 of a
# step (float64 logs of tables exact to a few ulps); lowered by this they
# are never above the true step and at most one below
LOWER = 1e-6
# fixed membranes are int32 table rows; clamping a membrane to this keeps
# it saturated (beyond 24 bits) and its row in int32
INT_LIMIT = 2.0 ** 30


class EngineResult:
    """Logits, saturation counts and, decoded on first access, every
    population's spikes.

    Attributes
    ----------
    logits : torch.Tensor
        (batch, *out_shape).
    steps, signs : dict of str to torch.Tensor
        Per spiking layer (and ``<attention>:logits`` / ``:softmax``): fire
        steps (-1 = silent, int64) and signs (float64), each (batch, size)
        in the layer's flat (row-major) order. Only after a call with
        ``record=True``.
    saturated : torch.Tensor
        (batch,) saturation events per sample, as the ``sat_count`` Vars of
        the fixed_pt models count them (all zero in float mode, where
        floating_pt does not saturate).
    clipped : dict of str to torch.Tensor
        Population (the input, every spiking layer and every
        ``<attention>:logits``; not the readout) -> (batch,) int64 clipped
        neurons per sample, as the ``clip_count`` Vars of the Lava models
        count them: ``|v| > 2**16`` (fixed) or ``|v| > 1`` (float) on the
        closed membrane, ``v`` only above for ReLU layers (see
        :mod:`lava_spiked.golden`). Counted with ``record=False`` too.
        Divide by the population sizes of
        :func:`lava_spiked.golden.clip_sizes` (also ``Engine.clip_sizes``)
        for fractions.
    """

    def __init__(self, logits: torch.Tensor, saturated: torch.Tensor,
                 membranes: ty.Optional[dict], engine: "Engine",
                 clipped: ty.Optional[dict] = None) -> None:
        self.logits, self.saturated = logits, saturated
        self.clipped = clipped if clipped is not None else {}
        self._membranes, self._engine = membranes, engine
        self._spikes: ty.Optional[dict] = None

    def _decoded(self) -> dict:
        if self._membranes is None:
            raise ValueError("spikes were not recorded: call the engine "
                             "with record=True")
        if self._spikes is None:
            self._spikes = {name: self._engine._decode(v, kind)
                            for name, (v, kind) in self._membranes.items()}
        return self._spikes

    @property
    def steps(self) -> ty.Dict[str, torch.Tensor]:
        return {k: step for k, (step, _) in self._decoded().items()}

    @property
    def signs(self) -> ty.Dict[str, torch.Tensor]:
        return {k: sign for k, (_, sign) in self._decoded().items()}


class _FallingThresholds:
    """Fire step against a falling threshold table: how many thresholds lie
    strictly above ``x`` (``len(table)`` = silent).

    ``estimate(x)`` is a closed form of that count that is never off by more
    than one (the table is geometric or linear in the step), so one
    comparison each way makes it exact: ``table[e] > x`` means one more,
    ``table[e - 1] <= x`` one fewer. With ``low=True`` the estimate is
    never above the count (a closed form lowered by :data:`LOWER`, far more
    than its rounding error and far less than one step), so the first
    comparison alone makes it exact.
    """

    def __init__(self, table: np.ndarray, estimate: ty.Callable,
                 device: torch.device, low: bool = False) -> None:
        self.T, self.estimate, self.low = len(table), estimate, low
        # table[T] = -inf lies above nothing; table[-1] = nan is never <= x
        self.at = _tensor(np.append(table, -np.inf), device)
        self.before = _tensor(np.insert(table, 0, np.nan), device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        e = self.estimate(x).clamp_(0, self.T).long()
        # e + [table[e] > x] - [table[e - 1] <= x], in place
        e = e.add_(_lookup(self.at, e) > x)
        if self.low:
            return e
        return e.add_(_lookup(self.before, e) <= x, alpha=-1)


class _ThresholdBuckets:
    """Fire step and trace of magnitudes ``x >= 0`` against a falling
    threshold table (float mode's neurons), with no logarithm: a positive
    float64 orders as its bit pattern, so that pattern shifted right
    indexes a bucket, and the shift is the largest that leaves at most one
    threshold in any bucket. The thresholds above ``x`` are then those
    above its bucket (a table) plus one comparison with the threshold
    inside it: exactly a plain count. Compiled, about half the time of a
    logarithm-based estimate (measured on 557k membranes, one thread).

    Parameters
    ----------
    table : numpy.ndarray
        (T,) positive thresholds, strictly falling.
    gains : numpy.ndarray
        (T + 1,) trace of each fire step, 0 at step T (silent).
    """

    def __init__(self, table: np.ndarray, gains: np.ndarray,
                 device: torch.device) -> None:
        T = len(table)
        bits = np.asarray(table, np.float64).view(np.int64)
        self.shift = next(s for s in range(63, -1, -1)
                          if np.all(np.diff(bits >> s) < 0))
        keys = bits >> self.shift
        # bucket 0 lies below every threshold, the last one above all
        self.low = int(keys[-1]) - 1
        self.size = int(keys[0]) - self.low + 2
        upper = ((np.arange(self.size) + self.low + 1) << self.shift).view(
            np.float64)  # each bucket's exclusive upper end
        above = T - np.searchsorted(table[::-1], upper, side="left")
        inside = np.full(self.size, -np.inf)
        inside[keys - self.low] = table
        self.above = torch.as_tensor(above, device=device)
        self.inside = _tensor(inside, device)
        self.at = _tensor(np.asarray(gains)[above], device)
        self.after = _tensor(np.asarray(gains)[np.minimum(above + 1, T)],
                             device)

    def _bucket(self, x: torch.Tensor) -> torch.Tensor:
        return (x.view(torch.int64) >> self.shift).sub_(self.low).clamp_(
            0, self.size - 1)

    def steps(self, x: torch.Tensor) -> torch.Tensor:
        """Thresholds strictly above each ``x`` (int64; T: silent)."""
        b = self._bucket(x)
        return _lookup(self.above, b).add_(_lookup(self.inside, b) > x)

    def traces(self, x: torch.Tensor) -> torch.Tensor:
        """``gains[steps(x)]``."""
        b = self._bucket(x)
        return torch.where(_lookup(self.inside, b) > x,
                           _lookup(self.after, b), _lookup(self.at, b))


def _pruned(syn: Synapse, w: np.ndarray):
    """A synapse's rows, weight and output pick without the rows and
    output channels that no destination reads: a fused weight (the q, k
    and v rows of one in-projection) feeds each of its three destinations
    a third of its products, and a head that reads the CLS token needs one
    row of N. Returns ``(rows, w, out)``, ``out`` indexing the (R', C')
    product."""
    rows, c, out = syn.rows, w.shape[0], syn.out
    # (one row and channel stay where none is read: the pick zeroes it all)
    read = out >= 0
    row, ch = np.divmod(np.maximum(out, 0), c)
    used_rows = np.unique(row[read]) if read.any() else [0]
    used = np.unique(ch[read]) if read.any() else [0]
    at_row, at = np.zeros(len(rows), np.int64), np.zeros(c, np.int64)
    at_row[used_rows], at[used] = np.arange(len(used_rows)), \
        np.arange(len(used))
    return rows[used_rows], w[used], np.where(
        read, at_row[row] * len(used) + at[ch], -1)


class _Product:
    """Synapses that read one source through the same rows, as one
    token-shared product ``(batch, R, K) @ [W_1^T | W_2^T | ...]`` computed
    once; member ``i`` takes its outputs with :meth:`pick`. The row gather
    and a pick are skipped where they are the identity.

    Members share a product up to :data:`PRODUCT_COLUMNS` columns. On an
    AVX2 CPU, five 64-column float64 products of 4352 rows (the encoder
    ViT's residual sources at batch 256) ran 1.2x (K = 64) to 1.4x
    (K = 128) faster as one, measured side by side at one thread (float32:
    no gain, no loss); on an AVX-512 CPU, products of more than 128
    columns ran up to 2.2x slower per column (float64: 4096 x 49 @ 49 x
    384 in 5.2 ms, as three products of 128 columns in 2.4 ms) and a cap
    of 128 made the encoder ViT's compiled calls 1.09x (fixed) and 1.22x
    (float) faster (batch 256, one thread, side by side; 256 or 192
    columns: 1.04-1.06x). Sums of
    integers (times one power of two) below 2**53 in float64, or at most
    2**24 in float32 (``dtype``), are exact in any order, so every form
    gives the same bits.

    Parameters
    ----------
    rows : numpy.ndarray
        (R, K) source neuron of every input position (-1: none).
    members : list of (w, out)
        Each member's (C_i, K) weight and its output pick into its own
        (R, C_i) product (-1: none), as :func:`_pruned` gives them.
    """

    def __init__(self, rows: np.ndarray, members: list, device,
                 dtype: torch.dtype = torch.float64) -> None:
        r, k = rows.shape
        # a gather (None: the identity) and where it reads nothing
        self.rows = None if np.array_equal(
            rows.ravel(), np.arange(r * k)) else torch.as_tensor(
                np.maximum(rows, 0).ravel(), device=device)
        self.unread = _holes(rows, device)
        self.r, self.k = r, k
        w = np.concatenate([np.asarray(w, np.float64) for w, _ in members])
        # contiguous (K, C): MKL rounds a product with few columns
        # differently when its weight is the transpose of a (C, K) array,
        # and compiled code may lay it out either way
        self.w = torch.as_tensor(np.ascontiguousarray(w.T), dtype=dtype,
                                 device=device)
        # each member: its columns, and its pick (None: all its products
        # in order) as indices into the flat (R, sum C) product, with the
        # outputs it leaves at zero
        self.columns, self.out, self.unpicked, start = [], [], [], 0
        for w_i, out in members:
            c = len(w_i)
            self.columns.append(slice(start, start + c))
            row, ch = np.divmod(np.maximum(out, 0), c)
            self.out.append(None if np.array_equal(out, np.arange(r * c))
                            else torch.as_tensor(row * len(w) + start + ch,
                                                 device=device))
            self.unpicked.append(_holes(out, device))
            start += c

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, R * sum C) products of a source batch (batch, size)."""
        n = x.shape[0]
        x = x.to(self.w.dtype)  # fixed traces are float32 (exact)
        if self.rows is None:
            g = x[:, :self.r * self.k].reshape(n, self.r, self.k)
        else:
            g = _select(x, self.rows).reshape(n, self.r, self.k)
            if self.unread is not None:
                g = g.masked_fill_(self.unread, 0.0)
        if self.r == 1:  # 2-D: Inductor turns a batched product with one
            # row into a sum of products that recomputes each trace once
            # per output channel
            g = g[:, 0]
        return (g @ self.w).reshape(n, -1)

    def pick(self, y: torch.Tensor, i: int) -> torch.Tensor:
        """Member ``i``'s outputs (batch, its destination size) from the
        products ``y``; the member may overwrite them."""
        out = self.out[i]
        if out is None:  # a slice of columns: compiled code reads it in
            # place, where a gather would be a scalar loop
            if len(self.columns) == 1:
                return y
            return y.view(y.shape[0], self.r, -1)[
                ..., self.columns[i]].reshape(y.shape[0], -1)
        y = _select(y, out)
        unpicked = self.unpicked[i]
        return y if unpicked is None else y.masked_fill_(unpicked, 0.0)


def keep_freed_memory() -> bool:
    """Make this process keep the memory it frees for its next
    allocations (glibc malloc: no ``mmap`` below 1 GiB, no trimming)
    instead of returning it to the OS and faulting every page in again
    on the next call. An engine call allocates thousands of pages afresh
    and a page fault costs about 4 us here: measured in
    ``benchmarks/results/engine_vs_ann.md``.

    Process-wide and not undone: the process's resident memory stays at
    its peak. ``python -m lava_spiked.evaluate`` calls it; call it in a
    program of your own that runs the engine on many batches.

    Returns
    -------
    bool
        Whether it took effect (Linux with glibc only).
    """
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        # mallopt(M_MMAP_THRESHOLD = -3, ...), mallopt(M_TRIM_THRESHOLD = -1)
        return bool(libc.mallopt(-3, 1 << 30)) and \
            bool(libc.mallopt(-1, (1 << 31) - 1))
    except (OSError, AttributeError, TypeError):  # not glibc
        return False


def _tensor(a: ty.Any, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)


def _holes(index: np.ndarray, device) -> ty.Optional[torch.Tensor]:
    """Where a gather's ``index`` is -1 (reads nothing), or None if
    nowhere."""
    holes = index < 0
    return torch.as_tensor(holes, device=device) if holes.any() else None


def _select(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[..., index]`` for a 1-D ``index`` of valid positions (the
    caller clamps or builds it so). Eager: ``index_select``, the fastest
    gather, which also takes int32 indices. Compiled: ``gather``, whose
    Inductor lowering does not test every index for a negative value to
    wrap around (``index_select``'s does)."""
    if torch.compiler.is_compiling():
        return torch.gather(x, -1, index.long().expand(
            x.shape[:-1] + index.shape))
    return x.index_select(-1, index)


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` (a 1-D table, valid indices)."""
    return _select(table, index.reshape(-1)).view(index.shape)


def _round(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero, as :func:`lava_spiked.fixed.round_shift`
    does: exact for ``x = k * 2**-n`` with integer ``k`` below 2**53, which
    is what the engine rounds (shifts are folded into the weights)."""
    # sign * floor(|x| + 1/2): floor is vectorised, trunc and copysign are
    # not (3x slower on CPU)
    return x.abs().add_(0.5).floor_().mul_(x.sign())


def _round_to_int(x: torch.Tensor) -> torch.Tensor:
    """:func:`_round` as int32, overwriting ``x``: the cast truncates toward
    zero, so ``x + sign(x) / 2`` rounds half away from zero where that sum
    is exact, which the caller proves, as it proves ``|x| < 2**30``. Two
    passes and a cast to 4-byte integers: every full-size temporary costs
    its page faults on first touch, as much as a pass."""
    return x.add_(x.sign(), alpha=0.5).int()


def _regain(trace: torch.Tensor, bits: int) -> torch.Tensor:
    """Fixed traces ``s * G_j`` (integers) as a layer with ``bits``-bit
    gains weighs them, ``round_shift(s * G_j, 12 - bits)``
    (fixed.layer_gains; exact in floating point: small integers and
    powers of two); 12 bits: the traces themselves."""
    if bits == fixed.GAIN_FRAC_BITS:
        return trace
    out = trace.abs().mul_(2.0 ** (bits - fixed.GAIN_FRAC_BITS))
    return out.add_(0.5).floor_().mul_(trace.sign())


def _exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of float64 integers whose sums are exact in any order
    (fixed mode's attention: products of two 13-bit traces). Compiled: a
    broadcast product summed over the shared axis, which Inductor fuses
    with the passes around it; measured side by side on the encoder ViT
    (batch 256, one thread) about 7 % of a call faster than batched
    products of its (17, 16) heads. Its operands are stored first (an
    ``as_strided`` view makes Inductor store them: inlined, each would be
    recomputed once per output column, a call 1.3x slower) and in float64
    (cast inside the sum, a call 1.4x slower)."""
    if not torch.compiler.is_compiling():
        return a @ b
    a, b = (t.as_strided(t.shape, t.stride()) for t in (a, b))
    return (a.unsqueeze(-2) * b.transpose(-1, -2).unsqueeze(-3)).sum(-1)


def _inductor_options(device: torch.device) -> dict:
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
    built or a value clamped to its table (with :func:`_select`'s gathers,
    a call 1.10x faster, fixed, side by side; float 1.08x)."""
    options = {"realize_reads_threshold": 1, "realize_opcount_threshold": 4,
               "cpp.enable_loop_tail_vec": False,
               "assert_indirect_indexing": False}
    if device.type == "cpu" and \
            torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        options["cpp.simdlen"] = 256
    return options


def _tensor_guards_of_self(entries) -> ty.List[bool]:
    """Dynamo guards a compiled engine keeps: those on its arguments and
    on global state, and of its own state (``self``) only the tensor
    guards. The rest check Python values that the constructor fixed
    (layer names, kinds, bounds: about 1,700 guards on the encoder ViT),
    0.7 ms per call, 4 % of a call at batch 64 (measured)."""
    return [not e.name.startswith("L['self']") or
            e.guard_type == "TENSOR_MATCH" for e in entries]


def _f32_products_exact(device: torch.device) -> bool:
    """Whether float32 matrix products on ``device`` round like IEEE
    float32 (no TF32 or bfloat16 inner products), as the float32 path's
    exactness proof assumes."""
    try:
        if device.type == "cuda":
            if torch.backends.cuda.matmul.allow_tf32:
                return False
            precision = torch.backends.cuda.matmul.fp32_precision
        else:
            precision = torch.backends.mkldnn.matmul.fp32_precision
        if precision == "none":  # inherits the global setting
            precision = torch.backends.fp32_precision
    except (AttributeError, RuntimeError):  # unknown or mixed settings
        return False
    return precision in ("none", "ieee")


def _exact_in_f32(bound: float, step: float) -> bool:
    """Whether float32 holds exactly every multiple of ``step`` (a power of
    two) up to ``bound`` and, where ``step < 1``, plus the half that
    :func:`_round_to_int` adds (an integral accumulator is cast without
    it): at most 2**24 multiples, and ``step`` well inside float32's normal
    range, so that no flush of denormals can touch it."""
    if not 2.0 ** -100 <= step <= 2.0 ** 100:
        return False
    if step >= 1:
        return bound / step <= EXACT_F32
    return (bound + 0.5) / step <= EXACT_F32


class Engine:
    """Evaluate a Plan on batches with torch.

    Parameters
    ----------
    plan : Plan or SpikingNetwork
        A converted network (its Lava processes are not run).
    mode : {'fixed', 'float'}
        Integer (``fixed_pt``) or floating-point (``floating_pt``) model.
    device : str or torch.device, optional
        Default 'cpu'.
    compile : bool or 'auto', optional
        Run the layers through ``torch.compile`` (TorchInductor), which
        fuses the elementwise passes between the matrix products: the same
        results (bit for bit in fixed mode; float mode as the module
        docstring states), in less time per batch, after a compile on the
        first call (tens of seconds on CPU; Inductor's on-disk cache makes
        a later compile of the same network a fraction of that). With
        ``True`` a second batch size recompiles once, with a dynamic
        batch dimension, whose code runs up to about 1.1x slower than the
        first size's (measured on the encoder ViT). LayerNorm and
        activation stages are in the same graph
        (:mod:`lava_spiked.torch_stages`). The default, ``'auto'``, runs
        eagerly until the eager calls of one batch size have taken as long
        as a first compile of this network is expected to take
        (:attr:`compile_estimate_s`), then compiles for that batch size
        (calls of other sizes, such as a dataset's last batch, stay
        eager): an evaluation of a dataset compiles, a few batches do
        not, and neither choice costs more than about twice the better
        one would have. ``benchmarks/results/engine_vs_ann.md`` has the
        numbers.

    Raises
    ------
    ValueError
        If ``mode`` is unknown or bit-exactness cannot be proven for the
        network's weights and scales.

    Attributes
    ----------
    compile_estimate_s : float
        Seconds a first compile of this network is expected to take on
        CPU, uncached (1.2 s per layer, measured): ``compile='auto'``
        compiles after eager calls of one batch size have taken this
        long.
    compiled_batch_sizes : set of int
        Batch sizes that have run compiled so far.

    Notes
    -----
    Fixed mode's float32 products need IEEE float32 matrix products; where
    TF32 or bfloat16 products are allowed (``torch.backends`` precision
    settings, read at every call) every product runs in float64 instead.
    """

    def __init__(self, plan: ty.Any, mode: str = "fixed",
                 device: ty.Union[str, torch.device] = "cpu",
                 compile: ty.Union[bool, str] = "auto") -> None:
        if mode not in ("fixed", "float"):
            raise ValueError(f"mode must be 'fixed' or 'float', got {mode!r}")
        if compile not in (True, False, "auto"):
            raise ValueError("compile must be True, False or 'auto', got "
                             f"{compile!r}")
        plan = getattr(plan, "plan", plan)
        self.plan, self.mode = plan, mode
        self.device = torch.device(device)
        self._tables(plan.B, plan.T)
        self.layers, self.bias_saturated, self.bias_max = {}, {}, {}
        # fixed: largest |rounded accumulator| a layer can reach, in state
        # units (the float32 products, int32 rows and saturation counts
        # follow from it)
        self.reach = {}
        # fixed: layers whose accumulator is an integer (weights of even
        # multiples of 2**(e - 12) >= 1/2): rounding is the identity
        self.integral = set()
        # synapses that share a product (_Product), by source, rows, the
        # gain bits the source is read at and whether float32 is exact
        self.products = {}
        # last layer (index) that reads each trace, or each product: freed
        # after it (a product reads its source at its first member)
        self.last_read = {}
        for i, layer in enumerate(plan.layers[1:]):
            op = plan.attention_of(layer.name)
            if op is not None:
                self.layers[layer.name] = self._attention_layer(op)
                self.last_read.update((src, i) for src in (op.x, op.y, op.v))
            else:
                self.layers[layer.name] = self._dense_layer(layer, i)
        for key, p in self.products.items():
            rows, members = p["rows"], p.pop("members")
            p["f64"] = _Product(rows, members, self.device)
            p["f32"] = _Product(rows, members, self.device, torch.float32) \
                if p["f32"] else None
            self.last_read[key] = p["last"]
            self.last_read[p["src"]] = max(self.last_read.get(p["src"], -1),
                                           p["first"])
        self.clip_sizes = clip_sizes(plan)
        self.input_scale = self._tensor(plan[plan.input].scale)
        self.output_scale = self._tensor(plan[plan.output].scale)
        self.compile = compile
        self.compile_estimate_s = COMPILE_S_PER_LAYER * (len(plan.layers) - 1)
        self.compiled_batch_sizes: ty.Set[int] = set()
        self._eager_s: ty.Dict[int, float] = {}  # by batch size
        self._compiled = None

    def _compiled_layers(self):
        """:meth:`_layers` through ``torch.compile``, built once. Each
        engine compiles its own copy of the code: Dynamo keeps at most
        recompile_limit (8) graphs per code object, and engines of other
        networks, modes or batch sizes in one process (a sweep, a
        benchmark) would use up a shared budget and then run eagerly,
        with only a logged warning."""
        if self._compiled is None:
            fn = Engine._layers
            self._compiled = torch.compile(
                types.MethodType(types.FunctionType(
                    fn.__code__.replace(), fn.__globals__, fn.__name__,
                    fn.__defaults__), self),
                options=dict(_inductor_options(self.device),
                             guard_filter_fn=_tensor_guards_of_self))
        return self._compiled

    def _runs_compiled(self, n: int) -> bool:
        """Whether a batch of ``n`` runs compiled. ``'auto'`` is the ski
        rental rule: rent (run eagerly) until the rent paid equals the
        price (the expected compile), then buy; one batch size only."""
        if self.compile != "auto":
            return self.compile
        if not self.compiled_batch_sizes and \
                self._eager_s.get(n, 0.0) >= self.compile_estimate_s:
            return True
        return n in self.compiled_batch_sizes

    def _compute(self, x: torch.Tensor, pad: ty.Optional[torch.Tensor],
                 record: bool, f32: bool):
        """:meth:`_layers`, eager or compiled (:meth:`_runs_compiled`);
        a call that compiles shows a progress bar."""
        n = len(x)
        if not self._runs_compiled(n):
            start = time.perf_counter()
            out = self._layers(x, pad, record, f32)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._eager_s[n] = self._eager_s.get(n, 0.0) + \
                time.perf_counter() - start
            return out
        compiled = self._compiled_layers()
        # Dynamo compiles a first batch size, and a second one with a
        # dynamic batch dimension that serves every later size
        if n in self.compiled_batch_sizes or \
                len(self.compiled_batch_sizes) >= 2:
            self.compiled_batch_sizes.add(n)
            return compiled(x, pad, record, f32)
        self.compiled_batch_sizes.add(n)
        with bar(total=1, desc=f"compiling the engine for batch {n} (about "
                 f"{self.compile_estimate_s:.0f} s uncached)"):
            return compiled(x, pad, record, f32)

    # ----------------------------------------------------------- utilities
    def _tensor(self, a) -> torch.Tensor:
        return _tensor(a, self.device)

    def _tables(self, B: float, T: int) -> None:
        """Trace tables (``gains[T] = 0``: silent) and fire-step finders."""
        log_b = math.log(B)
        if self.mode == "fixed":
            gains = fixed.gain_table(B, T).astype(np.float64)
            woss = fixed.woss_thresholds(B, T).astype(np.float64)
            woss_unit = log_b * (1 << fixed.STATE_FRAC_BITS)
            self._neuron_luts(fixed.threshold_table(B, T), gains)
            # the softmax's trace of every integer input from one below the
            # last threshold (silent) to 0: one gather instead of the fire
            # step's estimate, corrections and trace lookup
            self.woss_low = int(woss[-1]) - 1
            d = np.arange(self.woss_low, 1)
            steps = T - np.searchsorted(woss[::-1], d, side="right")
            self.woss_trace = torch.as_tensor(
                np.append(gains, 0.0)[steps], dtype=torch.float32,
                device=self.device)
        else:
            steps = np.arange(T, dtype=np.float64)
            gains = B ** -steps
            woss = -(steps + 0.5) * log_b
            woss_unit = log_b
            self.neurons = _ThresholdBuckets(
                threshold_factor(B) * B ** -steps, np.append(gains, 0.0),
                self.device)
        self.gains = self._tensor(np.append(gains, 0.0))
        # d >= -(m + 1/2) ln B  <=>  m >= -d / ln B - 1/2; fixed mode's
        # thresholds are rounded to integers, up to half a unit off that
        # line (a share of a step that grows as B nears 1): two comparisons
        low = self.mode == "float"
        self.woss_steps = _FallingThresholds(
            woss, lambda d: (-d).div_(woss_unit).sub_(
                0.5 + (LOWER if low else 0.0)).ceil_(), self.device, low)

    def _neuron_luts(self, thresholds: np.ndarray, gains: np.ndarray):
        """Fixed mode: every integer membrane in [-theta_0, theta_0] (a
        larger magnitude fires at step 0) indexes its trace and fire step,
        at row ``v + theta_0``. Fixed membranes are held as that row (int64,
        unclamped), so a lookup is one clamp and one gather."""
        top = int(thresholds[0])
        v = np.arange(-top, top + 1)
        steps = len(thresholds) - np.searchsorted(thresholds[::-1], np.abs(v),
                                                  side="right")
        trace = np.sign(v) * np.append(gains, 0.0)[steps]
        self.top = top
        self.lut_steps = torch.as_tensor(steps, device=self.device)
        # float32 holds the 13-bit traces exactly, halves the table (so it
        # stays in cache) and feeds the float32 products directly
        self.lut_trace = {
            unipolar: torch.as_tensor(t, dtype=torch.float32,
                                      device=self.device)
            for unipolar, t in ((False, trace),
                                (True, np.where(v > 0, trace, 0.0)))}

    def _weights(self, dense: np.ndarray, exp: ty.Any,
                 gain_bits: int = fixed.GAIN_FRAC_BITS) -> np.ndarray:
        """Weights whose product is the accumulator times the shift of
        fixed.close_window, ``2**(e - gain_bits)`` (exact: a power of two),
        or the dequantised weights (float)."""
        if self.mode == "fixed":
            return dense * 2.0 ** (exp - gain_bits)
        return fixed.dequantize_weights(dense, exp)

    def _bias(self, name: str, bias_norm: np.ndarray) -> torch.Tensor:
        """Float: the bias in units of sigma. Fixed: the saturated state
        bias plus theta_0, so that adding it to the rounded accumulator
        gives the membrane's table row (see :meth:`_neuron_luts`)."""
        if self.mode == "float":
            return self._tensor(bias_norm)
        state, self.bias_saturated[name] = fixed.to_state(bias_norm)
        self.bias_max[name] = int(np.abs(state).max(initial=0))
        return torch.as_tensor(state + self.top, dtype=torch.int32,
                               device=self.device)

    def _prove(self, bound: float, name: str,
               limit: float = min(fixed.ACC_MAX, EXACT),
               unit: float = 1.0) -> None:
        """Refuse a layer whose accumulator could reach ``bound`` >= 2**47
        (it could saturate mid-window) or leave float64's exact range, or
        whose membrane (``bound * unit`` in state units) could overflow the
        int64 it is rounded into."""
        if self.mode == "float":
            return
        if bound >= limit or bound * unit >= 2.0 ** 62:
            raise ValueError(
                f"{name}: a sum may reach {bound:.3g}, beyond {limit:.3g}, "
                "where saturation would depend on spike order; the engine "
                "cannot reproduce fixed_pt bit for bit")

    def _dense_layer(self, layer, index: int) -> dict:
        """Synapses of the layer at ``index``, each a member of a product
        (registered in :attr:`products`) in float32 where fixed mode proves
        it exact (and in float64 too, for full-precision fallback), and
        whether the layer's summed accumulator is exact in float32."""
        # each input adds at most |w| * 2**gain_bits (gain of step 0)
        g = layer.gain_bits if self.mode == "fixed" else fixed.GAIN_FRAC_BITS
        row_bounds = [np.abs(s.scaled()).sum(-1) * 2.0 ** g
                      for s in layer.synapses]
        bounds = [float(r.max(initial=0)) for r in row_bounds]
        # state units per accumulator unit; Dense mantissas 2k are even
        unit = 2.0 ** (layer.weight_exp - g)
        self._prove(sum(bounds), layer.name, unit=unit,
                    limit=min((1 << (layer.acc_bits - 1)) - 1, EXACT))
        self.reach[layer.name] = float(sum(bounds) * unit)
        if 2 * unit >= 1:
            self.integral.add(layer.name)
        synapses = []
        for s, rows in zip(layer.synapses, row_bounds):
            w = self._weights(s.weight, layer.weight_exp + s.shift[:, None],
                              g)
            # a row's products share its power of two: exact per shift
            f32 = self.mode == "fixed" and all(
                _exact_in_f32(float(rows[s.shift == e].max()) * unit,
                              2 * unit * 2.0 ** e)
                for e in np.unique(s.shift))
            rows, w, out = _pruned(s, w)
            # the first product of this source and rows with room for it
            key = (s.src, rows.shape, rows.tobytes(), g, f32, 0)
            while key in self.products and len(w) + sum(
                    len(m) for m, _ in self.products[key]["members"]) \
                    > PRODUCT_COLUMNS:
                key = key[:-1] + (key[-1] + 1,)
            p = self.products.setdefault(key, dict(
                src=s.src, rows=rows, bits=g, f32=f32, members=[],
                first=index))
            p["last"] = index
            synapses.append((key, len(p["members"])))
            p["members"].append((w, out))
        return dict(synapses=synapses, bias=self._bias(layer.name,
                                                       layer.bias),
                    sum_f32=self.mode == "fixed" and
                    _exact_in_f32(sum(bounds) * unit, 2 * unit),
                    stage=self._stage_constants(layer))

    def _stage_constants(self, layer) -> ty.Optional[dict]:
        """What :meth:`_stage` needs of a staged layer, as tensors: the
        knot table raveled and each neuron's first knot (fixed), the
        scales (float), a LayerNorm's gains per token row."""
        st = layer.stage
        if st is None:
            return None
        long = functools.partial(torch.as_tensor, dtype=torch.int64,
                                 device=self.device)
        n = layer.shape[-1]
        if isinstance(st, ActivationStage):
            if self.mode == "fixed":
                return dict(knots=long(np.ravel(st.knots)),
                            row_base=long(np.asarray(st.row) * fixed.KNOTS))
            # the values at the clip, +-sigma_pre, as the golden model
            # computes them: f(sigma_pre) / sigma is exactly 1 there where
            # sigma = f(sigma_pre), and torch's f may round it above 1,
            # which would count as clipped
            ends = stage_float(layer, np.stack([-np.ones(layer.size),
                                                np.ones(layer.size)]))
            return dict(fn=st.fn, pre_scale=self._tensor(st.pre_scale),
                        scale=self._tensor(layer.scale),
                        low=self._tensor(ends[0]), high=self._tensor(ends[1]))
        if self.mode == "fixed":
            return dict(n=n, eps_state=int(st.eps_state),
                        gain=long(np.reshape(st.gain, (-1, n))),
                        gain_shift=int(st.gain_shift))
        return dict(n=n, eps_norm=st.eps / st.pre_scale ** 2,
                    scale=self._tensor(np.reshape(layer.scale, (-1, n))))

    def _attention_layer(self, op):
        t = self._tensor
        fixed_mode = self.mode == "fixed"
        # the bits of traces and gains (fixed; float: 12, as the weights)
        full = fixed.GAIN_FRAC_BITS
        qk_bits, v_bits, out_bits, woss_bits = (
            (op.qk_bits, op.v_bits, self.plan[op.out].gain_bits,
             op.woss_bits) if fixed_mode else (full,) * 4)
        acc_max = min((1 << (op.acc_bits - 1)) - 1, EXACT)
        current_max = fixed.STATE_MAX if op.acc_bits == fixed.STATE_BITS \
            else INT32_MAX
        # an element sums at most K pairs of a trace times a gain (logits)
        # or M softmax spikes times V's trace (output), times its weight; a
        # step's product current at most twice K (or M) traces
        for w, exp, k, name, bits in (
                (op.qk, op.qk_exp, self.plan[op.x].shape[-1], ":logits",
                 (qk_bits, qk_bits)),
                (op.av, op.av_exp, self.plan[op.v].shape[-2], "",
                 (v_bits, out_bits))):
            pair = 2.0 ** sum(bits)
            unit = 2.0 ** (exp - sum(bits))
            self._prove(np.abs(w).max() * k * pair, op.out + name, acc_max,
                        unit=unit)
            self.reach[op.out + name] = float(np.abs(w).max() * k * pair *
                                              unit)
            self._prove(np.abs(w).max() * 2 * k * 2.0 ** bits[0],
                        op.out + name + " (product current)", current_max)
        limit = 2 ** (fixed.STATE_BITS - 1 - fixed.STATE_FRAC_BITS - 1)
        if self.mode == "fixed" and np.abs(op.logit_scale).max() >= limit:
            raise ValueError(
                f"{op.out}: its calibrated logits reach "
                f"{np.abs(op.logit_scale).max():.3g}, and fixed_pt's WOSS "
                f"membrane (24 bits, 16 of them fraction) holds logits "
                f"below {limit}: they could saturate it mid-window. Run the "
                "network in float mode (floating_pt), or scale the model's "
                "queries or keys down (a softmax of logits this large is "
                "one-hot anyway)")
        # WOSS logit: round(unit * G / 2**woss_bits), the shift folded into
        # the unit
        unit = t(fixed.to_state(op.logit_scale)[0] * 2.0 ** -woss_bits
                 if fixed_mode else op.logit_scale)
        # fixed: the neurons apply 2**(e - trace bits - gain bits) to
        # products of a trace and a gain; float: the weights' exponents
        w_qk, w_av = (
            (self._weights(op.qk, op.qk_exp - qk_bits, qk_bits),
             self._weights(op.av, op.av_exp - v_bits, out_bits))
            if fixed_mode else (self._weights(op.qk, op.qk_exp),
                                self._weights(op.av, op.av_exp)))
        return dict(w_qk=t(w_qk), w_av=t(w_av),
                    bias=self._bias(op.logits, op.logit_bias), unit=unit,
                    mask=torch.as_tensor(op.mask, device=self.device)
                    if op.mask.any() else None,
                    bits=(qk_bits, v_bits, out_bits, woss_bits))

    # ------------------------------------------------------------- forward
    @torch.no_grad()
    def __call__(self, x: ty.Any, record: bool = True,
                 warn: bool = True,
                 attention_mask: ty.Any = None) -> EngineResult:
        """Run a batch (batch, *sample_shape).

        Parameters
        ----------
        x : array_like or torch.Tensor
        record : bool
            Keep every layer's membrane, so that the result can decode
            spikes (``steps``, ``signs``); False keeps only the logits and
            the saturation and clipping counts (see the module docstring
            for memory).
        warn : bool
            Warn (one RuntimeWarning per call, naming the populations) where
            more than :data:`lava_spiked.golden.CLIP_WARN_FRACTION` of a
            population's values in this batch were clipped, as
            :meth:`lava_spiked.network.SpikingNetwork.infer` does; the counts
            are in :attr:`EngineResult.clipped` either way.
        attention_mask : array_like, optional
            (batch, N) token masks, 1 for real tokens, for a network that
            takes one (:meth:`lava_spiked.plan.Plan.check_mask`).
        """
        res = self._run(x, record, attention_mask)
        if warn:
            warn_clipped({k: int(v.sum()) for k, v in res.clipped.items()},
                         self.clip_sizes, len(res.logits), stacklevel=4)
        return res

    def _run(self, x: ty.Any, record: bool,
             attention_mask: ty.Any) -> EngineResult:
        plan = self.plan
        first = plan[plan.input]
        if not torch.is_tensor(x):
            x = check_batch("x", x, first.shape)
        elif tuple(x.shape[1:]) != first.shape or \
                not torch.isfinite(x.sum()):  # NaN and inf propagate: one
            # pass on the tensor's own device; a sum that overflows takes
            # the full check, as does any other doubt
            x = check_batch("x", x.cpu(), first.shape)
        x = torch.as_tensor(x, dtype=torch.float64, device=self.device)
        valid = plan.check_mask(attention_mask, len(x))
        pad = None if valid is None else torch.as_tensor(~valid,
                                                         device=self.device)
        f32 = self.mode == "fixed" and _f32_products_exact(self.device)
        logits, saturated, membranes, clipped = self._compute(
            x, pad, record, f32)
        if plan.mean_pool:
            logits = torch.as_tensor(plan.pool(logits.cpu().numpy(), valid),
                                     device=self.device)
        return EngineResult(logits, saturated, membranes if record else None,
                            self, clipped)

    def _layers(self, x: torch.Tensor, pad: ty.Optional[torch.Tensor],
                record: bool, f32: bool):
        """The layers on a checked batch ``x``: the logits (before mean
        pooling), saturation counts, membranes and clipping counts. Per
        layer the state holds its membrane and kind (decoded to spikes on
        demand) and its trace; products of the synapse groups that later
        layers still read; each is freed after its last reader."""
        plan = self.plan
        n = len(x)
        fixed_mode = self.mode == "fixed"
        first = plan[plan.input]
        u = x.reshape(n, -1) / self.input_scale
        saturated = torch.zeros(n, dtype=torch.int64, device=self.device)
        if fixed_mode:  # to_state; beyond 2**30 only "saturated" matters
            u = _round_to_int(u.mul_(float(1 << fixed.STATE_FRAC_BITS))
                              .clamp_(-INT_LIMIT, INT_LIMIT)).add_(self.top)
            saturated += self._saturated(u)
        clipped = {first.name: self._clipped(u, False)}
        membranes = {first.name: (u, "bipolar")}
        traces = {first.name: self._trace(u, False)}
        products: ty.Dict[tuple, torch.Tensor] = {}
        for i, layer in enumerate(plan.layers[1:]):
            op = plan.attention_of(layer.name)
            if op is not None:
                saturated = saturated + self._attend(op, traces, membranes,
                                                     clipped, pad)
            else:
                kind = "relu" if layer.kind == "relu" else "bipolar"
                v = self._membrane(layer, traces, products, f32)
                saturated = saturated + self._saturated(v, layer.name)
                if layer.kind == "readout":
                    return self._logits(v, layer), saturated, membranes, \
                        clipped
                if layer.stage is not None:
                    v, clipped[layer.name], n_sat = self._stage(
                        layer, self._stage_input(v))
                    saturated = saturated + n_sat
                else:
                    clipped[layer.name] = self._clipped(v, kind == "relu")
                if layer.token_mask:  # padded tokens never fire
                    silent = self.top if fixed_mode else 0.0
                    v = v.reshape(n, pad.shape[1], -1).masked_fill(
                        pad[..., None], silent).reshape(n, -1)
                membranes[layer.name] = (v, kind)
                traces[layer.name] = self._trace(v, kind == "relu", record)
            for done in (traces, products):
                for k in [k for k in done if self.last_read.get(k) == i]:
                    del done[k]
            if not record:
                membranes.clear()
        raise AssertionError("no readout layer")

    def _membrane(self, layer, traces: dict, products: dict,
                  f32: bool) -> torch.Tensor:
        """A dense layer's closed membrane from its sources' traces,
        computing the products it is the first to read."""
        a = self.layers[layer.name]
        acc = None
        for key, member in a["synapses"]:
            p = self.products[key]
            product = p["f32"] if f32 and p["f32"] is not None else p["f64"]
            if key not in products:  # its first member
                products[key] = product(_regain(traces[p["src"]],
                                                p["bits"]))
            y = product.pick(products[key], member)
            if acc is None:
                acc = y if (f32 and a["sum_f32"]) or \
                    y.dtype == torch.float64 else y.double()
            else:
                acc += y
        return self._close(acc, a["bias"], layer.name)

    def _logits(self, v: torch.Tensor, layer) -> torch.Tensor:
        """The readout's membrane (fixed: its table row, saturated here)
        in the model's units, (batch, *out_shape)."""
        n = v.shape[0]
        if self.mode == "fixed":
            v = (v - self.top).clamp_(
                -fixed.STATE_MAX, fixed.STATE_MAX).double() * \
                2.0 ** -fixed.STATE_FRAC_BITS
        return (v * self.output_scale).reshape((n,) + layer.shape)

    def _attend(self, op, traces, membranes, clipped, pad) -> torch.Tensor:
        """Run one attention; return its saturation counts (its clipping
        counts go into ``clipped``). ``pad`` (batch, N): padded tokens,
        masked as keys where the attention has ``key_mask``."""
        a = self.layers[op.out]
        mask = a["mask"]  # None: nothing masked
        if op.key_mask:
            keys = pad[:, None, None, :]
            mask = keys if mask is None else mask | keys
        plan, name = self.plan, op.out
        # fixed: a logit sums products of two 13-bit traces, beyond
        # float32's exact range
        qk_bits, v_bits, out_bits, woss_bits = a["bits"]
        xs, ys, vs = [_regain(traces[k], bits).double().view(
            (-1,) + plan[k].shape) for k, bits in (
                (op.x, qk_bits), (op.y, qk_bits), (op.v, v_bits))]
        n = xs.shape[0]
        matmul = _exact_matmul if self.mode == "fixed" else torch.matmul
        v = self._close(a["w_qk"] * matmul(xs, ys), a["bias"], op.logits)
        saturated = self._saturated(v, op.logits)
        clipped[op.logits] = self._clipped(v, False)
        membranes[op.logits] = (v, "bipolar")
        # WOSS: decoded logits, shift by the largest positive unmasked
        # one; masked entries never fire (float: -inf; fixed: int32 at
        # woss_low, below the last threshold)
        z = _regain(self._trace(v, False), woss_bits).double() * a["unit"]
        if self.mode == "fixed":  # int32: half the bytes of each pass
            z = _round_to_int(z)  # |z| < 2**22: logit scales below 64
        if mask is not None:
            z = z.masked_fill(mask, 0)
        d = z - z.amax(-1, keepdim=True).clamp_(min=0)
        if mask is not None:
            d = d.masked_fill(mask, self.woss_low if self.mode == "fixed"
                              else -math.inf)
        membranes[op.softmax] = (d, "woss")
        if self.mode == "fixed":  # d <= 0
            p = _lookup(self.woss_trace, d.sub(self.woss_low).clamp_(
                min=0)).double()
        else:
            p = _lookup(self.gains, self.woss_steps(d))
        # 12-bit trace units
        row_sum = _regain(p, woss_bits).sum(-1, keepdim=True) * \
            2.0 ** (fixed.GAIN_FRAC_BITS - woss_bits)
        out = a["w_av"] * matmul(_regain(p, out_bits), vs)
        if self.mode == "fixed":  # fixed.normalize: a row without spikes
            # has out = 0, and the exact quotient of integers below 2**53
            # rounds half away from zero as trunc((2 v 4096 +- r) / 2 r)
            out = _round(out)
            if self.reach[name] >= fixed.STATE_MAX:
                saturated += (out.abs() > fixed.STATE_MAX).reshape(
                    n, -1).sum(1)
            r = row_sum.clamp(min=1.0)
            out = out.clamp(-fixed.STATE_MAX, fixed.STATE_MAX)
            out = torch.copysign(r, out).add_(
                out * float(2 << fixed.GAIN_FRAC_BITS)).div_(2 * r)
            out = out.clamp_(-INT_LIMIT, INT_LIMIT).int().add_(self.top)
        else:
            out = out / torch.where(row_sum > 0, row_sum,
                                    torch.ones_like(row_sum))
        out = out.reshape(n, -1)
        clipped[name] = self._clipped(out, False)
        membranes[name] = (out, "bipolar")
        traces[name] = self._trace(out, False)
        return saturated

    def _stage_input(self, v: torch.Tensor) -> torch.Tensor:
        """A staged layer's closed membranes (fixed: table rows) as its
        stage takes them: fixed, in state units, saturated (int64); float,
        as they are. Computed in the layers' (compiled) code."""
        if self.mode == "fixed":
            return (v.long() - self.top).clamp_(-fixed.STATE_MAX,
                                                fixed.STATE_MAX)
        return v

    def _stage(self, layer, m: torch.Tensor):
        """The window-close stage of an activation or LayerNorm layer on
        closed membranes ``m`` (:meth:`_stage_input`): the stage's output
        as membranes (fixed: table rows), its clipped neurons and its
        saturation events per sample. Compiled, in torch
        (:meth:`_stage_torch`), fused into the graph; eager, by the golden
        model's own numpy functions (:meth:`_stage_numpy`), which were
        faster there: MiniLM, batch 64, one thread, side by side, an eager
        fixed call took 4.84 s so and 5.56 s in torch (float: 5.52 s and
        5.21 s). Bit for bit alike in fixed mode."""
        if torch.compiler.is_compiling():
            return self._stage_torch(layer, m)
        return self._stage_numpy(layer, m)

    def _stage_numpy(self, layer, m: torch.Tensor):
        """:meth:`_stage` by :func:`lava_spiked.golden.stage_fixed` and
        ``stage_float``, on a few samples at a time, so that numpy's dozen
        passes over its temporaries stay in cache (with the flat knot
        reads of :func:`fixed.activation`, a MiniLM engine call 1.37x
        faster than the whole batch at once)."""
        n = m.shape[0]
        fixed_mode = self.mode == "fixed"
        m = m.cpu().numpy()
        one = 1 << fixed.STATE_FRAC_BITS if fixed_mode else 1.0
        out = np.empty(m.shape, np.int32 if fixed_mode else np.float64)
        n_sat = np.zeros(n, np.int64)
        clipped = np.empty(n, np.int64)
        k = max(1, STAGE_CHUNK // m.shape[1])
        for s in range(0, n, k):
            part = slice(s, s + k)
            if fixed_mode:
                y, n_sat[part] = stage_fixed(layer, m[part])
                out[part] = y + self.top  # table rows
            else:
                y = out[part] = stage_float(layer, m[part])
            beyond = np.abs(y) > one
            if layer.kind == "activation":
                beyond |= np.abs(m[part]) > one
            clipped[part] = np.count_nonzero(beyond, axis=1)
        y = torch.as_tensor(out, device=self.device)
        clipped = torch.as_tensor(clipped, device=self.device)
        return y, clipped, torch.as_tensor(n_sat, device=self.device)

    def _stage_torch(self, layer, m: torch.Tensor):
        """:meth:`_stage` by :mod:`lava_spiked.torch_stages` (bit for bit
        the numpy stages in fixed mode), on the whole batch."""
        c = self.layers[layer.name]["stage"]
        n = m.shape[0]
        if self.mode == "fixed":
            one = 1 << fixed.STATE_FRAC_BITS
            if layer.kind == "activation":
                y = torch_stages.activation_fixed(m, c["knots"],
                                                  c["row_base"])
                n_sat = torch.zeros(n, dtype=torch.int64, device=m.device)
            else:
                y, n_sat = torch_stages.layer_norm_fixed(
                    m.reshape(n, -1, c["n"]), c["eps_state"], c["gain"],
                    c["gain_shift"])
                y, n_sat = y.reshape(n, -1), n_sat.sum(1)
            out = (y + self.top).int()  # table rows
        else:
            one = 1.0
            if layer.kind == "activation":
                y = torch_stages.activation_float(m, c["fn"], c["pre_scale"],
                                                  c["scale"])
                y = torch.where(m >= 1, c["high"],
                                torch.where(m <= -1, c["low"], y))
            else:
                y = torch_stages.layer_norm_float(
                    m.reshape(n, -1, c["n"]), c["eps_norm"],
                    c["scale"]).reshape(n, -1)
            out, n_sat = y, torch.zeros(n, dtype=torch.int64,
                                        device=m.device)
        beyond = y.abs() > one
        if layer.kind == "activation":
            beyond |= m.abs() > one
        return out, beyond.sum(1), n_sat

    def _close(self, acc, bias, name: str) -> torch.Tensor:
        """Membrane when the window closes (see fixed.close_window), before
        saturation: spikes do not need it, since every threshold lies far
        below the 24-bit limit. Fixed: its table row (int32; a membrane
        beyond 2**30 is clamped there, still saturated), rounded in place
        (``acc`` is the caller's own); float32 accumulators come only from
        products whose sums (and the rounding's half) are exact in
        float32."""
        if self.mode == "float":
            return acc.add_(bias)
        if self.reach[name] >= INT_LIMIT - 1:
            acc = acc.clamp_(-INT_LIMIT, INT_LIMIT)
        if name in self.integral:  # nothing to round: the cast is exact
            return acc.int().add_(bias)
        return _round_to_int(acc).add_(bias)

    def _saturated(self, v: torch.Tensor, name: ty.Optional[str] = None
                   ) -> ty.Union[torch.Tensor, int]:
        """Saturation events per sample of a fixed membrane (its table row)
        outside 24 bits when its window closes, plus its saturated bias
        (0 in float mode). Not counted where the layer's bound shows that
        no membrane can leave 24 bits."""
        if self.mode == "float":
            return 0
        if name is not None and self.reach[name] + 1 + \
                self.bias_max[name] <= fixed.STATE_MAX:
            return self.bias_saturated[name]
        v = v.reshape(v.shape[0], -1)
        out = torch.count_nonzero((v < self.top - fixed.STATE_MAX) |
                                  (v > self.top + fixed.STATE_MAX), dim=1)
        return out.add_(self.bias_saturated.get(name, 0))

    def _clipped(self, v: torch.Tensor, unipolar: bool) -> torch.Tensor:
        """Clipped neurons per sample, (batch,) int64: a closed membrane
        beyond one sigma, ``|v| > 2**16`` in state units (fixed: ``v`` is
        its table row, ``v - theta_0``) or ``|v| > 1`` (float); ReLU
        layers only above (see :mod:`lava_spiked.golden`)."""
        v = v.reshape(v.shape[0], -1)
        one = 1 << fixed.STATE_FRAC_BITS if self.mode == "fixed" else 1.0
        zero = self.top if self.mode == "fixed" else 0.0
        if unipolar:
            return torch.count_nonzero(v > zero + one, dim=1)
        return torch.count_nonzero((v - zero).abs_() > one, dim=1)

    def _trace(self, v: torch.Tensor, unipolar: bool,
               keep: bool = True) -> torch.Tensor:
        """``sign * G[step]`` (fixed: float32, from the membrane's table
        row) or ``sign * B**-step`` (float) of the first spike of membrane
        ``v``; 0 where silent. ``keep=False`` lets it overwrite ``v``
        (one full-size temporary fewer)."""
        if self.mode == "fixed":
            row = v.clamp(0, 2 * self.top) if keep else \
                v.clamp_(0, 2 * self.top)
            return _lookup(self.lut_trace[unipolar], row)
        sign = torch.sign(v)
        if unipolar:
            sign.clamp_(min=0.0)
        magnitude = v.abs() if keep else v.abs_()
        return self.neurons.traces(magnitude).mul_(sign)

    def _decode(self, v: torch.Tensor, kind: str):
        """Fire steps (-1 = silent) and signs, (batch, size), from a stored
        membrane."""
        v = v.reshape(v.shape[0], -1)
        if kind == "woss":  # fixed: int32
            step = self.woss_steps(v.double())
            sign = torch.ones_like(v)
        elif self.mode == "fixed":
            step = _lookup(self.lut_steps, v.clamp(0, 2 * self.top))
            v = (v - self.top).double()
            sign = torch.sign(v)
        else:
            step = self.neurons.steps(v.abs())
            sign = torch.sign(v)
        silent = step == self.plan.T
        if kind == "relu":
            silent |= v <= 0
        return (step.masked_fill(silent, -1),
                sign.masked_fill(silent, 0.0))
