"""Synapses grouped into shared matrix products: which synapses read one
source through the same rows (:class:`Products`), each group's product
(:class:`Product`), and when float32 products are exact."""
import dataclasses
import functools
import typing as ty

import numpy as np
import torch

from lava_spiked.engine.ops import holes, select
from lava_spiked.plan import Synapse

EXACT_F32 = 2.0 ** 24  # float32 integers are exact up to this
INT8_MAX = 127
# an integer trace t (|t| <= 2**12) as hi * 2**LOW_BITS + lo, hi in
# [-32, 32] and lo in [0, 128): both int8
LOW_BITS = 7
# columns of one shared product (Product): wider, MKL's products on the
# AVX-512 CPU measured ran up to 2.2x slower per column (float64, K <= 64)
PRODUCT_COLUMNS = 128


def pruned(syn: Synapse, w: np.ndarray):
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


class Product:
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
        (R, C_i) product (-1: none), as :func:`pruned` gives them.
    """

    def __init__(self, rows: np.ndarray, members: list, device,
                 dtype: torch.dtype = torch.float64) -> None:
        r, k = rows.shape
        # a gather (None: the identity) and where it reads nothing
        self.rows = None if np.array_equal(
            rows.ravel(), np.arange(r * k)) else torch.as_tensor(
                np.maximum(rows, 0).ravel(), device=device)
        self.unread = holes(rows, device)
        self.r, self.k = r, k
        w = np.concatenate([np.asarray(w, np.float64) for w, _ in members])
        # int8: mantissas, and each output channel's power of two applied
        # to the exact integer sums
        self.scale = None
        if dtype == torch.int8:
            w, scale = int8_rows(w)
            self.scale = torch.as_tensor(scale, device=device)
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
            self.unpicked.append(holes(out, device))
            start += c

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, R * sum C) products of a source batch (batch, size)."""
        n = x.shape[0]
        if self.scale is None:
            x = x.to(self.w.dtype)  # fixed traces are float32 (exact)
        if self.rows is None:
            g = x[:, :self.r * self.k].reshape(n, self.r, self.k)
        else:
            g = select(x, self.rows).reshape(n, self.r, self.k)
            if self.unread is not None:
                g = g.masked_fill_(self.unread, 0.0)
        if self.scale is not None:
            return self._int8(g.reshape(-1, self.k)).reshape(n, -1)
        if self.r == 1:  # 2-D: Inductor turns a batched product with one
            # row into a sum of products that recomputes each trace once
            # per output channel
            g = g[:, 0]
        return (g @ self.w).reshape(n, -1)

    def _int8(self, t: torch.Tensor) -> torch.Tensor:
        """(M, C) float64 products of integer traces ``t`` (M, K), as two
        int8 products with int32 sums (each below 2**31: K * 32 * 127
        and K * 127 * 127, :func:`int8_rows` checks K), exact on every
        CPU, joined and scaled exactly in float64."""
        t = t.to(torch.int32)
        hi = torch._int_mm((t >> LOW_BITS).to(torch.int8), self.w)
        lo = torch._int_mm((t & ((1 << LOW_BITS) - 1)).to(torch.int8),
                           self.w)
        return hi.double().mul_(float(1 << LOW_BITS)).add_(lo).mul_(
            self.scale)

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
        y = select(y, out)
        unpicked = self.unpicked[i]
        return y if unpicked is None else y.masked_fill_(unpicked, 0.0)


def int8_rows(w: np.ndarray) -> ty.Tuple[np.ndarray, np.ndarray]:
    """Weights ``w`` (C, K) as ``m * scale[:, None]``: int8 mantissas
    ``m`` and one power of two per row, the largest that divides the
    row (so the smallest mantissas); raises ValueError where a row needs
    mantissas beyond int8 or K is too long for int32 sums
    (:meth:`Product._int8`)."""
    w = np.asarray(w, np.float64)
    if w.shape[1] * INT8_MAX * INT8_MAX >= 2 ** 31:
        raise ValueError(f"{w.shape[1]} inputs: int32 sums could overflow")
    f, e = np.frexp(w)
    # w = M * 2**(e - 53) with the integer M = f * 2**53 (exact); the
    # lowest set bit of M gives the power of two that divides w
    m = np.abs(f * 2.0 ** 53).astype(np.int64)
    bit = np.log2(np.where(m > 0, m & -m, 1)).astype(np.int64)
    low = np.where(m > 0, e - 53 + bit, np.iinfo(np.int64).max)
    exp = low.min(1)
    exp = np.where(exp == np.iinfo(np.int64).max, 0, exp)
    scale = np.ldexp(1.0, exp)
    mant = w / scale[:, None]
    if np.abs(mant).max(initial=0) > INT8_MAX:
        raise ValueError("mantissas beyond int8")
    return mant.astype(np.int8), scale


