"""Build and run a Plan as Lava processes: the one run/stop routine.

Only this module (and the Processes) import Lava, so a Plan converts and
runs on the engine where Lava is not installed.

Lava runs every ProcessModel in its own OS process, forked when the network
first runs. A terminal's Ctrl+C reaches the whole process group; a child
that dies of it leaves the parent waiting forever on a channel. So the
children are forked ignoring SIGINT and only this (parent) process handles
it: the interrupt stops the network (bounded wait, then the children are
terminated) and propagates; one that arrives while Lava forks the children,
or while the host reads or writes a Var, waits until the last child exists
or that exchange is complete. SIGTERM during a run
or an inference call does the same, and a
finaliser stops a network still running when the interpreter exits. If the
parent dies without a word (``kill -9``, a crash), Linux kills the
children (``PR_SET_PDEATHSIG``), so none is left orphaned.
"""
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import typing as ty
import warnings
import weakref

import numpy as np
import scipy.sparse

from lava_spiked import fixed, phase
from lava_spiked.loihi2 import MAX_DELAY, connections
from lava_spiked.progress import bar
from lava_spiked.plan import (ActivationStage, Attention, Layer, NormStage,
                              Plan, Synapse)

# Lava's import sets multiprocessing's start method to 'fork' and fails if
# anything fixed it before (any use of multiprocessing does); 'fork' again
# is harmless, another method cannot work.
_method = multiprocessing.get_start_method(allow_none=True)
if _method not in (None, "fork"):
    raise RuntimeError(
        f"Lava needs multiprocessing's 'fork' start method, but it is set to "
        f"{_method!r}: import lava_spiked.lava_build (or run a Lava network) "
        "before setting another start method")
multiprocessing.set_start_method(None, force=True)  # Lava sets 'fork'

try:
    from lava.magma.core.run_conditions import RunSteps
    # re-exported: chain, attention and verification reach Lava only here
    from lava.magma.core.run_configs import Loihi2SimCfg  # noqa: F401
    from lava.proc.io.sink import RingBuffer
    from lava.proc.sparse.process import Sparse
    from lava.utils.weightutils import SignMode

    from lava_spiked.processes import (
        ActivationPhaseNeuron, LayerNormPhaseNeuron, NormalizedPhaseNeuron,
        PhaseEncoder, PhaseNeuron, SpikeDelay, SpikingBlock, TraceMatMul,
        WOSSSoftmax)
    from lava_spiked.processes.spiking_block import COUNTERS, connect
except (ImportError, ValueError) as err:  # ValueError: unpatched lava
    raise ImportError(
        "Lava runs need lava-nc 0.10.0, installed and patched for Python "
        "3.11 and later: run `make setup` (or `bash scripts/setup.sh`) in the "
        "lava-spiked repository and use its .venv/bin/python. The engine "
        f"(lava_spiked.engine) works without Lava. Underlying error: {err}"
    ) from err


def sparse_weights(syn: Synapse, dst_size: int,
                   src_size: int) -> scipy.sparse.csr_matrix:
    """The block-diagonal (dst size, src size) matrix of a token-shared
    synapse: one copy of its (C, K) mantissas per row (token)."""
    o = np.flatnonzero(syn.out >= 0)
    r, c = np.divmod(syn.out[o], syn.weight.shape[0])
    src = syn.rows[r]                       # (n, K)
    w = syn.weight[c]                       # (n, K)
    keep = (src >= 0) & (w != 0)
    dst = np.broadcast_to(o[:, None], src.shape)
    m = scipy.sparse.coo_matrix((w[keep], (dst[keep], src[keep])),
                                shape=(dst_size, src_size)).tocsr()
    if m.nnz and np.abs(m.data).max() > 2 * fixed.WEIGHT_MANT_MAX:
        raise ValueError("a synapse reads one source neuron twice for one "
                         "target and its summed weight leaves 8 bits")
    return m


