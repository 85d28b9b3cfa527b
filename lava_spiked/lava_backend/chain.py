"""A feed-forward chain of phase-coded layers: a hand-made Plan.

``PhaseChain`` turns float weight matrices, biases and scales into a
:class:`~lava_spiked.plan.Plan` of ``input -> layer0 -> ... -> readout``
(dense layers: one token, no index maps) and runs it through the same Lava
builder, run/stop routine and golden models as a converted network. It is
the smallest complete phase-coded network, with every scale in the user's
hands: the tests use it to drive the neurons into corners (saturation, bias
only) that calibration would avoid.

Schedule (the Plan's): the encoder fires in steps ``[0, T)``; a synapse
delays by one step, so layer ``l`` (0-based) integrates in
``[s_l, s_l + T)`` with ``s_l = 1 + l * (T + 1)`` and fires in the next T
steps; the readout layer reports at ``s_L + T``.
"""
import typing as ty

import numpy as np

from lava_spiked.golden.models import golden_fixed, golden_float
from lava_spiked.numerics import fixed, phase
from lava_spiked.plan import Layer, Plan, Synapse, Window
from lava_spiked.validation import (check_base, check_finite, check_scale,
                                    check_steps)

TAGS = ("floating_pt", "fixed_pt")


class ChainResult(ty.NamedTuple):
    """Spikes and readout of one sample through a :class:`PhaseChain`.

    Attributes
    ----------
    steps : list of numpy.ndarray
        Fire step (-1 = silent) of the encoder and of every hidden layer.
    signs : list of numpy.ndarray
        Matching spike signs.
    values : list of numpy.ndarray
        Matching decoded values ``sign * sigma * B**-step``.
    output : numpy.ndarray
        Decoded integrated value A of the readout layer.
    state : numpy.ndarray
        Readout membrane in state units (``A / sigma * 2**16``): an integer
        under ``fixed_pt``.
    saturated : int
        Saturation events of the integer state, summed over all layers
        (always 0 under ``floating_pt``).
    """

    steps: ty.List[np.ndarray]
    signs: ty.List[np.ndarray]
    values: ty.List[np.ndarray]
    output: np.ndarray
    state: np.ndarray
    saturated: int


