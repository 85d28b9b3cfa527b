"""Calibrate, schedule and build a captured model as a Lava network.

``convert(model, calibration_data, T=40, B=1.15)`` returns a
:class:`SpikingNetwork` that owns its Lava processes and runs samples one
after another::

    net = convert(model, calib_images)
    with net:                                  # always stops the processes
        logits = net.infer(test_images, Loihi2SimCfg(select_tag="fixed_pt"))

Schedule: the encoder fires in ``[0, T)``. A population fed by Dense
synapses opens its input window one step (Dense's latency) after the latest
of its sources' fire windows; every earlier source is delayed by a
SpikeDelay so that its spikes keep their phase. The two operands of a
``q @ k`` product share one window; the logits integrate one step after it
(TraceMatMul's latency), the softmax reads the logit spikes directly, and
the attention output integrates one step after the softmax fires. One sample
takes ``num_steps`` steps; every process repeats its windows with that
period, so samples stream through the same processes.
"""
import dataclasses
import typing as ty
import warnings

import numpy as np
import torch
from lava.magma.core.run_conditions import RunSteps
from lava.proc.dense.process import Dense
from lava.proc.io.sink import RingBuffer
from lava.utils.weightutils import SignMode
from tqdm.auto import tqdm

from lava_spiked import fixed, phase
from lava_spiked.attention import attention_fixed, attention_float
from lava_spiked.convert import Graph, Population, capture
from lava_spiked.processes import (NormalizedPhaseNeuron, PhaseEncoder,
                                   PhaseNeuron, SpikeDelay, TraceMatMul,
                                   WOSSSoftmax)
from lava_spiked.validation import check_base, check_batch, check_steps

GRANULARITIES = ("tensor", "channel", "token")


def calibrate(graph: Graph, data: ty.Any, statistic: str = "max",
              percentile: float = 99.9, granularity: str = "token",
              batch_size: int = 64, progress: bool = True
              ) -> ty.Dict[str, np.ndarray]:
    """Scale sigma of every population (and of every attention's logits).

    Parameters
    ----------
    graph : Graph
        From :func:`lava_spiked.convert.capture`.
    data : array_like or torch.Tensor
        Calibration inputs, (n, *sample_shape); keep them apart from the
        data you evaluate on.
    statistic : {'max', 'percentile'}
        Statistic of |activation| over the calibration samples.
    percentile : float
        Used with ``statistic='percentile'``.
    granularity : {'tensor', 'channel', 'token'}
        One sigma per tensor, per channel (last axis) or per token (all but
        the last axis); axes that a spike product or the softmax needs shared
        are always shared.

    Returns
    -------
    dict
        fx node name -> sigma, broadcastable to the population's shape.
    """
    if statistic not in ("max", "percentile"):
        raise ValueError(f"statistic must be 'max' or 'percentile', got "
                         f"{statistic!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got "
                         f"{granularity!r}")
    x = check_batch("calibration_data", data, graph.input.shape)
    shared = {p.name: p.shared_axes for p in graph.populations}
    for op in graph.attention:
        shared[op.logit_node] = (len(op.coef.shape) - 1,)
    values = activations(graph, x, list(shared), batch_size, progress)
    sigmas = {}
    for name, a in values.items():
        a = np.abs(a)  # (n, *shape)
        nd = a.ndim - 1
        axes = set(range(nd)) if granularity == "tensor" else \
            set(range(nd - 1)) if granularity == "channel" else {nd - 1}
        axes |= {ax % nd for ax in shared[name]}
        reduce = (0,) + tuple(1 + ax for ax in sorted(axes))
        if statistic == "max":
            s = a.max(axis=reduce, keepdims=True)[0]
        else:
            s = np.percentile(a, percentile, axis=reduce, keepdims=True)[0]
        # A unit that was always 0 gets the tensor's scale (any scale codes
        # 0), so no sigma is 0.
        fallback = a.max() if a.max() > 0 else 1.0
        sigmas[name] = np.where(s > 0, s, fallback).astype(np.float64)
    return sigmas


