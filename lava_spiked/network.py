"""A converted network: its Plan, and its Lava processes once run.

:func:`lava_spiked.convert` returns a :class:`SpikingNetwork`, and so does
:func:`lava_spiked.export.load` (from a file, without torch). It builds its
Lava processes only when a Lava run is asked for, so converting a big model
for the torch engine never pays for Lava::

    net = lava_spiked.convert(model, calib_images)
    with net:                                  # always stops the processes
        logits = net.infer(test_images, Loihi2SimCfg(select_tag="fixed_pt"))

The Lava network follows the Plan: a PhaseEncoder, a PhaseNeuron per layer,
a ``Sparse`` synapse per Plan synapse (its token-shared weight repeated for
every token: block-diagonal, ``tokens x C x K`` stored weights), SpikeDelays
where a source fired earlier than the others, and per attention the
TraceMatMul / PhaseNeuron / WOSSSoftmax / TraceMatMul /
NormalizedPhaseNeuron wiring of
:func:`lava_spiked.lava_backend.build.wire_attention`.

A streaming network (no runtime mask, no probes) groups these processes by
the Plan's blocks (:meth:`lava_spiked.plan.Plan.blocks`: one attention
each) into :class:`lava_spiked.processes.SpikingBlock` processes, and the
run configuration chooses how Lava runs a block:

- ``Loihi2SimCfg(select_tag="fixed_pt")``: fused, the whole block in one OS
  process (Lava's default for a Process with a leaf model of the tag);
- ``Loihi2SimCfg(select_tag="fixed_pt", select_sub_proc_model=True)``:
  neuron level, every process in its own OS process.

Both give the same readout and event counts bit for bit; fused is several
times faster (``benchmarks/lava_fused.py``).
"""
import typing as ty

import numpy as np

from lava_spiked.golden.models import (clip_sizes, golden_fixed, golden_float,
                                       warn_clipped)
from lava_spiked.plan import Plan
from lava_spiked.progress import bar
from lava_spiked.validation import check_batch