def wire_attention(x, y, v, *, x_fire: int, v_fire: int, logit_start: int,
                   out_start: int, qk, qk_exp: int, logit_bias, logit_scale,
                   mask, av, av_exp: int, out_scale, y_transposed: bool,
                   link: ty.Callable[[ty.Any, ty.Any], None] = connect,
                   qk_bits: int = fixed.GAIN_FRAC_BITS,
                   v_bits: int = fixed.GAIN_FRAC_BITS,
                   out_gain_bits: int = fixed.GAIN_FRAC_BITS,
                   acc_bits: int = fixed.ACC_BITS,
                   woss_bits: int = fixed.GAIN_FRAC_BITS,
                   **kw) -> ty.Dict[str, ty.Any]:
    """The Lava processes of one attention, fed by the spiking processes
    ``x``, ``y`` (the product operands, firing from ``x_fire``) and ``v``
    (firing from ``v_fire``); the one wiring of the converter and of
    :class:`lava_spiked.attention.SpikingSelfAttention`.

    ``qk`` / ``av`` are the trace-product mantissas with exponents
    ``qk_exp`` / ``av_exp``; ``logit_bias`` is in real units; ``kw`` holds
    B, T and period. Schedule: the logits integrate from ``logit_start``
    (one step after the operands fire), the softmax T steps later, the
    product with V reads the softmax spikes when they fire (``logit_start
    + 2T``) and the output integrates from ``out_start``. The ``*_bits``
    are the ``fixed_pt`` formats of :class:`lava_spiked.plan.Attention`
    (``out_gain_bits``: the output neurons' gains); with 24-bit
    accumulators the products send 24-bit currents too.

    Returns
    -------
    dict
        ``qk``, ``logits``, ``softmax``, ``av`` and ``out`` processes.
    """
    T = kw["T"]
    out_bits = fixed.STATE_BITS if acc_bits == fixed.STATE_BITS else 32
    qk_proc = TraceMatMul(x_shape=x.s_out.shape, y_shape=y.s_out.shape,
                          weights=qk, x_start=x_fire, y_start=x_fire,
                          y_transposed=y_transposed, trace_bits=qk_bits,
                          out_bits=out_bits, **kw)
    logits = PhaseNeuron(shape=np.shape(qk), start=logit_start,
                         weight_exp=qk_exp - qk_bits, gain_bits=qk_bits,
                         acc_bits=acc_bits, bias=logit_bias,
                         scale=logit_scale, **kw)
    soft = WOSSSoftmax(shape=np.shape(qk), start=logit_start + T,
                       scale=logit_scale, mask=mask, trace_bits=woss_bits,
                       **kw)
    av_proc = TraceMatMul(x_shape=np.shape(qk), y_shape=v.s_out.shape,
                          weights=av, x_start=logit_start + 2 * T,
                          y_start=v_fire, y_transposed=True,
                          trace_bits=v_bits, out_bits=out_bits, **kw)
    out = NormalizedPhaseNeuron(shape=np.shape(av), start=out_start,
                                weight_exp=av_exp - v_bits,
                                gain_bits=out_gain_bits, acc_bits=acc_bits,
                                scale=out_scale, **kw)
    for src, dst in [(x.s_out, qk_proc.x_in), (y.s_out, qk_proc.y_in),
                     (qk_proc.a_out, logits.a_in), (logits.s_out, soft.s_in),
                     (soft.s_out, av_proc.x_in), (v.s_out, av_proc.y_in),
                     (av_proc.a_out, out.a_in), (soft.r_out, out.r_in)]:
        link(src, dst)
    return dict(qk=qk_proc, logits=logits, softmax=soft, av=av_proc,
                out=out)


