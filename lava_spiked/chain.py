"""A feed-forward chain of phase-coded layers in Lava, and its golden models.

``PhaseChain`` wires ``PhaseEncoder -> (Dense -> PhaseNeuron)* -> Dense ->
PhaseNeuron(readout)`` from float weight matrices, runs it under either tag
and decodes what its sinks recorded. It is the smallest complete phase-coded
network: the README demo, the tests and the benchmark use it.

Schedule: the encoder fires in steps ``[0, T)``; Lava's Dense delays by one
step, so layer ``l`` (0-based) integrates in ``[s_l, s_l + T)`` with
``s_l = 1 + l * (T + 1)`` and fires in the next T steps; the readout layer
reports at ``s_L + T``, the last step of the run.
"""
import typing as ty
import warnings

import numpy as np
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.dense.process import Dense
from lava.proc.io.sink import RingBuffer
from lava.utils.weightutils import SignMode

from lava_spiked import fixed, phase
from lava_spiked.processes import PhaseEncoder, PhaseNeuron
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


class LavaChain(ty.NamedTuple):
    """The Lava processes of one :meth:`PhaseChain.build`."""

    encoder: PhaseEncoder
    sinks: ty.List[RingBuffer]
    counted: ty.List[ty.Union[PhaseEncoder, PhaseNeuron]]


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
        # to the normalised membrane (design §12.5).
        self.dense_weights, self.weight_exps = [], []
        for i, w in enumerate(mats):
            norm = w * self.scales[i][None, :] / self.scales[i + 1][:, None]
            (dense,), exp = fixed.quantize_weights(norm)
            self.dense_weights.append(dense)
            self.weight_exps.append(exp)
        self.sizes = sizes
        self.starts = [1 + i * (self.T + 1) for i in range(len(mats))]
        self.num_steps = self.starts[-1] + self.T + 1

    def weights_used(self) -> ty.List[np.ndarray]:
        """Real-unit weights that the 8-bit mantissas stand for."""
        return [fixed.dequantize_weights(d, e) * self.scales[i + 1][:, None]
                / self.scales[i][None, :]
                for i, (d, e) in enumerate(zip(self.dense_weights,
                                               self.weight_exps))]

    # ------------------------------------------------------------ Lava path
    def build(self, x: ty.Any) -> "LavaChain":
        """Create and connect the Lava processes for input ``x``."""
        x = check_finite("x", x)
        if x.shape != (self.sizes[0],):
            raise ValueError(f"x has shape {x.shape}, the chain expects "
                             f"({self.sizes[0]},)")
        encoder = PhaseEncoder(data=x, scale=self.scales[0], B=self.B,
                               T=self.T)
        sinks, source, counted = [], encoder.s_out, [encoder]
        sinks.append(self._sink(source))
        for i, dense_w in enumerate(self.dense_weights):
            last = i == len(self.dense_weights) - 1
            dense = Dense(weights=dense_w,
                          num_message_bits=fixed.SPIKE_PAYLOAD_BITS,
                          sign_mode=SignMode.MIXED)
            neuron = PhaseNeuron(
                shape=(self.sizes[i + 1],), B=self.B, T=self.T,
                start=self.starts[i], weight_exp=self.weight_exps[i],
                bias=self.biases[i], scale=self.scales[i + 1],
                unipolar=False if last else self.unipolar[i], readout=last)
            source.connect(dense.s_in)
            dense.a_out.connect(neuron.a_in)
            source = neuron.s_out
            sinks.append(self._sink(source))
            counted.append(neuron)
        return LavaChain(encoder, sinks, counted)

    def run(self, x: ty.Any, tag: str) -> ChainResult:
        """Run one sample through Lava under ``tag`` and decode the sinks.

        The Lava processes are always stopped, also when the run fails.
        Saturation of the integer state is reported with a RuntimeWarning.
        """
        if tag not in TAGS:
            raise ValueError(f"tag must be one of {TAGS}, got {tag!r}")
        net = self.build(x)
        try:
            net.encoder.run(condition=RunSteps(num_steps=self.num_steps),
                            run_cfg=Loihi2SimCfg(select_tag=tag))
            traces = [sink.data.get() for sink in net.sinks]
            saturated = int(sum(p.sat_count.get()[0] for p in net.counted))
        finally:
            net.encoder.stop()
        if saturated:
            warnings.warn(f"{saturated} saturation event(s) of the 24-bit "
                          "state: inputs or weights exceed 128 sigma",
                          RuntimeWarning, stacklevel=2)
        return self._decode(traces, saturated)

    def _sink(self, port) -> RingBuffer:
        sink = RingBuffer(shape=port.shape, buffer=self.num_steps)
        port.connect(sink.a_in)
        return sink

    def _decode(self, traces: ty.List[np.ndarray],
                saturated: int) -> ChainResult:
        starts = [-self.T] + self.starts  # fire windows open at start + T
        steps, signs, values = [], [], []
        for trace, start, sigma in zip(traces[:-1], starts, self.scales):
            step, sign = phase.first_spikes(trace, start + self.T, self.T)
            steps.append(step)
            signs.append(sign)
            values.append(phase.decode(step, sign, self.B, sigma))
        state = traces[-1][:, self.starts[-1] + self.T]
        return ChainResult(steps, signs, values, self._readout(state), state,
                           saturated)

    def _readout(self, state: np.ndarray) -> np.ndarray:
        return state * self.scales[-1] / 2.0 ** fixed.STATE_FRAC_BITS

    # --------------------------------------------------------- golden models
    def golden_float(self, x: ty.Any) -> ChainResult:
        """Closed form of §12: ``Q`` of ``W x_hat + b`` layer by layer, with
        the weights the quantised mantissas stand for."""
        code = phase.quantize(x, self.B, self.T, self.scales[0])
        steps, signs, values = [code.step], [code.sign], [code.value]
        weights = self.weights_used()
        for i, w in enumerate(weights[:-1]):
            code = phase.quantize(phase.layer(values[-1], w, self.biases[i]),
                                  self.B, self.T, self.scales[i + 1],
                                  unipolar=self.unipolar[i])
            steps.append(code.step)
            signs.append(code.sign)
            values.append(code.value)
        out = phase.layer(values[-1], weights[-1], self.biases[-1])
        return ChainResult(steps, signs, values, out,
                           out / self.scales[-1] * 2.0 ** fixed.STATE_FRAC_BITS,
                           0)

    def golden_fixed(self, x: ty.Any) -> ChainResult:
        """Integer golden model: :func:`lava_spiked.fixed.run_layer` layer by
        layer, starting from the integer encoder."""
        state, saturated = fixed.to_state(check_finite("x", x) /
                                          self.scales[0])
        thresholds = fixed.threshold_table(self.B, self.T)
        step, sign = fixed.first_spike(state, thresholds, unipolar=False)
        steps, signs = [step], [sign]
        for i, (dense, exp) in enumerate(zip(self.dense_weights,
                                             self.weight_exps)):
            last = i == len(self.dense_weights) - 1
            layer = fixed.run_layer(
                [steps[-1]], [signs[-1]], [dense], exp,
                self.biases[i] / self.scales[i + 1], self.B, self.T,
                unipolar=False if last else self.unipolar[i])
            saturated += layer.n_saturated
            if not last:
                steps.append(layer.step)
                signs.append(layer.sign)
        values = [phase.decode(s, g, self.B, sigma)
                  for s, g, sigma in zip(steps, signs, self.scales)]
        return ChainResult(steps, signs, values, self._readout(layer.v),
                           layer.v, saturated)
