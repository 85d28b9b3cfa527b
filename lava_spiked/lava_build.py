"""Build and run a Plan as Lava processes: the one run/stop routine.

Only this module (and the Processes) import Lava, so a Plan converts and
runs on the engine where Lava is not installed.

Lava runs every ProcessModel in its own OS process, forked when the network
first runs. A terminal's Ctrl+C reaches the whole process group; a child
that dies of it leaves the parent waiting forever on a channel. So the
children are forked ignoring SIGINT and only this (parent) process handles
it: the interrupt stops the network (bounded wait, then the children are
terminated) and propagates. SIGTERM during a run does the same, and a
finaliser stops a network still running when the interpreter exits.
"""
import contextlib
import multiprocessing
import signal
import threading
import time
import typing as ty
import warnings
import weakref

import numpy as np
import scipy.sparse

from lava_spiked import fixed, phase
from lava_spiked.plan import Attention, Layer, Plan, Synapse

try:
    from lava.magma.core.run_conditions import RunSteps
    from lava.proc.io.sink import RingBuffer
    from lava.proc.sparse.process import Sparse
    from lava.utils.weightutils import SignMode

    from lava_spiked.processes import (NormalizedPhaseNeuron, PhaseEncoder,
                                       PhaseNeuron, SpikeDelay, TraceMatMul,
                                       WOSSSoftmax)
