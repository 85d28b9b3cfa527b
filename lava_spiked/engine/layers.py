"""Each layer of a Plan as the engine runs it, built once: a dense
layer's synapses as members of shared products, its bias and stage
(:class:`DenseLayer`); an attention's weights, WOSS scale and mask
(:class:`AttentionLayer`). Building one proves, through the arithmetic,
that the engine reproduces it (fixed mode: every sum exact and nothing
saturating mid-window), or refuses it."""
import dataclasses
import typing as ty

import numpy as np
import torch

from lava_spiked.numerics import fixed
from lava_spiked.engine.arithmetic import Arithmetic
from lava_spiked.engine.ops import EXACT
from lava_spiked.engine.products import Products

INT32_MAX = (1 << 31) - 1  # TraceMatMul's output port


@dataclasses.dataclass(frozen=True)
class DenseLayer:
    """A dense layer: its synapses as (product key, member index), its
    bias, whether its summed accumulator is exact in float32 (fixed
    mode), and its stage's constants (None: no stage)."""

    synapses: ty.List[ty.Tuple[tuple, int]]
    bias: torch.Tensor
    sum_f32: bool
    stage: ty.Any


@dataclasses.dataclass(frozen=True)
class AttentionLayer:
    """An attention: its logit and output weights (with the shifts of
    their window close folded in), its logits' bias, the factor from a
    logit's WOSS trace to the softmax's membrane, its constant mask
    (None: nothing masked) and the bits of its Q/K and V traces, its
    output's gains and its WOSS traces."""

    w_qk: torch.Tensor
    w_av: torch.Tensor
    bias: torch.Tensor
    unit: torch.Tensor
    mask: ty.Optional[torch.Tensor]
    bits: ty.Tuple[int, int, int, int]


def dense_layer(arith: Arithmetic, products: Products, layer: ty.Any,
                index: int) -> DenseLayer:
    """The layer at ``index``, its synapses added to ``products`` in
    float32 where fixed mode proves that exact (and in float64 too, for
    full-precision fallback)."""
    g = arith.gain_bits(layer)
    # each input adds at most |w| * 2**g (gain of step 0)
    row_bounds = [np.abs(s.scaled()).sum(-1) * 2.0 ** g
                  for s in layer.synapses]
    bounds = [float(r.max(initial=0)) for r in row_bounds]
    # state units per accumulator unit; Dense mantissas 2k are even, so
    # with 2 * unit >= 1 the accumulator is an integer
    unit = 2.0 ** (layer.weight_exp - g)
    arith.bound(layer.name, sum(bounds),
                min((1 << (layer.acc_bits - 1)) - 1, EXACT), unit,
                integral=2 * unit >= 1)
    synapses = []
    for s, rows in zip(layer.synapses, row_bounds):
        w = arith.weights(s.weight, layer.weight_exp + s.shift[:, None], g)
        # a row's products share its power of two: exact per shift
        f32 = all(arith.exact_f32(float(rows[s.shift == e].max()) * unit,
                                  2 * unit * 2.0 ** e)
                  for e in np.unique(s.shift))
        synapses.append(products.add(s, w, g, f32, index))
    return DenseLayer(synapses, arith.bias(layer.name, layer.bias),
                      arith.exact_f32(sum(bounds) * unit, 2 * unit),
                      arith.stage_constants(layer))


def attention_layer(arith: Arithmetic, plan: ty.Any, op: ty.Any
                    ) -> AttentionLayer:
    """An attention, proven: an element sums at most K pairs of a trace
    times a gain (logits) or M softmax spikes times V's trace (output),
    times its weight; a step's product current at most twice K (or M)
    traces."""
    qk_bits, v_bits, out_bits, woss_bits = bits = arith.attention_bits(op)
    acc_max = min((1 << (op.acc_bits - 1)) - 1, EXACT)
    current_max = fixed.STATE_MAX if op.acc_bits == fixed.STATE_BITS \
        else INT32_MAX
    for w, exp, k, name, pair_bits in (
            (op.qk, op.qk_exp, plan[op.x].shape[-1], ":logits",
             (qk_bits, qk_bits)),
            (op.av, op.av_exp, plan[op.v].shape[-2], "",
             (v_bits, out_bits))):
        pair = 2.0 ** sum(pair_bits)
        arith.bound(op.out + name, np.abs(w).max() * k * pair, acc_max,
                    unit=2.0 ** (exp - sum(pair_bits)))
        arith.prove(op.out + name + " (product current)",
                    np.abs(w).max() * 2 * k * 2.0 ** pair_bits[0],
                    current_max)
    arith.check_attention(op)
    w_qk, w_av = arith.attention_weights(op, bits)
    return AttentionLayer(
        arith.tensor(w_qk), arith.tensor(w_av),
        arith.bias(op.logits, op.logit_bias), arith.woss_scale(op, woss_bits),
        torch.as_tensor(op.mask, device=arith.device)
        if op.mask.any() else None, bits)
