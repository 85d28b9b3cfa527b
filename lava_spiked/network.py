"""Convert a PyTorch transformer and run it as a Lava network.

``convert(model, calibration_data, B=1.15, T=40)`` captures the model,
calibrates it and lowers it into a :class:`~lava_spiked.plan.Plan`; the
returned :class:`SpikingNetwork` builds its Lava processes only when a Lava
run is asked for, so converting a big model for the torch engine never pays
for Lava::

    net = convert(model, calib_images)
    with net:                                  # always stops the processes
        logits = net.infer(test_images, Loihi2SimCfg(select_tag="fixed_pt"))

The Lava network follows the Plan: a PhaseEncoder, a PhaseNeuron per layer,
a ``Sparse`` synapse per Plan synapse (its token-shared weight repeated for
every token: block-diagonal, ``tokens x C x K`` stored weights), SpikeDelays
where a source fired earlier than the others, and per attention the
TraceMatMul / PhaseNeuron / WOSSSoftmax / TraceMatMul /
NormalizedPhaseNeuron wiring of :func:`lava_spiked.lava_build.wire_attention`.
"""
import typing as ty

import numpy as np
import torch
from tqdm.auto import tqdm

from lava_spiked import fixed, golden
from lava_spiked.calibrate import calibrate
from lava_spiked.capture import Graph, capture, evaluate
from lava_spiked.plan import lower
from lava_spiked.validation import check_base, check_batch, check_steps


