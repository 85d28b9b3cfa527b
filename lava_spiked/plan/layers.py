"""The parts of a Plan: synapses, windows, window-close stages, layers,
attentions and runtime inputs (the Plan itself: :mod:`lava_spiked.plan.plan`).
"""
import dataclasses
import typing as ty

import numpy as np

from lava_spiked.numerics import fixed

KINDS = ("input", "neuron", "relu", "activation", "layernorm", "operand",
         "attention", "readout")
STAGED = ("activation", "layernorm")
#: Name of the runtime token mask
MASK = "attention_mask"
#: Integer formats :func:`lower` can target
TARGETS = ("lava", "loihi2")


@dataclasses.dataclass
class Synapse:
    """A token-shared weight from one population into another.

    The destination neuron ``o`` receives ``(W @ src[rows[r]])[c]`` with
    ``r, c = divmod(out[o], C)``; ``rows`` entries of -1 and ``out``
    entries of -1 contribute nothing.

    Attributes
    ----------
    src : str
        Source population.
    rows : numpy.ndarray of int64
        (R, K) source neuron (flat index) of every input position.
    weight : numpy.ndarray
        (C, K): real units in a captured graph, Dense-form mantissas ``2k``
        (int32) in a Plan.
    out : numpy.ndarray of int64
        (destination size,) index into the (R, C) product.
    shift : numpy.ndarray of int64
        In a Plan: (C,) the exponent of each output channel above the
        destination's ``weight_exp`` (>= 0); its current counts
        ``2**shift`` times. Lava realises each distinct value as one
        connection with its own weight exponent.
    """

    src: str
    rows: np.ndarray
    weight: np.ndarray
    out: np.ndarray
    shift: np.ndarray = None

    def __post_init__(self) -> None:
        if self.shift is None:
            self.shift = np.zeros(len(self.weight), np.int64)

    def scaled(self) -> np.ndarray:
        """Mantissas times ``2**shift`` (int64): the weights in units of
        the destination's ``weight_exp``."""
        return np.asarray(self.weight, np.int64) << self.shift[:, None]

    def split(self, limit: ty.Optional[int] = None
              ) -> ty.List[ty.Tuple[int, "Synapse"]]:
        """``(shift, synapse)`` per Lava connection: one per distinct
        shift (the channels of that shift, the others' weights 0); with
        ``limit``, each of those split further so that no output channel
        sums more than ``limit`` in absolute scaled weight over one
        connection (a step's current, every source spiking; a single
        weight above ``limit`` stays alone in its part)."""
        parts = []
        for e in np.unique(self.shift):
            w = np.where(self.shift[:, None] == e, self.weight, 0)
            group = (np.zeros(w.shape, np.int64) if limit is None else
                     _fan_in_groups(np.abs(w).astype(np.int64) << int(e),
                                    limit))
            parts += [(int(e), dataclasses.replace(
                self, weight=np.where(group == g, w, 0).astype(w.dtype),
                shift=np.full_like(self.shift, e)))
                for g in range(int(group.max(initial=0)) + 1)]
        return parts

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The weight applied to source values ``x`` (batch, src size);
        exact for integers (int64)."""
        g = np.where(self.rows >= 0, x[:, np.maximum(self.rows, 0)], 0)
        # one (batch * R, K) product: a stacked one calls BLAS per sample
        y = (g.reshape(-1, g.shape[-1]) @ self.weight.T.astype(g.dtype)
             ).reshape(len(x), -1)
        return np.where(self.out >= 0, y[:, np.maximum(self.out, 0)], 0)

    def fan_out(self, src_size: int) -> np.ndarray:
        """Targets reached by each source neuron (nonzero weights)."""
        c = self.weight.shape[0]
        o = self.out[self.out >= 0]
        per_rc = np.bincount(o, minlength=len(self.rows) * c).reshape(
            len(self.rows), c)
        fan = per_rc @ (self.weight != 0).astype(np.int64)  # (R, K)
        ok = self.rows >= 0
        return np.bincount(self.rows[ok], fan[ok], minlength=src_size)


def _fan_in_groups(w: np.ndarray, limit: int) -> np.ndarray:
    """(C, K) part of every weight: each channel's weights in input order,
    a new part wherever the running sum would pass ``limit`` (greedy, so
    a channel uses as few parts as its order allows)."""
    group = np.zeros(w.shape, np.int64)
    total = np.zeros(len(w), np.int64)
    part = np.zeros(len(w), np.int64)
    for k in range(w.shape[1]):
        full = (total + w[:, k] > limit) & (total > 0)
        part += full
        total = np.where(full, 0, total) + w[:, k]
        group[:, k] = part
    return group


@dataclasses.dataclass
class Window:
    """Input window start and fire window start (= start + T)."""

    start: int
    fire: int


@dataclasses.dataclass
class ActivationStage:
    """``f`` at window close (kind ``'activation'``).

    Attributes
    ----------
    fn : str
        A key of :data:`lava_spiked.numerics.nonlinear.ACTIVATIONS`.
    pre_scale : numpy.ndarray
        Scale of the membrane (the pre-activation), per neuron.
    knots : numpy.ndarray of int64
        (rows, KNOTS) integer knots
        (:func:`lava_spiked.numerics.nonlinear.knot_table`).
    row : numpy.ndarray of int64
        Knot row of every neuron.
    """

    fn: str
    pre_scale: np.ndarray
    knots: np.ndarray
    row: np.ndarray


@dataclasses.dataclass
class NormStage:
    """LayerNorm over the last axis at window close (kind ``'layernorm'``):
    a non-spike operation.

    Attributes
    ----------
    pre_scale : float
        Scale of the membranes (the LayerNorm's input), one per population.
    eps : float
        LayerNorm's eps (real units).
    eps_state, gain, gain_shift
        Integer constants
        (:func:`lava_spiked.numerics.nonlinear.layer_norm_constants`).
    """

    pre_scale: float
    eps: float
    eps_state: int
    gain: np.ndarray
    gain_shift: int


Stage = ty.Union[ActivationStage, NormStage]


@dataclasses.dataclass
class Layer:
    """A population of the Plan.

    Attributes
    ----------
    name, shape, kind
        As captured; ``kind`` one of :data:`KINDS`.
    scale : numpy.ndarray
        Sigma per neuron, (size,): the scale of its spikes.
    bias : numpy.ndarray
        Bias in units of the membrane's scale (:attr:`membrane_scale`),
        (size,).
    synapses : list of Synapse
        Mantissas ``2k``, each with its own exponent ``weight_exp +
        shift``.
    weight_exp : int
        The smallest exponent of the incoming synapses, applied by the
        neuron when its window closes.
    window : Window
    stage : ActivationStage or NormStage, optional
        Of the kinds ``'activation'`` and ``'layernorm'``.
    token_mask : bool
        Neurons of padded tokens (the first axis, per the runtime
        :data:`MASK`) never fire.
    gain_bits, acc_bits : int
        ``fixed_pt``: bits of the integration gains
        (:func:`lava_spiked.numerics.fixed.layer_gains`) and of the dendritic
        accumulator; 12 and 48 unless the Plan was lowered for Loihi 2
        (:func:`lava_spiked.plan.loihi2.conform`).
    """

    name: str
    shape: ty.Tuple[int, ...]
    kind: str
    scale: np.ndarray
    bias: np.ndarray
    synapses: ty.List[Synapse]
    weight_exp: int
    window: Window
    stage: ty.Optional[Stage] = None
    token_mask: bool = False
    gain_bits: int = fixed.GAIN_FRAC_BITS
    acc_bits: int = fixed.ACC_BITS

    @property
    def size(self) -> int:
        """Number of neurons."""
        return int(np.prod(self.shape))

    @property
    def membrane_scale(self) -> np.ndarray:
        """Scale of the integrated membrane per neuron: the stage's
        pre-activation scale, else sigma."""
        if self.stage is None:
            return self.scale
        return np.broadcast_to(np.asarray(self.stage.pre_scale, np.float64),
                               self.scale.shape)


@dataclasses.dataclass
class LoweredAttention:
    """``softmax(logits) @ v`` of the Plan, (h, N, M) logits.

    ``qk`` (h, N, M) and ``av`` (h, N, d) are trace-product mantissas with
    exponents ``qk_exp`` / ``av_exp``; ``logit_scale`` and ``logit_bias``
    (in units of the scale) are (h, N, M); ``logit_start`` is the logit
    neurons' input window start (the softmax integrates T steps later);
    with ``key_mask`` padded keys (the last axis, per the runtime
    :data:`MASK`) never fire in the softmax.

    ``fixed_pt`` formats: the operands' traces and the logit neurons'
    gains have ``qk_bits`` bits (one number: a logit pair counts the
    trace of the earlier spike times the gain of the later, so equal
    tables keep it symmetric), their window sums ``acc_bits``; V's traces
    in the product with the softmax have ``v_bits`` (the output neurons'
    gains are the output layer's ``gain_bits``); the WOSS softmax decodes
    logit spikes with a ``woss_bits`` trace table. 12, 12, 48 and 12
    unless the Plan was lowered for Loihi 2
    (:func:`lava_spiked.plan.loihi2.conform`).
    """

    x: str
    y: str
    v: str
    out: str
    qk: np.ndarray
    qk_exp: int
    av: np.ndarray
    av_exp: int
    logit_scale: np.ndarray
    logit_bias: np.ndarray
    mask: np.ndarray
    logit_start: int
    key_mask: bool = False
    qk_bits: int = fixed.GAIN_FRAC_BITS
    v_bits: int = fixed.GAIN_FRAC_BITS
    acc_bits: int = fixed.ACC_BITS
    woss_bits: int = fixed.GAIN_FRAC_BITS

    @property
    def logits(self) -> str:
        return self.out + ":logits"

    @property
    def softmax(self) -> str:
        return self.out + ":softmax"


@dataclasses.dataclass
class RuntimeInput:
    """A per-sample input besides the data that a backend feeds at run
    time: today only the token mask :data:`MASK`, shape (N,)."""

    name: str
    shape: ty.Tuple[int, ...]