class SpikingNetwork:
    """A converted model: its Plan, and its Lava processes once run.

    Parameters
    ----------
    plan : Plan
        What every backend runs.
    graph : lava_spiked.capture.Graph, optional
        The captured model it was lowered from (needed by :meth:`ann`;
        absent when loaded from a file).
    sigmas : dict, optional
        Calibrated scale per population (and ``<attention>:logits``).
    record : bool
        Probe every layer's spikes in Lava.

    Attributes
    ----------
    plan, graph, sigmas
        As given.
    B, T, num_steps
        The code and the steps per sample.
    processes : dict
        After the first Lava run: layer name -> its Lava process (synapses
        and delays under ``src->dst`` keys; attention stages under
        ``<attention>:qk``, ``:logits``, ``:softmax``, ``:av``). In a block
        that runs fused these are not compiled: read the event counters
        with :meth:`events`.
    recorded : list of dict
        With ``record=True``: per inferred sample, layer name (and
        ``<attention>:logits`` / ``:softmax``) -> (fire steps, signs).
        Reading the probes costs about 13 us per element and step (Lava's
        Var.get), so record small networks only.
    """

    def __init__(self, plan: Plan, graph: ty.Any = None,
                 sigmas: ty.Optional[ty.Dict[str, np.ndarray]] = None,
                 record: bool = False) -> None:
        self.plan, self.graph, self.sigmas = plan, graph, sigmas
        self.B, self.T = self.plan.B, self.plan.T
        self.num_steps = self.plan.num_steps
        self.record = record
        self.processes: ty.Dict[str, ty.Any] = {}
        self.recorded: ty.List[ty.Dict[str, ty.Tuple[np.ndarray,
                                                     np.ndarray]]] = []
        self._lava: ty.Any = None  # lava_backend.runs.LavaNetwork once run
        #: population -> neurons clipped in the last :meth:`infer` call
        self.clipped: ty.Dict[str, int] = {}

    def recode(self, B: ty.Union[None, float, str,
                                 ty.Sequence[float]] = None,
               T: ty.Optional[int] = None,
               target: ty.Optional[str] = None,
               calibration_data: ty.Any = None,
               attention_mask: ty.Any = None,
               progress: bool = True) -> "SpikingNetwork":
        """The same calibrated model with another phase code or integer
        target: lowered anew at ``B``, ``T`` and ``target`` (default: this
        network's; see :func:`lava_spiked.plan.lower`), without calibrating
        again (a sweep over T and B costs one calibration).

        ``B="auto"`` (or a sequence of candidate bases) chooses B as
        :func:`lava_spiked.convert` does, on ``calibration_data`` (and its
        ``attention_mask``), which it then needs
        (:func:`lava_spiked.code_error.choose_base`).

        Raises
        ------
        ValueError
            For a network without its captured model (loaded from a file),
            or ``B="auto"`` without ``calibration_data``.
        """
        if self.graph is None or self.sigmas is None:
            raise ValueError("this network has no captured model (it was "
                             "loaded from a file): convert the model again "
                             "with the new B and T")
        from lava_spiked.code_error import candidates, choose_base
        from lava_spiked.plan import lower
        T = self.T if T is None else T
        target = self.plan.target if target is None else target
        grid = candidates(B)
        if grid is None:
            plan = lower(self.graph, self.sigmas, self.B if B is None else B,
                         T, target)
        elif calibration_data is None:
            raise ValueError("B='auto' chooses B on calibration samples: "
                             "pass calibration_data=")
        else:
            plan = choose_base(self.graph, self.sigmas, T, calibration_data,
                               grid, attention_mask, target,
                               progress=progress)
        return SpikingNetwork(plan, self.graph, self.sigmas, self.record)

    # ------------------------------------------------------------- golden
    def golden_float(self, sample: ty.Any,
                     attention_mask: ty.Any = None) -> np.ndarray:
        """Closed form of the network for one sample (floating_pt);
        ``attention_mask`` (N,) for a network that takes one."""
        return golden_float(self.plan, sample, attention_mask).readout

    def golden_fixed(self, sample: ty.Any,
                     attention_mask: ty.Any = None) -> np.ndarray:
        """Integer golden model for one sample (fixed_pt, bit for bit);
        ``attention_mask`` (N,) for a network that takes one."""
        return golden_fixed(self.plan, sample, attention_mask).readout

    def ann(self, samples: ty.Any,
            attention_mask: ty.Any = None) -> np.ndarray:
        """The captured network without quantisation (float64), the model
        itself; ``attention_mask`` (n, N) for a network that takes one."""
        if self.graph is None:
            raise ValueError("this network has no captured model (it was "
                             "loaded from a file): no ANN to evaluate")
        import torch

        from lava_spiked.capture import run_graph
        x = check_batch("samples", samples, self.plan[self.plan.input].shape)
        mask = self.plan.check_mask(attention_mask, len(x))
        return run_graph(self.graph, torch.from_numpy(x), attention_mask=None
                         if mask is None else torch.from_numpy(mask)).numpy()

    # ---------------------------------------------------------------- Lava
    def lava(self, tag: ty.Optional[str]) -> ty.Any:
        """The Lava processes for ``tag`` (``encoder``, ``readout``,
        ``processes``), built on first use and again after :meth:`stop` or
        for another tag (which stops the running ones first)."""
        if self._lava is not None and self._lava.tag != tag:
            self.stop()
        if self._lava is None:
            from lava_spiked.lava_backend.runs import LavaNetwork
            from lava_spiked.lava_backend.lifecycle import uninterrupted

            # a Ctrl+C is held while the processes are built, then
            # delivered: raised in a garbage collector's callback it would
            # be reported and ignored (and building makes much garbage)
            with uninterrupted():
                self._lava = LavaNetwork(self.plan, tag, self.record)
                self.processes = self._lava.processes
        return self._lava

    def run(self, condition, run_cfg) -> None:
        """Run the Lava network, as ``Process.run`` (Lava's own API)."""
        self.lava(getattr(run_cfg, "select_tag", None)).run(condition,
                                                                run_cfg)

    def infer(self, samples: ty.Any, run_cfg, progress: bool = True,
              attention_mask: ty.Any = None) -> np.ndarray:
        """Run samples through Lava; decoded logits.

        Samples stream: a new one enters every ``plan.stream_period``
        steps while the earlier ones are still in the network (n samples
        take ``(n - 1) * stream_period + num_steps`` steps), with the same
        results as one at a time. A network with a runtime token mask or
        ``record=True`` takes one sample at a time (its masks and probes
        are per sample).

        Parameters
        ----------
        samples : array_like
            (n, *sample_shape) inputs (finite).
        run_cfg : lava RunConfig
            E.g. ``Loihi2SimCfg(select_tag="fixed_pt")`` (blocks fused;
            ``select_sub_proc_model=True``: every process on its own). Another
            tag than the running network's stops it and builds it anew.
        attention_mask : array_like, optional
            (n, N) token masks, for a network that takes one (set in the
            running network before each sample; nothing is rebuilt).

        Returns
        -------
        numpy.ndarray
            (n, ...) decoded logits.

        Notes
        -----
        After the call, ``self.clipped`` holds population name (the input,
        every spiking layer and every ``<attention>:logits``; not the
        readout) -> neurons clipped over this call's samples (a value beyond
        its population's scale, which decodes to the scale: see
        :mod:`lava_spiked.golden.models`), as the engine's
        ``EngineResult.clipped`` summed over the batch. The call warns once
        (RuntimeWarning) naming the populations whose clipped fraction
        exceeds :data:`lava_spiked.golden.models.CLIP_WARN_FRACTION`.
        """
        x = check_batch("samples", samples, self.plan[self.plan.input].shape)
        valid = self.plan.check_mask(attention_mask, len(x))
        tag = getattr(run_cfg, "select_tag", None)
        lava = self.lava(tag)
        from lava_spiked.lava_backend.lifecycle import terminate_raises
        with terminate_raises():
            logits = self._infer(lava, x, valid, run_cfg, progress)
        self.clipped = dict(lava.clipped)
        warn_clipped(self.clipped, clip_sizes(self.plan), len(x))
        return self.plan.pool(np.array(logits), valid)

    def _infer(self, lava, x: np.ndarray, valid: ty.Optional[np.ndarray],
               run_cfg, progress: bool) -> ty.List[np.ndarray]:
        """The readouts of ``x`` in Lava, decoded (a failure or interrupt
        stops the network), then the event checks."""
        tag = getattr(run_cfg, "select_tag", None)
        logits = []
        try:
            if lava.streams:
                logits = [self.plan.decode_readout(state) for state in
                          lava.infer(x, run_cfg, progress)]
            else:
                for i, sample in enumerate(bar(x, f"Lava {tag or ''}",
                                               progress)):
                    logits.append(self.plan.decode_readout(lava.infer_one(
                        sample, run_cfg,
                        None if valid is None else valid[i])))
                    if self.record:
                        self.recorded.append(lava.read_probes())
        except BaseException:  # an interrupt between runs, a failed read
            self.stop()
            raise
        lava.check_counts()
        return logits

    def events(self) -> ty.Dict[str, ty.Dict[str, int]]:
        """The running Lava network's event counters, cumulative over its
        runs: ``sat_count``, ``stray_count`` and ``clip_count`` -> process
        name (as in :attr:`processes`) -> count, read from each process or,
        when its block runs fused, from the block."""
        if self._lava is None:
            raise RuntimeError("no Lava network is running: run or infer "
                               "first")
        return self._lava.events()

    def stop(self) -> None:
        """Stop all Lava processes (idempotent); a later run or infer builds
        them anew, from the first step.

        A failed or interrupted run (Ctrl+C, SIGTERM) stops them itself,
        waiting at most ``lava_backend.lifecycle.STOP_TIMEOUT`` seconds before
        it terminates them, and a network still running when the interpreter
        exits is stopped then.
        """
        if self._lava is not None:
            lava, self._lava = self._lava, None
            lava.stop()

    def __getstate__(self) -> dict:
        """Pickle (and ``copy``) the converted network, never its Lava
        processes: a copy builds its own on its first run."""
        state = dict(self.__dict__)
        state.update(_lava=None, processes={})
        return state

    def __enter__(self) -> "SpikingNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:
        try:
            self.stop()
        except Exception:  # interpreter shutdown: nothing left to stop
            pass
