"""Build the Lava processes of a Plan: one process per population (and per
synapse, delay line and attention stage), wired, grouped into the Plan's
:class:`~lava_spiked.processes.SpikingBlock` s unless probed.

Runs, streaming and event counters: :mod:`lava_spiked.lava_backend.runs`;
the OS processes and their signals:
:mod:`lava_spiked.lava_backend.lifecycle`.
"""
import typing as ty

import numpy as np
import scipy.sparse

from lava_spiked.lava_backend.imports import (
    ActivationPhaseNeuron, LayerNormPhaseNeuron, NormalizedPhaseNeuron,
    PhaseEncoder, PhaseNeuron, RingBuffer, SignMode, Sparse, SpikeDelay,
    SpikingBlock, TraceMatMul, WOSSSoftmax, connect)
from lava_spiked.numerics import fixed
from lava_spiked.plan import (ActivationStage, Layer, LoweredAttention,
                              NormStage, Plan, Synapse)
from lava_spiked.plan.loihi2 import MAX_DELAY, connections


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
    :class:`lava_spiked.lava_backend.self_attention.SpikingSelfAttention`.

    ``qk`` / ``av`` are the trace-product mantissas with exponents
    ``qk_exp`` / ``av_exp``; ``logit_bias`` is in real units; ``kw`` holds
    B, T and period. Schedule: the logits integrate from ``logit_start``
    (one step after the operands fire), the softmax T steps later, the
    product with V reads the softmax spikes when they fire (``logit_start
    + 2T``) and the output integrates from ``out_start``. The ``*_bits``
    are the ``fixed_pt`` formats of :class:`lava_spiked.plan.LoweredAttention`
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


class LavaProcesses:
    """The Lava processes of a Plan for one tag, built and wired (runs:
    :class:`~lava_spiked.lava_backend.runs.LavaNetwork`)."""

    def __init__(self, plan: Plan, tag: ty.Optional[str],
                 record: bool) -> None:
        self.plan, self.tag = plan, tag
        self.processes: ty.Dict[str, ty.Any] = {}
        self.probes: ty.Dict[str, ty.Tuple[ty.Any, int]] = {}
        #: samples enter every ``period`` steps (LavaNetwork.infer)
        self.streams = not plan.runtime_inputs and not record
        self.record = record  # probes need every process on its own
        self._build()
        if record:
            self._add_probes()

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

    def _attention(self, op: LoweredAttention, layer: Layer) -> None:
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
