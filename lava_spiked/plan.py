"""The Plan: one integer description of a converted network that every
backend consumes (the Lava builder, the torch engine, the golden models,
the energy model).

A plain data structure of numpy arrays and ints, importable without torch
and without Lava. :func:`lower` makes it from a captured graph and its
calibrated scales for a code (B, T):

- every population gets its scale sigma per neuron, its bias in units of
  sigma, its window (input window start, fire window start) and the
  exponent of its incoming weights;
- every synapse keeps the model's own (C, K) weight, now as the 8-bit
  Dense-form mantissas ``2k`` (:func:`lava_spiked.fixed.quantize_weights`)
  with the scales folded in, plus its two index maps; nothing is flattened
  into an all-neuron matrix;
- every attention gets its trace-product mantissas, logit scale, bias,
  mask and schedule.

Populations of kind ``'activation'`` (GELU, SiLU, tanh, sigmoid) and
``'layernorm'`` carry a window-close stage (:class:`ActivationStage`,
:class:`NormStage`; :mod:`lava_spiked.nonlinear`): their membrane
integrates in units of a pre-activation scale, and the stage maps it to the
population's own scale before it fires.

A Plan may take one runtime input besides the data, the token mask
:data:`MASK` (``attention_mask``: N values per sample, 1 = a real token,
0 = padding; :class:`RuntimeInput`), set per sample without rebuilding
anything: an attention with ``key_mask`` never fires a softmax spike for a
padded key, a layer with ``token_mask`` never fires for a padded token,
and with ``mean_pool`` the readout, a mean over the tokens, is divided by
the real tokens instead (:meth:`Plan.pool`).

Schedule: the encoder fires in ``[0, T)``. A population fed by synapses
opens its input window one step (Dense's latency) after the latest of its
sources' fire windows; earlier sources are delayed to keep their phase. The
operands of a product share one window; the logits integrate one step after
it, the softmax reads the logit spikes directly, and the attention output
integrates one step after the softmax fires. One sample takes
``num_steps`` steps; windows repeat with that period.
"""
import dataclasses
import typing as ty
import warnings

import numpy as np

from lava_spiked import fixed, loihi2, nonlinear
from lava_spiked.validation import check_base, check_steps

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
        A key of :data:`lava_spiked.nonlinear.ACTIVATIONS`.
    pre_scale : numpy.ndarray
        Scale of the membrane (the pre-activation), per neuron.
    knots : numpy.ndarray of int64
        (rows, KNOTS) integer knots (:func:`lava_spiked.nonlinear.knot_table`).
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
        Integer constants (:func:`lava_spiked.nonlinear.layer_norm_constants`).
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
        (:func:`lava_spiked.fixed.layer_gains`) and of the dendritic
        accumulator; 12 and 48 unless the Plan was lowered for Loihi 2
        (:func:`lava_spiked.loihi2.conform`).
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
class Attention:
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
    (:func:`lava_spiked.loihi2.conform`).
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