@functools.lru_cache(maxsize=None)
def int8_instructions() -> bool:
    """Whether this CPU multiplies int8 in vector instructions (VNNI or
    AMX: Linux's ``/proc/cpuinfo`` flags). Without them an int8 product
    ran about 25x slower than a float32 one (AVX2 only, measured)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni",
                                         "amx_int8"})
    except OSError:
        pass
    return False


def int8_products(device: torch.device, w: np.ndarray) -> bool:
    """Whether a fixed-mode product of weights ``w`` (C, K) runs as int8
    products (:meth:`Product._int8`): on a CPU with int8 instructions
    (CUDA's int8 products ask for shapes in multiples of 8), where the
    weights are int8 mantissas times a power of two per output channel,
    as the Plan quantises them. The bits are the same either way."""
    if device.type != "cpu" or not int8_instructions():
        return False
    try:
        int8_rows(w)
    except ValueError:
        return False
    return True


def f32_products_exact(device: torch.device) -> bool:
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


def exact_in_f32(bound: float, step: float) -> bool:
    """Whether float32 holds exactly every multiple of ``step`` (a power of
    two) up to ``bound`` and, where ``step < 1``, plus the half that
    :func:`lava_spiked.engine.ops.round_to_int` adds (an integral
    accumulator is cast without it): at most 2**24 multiples, and
    ``step`` well inside float32's normal range, so that no flush of
    denormals can touch it."""
    if not 2.0 ** -100 <= step <= 2.0 ** 100:
        return False
    if step >= 1:
        return bound / step <= EXACT_F32
    return (bound + 0.5) / step <= EXACT_F32


@dataclasses.dataclass
class ProductGroup:
    """One shared product while the layers are read: its source, rows
    and the gain bits it reads the source at, whether float32 is exact
    for it, the first and last layer (index) that read it, and its
    members' ``(w, out)``; :meth:`Products.build` makes its products."""

    src: str
    rows: np.ndarray
    bits: int
    exact_f32: bool
    first: int
    last: int
    members: list = dataclasses.field(default_factory=list)
    exact: ty.Optional[Product] = None
    f32: ty.Optional[Product] = None

    def product(self, f32: bool) -> Product:
        """The float32 product where it is exact and allowed, else the
        exact one (int8 or float64)."""
        return self.f32 if f32 and self.f32 is not None else self.exact


class Products:
    """The shared products of a network, by key: synapses that read one
    source through the same rows, at the same gain bits and with the same
    float32 exactness share a product of up to :data:`PRODUCT_COLUMNS`
    columns."""

    def __init__(self) -> None:
        self.groups: ty.Dict[tuple, ProductGroup] = {}

    def add(self, syn: Synapse, w: np.ndarray, bits: int, exact_f32: bool,
            index: int) -> ty.Tuple[tuple, int]:
        """Add a synapse of the layer at ``index`` with weight ``w`` (as
        the engine multiplies it); returns its group's key and its member
        index there."""
        rows, w, out = pruned(syn, w)
        # the first group of this source and rows with room for it
        key = (syn.src, rows.shape, rows.tobytes(), bits, exact_f32, 0)
        while key in self.groups and len(w) + sum(
                len(m) for m, _ in self.groups[key].members) \
                > PRODUCT_COLUMNS:
            key = key[:-1] + (key[-1] + 1,)
        group = self.groups.setdefault(key, ProductGroup(
            syn.src, rows, bits, exact_f32, first=index, last=index))
        group.last = index
        group.members.append((w, out))
        return key, len(group.members) - 1

    def build(self, device: torch.device, integer: bool) -> None:
        """Make every group's exact product, and its float32 one where
        that is exact; the members' weights are then held only there.
        The exact product of integer traces (``integer``: fixed mode) is
        two int8 products where :func:`int8_products` allows (on the
        AVX-512 CPU measured, 64 x 64 tokens by 384 x 1536, 2 x 12 ms
        against float64's 80 ms and float32's 32 ms, one thread), else
        float64."""
        for g in self.groups.values():
            w = np.concatenate([m for m, _ in g.members])
            exact = torch.int8 if integer and int8_products(device, w) \
                else torch.float64
            g.exact = Product(g.rows, g.members, device, exact)
            g.f32 = Product(g.rows, g.members, device, torch.float32) \
                if g.exact_f32 else None
            g.members = []

    def __getitem__(self, key: tuple) -> ProductGroup:
        return self.groups[key]