class SpikingNetwork:
    """A converted model: its Plan, and its Lava processes once run.

    Attributes
    ----------
    graph : Graph
        The captured populations and attention operations.
    sigmas : dict
        Calibrated scale per population (and ``<attention>:logits``).
    plan : Plan
        What every backend runs.
    B, T, num_steps
        The code and the steps per sample.
    processes : dict
        After the first Lava run: layer name -> its Lava process (synapses
        and delays under ``src->dst`` keys; attention stages under
        ``<attention>:qk``, ``:logits``, ``:softmax``, ``:av``).
    recorded : list of dict
        With ``record=True``: per inferred sample, layer name (and
        ``<attention>:logits`` / ``:softmax``) -> (fire steps, signs).
        Reading the probes costs about 13 us per element and step (Lava's
        Var.get), so record small networks only.
    """

    def __init__(self, graph: Graph, sigmas: ty.Dict[str, np.ndarray],
                 B: float, T: int, record: bool = False) -> None:
        self.graph, self.sigmas = graph, sigmas
        self.plan = lower(graph, sigmas, B, T)
        self.B, self.T = self.plan.B, self.plan.T
        self.num_steps = self.plan.num_steps
        self.record = record
        self.processes: ty.Dict[str, ty.Any] = {}
        self.recorded: ty.List[ty.Dict[str, ty.Tuple[np.ndarray,
                                                     np.ndarray]]] = []
        self._lava: ty.Any = None  # lava_build._LavaNetwork once run

    # ------------------------------------------------------------- golden
    def golden_float(self, sample: ty.Any) -> np.ndarray:
        """Closed form of the network for one sample (floating_pt)."""
        return golden.golden_float(self.plan, sample).readout

    def golden_fixed(self, sample: ty.Any) -> np.ndarray:
        """Integer golden model for one sample (fixed_pt, bit for bit)."""
        return golden.golden_fixed(self.plan, sample).readout

    def ann(self, samples: ty.Any) -> np.ndarray:
        """The captured network without quantisation (float64)."""
        x = check_batch("samples", samples, self.plan[self.plan.input].shape)
        return evaluate(self.graph, torch.from_numpy(x)).numpy()

    # ---------------------------------------------------------------- Lava
    def lava(self, tag: ty.Optional[str]) -> ty.Any:
        """The Lava processes for ``tag`` (``encoder``, ``readout``,
        ``processes``), built on first use and again after :meth:`stop` or
        for another tag (which stops the running ones first)."""
        if self._lava is not None and self._lava.tag != tag:
            self.stop()
        if self._lava is None:
            from lava_spiked.lava_build import _LavaNetwork
            self._lava = _LavaNetwork(self.plan, tag, self.record)
            self.processes = self._lava.processes
        return self._lava

    def run(self, condition, run_cfg) -> None:
        """Run the Lava network, as ``Process.run`` (Lava's own API)."""
        self.lava(getattr(run_cfg, "select_tag", None)).run(condition,
                                                                run_cfg)

    def infer(self, samples: ty.Any, run_cfg,
              progress: bool = True) -> np.ndarray:
        """Run samples one after another through Lava; decoded logits.

        Parameters
        ----------
        samples : array_like
            (n, *sample_shape) inputs (finite).
        run_cfg : lava RunConfig
            E.g. ``Loihi2SimCfg(select_tag="fixed_pt")``. Another tag than
            the running network's stops it and builds it anew.
        """
        x = check_batch("samples", samples, self.plan[self.plan.input].shape)
        tag = getattr(run_cfg, "select_tag", None)
        lava = self.lava(tag)
        out, logits = self.plan[self.plan.output], []
        try:
            for sample in tqdm(x, desc=f"Lava {tag or ''}",
                               disable=not progress, leave=False):
                state = lava.infer_one(sample, run_cfg)
                logits.append(state * 2.0 ** -fixed.STATE_FRAC_BITS *
                              out.scale.reshape(out.shape))
                if self.record:
                    self.recorded.append(lava.read_probes())
        except BaseException:  # an interrupt between runs, a failed read
            self.stop()
            raise
        lava.check_counts()
        return np.array(logits)

    def stop(self) -> None:
        """Stop all Lava processes (idempotent); a later run or infer builds
        them anew, from the first step.

        A failed or interrupted run (Ctrl+C, SIGTERM) stops them itself,
        waiting at most ``lava_build.STOP_TIMEOUT`` seconds before it
        terminates them, and a network still running when the interpreter
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


def convert(model: torch.nn.Module, calibration_data: ty.Any,
            B: float = 1.15, T: int = 40, statistic: str = "max",
            percentile: float = 99.9, granularity: str = "channel",
            output: ty.Union[int, str] = 0,
            input_name: ty.Optional[str] = None, progress: bool = True,
            record: bool = False) -> SpikingNetwork:
    """Convert a PyTorch transformer into a phase-coded spiking network.

    Parameters
    ----------
    model : torch.nn.Module
        Built from supported operations (see :mod:`lava_spiked.capture`);
        not changed.
    calibration_data : array_like, torch.Tensor or iterable of batches
        (n, *sample_shape) inputs for calibration, separate from the data
        you evaluate on.
    B, T : float, int
        Base and window length of the phase code.
    statistic, percentile, granularity
        See :func:`lava_spiked.calibrate.calibrate`.
    output : int or str
        Which tensor of the model's output to convert: an index into its
        flattened tuples, dicts, dataclasses or Hugging Face outputs, or a
        key path such as ``"logits"``; default the first.
    input_name : str, optional
        The ``forward`` keyword that takes the data (e.g.
        ``"inputs_embeds"``); default the first positional parameter.
    record : bool
        Probe every layer's spikes in Lava (``SpikingNetwork.recorded``).

    Raises
    ------
    UnsupportedModelError
        Listing every unsupported operation.
    ValueError
        On invalid B, T or calibration data.
    """
    check_base(B), check_steps(T)
    first = next(iter(_first_batch(calibration_data)))
    graph = capture(model, tuple(first.shape[1:]), output, input_name)
    sigmas = calibrate(graph, calibration_data, statistic, percentile,
                       granularity, progress=progress)
    return SpikingNetwork(graph, sigmas, B, T, record)


def _first_batch(data: ty.Any) -> ty.Iterator[np.ndarray]:
    if isinstance(data, (np.ndarray, torch.Tensor)) or not hasattr(
            data, "__iter__"):
        arr = np.asarray(data.detach().cpu() if torch.is_tensor(data)
                         else data)
        if arr.ndim < 2 or arr.shape[0] == 0:
            raise ValueError(f"calibration_data must be (n, *sample_shape) "
                             f"with n > 0, got shape {arr.shape}")
        yield arr
        return
    for batch in data:
        yield np.asarray(batch[0] if isinstance(batch, (list, tuple))
                         else batch)
        return
    raise ValueError("calibration_data is empty")