def activations(graph: Graph, x: ty.Any, names: ty.Sequence[str],
                batch_size: int = 64,
                progress: bool = False) -> ty.Dict[str, np.ndarray]:
    """ANN values (n, *shape) of the fx nodes ``names`` for inputs ``x``
    (e.g. population names and attention logit nodes)."""
    values: ty.Dict[str, ty.List[np.ndarray]] = {n: [] for n in names}
    module = graph.module.float()

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node.name in values:
                values[node.name].append(out.detach().numpy())
            return out

    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        for start in tqdm(range(0, len(x), batch_size), desc="calibrating",
                          disable=not progress, leave=False):
            Recorder(module).run(x[start:start + batch_size])
    module.double()
    return {n: np.concatenate(v) for n, v in values.items()}


@dataclasses.dataclass
class Window:
    """Input window start I and fire window start F = I + T of a
    population."""

    start: int
    fire: int


class SpikingNetwork:
    """A converted model as Lava processes (see the module docstring).

    Attributes
    ----------
    graph : Graph
        The captured populations and attention operations.
    sigmas : dict
        Calibrated scale per population / logits node.
    windows : dict
        Population name -> :class:`Window`.
    num_steps : int
        Steps per sample.
    processes : dict
        Population name -> its Lava process (plus synapses and delays
        under descriptive keys).
    encoder, readout, sink
        The input PhaseEncoder, the readout PhaseNeuron and the RingBuffer
        that receives the readout's membrane (decoded logits =
        ``sink[..., windows[output].fire] * sigma / 2**16``).
    recorded : list of dict
        With ``record=True``: per inferred sample, population name (and
        ``<attention>:logits`` / ``:softmax``) -> (fire steps, signs). Reading
        the probes costs about 13 us per element and step (Lava's Var.get),
        so record small networks only.
    """

    def __init__(self, graph: Graph, sigmas: ty.Dict[str, np.ndarray],
                 T: int, B: float, record: bool = False) -> None:
        self.graph, self.sigmas = graph, sigmas
        self.T, self.B = check_steps(T), check_base(B)
        self.windows = self._schedule()
        out = self.windows[graph.output.name]
        # a sample ends when the readout has reported; windows repeat with
        # this period, which must hold an integration and a fire window
        self.num_steps = max(out.fire + 1, 2 * self.T)
        self.processes: ty.Dict[str, ty.Any] = {}
        self._dense_exp: ty.Dict[str, ty.Tuple[list, ty.Any]] = {}
        self._counted = {"sat_count": 0, "stray_count": 0}
        self._build()
        self.probes: ty.Dict[str, ty.Tuple[RingBuffer, int]] = {}
        self.recorded: ty.List[ty.Dict[str, ty.Tuple[np.ndarray,
                                                     np.ndarray]]] = []
        if record:
            self._add_probes()

    # ------------------------------------------------------------ schedule
    def _schedule(self) -> ty.Dict[str, Window]:
        T = self.T
        win = {self.graph.input.name: Window(-T, 0)}
        attention = {op.out.name: op for op in self.graph.attention}
        operands = {}
        for op in self.graph.attention:
            operands[op.x.name] = operands[op.y.name] = (op.x, op.y)
        for pop in self.graph.populations[1:]:
            if pop.name in win:
                continue
            if pop.name in attention:
                op = attention[pop.name]
                logits = win[op.x.name].fire + 1
                win[pop.name] = Window(logits + 2 * T + 1,
                                       logits + 3 * T + 1)
                if win[op.v.name].fire > logits + T:
                    raise AssertionError("v fires after the softmax")
                continue
            group = operands.get(pop.name, (pop,))
            start = max(win[s.name].fire + 1 for p in group
                        for s, _ in p.inputs)
            for p in group:
                win[p.name] = Window(start, start + T)
        return win

    # ---------------------------------------------------------------- build
    def _build(self) -> None:
        T, B, g = self.T, self.B, self.graph
        period = self.num_steps
        kw = dict(B=B, T=T, period=period)
        sig = self._sigma
        self.encoder = PhaseEncoder(data=np.zeros(g.input.shape),
                                    scale=sig(g.input), start=0, **kw)
        self.processes[g.input.name] = self.encoder
        attention = {op.out.name: op for op in g.attention}
        for pop in g.populations[1:]:
            w = self.windows[pop.name]
            if pop.name in attention:
                self._build_attention(attention[pop.name], kw)
                continue
            mats = [wt * sig(src).reshape(1, -1) /
                    sig(pop).reshape(-1, 1) for src, wt in pop.inputs]
            dense, exp = fixed.quantize_weights(*mats)
            self._dense_exp[pop.name] = (dense, exp)
            neuron = PhaseNeuron(
                shape=pop.shape, start=w.start, weight_exp=exp,
                bias=pop.bias.reshape(pop.shape), scale=sig(pop),
                unipolar=pop.kind == "relu", readout=pop.kind == "readout",
                **kw)
            self.processes[pop.name] = neuron
            for (src, _), d in zip(pop.inputs, dense):
                self._connect(src, d, neuron, w.start)
        self.readout = self.processes[g.output.name]
        # The readout sends its membrane (state units) once, when its fire
        # window opens; the sink keeps a whole sample period.
        self.sink = RingBuffer(shape=g.output.shape, buffer=self.num_steps)
        self.readout.s_out.connect(self.sink.a_in)

    def _add_probes(self) -> None:
        """A RingBuffer on every spiking population (and on the logits and
        softmax of every attention), read after each sample."""
        T = self.T
        fires = {name: w.fire for name, w in self.windows.items()}
        for op in self.graph.attention:
            logits = self.windows[op.x.name].fire + 1 + T
            fires[op.out.name + ":logits"] = logits
            fires[op.out.name + ":softmax"] = logits + T
        for name, fire in fires.items():
            proc = self.processes[name]
            if proc is self.readout:
                continue
            sink = RingBuffer(shape=proc.s_out.shape, buffer=self.num_steps)
            proc.s_out.connect(sink.a_in)
            self.probes[name] = (sink, fire)

    def _read_probes(self) -> None:
        spikes = {}
        for name, (sink, fire) in self.probes.items():
            spikes[name] = phase.first_spikes(sink.data.get(), fire, self.T)
        self.recorded.append(spikes)

    def _sigma(self, pop: Population) -> np.ndarray:
        return np.broadcast_to(self.sigmas[pop.name], pop.shape).astype(float)

    def _connect(self, src: Population, weights: np.ndarray, target,
                 start: int) -> None:
        port = self.processes[src.name].s_out
        delay = start - self.windows[src.name].fire - 1
        if delay > 0:
            key = f"{src.name}->delay{delay}"
            if key not in self.processes:
                self.processes[key] = SpikeDelay(shape=src.shape, delay=delay)
                port.connect(self.processes[key].s_in)
            port = self.processes[key].s_out
        dense = Dense(weights=weights,
                      num_message_bits=fixed.SPIKE_PAYLOAD_BITS,
                      sign_mode=SignMode.MIXED)
        self.processes[f"{src.name}->{target.name}"] = dense
        port.flatten().connect(dense.s_in)
        dense.a_out.reshape(target.shape).connect(target.a_in)

    def _build_attention(self, op, kw) -> None:
        T = self.T
        sx, sy = self._sigma(op.x), self._sigma(op.y)
        s_logit = np.broadcast_to(self.sigmas[op.logit_node],
                                  op.coef.shape).astype(float)
        s_v, s_out = self._sigma(op.v), self._sigma(op.out)
        # row i of x and column j of y: sigma shared along the contracted axis
        c_qk = op.coef * sx[..., :, :1] * sy[..., :1, :] / s_logit
        (qk,), qk_exp = fixed.quantize_weights(c_qk)
        c_av = s_v[..., :1, :] / s_out
        (av,), av_exp = fixed.quantize_weights(c_av)
        fx, fv = self.windows[op.x.name].fire, self.windows[op.v.name].fire
        logit_start = fx + 1
        qk_mm = TraceMatMul(x_shape=op.x.shape, y_shape=op.y.shape,
                            weights=qk, x_start=fx, y_start=fx,
                            y_transposed=True, **kw)
        logits = PhaseNeuron(shape=op.coef.shape, start=logit_start,
                             weight_exp=qk_exp - fixed.GAIN_FRAC_BITS,
                             bias=op.bias, scale=s_logit, **kw)
        soft = WOSSSoftmax(shape=op.coef.shape, start=logit_start + T,
                           scale=s_logit, mask=op.mask, **kw)
        av_mm = TraceMatMul(x_shape=op.coef.shape, y_shape=op.v.shape,
                            weights=av, x_start=logit_start + 2 * T,
                            y_start=fv, y_transposed=True, **kw)
        out = NormalizedPhaseNeuron(
            shape=op.out.shape, start=self.windows[op.out.name].start,
            weight_exp=av_exp - fixed.GAIN_FRAC_BITS, scale=s_out, **kw)
        self.processes[op.x.name].s_out.connect(qk_mm.x_in)
        self.processes[op.y.name].s_out.connect(qk_mm.y_in)
        qk_mm.a_out.connect(logits.a_in)
        logits.s_out.connect(soft.s_in)
        soft.s_out.connect(av_mm.x_in)
        self.processes[op.v.name].s_out.connect(av_mm.y_in)
        av_mm.a_out.connect(out.a_in)
        soft.r_out.connect(out.r_in)
        self.processes.update({
            f"{op.out.name}:qk": qk_mm, f"{op.out.name}:logits": logits,
            f"{op.out.name}:softmax": soft, f"{op.out.name}:av": av_mm,
            op.out.name: out})
        self._dense_exp[op.out.name] = ((qk, av), (qk_exp, av_exp))

    # ------------------------------------------------------------------ run
    def run(self, condition, run_cfg) -> None:
        """Run the Lava network, as ``Process.run`` (Lava's own API)."""
        self.readout.run(condition=condition, run_cfg=run_cfg)

    def infer(self, samples: ty.Any, run_cfg,
              progress: bool = True) -> np.ndarray:
        """Run samples one after another and return decoded logits.

        Parameters
        ----------
        samples : array_like
            (n, *sample_shape) inputs (finite).
        run_cfg : lava RunConfig
            E.g. ``Loihi2SimCfg(select_tag="fixed_pt")``; the first run
            fixes the tag for the life of the network.
        """
        x = check_batch("samples", samples, self.graph.input.shape)
        logits = []
        for sample in tqdm(x, desc=f"Lava {getattr(run_cfg, 'select_tag', '')}",
                           disable=not progress, leave=False):
            if self.readout.runtime is None:
                self.encoder.data.init = sample  # read at compile time
            else:
                self.encoder.data.set(sample)
            self.run(RunSteps(num_steps=self.num_steps), run_cfg)
            state = self.sink.data.get()[
                ..., self.windows[self.graph.output.name].fire]
            if self.probes:
                self._read_probes()
            logits.append(state * 2.0 ** -fixed.STATE_FRAC_BITS *
                          self._sigma(self.graph.output))
        self._check_counts()
        return np.array(logits)

    def _check_counts(self) -> None:
        """Raise on stray input, warn on saturation since the last check
        (the counters are cumulative)."""
        totals = {"sat_count": 0, "stray_count": 0}
        for proc in self.processes.values():
            for var in totals:
                if hasattr(proc, var):
                    totals[var] += int(getattr(proc, var).get()[0])
        sat = totals["sat_count"] - self._counted["sat_count"]
        stray = totals["stray_count"] - self._counted["stray_count"]
        self._counted = totals
        if stray:
            raise RuntimeError(f"{stray} spikes arrived outside their "
                               "window: the schedule is wrong (a bug)")
        if sat:
            warnings.warn(f"{sat} saturation events in the integer state",
                          RuntimeWarning, stacklevel=3)

    def stop(self) -> None:
        """Stop all Lava processes (idempotent)."""
        if self.readout.runtime is not None:
            self.readout.stop()

    def __enter__(self) -> "SpikingNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------- golden (float)
    def golden_float(self, sample: ty.Any) -> np.ndarray:
        """Closed form of the network for one sample (floating_pt): Q of
        each population's integrated input, WOSS attention, readout."""
        B, T, g = self.B, self.T, self.graph
        val = {g.input.name: phase.quantize(
            np.asarray(sample, float), B, T, self._sigma(g.input)).value}
        attention = {op.out.name: op for op in g.attention}
        for pop in g.populations[1:]:
            if pop.name in attention:
                val[pop.name] = self._golden_attention(attention[pop.name],
                                                       val)
                continue
            dense, exp = self._dense_exp[pop.name]
            a = pop.bias / self._sigma(pop).ravel()
            for (src, _), d in zip(pop.inputs, dense):
                a = a + fixed.dequantize_weights(d, exp) @ (
                    val[src.name] / self._sigma(src)).ravel()
            a = a.reshape(pop.shape) * self._sigma(pop)
            if pop.kind == "readout":
                return a
            val[pop.name] = phase.quantize(a, B, T, self._sigma(pop),
                                           unipolar=pop.kind == "relu").value
        raise AssertionError("no readout population")

    def golden_fixed(self, sample: ty.Any) -> np.ndarray:
        """Integer golden model of the network for one sample (fixed_pt):
        :func:`lava_spiked.fixed.run_layer` per population and
        :func:`lava_spiked.attention.attention_fixed` per attention, fed
        with the spikes (steps relative to each window) of their sources."""
        B, T, g = self.B, self.T, self.graph
        thresholds = fixed.threshold_table(B, T)
        state, _ = fixed.to_state(np.asarray(sample, float) /
                                  self._sigma(g.input))
        spikes = {g.input.name: fixed.first_spike(state, thresholds, False)}
        attention = {op.out.name: op for op in g.attention}
        for pop in g.populations[1:]:
            op = attention.get(pop.name)
            if op is not None:
                (qk, av), (qk_exp, av_exp) = self._dense_exp[pop.name]
                s_logit = np.broadcast_to(self.sigmas[op.logit_node],
                                          op.coef.shape)
                res = attention_fixed(
                    *spikes[op.x.name], *spikes[op.y.name],
                    *spikes[op.v.name], qk, qk_exp, op.bias / s_logit,
                    s_logit, op.mask, av, av_exp, B, T, y_transposed=True)
                spikes[pop.name] = fixed.first_spike(res.out_state,
                                                     thresholds, False)
                continue
            dense, exp = self._dense_exp[pop.name]
            layer = fixed.run_layer(
                [spikes[src.name][0].ravel() for src, _ in pop.inputs],
                [spikes[src.name][1].ravel() for src, _ in pop.inputs],
                dense, exp, pop.bias / self._sigma(pop).ravel(), B, T,
                unipolar=pop.kind == "relu")
            if pop.kind == "readout":
                return (layer.v * 2.0 ** -fixed.STATE_FRAC_BITS).reshape(
                    pop.shape) * self._sigma(pop)
            spikes[pop.name] = (layer.step.reshape(pop.shape),
                                layer.sign.reshape(pop.shape))
        raise AssertionError("no readout population")

    def _golden_attention(self, op, val) -> np.ndarray:
        (qk, av), (qk_exp, av_exp) = self._dense_exp[op.out.name]
        *_, out = attention_float(
            val[op.x.name] / self._sigma(op.x),
            val[op.y.name] / self._sigma(op.y),
            val[op.v.name] / self._sigma(op.v),
            fixed.dequantize_weights(qk, qk_exp), op.bias,
            np.broadcast_to(self.sigmas[op.logit_node], op.coef.shape),
            op.mask, fixed.dequantize_weights(av, av_exp),
            self._sigma(op.out), self.B, self.T)
        return out.value


