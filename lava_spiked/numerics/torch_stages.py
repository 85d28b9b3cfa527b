"""The window-close stages (activation, LayerNorm) as torch ops, for the
engine: on its device, and traceable by ``torch.compile``.

The numpy functions of :mod:`lava_spiked.numerics.fixed`
(:func:`~lava_spiked.numerics.fixed.activation`,
:func:`~lava_spiked.numerics.fixed.layer_norm`) and
:mod:`lava_spiked.numerics.nonlinear` stay the one definition the Plan names
and the golden models run; these repeat them step for step in int64 (fixed
mode: bit for bit, tested exhaustively and by hypothesis) and float64 (float
mode: up to the last bits of erf, exp and sqrt, which are the library's to
round).
"""
import typing as ty

import torch

from lava_spiked.numerics import fixed

_ONE = 1 << fixed.STATE_FRAC_BITS


def round_shift(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x / 2**n`` rounded half away from zero (int64;
    :func:`lava_spiked.numerics.fixed.round_shift`)."""
    if n <= 0:
        return x << -n
    return torch.sign(x) * ((x.abs() + (1 << (n - 1))) >> n)


def activation_fixed(v: torch.Tensor, flat_knots: torch.Tensor,
                     row_base: torch.Tensor) -> torch.Tensor:
    """:func:`lava_spiked.numerics.fixed.activation` of int64 membranes ``v``
    (..., size): ``flat_knots`` the knot table raveled (int64),
    ``row_base`` each neuron's row times ``fixed.KNOTS`` (int64, size)."""
    u = v.clamp(-_ONE, _ONE) + _ONE
    at = (u >> fixed.KNOT_SHIFT) + row_base
    y0 = flat_knots[at]
    # the last knot of a row has offset 0: whatever follows it is unused
    y1 = flat_knots[(at + 1).clamp_(max=flat_knots.numel() - 1)]
    offset = u & ((1 << fixed.KNOT_SHIFT) - 1)
    return y0 + round_shift((y1 - y0) * offset, fixed.KNOT_SHIFT)


def _bit_length(x: torch.Tensor) -> torch.Tensor:
    """Bits of positive int64 ``x`` (the float estimate corrected both
    ways, as :func:`lava_spiked.numerics.fixed._bit_length`)."""
    b = torch.floor(torch.log2(x.double())).long() + 1
    b = b - ((x >> (b - 1).clamp(min=0)) == 0).long()
    return b + ((x >> b.clamp(max=62)) != 0).long()


def isqrt(x: torch.Tensor) -> torch.Tensor:
    """``floor(sqrt(x))`` of int64 ``0 <= x < 2**52``, exact."""
    s = torch.floor(torch.sqrt(x.double())).long()
    s = s - (s * s > x).long()
    return s + ((s + 1) * (s + 1) <= x).long()


@torch.library.custom_op("lava_spiked::inverse_sqrt", mutates_args=())
def inverse_sqrt(d: torch.Tensor) -> ty.Tuple[torch.Tensor, torch.Tensor]:
    """Steps 3 and 4 of :func:`lava_spiked.numerics.fixed.layer_norm` for the
    int64 sums ``d >= 1`` of each token: ``r = round(2**47 / isqrt(d * 2**k))``
    (24 bits, ``k`` even with ``d * 2**k`` in ``[2**46, 2**48)``) and the
    shift ``24 + MEAN_FRAC_BITS - k / 2`` that scales ``cf * r``.

    One opaque op to ``torch.compile``: fused into the engine's graph, its
    int64 steps came out wrong from TorchInductor's 256-bit vector code on
    an AVX-512 CPU, where each step alone compiled right."""
    k = 48 - _bit_length(d)
    k = k - (k & 1)  # even, rounding down
    d = torch.where(k >= 0, d << k.clamp(min=0), d >> (-k).clamp(min=0))
    r = (torch.div(1 << 48, isqrt(d), rounding_mode="floor") + 1) >> 1
    return r, 24 + fixed.MEAN_FRAC_BITS - torch.div(k, 2,
                                                    rounding_mode="floor")


@inverse_sqrt.register_fake
def _(d: torch.Tensor) -> ty.Tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(d), torch.empty_like(d)


def layer_norm_fixed(v: torch.Tensor, eps_state: int, gain: torch.Tensor,
                     gain_shift: int
                     ) -> ty.Tuple[torch.Tensor, torch.Tensor]:
    """:func:`lava_spiked.numerics.fixed.layer_norm` of int64 membranes ``v``
    (..., n) with int64 ``gain`` (n,) or broadcastable: the outputs and
    the saturated elements per token."""
    n = v.shape[-1]
    total = v.sum(-1, keepdim=True)
    sign = torch.sign(total)

    def mean(bits: int) -> torch.Tensor:
        num = total.abs() << bits
        return sign * torch.div(2 * num + n, 2 * n, rounding_mode="floor")

    c = v - mean(0)
    cf = (v << fixed.MEAN_FRAC_BITS) - mean(fixed.MEAN_FRAC_BITS)
    d = ((c * c).sum(-1, keepdim=True) + n * int(eps_state)).clamp(min=1)
    r, shift = inverse_sqrt(d)
    prod = cf * r
    u = torch.sign(prod) * ((prod.abs() + (1 << (shift - 1))) >> shift)
    out = round_shift(u * gain, gain_shift + 7)
    clipped = out.clamp(-fixed.STATE_MAX, fixed.STATE_MAX)
    return clipped, (clipped != out).sum(-1)


#: The activation stages of :data:`lava_spiked.numerics.nonlinear.ACTIVATIONS`
FLOAT = {
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda a: torch.nn.functional.gelu(a, approximate="tanh"),
    "silu": torch.nn.functional.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def activation_float(v: torch.Tensor, fn: str, pre_scale: torch.Tensor,
                     scale: torch.Tensor) -> torch.Tensor:
    """:func:`lava_spiked.numerics.nonlinear.activation_float` in float64."""
    return FLOAT[fn](v.clamp(-1.0, 1.0) * pre_scale) / scale


def layer_norm_float(v: torch.Tensor, eps_norm: float,
                     scale: torch.Tensor) -> torch.Tensor:
    """:func:`lava_spiked.numerics.nonlinear.layer_norm_float` in float64."""
    c = v - v.mean(-1, keepdim=True)
    d = (c * c).mean(-1, keepdim=True) + eps_norm
    safe = torch.where(d > 0, d, torch.ones_like(d))
    return torch.where(d > 0, c / torch.sqrt(safe),
                       torch.zeros_like(c)) / scale