class _LavaNetwork:
    """The Lava processes of a Plan for one tag, and their run/stop."""

    def __init__(self, plan: Plan, tag: ty.Optional[str],
                 record: bool) -> None:
        self.plan, self.tag = plan, tag
        self.processes: ty.Dict[str, ty.Any] = {}
        self.probes: ty.Dict[str, ty.Tuple[ty.Any, int]] = {}
        self._counted = {"sat_count": 0, "stray_count": 0, "clip_count": 0}
        self._clip_seen: ty.Dict[str, int] = {}
        #: population -> clipped neurons since the previous check_counts
        #: (see :meth:`check_counts`)
        self.clipped: ty.Dict[str, int] = {}
        #: samples enter every ``period`` steps (:meth:`infer`)
        self.streams = not plan.runtime_inputs and not record
        self.record = record  # probes need every process on its own
        self.steps = 0  # steps run so far
        #: event counts of the last stream's samples (see check_counts)
        self._deltas: ty.Optional[ty.Dict[str, ty.Dict[str, int]]] = None
        self._build()
        if record:
            self._add_probes()
        self.runner = Runner(self.encoder)  # never inside a block

    # --------------------------------------------------------------- build
    def _build(self) -> None:
        plan, T = self.plan, self.plan.T
        # samples stream in every stream_period steps, unless each needs
        # its own runtime inputs (masks set between samples) or probes
        self.period = plan.stream_period if self.streams else \
            plan.num_steps
        self.kw = dict(B=plan.B, T=T, period=self.period)
        #: (OutPort, InPort) of every connection, made by _wire
        self._links: ty.List[ty.Tuple[ty.Any, ty.Any]] = []
        #: process name -> index of its block (none when probed)
        self._home: ty.Dict[str, int] = {}
        block_of = {name: k for k, (_, names) in
                    enumerate(plan.blocks() if not self.record else [])
                    for name in names}
        first = plan[plan.input]
        self.encoder = PhaseEncoder(data=np.zeros(first.shape),
                                    scale=first.scale.reshape(first.shape),
                                    start=0, **self.kw)
        self.processes[first.name] = self.encoder
        for layer in plan.layers[1:]:
            self._block = block_of.get(layer.name)
            known = set(self.processes)
            self._layer(layer)
            if self._block is not None:
                self._home.update({name: self._block for name in
                                   self.processes if name not in known})
        self.readout = self.processes[plan.output]
        # the readout sends its membrane once, when its fire window opens;
        # the sink keeps a whole sample period (streaming: a stream period,
        # read once per period; Lava reads a Var element by element)
        self.sink = RingBuffer(shape=plan[plan.output].shape,
                               buffer=self.period)
        self._links.append((self.readout.s_out, self.sink.a_in))
        self._wire()

    def _layer(self, layer: Layer) -> None:
        """The processes of one layer (and of its synapses)."""
        op = self.plan.attention_of(layer.name)
        if op is not None:
            self._attention(op, layer)
            return
        kw = dict(shape=layer.shape, start=layer.window.start,
                  weight_exp=layer.weight_exp, gain_bits=layer.gain_bits,
                  acc_bits=layer.acc_bits,
                  bias=(layer.bias * layer.membrane_scale).reshape(
                      layer.shape),
                  scale=layer.scale.reshape(layer.shape), **self.kw)
        stage = layer.stage
        if isinstance(stage, ActivationStage):
            neuron = ActivationPhaseNeuron(
                fn=stage.fn, pre_scale=stage.pre_scale.reshape(layer.shape),
                **kw)
        elif isinstance(stage, NormStage):
            neuron = LayerNormPhaseNeuron(eps=stage.eps,
                                          pre_scale=stage.pre_scale, **kw)
        else:
            neuron = PhaseNeuron(unipolar=layer.kind == "relu",
                                 readout=layer.kind == "readout", **kw)
        self.processes[layer.name] = neuron
        for syn in layer.synapses:
            self._connect(syn, layer, neuron)
        # after its synapses: every process comes after those it reads
        self.processes[layer.name] = self.processes.pop(layer.name)

    def _connect(self, syn: Synapse, layer: Layer, neuron) -> None:
        src = self.plan[syn.src]
        port = self.processes[src.name].s_out
        delay, done = self.plan.delay(src.name, layer.name), 0
        # a chain of at most MAX_DELAY steps a link (Loihi's synaptic
        # delays), named by the steps so far: chains of one source share
        # their first links
        while done < delay:
            step = min(MAX_DELAY, delay - done)
            key = f"{src.name}->delay{done + step}"
            if self._home.get(key, self._block) != self._block:
                key += f"@block{self._block}"  # one delay line per block
            if key not in self.processes:
                self.processes[key] = SpikeDelay(shape=src.shape, delay=step)
                self._links.append((port, self.processes[key].s_in))
            port, done = self.processes[key].s_out, done + step
        # one Sparse per exponent of the synapse's output channels above
        # the neuron's (and per part of a wide fan-in, for Loihi 2):
        # Sparse's own weight_exp under fixed_pt (8-bit mantissas kept);
        # its floating_pt model ignores weight_exp, so there the weights
        # carry it
        fixed_tag = self.tag == "fixed_pt"
        for shift, part in connections(self.plan, syn):
            key, i = f"{src.name}->{layer.name}", 1
            while key in self.processes:
                key, i = f"{src.name}->{layer.name}#{i}", i + 1
            weights = sparse_weights(part, layer.size, src.size)
            sparse = Sparse(weights=weights if fixed_tag else
                            weights * 2.0 ** shift,
                            weight_exp=shift if fixed_tag else 0,
                            num_message_bits=fixed.SPIKE_PAYLOAD_BITS,
                            sign_mode=SignMode.MIXED)
            self.processes[key] = sparse
            self._links += [(port, sparse.s_in), (sparse.a_out, neuron.a_in)]

    def _attention(self, op: Attention, layer: Layer) -> None:
        plan = self.plan
        stages = wire_attention(
            self.processes[op.x], self.processes[op.y],
            self.processes[op.v], x_fire=plan[op.x].window.fire,
            v_fire=plan[op.v].window.fire, logit_start=op.logit_start,
            out_start=layer.window.start, qk=op.qk, qk_exp=op.qk_exp,
            logit_bias=op.logit_bias * op.logit_scale,
            logit_scale=op.logit_scale, mask=op.mask, av=op.av,
            av_exp=op.av_exp, out_scale=layer.scale.reshape(layer.shape),
            y_transposed=True, link=lambda *ports: self._links.append(ports),
            qk_bits=op.qk_bits, v_bits=op.v_bits,
            out_gain_bits=layer.gain_bits, acc_bits=op.acc_bits,
            woss_bits=op.woss_bits, **self.kw)
        self.processes.update({
            f"{op.out}:qk": stages["qk"], op.logits: stages["logits"],
            op.softmax: stages["softmax"], f"{op.out}:av": stages["av"],
            op.out: stages["out"]})

    def _wire(self) -> None:
        """Make the connections; unless probed, first group the
        processes of each of the Plan's blocks into a :class:`SpikingBlock`
        (Lava's run configuration then runs each block fused in one OS
        process, or its members one per OS process)."""
        #: the SpikingBlocks, in order (empty: every process on its own)
        self.blocks: ty.List[SpikingBlock] = []
        if not self._home:
            for src, dst in self._links:
                connect(src, dst)
            return
        plan = self.plan
        groups = plan.blocks()
        members: ty.List[ty.Dict[str, ty.Any]] = [{} for _ in groups]
        for name, k in self._home.items():
            members[k][name] = self.processes[name]
        home = {id(self.processes[name]): k
                for name, k in self._home.items()}
        # a block's output: the next block's input, the readout for the last
        outputs = [self.processes[inp].s_out for inp, _ in groups[1:]] + \
            [self.readout.s_out]
        masked = list(self._masks(np.zeros(plan.tokens, bool))) \
            if plan.runtime_inputs else []
        edges: ty.List[list] = [[] for _ in groups]
        inputs: ty.List[list] = [[] for _ in groups]
        crossing = []
        for src, dst in self._links:
            a, b = home.get(id(src.process)), home.get(id(dst.process))
            if a is not None and a == b:
                connect(src, dst)
                edges[a].append((src, dst))
                continue
            if a is not None and src is not outputs[a] or b is not None and \
                    src.process is not self.processes[groups[b][0]]:
                raise AssertionError(f"{src.process.name} -> "
                                     f"{dst.process.name} crosses a block "
                                     "boundary other than its ports (a bug)")
            if b is not None:
                inputs[b].append(dst)
            crossing.append((a, src, b, dst))
        self.blocks = [
            SpikingBlock(members=members[k], edges=edges[k],
                         inputs=inputs[k], output=outputs[k],
                         in_shape=plan[groups[k][0]].shape,
                         out_shape=tuple(outputs[k].shape),
                         masked=[name for name in masked
                                 if self._home[name] == k], name=f"block{k}")
            for k in range(len(groups))]
        made = set()
        for a, src, b, dst in crossing:
            src = src if a is None else self.blocks[a].s_out
            dst = dst if b is None else self.blocks[b].s_in
            if (id(src), id(dst)) not in made:
                made.add((id(src), id(dst)))
                connect(src, dst)

    def _add_probes(self) -> None:
        """A RingBuffer on every spiking layer (and on the logits and
        softmax of every attention)."""
        fires = {layer.name: layer.window.fire for layer in self.plan.layers
                 if layer.kind != "readout"}
        for op in self.plan.attention:
            fires[op.logits] = op.logit_start + self.plan.T
            fires[op.softmax] = op.logit_start + 2 * self.plan.T
        for name, fire in fires.items():
            proc = self.processes[name]
            sink = RingBuffer(shape=proc.s_out.shape,
                              buffer=self.plan.num_steps)
            proc.s_out.connect(sink.a_in)
            self.probes[name] = (sink, fire)

    # ----------------------------------------------------------------- run
    def run(self, condition, run_cfg) -> None:
        """Run the network (:meth:`Runner.run`)."""
        self.runner.run(condition, run_cfg)
        self.steps += getattr(condition, "num_steps", 0)

    def _set(self, var, value) -> None:
        """Set a Var before the next run (its initial value before the
        first)."""
        if not self.runner.started:
            var.init = value  # read at compile time
        else:
            with _uninterrupted():
                var.set(value)

    def infer(self, samples: np.ndarray, run_cfg,
              progress: bool = False) -> ty.List[np.ndarray]:
        """Readout membranes in state units (``value / sigma * 2**16``) of
        ``samples``, streamed: a new sample enters the encoder every
        ``period`` steps while the earlier ones are still in the network,
        so n samples take about ``(n - 1) * period + num_steps`` steps
        rather than ``n * num_steps``. Runs stop at each period, where the
        encoder's data is set, and where a process's event counters are
        read: when the first sample enters it and when the last has left,
        so that :meth:`check_counts` counts these samples' events only (the
        network also carries samples of zeros before and after them). A
        network left inside a period (by a run of another length) first
        runs to its end."""
        if not self.streams:
            raise RuntimeError("this network takes one sample at a time "
                               "(runtime masks or probes): use infer_one")
        period = self.period
        silent = np.zeros_like(samples[0])
        if self.steps % period:  # after a run of another length
            self._set(self.encoder.data, silent)
            self.run(RunSteps(num_steps=-self.steps % period), run_cfg)
        first, n = self.steps, len(samples)
        fire = self.plan[self.plan.output].window.fire
        last = first + (n - 1) * period + fire  # the last readout
        # the encoder runs on between samples and after the last one, so
        # each process also sees samples of zeros: read its counters when
        # the first real sample enters it and when the last has left
        reads: ty.Dict[int, ty.List[ty.Tuple[str, int]]] = {}
        for name, proc in self.processes.items():
            if any(hasattr(proc, var) for var in COUNTERS):
                start, length = self._activity(proc)
                reads.setdefault(first + start, []).append((name, 0))
                reads.setdefault(first + (n - 1) * period + start + length,
                                 []).append((name, 1))
        end = max(last + 1, max(reads, default=0))
        stops = sorted(set(reads) | {end} | set(range(first, end, period)))
        seen: ty.Dict[ty.Tuple[str, int], ty.Dict[str, int]] = {}
        states: ty.List[np.ndarray] = []
        with bar(total=end - first, desc="Lava streaming",
                 progress=progress) as shown:
            for stop in stops:
                if stop > self.steps:
                    steps = self.steps
                    self.run(RunSteps(num_steps=stop - steps), run_cfg)
                    shown.update(stop - steps)
                now = self._counters(name for name, _ in
                                     reads.get(stop, []))
                for name, which in reads.get(stop, []):
                    seen[name, which] = now[name]
                if (stop - first) % period == 0 and stop < end:
                    c = (stop - first) // period
                    self._set(self.encoder.data,
                              samples[c] if c < n else silent)
                while len(states) < n and \
                        first + len(states) * period + fire < self.steps:
                    at = first + len(states) * period + fire
                    with _uninterrupted():
                        data = self.sink.data.get()
                    states.append(data[..., at % period])
        self._deltas = {var: {name: counts[var] - seen[name, 0][var]
                              for (name, which), counts in seen.items()
                              if which == 1 and var in counts}
                        for var in COUNTERS}
        return states

    def _activity(self, proc) -> ty.Tuple[int, int]:
        """First step and number of steps of one sample at a process,
        counted from the sample's entry: its input and fire windows."""
        params, T = proc.proc_params, self.plan.T
        if params.get("x_start") is not None:  # TraceMatMul: 2 operands
            start = min(params["x_start"], params["y_start"])
            length = max(params["x_start"], params["y_start"]) + T - start
        else:
            start, length = params["start"], 2 * T
        return start, min(length, self.period)

    def _counters(self, names: ty.Iterable[str]
                  ) -> ty.Dict[str, ty.Dict[str, int]]:
        """Process name -> its event counters now (0 before the first run),
        for ``names``; from its block where it has one."""
        names = list(names)
        if not self.runner.started:
            return {name: {var: 0 for var in COUNTERS
                           if hasattr(self.processes[name], var)}
                    for name in names}
        with _uninterrupted():
            out = {name: process_events(self.processes[name])
                   for name in names if name not in self._home}
            for k, block in enumerate(self.blocks):
                mine = [name for name in names if self._home.get(name) == k]
                if mine:
                    out.update(block.member_events(mine))
        return out

    def leaves(self) -> int:
        """Processes that Lava runs, one OS process each (once compiled):
        a fused block counts once."""
        fused = sum(len(b.members) - 1 for b in self.blocks
                    if not b.expanded)
        return len(self.processes) + 1 - fused  # + 1: the sink

    def events(self) -> ty.Dict[str, ty.Dict[str, int]]:
        """Saturation, stray-input and clipping events so far (cumulative
        over runs): ``sat_count``, ``stray_count`` and ``clip_count`` ->
        process name -> count, for the processes that have the counter,
        fused in a block or not."""
        counts = self._counters(self.processes)
        return {var: {name: c[var] for name, c in counts.items()
                      if var in c} for var in COUNTERS}

    def infer_one(self, sample: np.ndarray, run_cfg,
                  valid: ty.Optional[np.ndarray] = None) -> np.ndarray:
        """Run one sample period; the readout membrane in state units
        (``value / sigma * 2**16``). ``valid`` (N,) bool is the sample's
        token mask, for a Plan that takes one: it sets the mask Vars of the
        key-masked softmaxes and the token-masked neurons."""
        if self.streams:
            return self.infer(sample[None], run_cfg)[0]
        self._set(self.encoder.data, sample)
        if valid is not None:
            self._set_masks(self._masks(~valid))
        self.run(RunSteps(num_steps=self.plan.num_steps), run_cfg)
        out = self.plan[self.plan.output]
        with _uninterrupted():
            return self.sink.data.get()[..., out.window.fire]

    def _masks(self, pad: np.ndarray) -> ty.Dict[str, np.ndarray]:
        """Process name -> its ``mask`` for a sample whose padded tokens
        are ``pad`` (N,) bool: the key-masked softmaxes and the
        token-masked neurons."""
        masks = {op.softmax: op.mask | pad[None, None, :]
                 for op in self.plan.attention if op.key_mask}
        for layer in self.plan.layers:
            if layer.token_mask:
                masks[layer.name] = np.broadcast_to(pad.reshape(
                    (-1,) + (1,) * (len(layer.shape) - 1)), layer.shape)
        return masks

    def _set_masks(self, masks: ty.Dict[str, np.ndarray]) -> None:
        """Set the processes' masks, through their block where they have
        one."""
        for k, block in enumerate(self.blocks):
            mine = {name: mask for name, mask in masks.items()
                    if self._home.get(name) == k}
            if mine:
                with _uninterrupted():
                    block.set_masks(mine, self.runner.started)
        for name, mask in masks.items():
            if name not in self._home:
                self._set(self.processes[name].mask,
                          np.asarray(mask, np.int32))

    def read_probes(self) -> ty.Dict[str, ty.Tuple[np.ndarray, np.ndarray]]:
        with _uninterrupted():
            return {name: phase.first_spikes(sink.data.get(), fire,
                                             self.plan.T)
                    for name, (sink, fire) in self.probes.items()}

    def check_counts(self) -> int:
        """Raise on stray input, warn on saturation since the last check
        (the counters are cumulative); return the saturation events.

        Also sets :attr:`clipped`: population name (the encoder, every
        spiking layer, every ``<attention>:logits``; not the readout) ->
        neurons clipped since the last check (their ``clip_count`` Vars,
        see :mod:`lava_spiked.golden`). It does not warn on clipping:
        :meth:`lava_spiked.network.SpikingNetwork.infer` does, once per
        call."""
        if self._deltas is not None:  # a stream's own samples
            deltas, self._deltas = self._deltas, None
            sat, stray = (sum(deltas[var].values())
                          for var in ("sat_count", "stray_count"))
            self.clipped = {name: n for name, n in
                            deltas["clip_count"].items()
                            if name != self.plan.output}
        else:
            counts = self.events()
            totals = {var: sum(c.values()) for var, c in counts.items()}
            sat = totals["sat_count"] - self._counted["sat_count"]
            stray = totals["stray_count"] - self._counted["stray_count"]
            self._counted = totals
            clips = {name: n for name, n in counts["clip_count"].items()
                     if name != self.plan.output}  # the readout never clips
            self.clipped = {name: n - self._clip_seen.get(name, 0)
                            for name, n in clips.items()}
            self._clip_seen = clips
        if stray:
            raise RuntimeError(f"{stray} spikes arrived outside their "
                               "window: the schedule is wrong (a bug)")
        if sat:
            warnings.warn(f"{sat} saturation events in the integer state",
                          RuntimeWarning, stacklevel=3)
        return sat

    def stop(self) -> None:
        """Stop all Lava processes (idempotent)."""
        self.runner.stop()


