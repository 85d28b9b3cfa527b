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
  Dense-form mantissas ``2k``
  (:func:`lava_spiked.numerics.fixed.quantize_weights`) with the scales folded
  in, plus its two index maps; nothing is flattened into an all-neuron matrix;
- every attention gets its trace-product mantissas, logit scale, bias,
  mask and schedule.

Populations of kind ``'activation'`` (GELU, SiLU, tanh, sigmoid) and
``'layernorm'`` carry a window-close stage (:class:`ActivationStage`,
:class:`NormStage`; :mod:`lava_spiked.numerics.nonlinear`): their membrane
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

import numpy as np

from lava_spiked.numerics import fixed
from lava_spiked.plan.layers import Layer, LoweredAttention, RuntimeInput


@dataclasses.dataclass(frozen=True)
class CodeChoice:
    """How the base B of a Plan's code was chosen (``convert(...,
    B="auto")``, :func:`lava_spiked.code_error.choose_base`): the readout
    error (:func:`lava_spiked.code_error.readout_error`) of each candidate
    on the first ``samples`` calibration samples; the Plan's B is the
    candidate of the least error, :attr:`chosen`.

    Attributes
    ----------
    grid : tuple of float
        The candidate bases, in the order measured.
    errors : tuple of float
        Readout error of each.
    samples : int
        Calibration samples the errors were measured on.
    """

    grid: ty.Tuple[float, ...]
    errors: ty.Tuple[float, ...]
    samples: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(float(b) for b in self.grid))
        object.__setattr__(self, "errors",
                           tuple(float(e) for e in self.errors))
        if not self.grid or len(self.grid) != len(self.errors):
            raise ValueError(f"a CodeChoice needs one error per candidate "
                             f"B, got {len(self.grid)} candidates and "
                             f"{len(self.errors)} errors")
        if not all(np.isfinite(self.errors)) or min(self.errors) < 0:
            raise ValueError(f"readout errors must be finite and >= 0, got "
                             f"{self.errors}")
        if int(self.samples) < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        object.__setattr__(self, "samples", int(self.samples))

    @property
    def chosen(self) -> float:
        """The candidate of the least error (the first of equal ones)."""
        return self.grid[int(np.argmin(self.errors))]


@dataclasses.dataclass
class Plan:
    """A converted network for one code (B, T); see the module docstring.

    Attributes
    ----------
    B, T : float, int
    layers : list of Layer
        In creation order (sources first); the input first.
    attention : list of LoweredAttention
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
    code_choice : CodeChoice or None
        How B was chosen where ``convert`` chose it (``B="auto"``); None
        where B was given.
    """

    B: float
    T: int
    layers: ty.List[Layer]
    attention: ty.List[LoweredAttention]
    input: str
    output: str
    num_steps: int
    ann_macs: float
    runtime_inputs: ty.List[RuntimeInput] = dataclasses.field(
        default_factory=list)
    mean_pool: bool = False
    code_choice: ty.Optional[CodeChoice] = None

    def __post_init__(self) -> None:
        if self.code_choice is not None and \
                self.code_choice.chosen != self.B:
            raise ValueError(f"the code choice chose B = "
                             f"{self.code_choice.chosen}, the Plan has "
                             f"B = {self.B}")
        self._by_name = {layer.name: layer for layer in self.layers}
        self._attention = {op.out: op for op in self.attention}

    def __getitem__(self, name: str) -> Layer:
        return self._by_name[name]

    def attention_of(self, name: str) -> ty.Optional[LoweredAttention]:
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
        """``'loihi2'`` where :func:`lava_spiked.plan.loihi2.conform` made the
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