except (ImportError, ValueError) as err:  # ValueError: unpatched lava
    raise ImportError(
        "Lava runs need lava-nc 0.10.0, installed and patched for Python "
        "3.11: run `make setup` (or `bash scripts/setup.sh`) in the "
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


class _LavaNetwork:
    """The Lava processes of a Plan for one tag, and their run/stop."""

    def __init__(self, plan: Plan, tag: ty.Optional[str],
                 record: bool) -> None:
        self.plan, self.tag = plan, tag
        self.processes: ty.Dict[str, ty.Any] = {}
        self.probes: ty.Dict[str, ty.Tuple[ty.Any, int]] = {}
        self._counted = {"sat_count": 0, "stray_count": 0}
        self.started = self.stopped = False
        self._finalizer: ty.Optional[weakref.finalize] = None
        self._build()
        if record:
            self._add_probes()

    # --------------------------------------------------------------- build
    def _build(self) -> None:
        plan, T = self.plan, self.plan.T
        self.kw = dict(B=plan.B, T=T, period=plan.num_steps)
        first = plan[plan.input]
        self.encoder = PhaseEncoder(data=np.zeros(first.shape),
                                    scale=first.scale.reshape(first.shape),
                                    start=0, **self.kw)
        self.processes[first.name] = self.encoder
        for layer in plan.layers[1:]:
            op = plan.attention_of(layer.name)
            if op is not None:
                self._attention(op, layer)
                continue
            neuron = PhaseNeuron(
                shape=layer.shape, start=layer.window.start,
                weight_exp=layer.weight_exp,
                bias=(layer.bias * layer.scale).reshape(layer.shape),
                scale=layer.scale.reshape(layer.shape),
                unipolar=layer.kind == "relu",
                readout=layer.kind == "readout", **self.kw)
            self.processes[layer.name] = neuron
            for syn in layer.synapses:
                self._connect(syn, layer, neuron)
        self.readout = self.processes[plan.output]
        # the readout sends its membrane once, when its fire window opens;
        # the sink keeps a whole sample period
        self.sink = RingBuffer(shape=plan[plan.output].shape,
                               buffer=plan.num_steps)
        self.readout.s_out.connect(self.sink.a_in)

    def _connect(self, syn: Synapse, layer: Layer, neuron) -> None:
        src = self.plan[syn.src]
        port = self.processes[src.name].s_out
        delay = layer.window.start - src.window.fire - 1
        if delay > 0:
            key = f"{src.name}->delay{delay}"
            if key not in self.processes:
                self.processes[key] = SpikeDelay(shape=src.shape, delay=delay)
                port.connect(self.processes[key].s_in)
            port = self.processes[key].s_out
        key, i = f"{src.name}->{layer.name}", 1
        while key in self.processes:
            key, i = f"{src.name}->{layer.name}#{i}", i + 1
        sparse = Sparse(weights=sparse_weights(syn, layer.size, src.size),
                        num_message_bits=fixed.SPIKE_PAYLOAD_BITS,
                        sign_mode=SignMode.MIXED)
        self.processes[key] = sparse
        port.flatten().connect(sparse.s_in)
        sparse.a_out.reshape(layer.shape).connect(neuron.a_in)

    def _attention(self, op: Attention, layer: Layer) -> None:
        T, kw, plan = self.plan.T, self.kw, self.plan
        fx, fv = plan[op.x].window.fire, plan[op.v].window.fire
        qk = TraceMatMul(x_shape=plan[op.x].shape, y_shape=plan[op.y].shape,
                         weights=op.qk, x_start=fx, y_start=fx,
                         y_transposed=True, **kw)
        logits = PhaseNeuron(shape=op.qk.shape, start=op.logit_start,
                             weight_exp=op.qk_exp - fixed.GAIN_FRAC_BITS,
                             bias=op.logit_bias * op.logit_scale,
                             scale=op.logit_scale, **kw)
        soft = WOSSSoftmax(shape=op.qk.shape, start=op.logit_start + T,
                           scale=op.logit_scale, mask=op.mask, **kw)
        av = TraceMatMul(x_shape=op.qk.shape, y_shape=plan[op.v].shape,
                         weights=op.av, x_start=op.logit_start + 2 * T,
                         y_start=fv, y_transposed=True, **kw)
        out = NormalizedPhaseNeuron(
            shape=layer.shape, start=layer.window.start,
            weight_exp=op.av_exp - fixed.GAIN_FRAC_BITS,
            scale=layer.scale.reshape(layer.shape), **kw)
        self.processes[op.x].s_out.connect(qk.x_in)
        self.processes[op.y].s_out.connect(qk.y_in)
        qk.a_out.connect(logits.a_in)
        logits.s_out.connect(soft.s_in)
        soft.s_out.connect(av.x_in)
        self.processes[op.v].s_out.connect(av.y_in)
        av.a_out.connect(out.a_in)
        soft.r_out.connect(out.r_in)
        self.processes.update({
            f"{op.out}:qk": qk, op.logits: logits, op.softmax: soft,
            f"{op.out}:av": av, op.out: out})

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
        """The one run routine: any failure or interrupt stops every
        process before it propagates.

        Raises
        ------
        RuntimeError
            If the network was stopped (its processes are gone).
        """
        if self.stopped:
            raise RuntimeError("this Lava network was stopped; build a new "
                               "one (SpikingNetwork.run and infer do)")
        try:
            with _terminate_raises():
                if self.readout.runtime is None:
                    self._start(run_cfg)
                self.readout.run(condition=condition)
            self.started = True
        except BaseException:
            self.stop()
            raise

    def _start(self, run_cfg) -> None:
        """Compile, then fork the children with SIGINT ignored (they
        inherit the disposition); register the exit-time stop."""
        executable = self.readout.compile(run_cfg)
        with _children_ignore_sigint():
            self.readout.create_runtime(executable=executable)
        self._finalizer = weakref.finalize(self, _stop_runtime,
                                           self.readout.runtime)

    def infer_one(self, sample: np.ndarray, run_cfg) -> np.ndarray:
        if not self.started:
            self.encoder.data.init = sample  # read at compile time
        else:
            self.encoder.data.set(sample)
        self.run(RunSteps(num_steps=self.plan.num_steps), run_cfg)
        out = self.plan[self.plan.output]
        state = self.sink.data.get()[..., out.window.fire]
        return state * 2.0 ** -fixed.STATE_FRAC_BITS * out.scale.reshape(
            out.shape)

    def read_probes(self) -> ty.Dict[str, ty.Tuple[np.ndarray, np.ndarray]]:
        return {name: phase.first_spikes(sink.data.get(), fire, self.plan.T)
                for name, (sink, fire) in self.probes.items()}

    def check_counts(self) -> None:
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
        """Stop all Lava processes (idempotent; see :func:`_stop_runtime`).
        """
        self.stopped = True
        if self._finalizer is not None:
            self._finalizer()  # runs _stop_runtime once, then detaches
        elif self.readout.runtime is not None:
            _stop_runtime(self.readout.runtime)


#: Seconds that a stop may take before the children are terminated.
STOP_TIMEOUT = 10.0


def _stop_runtime(runtime, timeout: float = STOP_TIMEOUT) -> None:
    """Stop a Lava runtime; if it does not answer within ``timeout``
    seconds (a child died, or an interrupt cut a message exchange short),
    terminate its OS processes and its shared-memory manager instead."""
    if getattr(runtime, "_stopped_by_lava_spiked", False):
        return
    runtime._stopped_by_lava_spiked = True
    errors: ty.List[Exception] = []

    def stop() -> None:
        try:
            runtime.stop()
        except Exception as err:  # reported below, after the cleanup
            errors.append(err)

    worker = threading.Thread(target=stop, daemon=True,
                              name="lava-spiked-stop")
    worker.start()
    actors = getattr(runtime, "_messaging_infrastructure", None)
    actors = actors.actors if actors is not None else []
    deadline = time.monotonic() + timeout
    # a child killed by a signal never answers: stop waiting at once
    while worker.is_alive() and time.monotonic() < deadline and not any(
            _exitcode(a) not in (None, 0) for a in actors):
        worker.join(0.05)
    if worker.is_alive() or errors:
        running = [a for a in actors if _exitcode(a) is None]
        for actor in running:
            actor.terminate()
        for actor in running:  # Lava's join takes no timeout
            multiprocessing.Process.join(actor, timeout)
            if actor.exitcode is None:
                actor.kill()
        with contextlib.suppress(Exception):
            runtime._messaging_infrastructure.smm.shutdown()
        warnings.warn("Lava did not stop cleanly ("
                      f"{errors[0] if errors else f'no answer in {timeout} s'}"
                      "): its processes were terminated", RuntimeWarning,
                      stacklevel=3)


def _exitcode(actor) -> ty.Optional[int]:
    """Exit code of a Lava child (0 once Lava has joined and closed it)."""
    try:
        return actor.exitcode
    except ValueError:  # closed by Lava's own join: it ended normally
        return 0


@contextlib.contextmanager
def _children_ignore_sigint() -> ty.Iterator[None]:
    """Ignore SIGINT while Lava forks its processes (main thread only: the
    only one where Python delivers signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _terminate_raises() -> ty.Iterator[None]:
    """During a run, SIGTERM interrupts like Ctrl+C, so the network stops
    instead of orphaning its children (main thread, default handler only).
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
