"""The engine's arithmetic, one interface with two implementations:
:class:`~lava_spiked.engine.fixed_mode.FixedArithmetic` (``fixed_pt``, bit
for bit) and :class:`~lava_spiked.engine.float_mode.FloatArithmetic`
(``floating_pt``). An arithmetic builds its tables, states what it can
prove about a layer's sums, and computes what a layer does between its
products: the window close, saturation and clipping counts, traces,
stages, the WOSS softmax's steps and the attention's normalisation."""
import abc
import typing as ty

import numpy as np
import torch

from lava_spiked.numerics import fixed
from lava_spiked.engine.ops import tensor
from lava_spiked.engine.stages import run_numpy
from lava_spiked.engine.thresholds import LOWER, FallingThresholds


class Arithmetic(abc.ABC):
    """What a mode computes; the engine's passes call nothing else that
    depends on the mode.

    Parameters
    ----------
    plan : Plan
    device : torch.device
    """

    mode: str
    #: a silent neuron's membrane (masked tokens are set to it): fixed
    #: mode's table row of 0
    silent: ty.Union[int, float]
    #: one sigma in membrane units (clipping)
    one: ty.Union[int, float]
    #: matrix product of the attention's traces
    matmul: ty.Callable
    #: whether the WOSS thresholds lie on the line ``-(m + 1/2) ln B``,
    #: so that an estimate lowered by :data:`LOWER` is never above the
    #: step (float); fixed mode's are rounded to integers, up to half a
    #: unit off it (a share of a step that grows as B nears 1), and take
    #: a comparison each way
    woss_on_line: bool

    def __init__(self, plan: ty.Any, device: torch.device) -> None:
        self.plan, self.device = plan, device
        T, B = plan.T, plan.B
        self.gains = self.tensor(np.append(self.gain_table(B, T), 0.0))
        # d >= -(m + 1/2) ln B  <=>  m >= -d / ln B - 1/2
        unit = self.woss_unit(B)
        low = self.woss_on_line
        self.woss_steps = FallingThresholds(
            self.woss_table(B, T), lambda d: (-d).div_(unit).sub_(
                0.5 + (LOWER if low else 0.0)).ceil_(), device, low)

    def tensor(self, a: ty.Any) -> torch.Tensor:
        return tensor(a, self.device)

    # ------------------------------------------------------------ tables
    @abc.abstractmethod
    def gain_table(self, B: float, T: int) -> np.ndarray:
        """(T,) trace of each fire step."""

    @abc.abstractmethod
    def woss_table(self, B: float, T: int) -> np.ndarray:
        """(T,) falling WOSS thresholds."""

    @abc.abstractmethod
    def woss_unit(self, B: float) -> float:
        """Membrane units per WOSS step of ``ln B``."""

    # ----------------------------------------------------- building layers
    @abc.abstractmethod
    def gain_bits(self, layer: ty.Any) -> int:
        """Gain bits a dense layer reads its sources' traces at."""

    @abc.abstractmethod
    def attention_bits(self, op: ty.Any) -> ty.Tuple[int, int, int, int]:
        """Bits of an attention's Q/K and V traces, its output's gains and
        its WOSS traces."""

    @abc.abstractmethod
    def weights(self, dense: np.ndarray, exp: ty.Any,
                gain_bits: int = fixed.GAIN_FRAC_BITS) -> np.ndarray:
        """Weights as the engine multiplies them."""

    @abc.abstractmethod
    def attention_weights(self, op: ty.Any, bits: tuple
                          ) -> ty.Tuple[np.ndarray, np.ndarray]:
        """An attention's logit and output weights as the engine
        multiplies them (``bits``: :meth:`attention_bits`)."""

    @abc.abstractmethod
    def bias(self, name: str, bias_norm: np.ndarray) -> torch.Tensor:
        """A layer's bias as :meth:`close` adds it."""

    def prove(self, name: str, bound: float, limit: float,
              unit: float = 1.0) -> None:
        """Refuse a sum that can reach ``bound`` (``unit`` state units
        each) where the mode cannot reproduce it (fixed mode only)."""

    def bound(self, name: str, bound: float, limit: float, unit: float,
              integral: bool = False) -> None:
        """:meth:`prove` a layer's accumulator and note what it can reach
        and whether it is an integer (fixed mode only)."""

    def f32_products(self) -> bool:
        """Whether this call's products may run in float32 (where fixed
        mode proves them exact and the device's float32 products round
        like IEEE float32, :func:`lava_spiked.engine.products.
        f32_products_exact`: precision settings are read at every call)."""
        return False

    def exact_f32(self, bound: float, step: float) -> bool:
        """Whether sums up to ``bound`` of multiples of ``step`` are exact
        in float32 (fixed mode's integer sums)."""
        return False

    def check_attention(self, op: ty.Any) -> None:
        """Refuse an attention the mode cannot run (fixed: logits beyond
        the WOSS membrane)."""

    @abc.abstractmethod
    def woss_scale(self, op: ty.Any, woss_bits: int) -> torch.Tensor:
        """Per-logit factor from a logit's WOSS trace to the softmax's
        membrane."""

    @abc.abstractmethod
    def stage_constants(self, layer: ty.Any) -> ty.Any:
        """A staged layer's constants (:mod:`lava_spiked.engine.stages`),
        or None."""

    # ------------------------------------------------------------- passes
    @abc.abstractmethod
    def encode(self, u: torch.Tensor) -> ty.Tuple[torch.Tensor, ty.Any]:
        """Input values in units of sigma as the input layer's membranes,
        and saturation events per sample."""

    @abc.abstractmethod
    def close(self, acc: torch.Tensor, bias: torch.Tensor,
              name: str) -> torch.Tensor:
        """The membrane when the window closes, from the accumulator."""

    @abc.abstractmethod
    def saturated(self, v: torch.Tensor, name: ty.Optional[str] = None
                  ) -> ty.Union[torch.Tensor, int]:
        """Saturation events per sample of closed membranes ``v``."""

    def clipped(self, v: torch.Tensor, unipolar: bool) -> torch.Tensor:
        """Clipped neurons per sample, (batch,) int64: a closed membrane
        beyond one sigma, ``|v| > 2**16`` in state units or ``|v| > 1``;
        ReLU layers only above (see :mod:`lava_spiked.golden.models`)."""
        v = v.reshape(v.shape[0], -1)
        if unipolar:
            return torch.count_nonzero(v > self.silent + self.one, dim=1)
        return torch.count_nonzero((v - self.silent).abs_() > self.one,
                                   dim=1)

    @abc.abstractmethod
    def trace(self, v: torch.Tensor, unipolar: bool,
              keep: bool = True) -> torch.Tensor:
        """``sign * G[step]`` of the first spike of membrane ``v``; 0
        where silent. ``keep=False`` lets it overwrite ``v``."""

    @abc.abstractmethod
    def steps_and_signs(self, v: torch.Tensor
                        ) -> ty.Tuple[torch.Tensor, torch.Tensor]:
        """Fire steps (``T``: silent) and signs of neuron membranes."""

    def decode(self, v: torch.Tensor, kind: str):
        """Fire steps (-1 = silent) and signs, (batch, size), from a stored
        membrane of ``kind`` ('bipolar', 'relu' or 'woss')."""
        v = v.reshape(v.shape[0], -1)
        if kind == "woss":  # fixed: int32
            step = self.woss_steps(v.double())
            sign = torch.ones_like(v)
        else:
            step, sign = self.steps_and_signs(v)
        silent = step == self.plan.T
        if kind == "relu":
            silent |= sign <= 0
        return (step.masked_fill(silent, -1),
                sign.masked_fill(silent, 0.0))

    @abc.abstractmethod
    def stage_input(self, v: torch.Tensor) -> torch.Tensor:
        """A staged layer's closed membranes as its stage takes them."""

    def stage(self, layer: ty.Any, constants: ty.Any, m: torch.Tensor):
        """The window-close stage of an activation or LayerNorm layer on
        closed membranes ``m`` (:meth:`stage_input`): the stage's output
        as membranes, its clipped neurons and its saturation events per
        sample. Compiled, in torch (the constants' ``run``), fused into
        the graph; eager, by the golden model's own numpy functions
        (:func:`lava_spiked.engine.stages.run_numpy`), which were faster
        there: MiniLM, batch 64, one thread, side by side, an eager fixed
        call took 4.84 s, and 5.56 s in torch (float: 5.52 s and 5.21
        s). Bit for bit alike in fixed mode."""
        if torch.compiler.is_compiling():
            return constants.run(m)
        return run_numpy(layer, m, self.mode == "fixed", self.silent)

    @abc.abstractmethod
    def logits(self, v: torch.Tensor) -> torch.Tensor:
        """The readout's closed membranes in units of sigma."""

    @abc.abstractmethod
    def woss_input(self, z: torch.Tensor) -> torch.Tensor:
        """The WOSS membranes of decoded logits ``z``."""

    #: a masked WOSS membrane: below the last threshold
    masked: float

    @abc.abstractmethod
    def softmax_traces(self, d: torch.Tensor) -> torch.Tensor:
        """Traces of the WOSS softmax's spikes at membranes ``d <= 0``."""

    @abc.abstractmethod
    def normalize(self, out: torch.Tensor, row_sum: torch.Tensor,
                  name: str) -> ty.Tuple[torch.Tensor, ty.Any]:
        """The attention output's membranes from its accumulator ``out``
        and each row's softmax trace sum, and saturation events."""