@dataclasses.dataclass
class Plan:
    """A converted network for one code (B, T); see the module docstring.

    Attributes
    ----------
    B, T : float, int
    layers : list of Layer
        In creation order (sources first); the input first.
    attention : list of Attention
    input, output : str
        Names of the input (encoder) and readout layers.
    num_steps : int
        Steps per sample.
    ann_macs : float
        Multiply-accumulates of one forward pass of the original model.
    runtime_inputs : list of RuntimeInput
        Empty, or the token mask (see the module docstring).
    mean_pool : bool
        The readout is a mean over tokens: :meth:`pool` divides it by the
        real ones.
    """

    B: float
    T: int
    layers: ty.List[Layer]
    attention: ty.List[Attention]
    input: str
    output: str
    num_steps: int
    ann_macs: float
    runtime_inputs: ty.List[RuntimeInput] = dataclasses.field(
        default_factory=list)
    mean_pool: bool = False

    def __post_init__(self) -> None:
        self._by_name = {layer.name: layer for layer in self.layers}
        self._attention = {op.out: op for op in self.attention}

    def __getitem__(self, name: str) -> Layer:
        return self._by_name[name]

    def attention_of(self, name: str) -> ty.Optional[Attention]:
        """The attention whose output layer is ``name``, or None."""
        return self._attention.get(name)

    def delay(self, src: str, name: str) -> int:
        """Steps that spikes of population ``src`` wait before a synapse
        of layer ``name`` reads them (0: none), so that they arrive in
        phase with its window (Dense's one step of latency aside)."""
        return self[name].window.start - self[src].window.fire - 1

    def sources(self, name: str) -> ty.List[str]:
        """The populations that layer ``name`` reads (an attention's
        operands)."""
        op = self.attention_of(name)
        if op is not None:
            return [op.x, op.y, op.v]
        return [syn.src for syn in self[name].synapses]

    def blocks(self) -> ty.List[ty.Tuple[str, ty.List[str]]]:
        """The layers after the input grouped into blocks, each read by the
        later ones through a single population: ``(input population,
        layers)`` per block, in order.

        A cut lies before a layer where the layers from it on read only one
        earlier population (in a transformer: the residual stream between
        two blocks). A block starts at every cut where the layers up to the
        next cut hold an attention and the current block holds one already,
        so each block holds one attention (the head joins the last)."""
        index = {layer.name: i for i, layer in enumerate(self.layers)}
        crossing: ty.Dict[int, str] = {}
        reads: ty.Set[str] = set()
        for i in range(len(self.layers) - 1, 0, -1):
            reads |= set(self.sources(self.layers[i].name))
            before = {src for src in reads if index[src] < i}
            if len(before) == 1:
                crossing[i] = before.pop()
        cuts = sorted(crossing) + [len(self.layers)]
        out: ty.List[ty.Tuple[str, ty.List[str]]] = []
        has_attention = False
        for a, b in zip(cuts, cuts[1:]):
            names = [layer.name for layer in self.layers[a:b]]
            attention = any(self.attention_of(n) for n in names)
            if not out or (attention and has_attention):
                out.append((crossing[a], names))
                has_attention = attention
            else:
                out[-1][1].extend(names)
                has_attention |= attention
        return out

    def decode_readout(self, state: ty.Any) -> np.ndarray:
        """Logits from readout membranes in state units (``A / sigma *
        2**16``, what the readout neuron reports), shaped ``(...,
        *readout shape)``."""
        out = self[self.output]
        return np.asarray(state) * 2.0 ** -fixed.STATE_FRAC_BITS * \
            out.scale.reshape(out.shape)

    @property
    def stream_period(self) -> int:
        """Steps between two samples that enter one after another without
        waiting for the previous one to leave (streaming): the longest
        time a population holds one sample's state. A neuron holds it over
        its input and fire windows (2T); the P V product of an attention
        holds V's latched traces from V's fire window to the end of the
        softmax's (3T + 1 or more). Residual delays are delay lines: they
        hold spikes of several samples at once, in order."""
        period = 2 * self.T
        for op in self.attention:
            period = max(period, op.logit_start + 3 * self.T -
                         self[op.v].window.fire)
        return min(period, self.num_steps)

    @property
    def target(self) -> str:
        """``'loihi2'`` where :func:`lava_spiked.loihi2.conform` made the
        integer formats, else ``'lava'`` (see :func:`lower`)."""
        return "loihi2" if any(layer.acc_bits == fixed.STATE_BITS
                               for layer in self.layers) else "lava"

    @property
    def tokens(self) -> int:
        """N of the runtime token mask, 0 without one."""
        return self.runtime_inputs[0].shape[0] if self.runtime_inputs else 0

    def check_mask(self, mask: ty.Any, n: int) -> ty.Optional[np.ndarray]:
        """The token mask for ``n`` samples as a (n, N) bool array (True =
        real token), or None for a Plan without one.

        Raises
        ------
        ValueError
            If a Plan with a token mask gets none, or one of another shape,
            with values other than 0 and 1, or a sample without tokens; or
            a Plan without one gets one.
        """
        if not self.tokens:
            if mask is not None:
                raise ValueError(
                    "this network has no runtime attention_mask (it was "
                    "converted without one); drop attention_mask=")
            return None
        if mask is None:
            raise ValueError(
                f"this network takes attention_mask= ({n}, {self.tokens}), "
                "1 for real tokens and 0 for padding (see "
                "lava_spiked.huggingface.embed)")
        m = np.asarray(mask)
        if m.shape != (n, self.tokens):
            raise ValueError(f"attention_mask has shape {m.shape}, expected "
                             f"({n}, {self.tokens})")
        if not np.isin(m, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 and 1")
        m = m.astype(bool)
        if not m.any(1).all():
            raise ValueError("a sample's attention_mask is all 0 (no "
                             "tokens)")
        return m

    def pool(self, logits: np.ndarray,
             mask: ty.Optional[np.ndarray]) -> np.ndarray:
        """Decoded readouts (n, ...) divided by the real tokens of each
        sample where the readout is a mean over tokens (``mean_pool``): a
        per-sample non-spike division, ``(A - b) * N / count + b``; else
        ``logits`` unchanged."""
        if not self.mean_pool:
            return logits
        out = self[self.output]
        b = (out.bias * out.scale).reshape(out.shape)
        ratio = self.tokens / mask.sum(1)
        return (logits - b) * ratio.reshape((-1,) + (1,) * len(out.shape)) \
            + b


def lower(graph: ty.Any, sigmas: ty.Dict[str, np.ndarray], B: float,
          T: int, target: str = "lava") -> Plan:
    """Quantise and schedule a calibrated graph into a Plan.

    Parameters
    ----------
    graph : lava_spiked.capture.Graph
        Populations with real-unit synapses.
    sigmas : dict
        From :func:`lava_spiked.calibrate.calibrate`.
    B, T : float, int
        Base and window length of the phase code.
    target : {'lava', 'loihi2'}
        ``'loihi2'``: conformant integer formats where they exist
        (:func:`lava_spiked.loihi2.conform`).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    B, T = check_base(B), check_steps(T)
    usable = fixed.usable_steps(B, T)
    if usable < T:
        warnings.warn(
            f"at B = {B} the integer tables of fixed_pt keep only {usable} of "
            f"the T = {T} steps (later gains round to 0 or thresholds "
            f"collide): use T <= {usable} or a smaller B", RuntimeWarning,
            stacklevel=3)
    windows = _schedule(graph, T)
    attention = {op.out: op for op in graph.attention}
    layers, plan_attention = [], []
    for pop in graph.populations:
        sigma = sigmas[pop.name]
        stage = _stage(pop, sigma, sigmas.get(pop.name + ":pre"))
        membrane = sigma if stage is None else np.broadcast_to(
            stage.pre_scale, sigma.shape)
        # exponents per output channel: a shared one would round to 0 the
        # weights of a synapse that is small next to another into the same
        # layer (a FFN output next to the residual), and the rows of one
        # synapse that are small next to an outlier channel's (MiniLM)
        quantized = [fixed.quantize_rows(
            syn.weight * _source_scale(syn, sigmas[syn.src])[None, :] /
            _channel_scale(syn, membrane)[:, None]) for syn in pop.synapses]
        exp = min((int(e.min()) for _, e in quantized if len(e)), default=0)
        layers.append(Layer(
            pop.name, pop.shape, pop.kind, sigma, pop.bias / membrane,
            [dataclasses.replace(syn, weight=d, shift=e - exp)
             for syn, (d, e) in zip(pop.synapses, quantized)], exp,
            windows[pop.name], stage, pop.token_mask))
        op = attention.get(pop.name)
        if op is not None:
            plan_attention.append(_lower_attention(
                op, graph, sigmas, windows[op.x].fire + 1))
    out = windows[graph.output]
    # a sample ends when the readout has reported; the period must hold an
    # integration and a fire window
    plan = Plan(B, T, layers, plan_attention, graph.input, graph.output,
                max(out.fire + 1, 2 * T), graph.ann_macs,
                [RuntimeInput(MASK, (graph.tokens,))] if graph.tokens else [],
                graph.mean_pool)
    return loihi2.conform(plan) if target == "loihi2" else plan


def _stage(pop, sigma: np.ndarray,
           pre: ty.Optional[np.ndarray]) -> ty.Optional[Stage]:
    """The window-close stage of a population of a staged kind, from its
    output scales ``sigma`` and membrane scales ``pre``."""
    if pop.kind == "activation":
        knots, row = nonlinear.knot_table(pop.fn, pre, sigma)
        return ActivationStage(pop.fn, pre, knots, row)
    if pop.kind == "layernorm":
        pre_scale = float(pre.max())  # one per population (calibrate)
        c = nonlinear.layer_norm_constants(pop.shape[-1], pop.eps, pre_scale,
                                           sigma)
        return NormStage(pre_scale, float(pop.eps), c.eps_state, c.gain,
                         c.gain_shift)
    return None


def _source_scale(syn: Synapse, sigma: np.ndarray) -> np.ndarray:
    """Sigma of the source per input channel k (shared by all rows)."""
    first = np.argmax(syn.rows >= 0, axis=0)
    ids = syn.rows[first, np.arange(syn.rows.shape[1])]
    return np.where(ids >= 0, sigma[np.maximum(ids, 0)], 1.0)


def _channel_scale(syn: Synapse, sigma: np.ndarray) -> np.ndarray:
    """Sigma of the destination per output channel c."""
    c = syn.weight.shape[0]
    per_c = np.ones(c)
    o = np.flatnonzero(syn.out >= 0)
    per_c[syn.out[o] % c] = sigma[o]
    return per_c


def _lower_attention(op, graph, sigmas, logit_start: int) -> Attention:
    shape = lambda name: graph[name].shape  # noqa: E731
    sx = sigmas[op.x].reshape(shape(op.x))
    sy = sigmas[op.y].reshape(shape(op.y))
    sv = sigmas[op.v].reshape(shape(op.v))
    s_out = sigmas[op.out].reshape(shape(op.out))
    s_logit = sigmas[op.logits].reshape(op.coef.shape)
    # row i of x and column j of y: sigma is shared along the contracted
    # axis, and v's along its rows
    (qk,), qk_exp = fixed.quantize_weights(
        op.coef * sx[..., :, :1] * sy[..., :1, :] / s_logit)
    (av,), av_exp = fixed.quantize_weights(sv[..., :1, :] / s_out)
    return Attention(op.x, op.y, op.v, op.out, qk, qk_exp, av, av_exp,
                     s_logit, op.bias / s_logit, op.mask, logit_start,
                     op.key_mask)


def _schedule(graph, T: int) -> ty.Dict[str, Window]:
    win = {graph.input: Window(-T, 0)}
    attention = {op.out: op for op in graph.attention}
    operands = {}
    for op in graph.attention:
        operands[op.x] = operands[op.y] = (op.x, op.y)
    for pop in graph.populations[1:]:
        if pop.name in win:
            continue
        if pop.name in attention:
            op = attention[pop.name]
            logits = win[op.x].fire + 1
            win[pop.name] = Window(logits + 2 * T + 1, logits + 3 * T + 1)
            if win[op.v].fire > logits + T:
                raise AssertionError("v fires after the softmax")
            continue
        group = operands.get(pop.name, (pop.name,))
        start = max(win[syn.src].fire + 1 for p in group
                    for syn in graph[p].synapses) if any(
            graph[p].synapses for p in group) else 0
        for p in group:
            win[p] = Window(start, start + T)
    return win
