"""Run the Lava processes of a Plan: inference one sample at a time or
streamed (a new sample every period while earlier ones are still in the
network), probes, and the event counters (saturation, stray input,
clipping) checked after each call.
"""
import typing as ty
import warnings

import numpy as np

from lava_spiked.lava_backend.build import LavaProcesses
from lava_spiked.lava_backend.imports import COUNTERS, RunSteps
from lava_spiked.lava_backend.lifecycle import Runner, uninterrupted
from lava_spiked.numerics import phase
from lava_spiked.plan import Plan
from lava_spiked.progress import bar


class LavaNetwork(LavaProcesses):
    """The Lava processes of a Plan for one tag, and their run/stop."""

    def __init__(self, plan: Plan, tag: ty.Optional[str],
                 record: bool) -> None:
        self._counted = {"sat_count": 0, "stray_count": 0, "clip_count": 0}
        self._clip_seen: ty.Dict[str, int] = {}
        #: population -> clipped neurons since the previous check_counts
        #: (see :meth:`check_counts`)
        self.clipped: ty.Dict[str, int] = {}
        self.steps = 0  # steps run so far
        #: event counts of the last stream's samples (see check_counts)
        self._deltas: ty.Optional[ty.Dict[str, ty.Dict[str, int]]] = None
        super().__init__(plan, tag, record)
        self.runner = Runner(self.encoder)  # never inside a block

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
            with uninterrupted():
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
                    with uninterrupted():
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
        with uninterrupted():
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
        with uninterrupted():
            return self.sink.data.get()[..., out.window.fire]

    def _set_masks(self, masks: ty.Dict[str, np.ndarray]) -> None:
        """Set the processes' masks, through their block where they have
        one."""
        for k, block in enumerate(self.blocks):
            mine = {name: mask for name, mask in masks.items()
                    if self._home.get(name) == k}
            if mine:
                with uninterrupted():
                    block.set_masks(mine, self.runner.started)
        for name, mask in masks.items():
            if name not in self._home:
                self._set(self.processes[name].mask,
                          np.asarray(mask, np.int32))

    def read_probes(self) -> ty.Dict[str, ty.Tuple[np.ndarray, np.ndarray]]:
        with uninterrupted():
            return {name: phase.first_spikes(sink.data.get(), fire,
                                             self.plan.T)
                    for name, (sink, fire) in self.probes.items()}

    def check_counts(self) -> int:
        """Raise on stray input, warn on saturation since the last check
        (the counters are cumulative); return the saturation events.

        Also sets :attr:`clipped`: population name (the encoder, every
        spiking layer, every ``<attention>:logits``; not the readout) ->
        neurons clipped since the last check (their ``clip_count`` Vars,
        see :mod:`lava_spiked.golden.models`). It does not warn on clipping:
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
