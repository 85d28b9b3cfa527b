"""Torch building blocks of the engine: gathers that compile to plain
loads, rounding as the integer models round, gain changes of traces, and
products of integers that are exact in any order."""
import typing as ty

import numpy as np
import torch

from lava_spiked.numerics import fixed

EXACT = 2.0 ** 53  # float64 integers are exact below this
# fixed membranes are int32 table rows; clamping a membrane to this keeps
# it saturated (beyond 24 bits) and its row in int32
INT_LIMIT = 2.0 ** 30


def tensor(a: ty.Any, device: torch.device) -> torch.Tensor:
    """``a`` as a float64 tensor on ``device``."""
    return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)


def holes(index: np.ndarray, device) -> ty.Optional[torch.Tensor]:
    """Where a gather's ``index`` is -1 (reads nothing), or None if
    nowhere."""
    where = index < 0
    return torch.as_tensor(where, device=device) if where.any() else None


def select(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[..., index]`` for a 1-D ``index`` of valid positions (the
    caller clamps or builds it so). Eager: ``index_select``, the fastest
    gather, which also takes int32 indices. Compiled: ``gather``, whose
    Inductor lowering does not test every index for a negative value to
    wrap around (``index_select``'s does)."""
    if torch.compiler.is_compiling():
        return torch.gather(x, -1, index.long().expand(
            x.shape[:-1] + index.shape))
    return x.index_select(-1, index)


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` (a 1-D table, valid indices)."""
    return select(table, index.reshape(-1)).view(index.shape)


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero, as
    :func:`lava_spiked.numerics.fixed.round_shift` does: exact for ``x = k *
    2**-n`` with integer ``k`` below 2**53, which is what the engine rounds
    (shifts are folded into the weights)."""
    # sign * floor(|x| + 1/2): floor is vectorised, trunc and copysign are
    # not (3x slower on CPU)
    return x.abs().add_(0.5).floor_().mul_(x.sign())


def round_to_int(x: torch.Tensor) -> torch.Tensor:
    """:func:`round_half_away` as int32, overwriting ``x``: the cast
    truncates toward zero, so ``x + sign(x) / 2`` rounds half away from
    zero where that sum is exact, which the caller proves, as it proves
    ``|x| < 2**30``. Two passes and a cast to 4-byte integers: every
    full-size temporary costs its page faults on first touch, as much as
    a pass."""
    return x.add_(x.sign(), alpha=0.5).int()


def regain(trace: torch.Tensor, bits: int) -> torch.Tensor:
    """Fixed traces ``s * G_j`` (integers) as a layer with ``bits``-bit
    gains weighs them, ``round_shift(s * G_j, 12 - bits)``
    (fixed.layer_gains; exact in floating point: small integers and
    powers of two); 12 bits: the traces themselves."""
    if bits == fixed.GAIN_FRAC_BITS:
        return trace
    out = trace.abs().mul_(2.0 ** (bits - fixed.GAIN_FRAC_BITS))
    return out.add_(0.5).floor_().mul_(trace.sign())


def exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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