def process_events(proc: ty.Any) -> ty.Dict[str, int]:
    """The counters of :data:`COUNTERS` that ``proc`` has -> their value
    (cumulative over runs)."""
    return {var: int(getattr(proc, var).get()[0])
            for var in COUNTERS if hasattr(proc, var)}


def count_events(processes: ty.Mapping[str, ty.Any]
                 ) -> ty.Dict[str, ty.Dict[str, int]]:
    """Saturation, stray-input and clipping events of ``processes`` (name
    -> process): ``sat_count``, ``stray_count`` and ``clip_count`` -> name
    -> count, for the processes that have the counter (cumulative over
    runs)."""
    counts = {name: process_events(proc) for name, proc in processes.items()}
    return {var: {name: c[var] for name, c in counts.items() if var in c}
            for var in COUNTERS}


class Runner:
    """The one run/stop routine of a Lava network, keyed by any of its
    processes: every failure or interrupt stops all processes before it
    propagates (see the module docstring)."""

    def __init__(self, process: ty.Any) -> None:
        self.process = process
        self.started = self.stopped = False
        #: seconds taken by Lava's compile and by its runtime's start-up
        #: (forking the processes, building the models), once started
        self.timings: ty.Dict[str, float] = {}
        self._finalizer: ty.Optional[weakref.finalize] = None

    def run(self, condition, run_cfg) -> None:
        """Run as ``Process.run`` does.

        Raises
        ------
        RuntimeError
            If the network was stopped (its processes are gone).
        """
        if self.stopped:
            raise RuntimeError("this Lava network was stopped; build a new "
                               "one (SpikingNetwork.run and infer do)")
        try:
            with terminate_raises():
                if self.process.runtime is None:
                    self._start(run_cfg)
                self.process.run(condition=condition)
            self.started = True
        except BaseException:
            self.stop()
            raise

    def _start(self, run_cfg) -> None:
        """Compile, then fork the children with SIGINT ignored; register
        the exit-time stop. A Ctrl+C meanwhile is held until the last
        child exists, then delivered (the caller stops the network): raised
        at once it could be lost, in a garbage collector's callback (which
        Python reports and ignores) during the compile, or in the parent
        while it ignores SIGINT for the fork."""
        t0 = time.perf_counter()
        with _uninterrupted():
            executable = self.process.compile(run_cfg)
            t1 = time.perf_counter()
            with _children_ignore_sigint(), _forks_from_library_threads():
                self.process.create_runtime(executable=executable)
        self.timings = dict(compile_s=t1 - t0,
                            start_s=time.perf_counter() - t1)
        self._finalizer = weakref.finalize(self, _stop_runtime,
                                           self.process.runtime)

    def stop(self) -> None:
        """Stop all processes (idempotent; see :func:`_stop_runtime`)."""
        self.stopped = True
        if self._finalizer is not None:
            self._finalizer()  # runs _stop_runtime once, then detaches
        elif self.process.runtime is not None:
            _stop_runtime(self.process.runtime)


