"""Batched torch engine that computes a converted network like its Lava
models do, on CPU or CUDA.

Every layer fires only after integrating its whole window (W = T), so its
spikes are a function of its membrane when the window closes, and that
membrane is a closed form of its sources' spikes:

``float`` (= ``floating_pt``)
    ``A = sum_s W_s @ (x_hat_s / sigma_s) + b / sigma``, then the phase
    quantiser; attention as
    :func:`lava_spiked.golden.attention.attention_float`.
``fixed`` (= ``fixed_pt``, bit for bit)
    The 48-bit dendritic accumulator of a PhaseNeuron sums ``a_in * G_j``
    exactly and is rounded once when the window closes, so it equals
    ``W @ (sign * G[step])``: one matrix product per synapse. For a trace
    product, a pair of spikes at steps m and m' adds
    ``s s' G[min] * G[max] = s G[m] * s' G[m']`` whatever their order, so
    the logit accumulator is ``w * (X_G @ Y_G)`` and the attention output's
    is ``w * (P_G @ V_G)``. Products run in float64 (or float32 or int8,
    below), exact because the constructor proves every sum stays below
    2**53; it
    also proves that
    no accumulator, trace-product current or WOSS membrane can saturate
    mid-window (where step order would matter) and refuses networks for
    which it cannot.

What flows between layers is the trace ``sign * G[step]`` (0 if silent),
looked up from the membrane in one table gather (fixed, the neurons and
the WOSS softmax), from a bucket of the membrane's float64 bit pattern
and one comparison (float, the neurons:
:class:`~lava_spiked.engine.thresholds.ThresholdBuckets`) or
from a closed-form estimate of the fire step, kept at or one below the
true step and corrected by one table comparison (float, the WOSS
softmax). Fire steps and signs are decoded from the stored membranes only
when a caller reads them.

Fixed mode runs a synapse's product in float32 where that is exact too:
its traces (13-bit integers) and weights (8-bit mantissas times a power of
two) are exact in float32, and so is every partial sum while the sum of
``|k| * 4096`` over a row stays at most 2**24 (proved per synapse when the
engine is built; such a product costs about a third of a float64 one on
CPU). A synapse beyond that bound runs as two int8 products with int32 sums
on a CPU with int8 instructions (VNNI or AMX), its traces split into a
high and a low part (:meth:`~lava_spiked.engine.products.Product._int8`;
MiniLM, compiled, batch 64, one thread: a call 1.17x faster than with
float64 products, ``benchmarks/int8_products.py``), else in float64; the
attention products (whose traces multiply to 24 bits) stay in float64,
and a layer whose summed bound exceeds 2**24 adds its float32 products in
float64. The membranes are int32 table rows, so a layer costs its
products, the rounding, a clamp and a gather. Int8 products in place of
the float32 ones were measured and not taken: on a CPU without VNNI (AVX2
only) they run about 25x slower than a float32 product; on an AVX-512 CPU
with VNNI one takes a third of a float32 one alone, but in the compiled
encoder ViT the two halves' products took longer than the float32 ones
and the split slowed the fused passes around them (a call 1.3x slower,
batch 256, one thread).

What each mode promises, on any CPU (x86-64 with AVX2 or AVX-512, eager
or compiled) and GPU:

``fixed``
    Bit for bit ``fixed_pt``: every sum is of integers times one power of
    two and stays within float64's (float32's, int32's) exact range, so it
    is exact in any order; no BLAS kernel, vector width, fused
    multiply-add or reduction order can change a bit.
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
columns, see :class:`~lava_spiked.engine.products.Product`) plus a few
elementwise passes per layer, not T steps.
Counting clipped neurons (:attr:`EngineResult.clipped`, also with
``record=False``) is one of those passes, a comparison of each membrane
with one sigma: measured at about 10 % of a call (fixed, CPU, the bundled
DigitsViT, 1191 samples: 10 of 90 ms; float 16 of 199 ms).
``Engine(..., compile=True)`` fuses those passes with ``torch.compile``
(same results, as above; docs/guide/engine.md, "Compiling", says where
to find what it saves).

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

The package, one job per module:

``forward``
    :class:`Engine`: builds the layers once and runs batches.
``layers``
    Each layer as the engine runs it (typed records), proven on building.
``arithmetic``, ``fixed_mode``, ``float_mode``
    The mode's arithmetic: one interface, two implementations.
``products``
    Synapses grouped into shared matrix products.
``stages``
    LayerNorm and activation stages (torch and the golden numpy).
``thresholds``, ``ops``
    Fire-step finders; gathers, rounding and exact products in torch.
``compiling``
    ``torch.compile``'s options and the rule for when to compile.
``result``, ``memory``
    :class:`EngineResult`; :func:`keep_freed_memory`.
"""
from lava_spiked.engine.forward import Engine
from lava_spiked.engine.memory import keep_freed_memory
from lava_spiked.engine.result import EngineResult

__all__ = ["Engine", "EngineResult", "keep_freed_memory"]