class PhaseChain:
    """Phase-coded multilayer perceptron as a Lava network.

    Parameters
    ----------
    weights : sequence of array_like
        ``weights[l]`` has shape (n_{l+1}, n_l); the last one feeds the
        readout layer.
    biases : sequence of array_like
        One bias vector (or scalar) per layer, in real units.
    scales : sequence of array_like
        sigma of the input and of every layer, readout included
        (``len(weights) + 1`` entries); the readout's scale only sets its
        fixed-point resolution.
    B : float
        Base, 1 < B <= 2.
    T : int
        Window length, >= 2.
    unipolar : sequence of bool, optional
        ReLU flag per hidden layer. Default: all bipolar.

    Raises
    ------
    ValueError
        On inconsistent shapes or invalid parameters.
    """

    def __init__(self, weights: ty.Sequence[ty.Any],
                 biases: ty.Sequence[ty.Any], scales: ty.Sequence[ty.Any],
                 B: float, T: int,
                 unipolar: ty.Optional[ty.Sequence[bool]] = None) -> None:
        self.B, self.T = check_base(B), check_steps(T)
        mats = [check_finite(f"weights[{i}]", w) for i, w in enumerate(weights)]
        if not mats or any(w.ndim != 2 for w in mats):
            raise ValueError("weights must be a non-empty list of 2-D arrays")
        for i in range(1, len(mats)):
            if mats[i].shape[1] != mats[i - 1].shape[0]:
                raise ValueError(
                    f"weights[{i}] has {mats[i].shape[1]} inputs but "
                    f"weights[{i - 1}] has {mats[i - 1].shape[0]} outputs")
        sizes = [mats[0].shape[1]] + [w.shape[0] for w in mats]
        if len(biases) != len(mats) or len(scales) != len(mats) + 1:
            raise ValueError(
                f"need {len(mats)} biases and {len(mats) + 1} scales for "
                f"{len(mats)} weight matrices, got {len(biases)} and "
                f"{len(scales)}")
        self.unipolar = list(unipolar) if unipolar is not None \
            else [False] * (len(mats) - 1)
        if len(self.unipolar) != len(mats) - 1:
            raise ValueError(f"unipolar needs one flag per hidden layer "
                             f"({len(mats) - 1}), got {len(self.unipolar)}")
        self.scales = [check_scale(f"scales[{i}]", s, (n,))
                       for i, (s, n) in enumerate(zip(scales, sizes))]
        self.biases = [check_finite(f"biases[{i}]", b) * np.ones(n)
                       for i, (b, n) in enumerate(zip(biases, sizes[1:]))]
        # Fold the presynaptic sigma into the weights and divide by the
        # postsynaptic one: a +1 spike then adds w * sigma_pre / sigma_post
        # to the normalised membrane (docs/semantics.md, "Windows and
        # integration").
        names = ["input"] + [f"layer{i}" for i in range(len(mats) - 1)] + \
            ["readout"]
        T, starts = self.T, [1 + i * (self.T + 1) for i in range(len(mats))]
        layers = [Layer("input", (sizes[0],), "input", self.scales[0],
                        np.zeros(sizes[0]), [], 0, Window(-T, 0))]
        for i, w in enumerate(mats):
            norm = w * self.scales[i][None, :] / self.scales[i + 1][:, None]
            (dense,), exp = fixed.quantize_weights(norm)
            kind = "readout" if i == len(mats) - 1 else \
                "relu" if self.unipolar[i] else "neuron"
            synapse = Synapse(names[i], np.arange(sizes[i])[None], dense,
                              np.arange(sizes[i + 1]))
            layers.append(Layer(names[i + 1], (sizes[i + 1],), kind,
                                self.scales[i + 1],
                                self.biases[i] / self.scales[i + 1],
                                [synapse], exp,
                                Window(starts[i], starts[i] + T)))
        self.plan = Plan(self.B, T, layers, [], "input", "readout",
                         max(starts[-1] + T + 1, 2 * T), ann_macs=0.0)
        self.sizes = sizes

    def weights_used(self) -> ty.List[np.ndarray]:
        """Real-unit weights that the 8-bit mantissas stand for."""
        layers = self.plan.layers
        return [fixed.dequantize_weights(post.synapses[0].weight,
                                         post.weight_exp) *
                post.scale[:, None] / pre.scale[None, :]
                for pre, post in zip(layers, layers[1:])]

    def run(self, x: ty.Any, tag: str) -> ChainResult:
        """Run one sample through Lava under ``tag`` and decode the probes.

        The Lava processes are always stopped, also when the run fails.
        Saturation of the integer state is reported with a RuntimeWarning.
        """
        if tag not in TAGS:
            raise ValueError(f"tag must be one of {TAGS}, got {tag!r}")
        x = self._check(x)
        from lava_spiked.lava_backend.imports import Loihi2SimCfg
        from lava_spiked.lava_backend.runs import LavaNetwork
        net = LavaNetwork(self.plan, tag, record=True)
        try:
            state = net.infer_one(x, Loihi2SimCfg(select_tag=tag))
            spikes = net.read_probes()
            saturated = net.check_counts()
        finally:
            net.stop()
        return self._result(spikes, state, saturated)

    def golden_float(self, x: ty.Any) -> ChainResult:
        """Closed form of docs/semantics.md
        (:func:`lava_spiked.golden.models.golden_float`)."""
        res = golden_float(self.plan, self._check(x))
        return self._result(res.spikes, res.state, res.saturated)

    def golden_fixed(self, x: ty.Any) -> ChainResult:
        """Integer golden model
        (:func:`lava_spiked.golden.models.golden_fixed`).
        """
        res = golden_fixed(self.plan, self._check(x))
        return self._result(res.spikes, res.state, res.saturated)

    def _check(self, x: ty.Any) -> np.ndarray:
        x = check_finite("x", x)
        if x.shape != (self.sizes[0],):
            raise ValueError(f"x has shape {x.shape}, the chain expects "
                             f"({self.sizes[0]},)")
        return x

    def _result(self, spikes, state, saturated: int) -> ChainResult:
        names = [layer.name for layer in self.plan.layers[:-1]]
        steps = [spikes[n][0] for n in names]
        signs = [spikes[n][1] for n in names]
        values = [phase.decode(st, sg, self.B, sigma)
                  for st, sg, sigma in zip(steps, signs, self.scales)]
        output = self.plan.decode_readout(state)
        return ChainResult(steps, signs, values, output, state, saturated)