#: Seconds that a stop may take before the children are terminated (a
#: clean stop of a large network on a loaded 2-core machine takes several).
STOP_TIMEOUT = 20.0


def _stop_runtime(runtime, timeout: float = STOP_TIMEOUT) -> None:
    """Stop a Lava runtime; if it does not answer within ``timeout``
    seconds (a child died, or an interrupt cut a message exchange short),
    terminate its OS processes and its shared-memory manager instead.
    Lava's stop runs in a watchdog thread, or at interpreter exit (where
    Python 3.12+ starts no thread) in this one under an alarm."""
    if getattr(runtime, "_stopped_by_lava_spiked", False):
        return
    runtime._stopped_by_lava_spiked = True
    errors: ty.List[Exception] = []

    def stop() -> None:
        try:
            _stop_cleanly(runtime)
        except Exception as err:  # reported below, after the cleanup
            errors.append(err)

    actors = getattr(runtime, "_messaging_infrastructure", None)
    actors = actors.actors if actors is not None else []
    if not getattr(runtime, "_is_started", True):  # forked, never run (an
        # interrupt right after the fork): its processes wait for a first
        # command, and Lava's stop would join them forever
        _terminate(runtime, actors, timeout)
        return
    worker = threading.Thread(target=stop, daemon=True,
                              name="lava-spiked-stop")
    try:
        worker.start()
    except RuntimeError:  # Python 3.12+ starts no thread at interpreter
        # exit (atexit runs this for a network never stopped); the main
        # thread stops it, bounded by an alarm
        if _one_died(actors):
            errors.append(ChildProcessError("a Lava process died"))
        elif not _within(stop, timeout):
            errors.append(TimeoutError(f"no answer in {timeout} s"))
    deadline = time.monotonic() + timeout
    # a child killed by a signal never answers: stop waiting at once
    while worker.is_alive() and time.monotonic() < deadline and \
            not _one_died(actors):
        worker.join(0.05)
    if worker.is_alive() or errors:
        _terminate(runtime, actors, timeout)
        warnings.warn("Lava did not stop cleanly ("
                      f"{errors[0] if errors else f'no answer in {timeout} s'}"
                      "): its processes were terminated", RuntimeWarning,
                      stacklevel=3)