def convert(model: torch.nn.Module, calibration_data: ty.Any, T: int = 40,
            B: float = 1.15, statistic: str = "max",
            percentile: float = 99.9, granularity: str = "token",
            progress: bool = True, record: bool = False) -> SpikingNetwork:
    """Convert a PyTorch transformer into a phase-coded Lava network.

    Parameters
    ----------
    model : torch.nn.Module
        Built from supported operations (see :mod:`lava_spiked.convert`).
    calibration_data : array_like
        (n, *sample_shape) inputs for calibration, separate from the data
        you evaluate on.
    T, B : int, float
        Window length and base of the phase code.
    statistic, percentile, granularity
        See :func:`calibrate`.
    record : bool
        Probe every population's spikes in Lava (see
        ``SpikingNetwork.recorded``).

    Raises
    ------
    UnsupportedModelError
        Listing every unsupported operation.
    ValueError
        On invalid T, B or calibration data.
    """
    check_steps(T), check_base(B)
    data = np.asarray(calibration_data, dtype=np.float32)
    if data.ndim < 2 or data.shape[0] == 0:
        raise ValueError(f"calibration_data must be (n, *sample_shape) with "
                         f"n > 0, got shape {data.shape}")
    graph = capture(model, tuple(data.shape[1:]))
    sigmas = calibrate(graph, data, statistic, percentile, granularity,
                       progress=progress)
    return SpikingNetwork(graph, sigmas, T, B, record)