def _stop_cleanly(runtime) -> None:
    """Lava's ``Runtime.stop``, reading past the replies that an interrupt
    left unread. Lava's own stop reads one reply besides each runtime
    service's TERMINATED and raises on any other: an interrupted run's
    DONE is one, and when TERMINATED comes a moment after it (a loaded
    machine), Lava's check for a second message finds nothing yet and it
    raises ("Runtime Received [0.]"), leaving the processes to be
    terminated. A service that never answers is the caller's watchdog's
    to handle."""
    from lava.magma.runtime.mgmt_token_enums import (MGMT_COMMAND,
                                                     MGMT_RESPONSE,
                                                     enum_equal)
    try:
        if runtime._is_started:
            for send_port in runtime.runtime_to_service:
                send_port.send(MGMT_COMMAND.STOP)
            for recv_port in runtime.service_to_runtime:
                while not enum_equal(recv_port.recv(),
                                     MGMT_RESPONSE.TERMINATED):
                    pass  # a reply to a command before the stop
            runtime.join()
            runtime._is_running = runtime._is_started = False
    finally:
        runtime._messaging_infrastructure.stop()
    runtime._watchdog_manager.stop()


def _terminate(runtime, actors: list, timeout: float) -> None:
    """End a runtime's OS processes (SIGTERM, then SIGKILL after
    ``timeout`` seconds) and its shared-memory manager."""
    running = [a for a in actors if _exitcode(a) is None]
    for actor in running:
        with contextlib.suppress(ValueError):  # closed by Lava meanwhile
            actor.terminate()
    for actor in running:  # Lava's join takes no timeout
        with contextlib.suppress(ValueError):  # closed by Lava meanwhile
            multiprocessing.Process.join(actor, timeout)
        if _exitcode(actor) is None:
            actor.kill()
    with contextlib.suppress(Exception):
        runtime._messaging_infrastructure.smm.shutdown()


class _Late(BaseException):
    """Raised by the alarm of :func:`_within`."""


def _within(fn: ty.Callable[[], None], timeout: float) -> bool:
    """Call ``fn`` in the main thread, cut short by SIGALRM after
    ``timeout`` seconds (a lock or a blocking read that Lava waits on
    returns to Python for the signal); whether it returned in time."""
    def late(signum, frame):
        raise _Late

    previous = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        fn()
        return True
    except _Late:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_died(actors: list) -> bool:
    """Whether a Lava child ended with an error or a signal: it will never
    answer a stop."""
    return any(_exitcode(a) not in (None, 0) for a in actors)


def _exitcode(actor) -> ty.Optional[int]:
    """Exit code of a Lava child (0 once Lava has joined and closed it;
    None while it runs), read without reaping it: Lava's stop joins the
    children in another thread, and a child reaped here makes that join's
    ``waitpid`` fail and return early, after which Lava's ``close`` raises
    "Cannot close a process while it is still running" (seen often on
    Python 3.13)."""
    try:
        pid, code = actor.pid, actor._popen.returncode
    except (ValueError, AttributeError):  # closed by Lava's own join: it
        return 0  # ended normally
    if code is not None:
        return code
    try:
        info = os.waitid(os.P_PID, pid,
                         os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by Lava's join meanwhile (and
        popen = actor._popen  # closed: None)
        return 0 if popen is None else popen.returncode
    if info is None:
        return None
    killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
    return -info.si_status if killed else info.si_status


#: pid of this process while it forks Lava's children (else None)
_forking_parent: ty.Optional[int] = None
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _in_lava_child() -> None:
    """In a child forked for Lava: ignore SIGINT (Ctrl+C is the parent's
    to handle), ask Linux for SIGKILL when the parent dies, and exit if it
    died already (before the request)."""
    if _forking_parent is None:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _forking_parent:
        os._exit(1)


os.register_at_fork(after_in_child=_in_lava_child)


@contextlib.contextmanager
def _forks_from_library_threads() -> ty.Iterator[None]:
    """While Lava forks its processes: no DeprecationWarning that this
    process has threads (Python 3.12+ warns on every fork then).

    The threads are not ours (lava-spiked's progress bars start none, see
    :mod:`lava_spiked.progress`) but torch's OpenMP workers and numpy's
    OpenBLAS workers, idle between parallel regions. A fork copies only
    the forking thread, and a lock that another thread held stays held in
    the child, which deadlocks only if the child takes that lock. The
    children take none of these: they run Lava's runtime and the numpy
    ProcessModels, never torch (so never OpenMP); OpenBLAS stops its
    workers before a fork and starts new ones in a child (its
    ``pthread_atfork`` handlers); glibc's malloc and CPython's own locks
    are made safe across ``fork`` by glibc and CPython themselves. So this
    fork is safe, and the warning is filtered here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", r"This process \(pid=\d+\) is multi-threaded, use of "
            r"fork\(\) may lead to deadlocks", DeprecationWarning)
        yield


@contextlib.contextmanager
def _children_ignore_sigint() -> ty.Iterator[None]:
    """While Lava forks its processes: they ignore SIGINT and die with this
    process (:func:`_in_lava_child`; main thread only: the only one where
    Python delivers signals, and Linux ties a child's death signal to the
    thread that forked it, which must outlive the network)."""
    global _forking_parent
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # the children inherit this: SIGTERM (the fallback stop's terminate)
    # ends a child at once
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _forking_parent = os.getpid()
    try:
        yield
    finally:
        _forking_parent = None
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _uninterrupted() -> ty.Iterator[None]:
    """Hold a Ctrl+C back (main thread only), then deliver it: while the
    host reads or writes Vars (Lava moves a Var one element per message,
    and an exchange cut short leaves the runtime service waiting, so the
    network could not stop cleanly) and while a network compiles and
    forks (:meth:`Runner._start`). A second Ctrl+C interrupts at once (the
    children ignore SIGINT, so the exchange normally completes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: ty.List[int] = []

    def hold(signum, frame) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # as it would have been


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def terminate_raises() -> ty.Iterator[None]:
    """During a run (or a whole inference call), SIGTERM interrupts like
    Ctrl+C, so the network stops instead of dying with the parent (main
    thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
