"""What the phase code does to a network's readout, and the base B chosen
by it (``convert(..., B="auto")``).

:func:`readout_error` is the squared error of a converted network's
``floating_pt`` logits against the float model's (the captured graph,
:func:`lava_spiked.capture.run_graph`), over the float logits' mean square.
The ``floating_pt`` logits come from the engine itself
(``Engine(net, "float")``, uncompiled): it *is* the floating_pt model of
the Plan, 8-bit weights and all, so no second model of the code has to be
kept in step with it. A separate batched model of the code on the graph
(the prototype ``quant_forward`` of ``benchmarks/lowt_calibration.py``)
gives the same logits to 1e-14 but took about twice as long per candidate
(256 samples, one thread: the bundled DigitsViT 0.03-0.04 s against
0.06-0.07 s, the 3-block Fashion ViT of that benchmark 0.31-0.33 s against
0.55-0.61 s, plus 0.05 s of lowering per B), so the engine is both the
simpler and the faster choice.

:func:`choose_base` lowers a calibrated graph once per candidate B (no
second calibration) and keeps the Plan of the least readout error on the
first :data:`AUTO_SAMPLES` calibration samples, with a
:class:`~lava_spiked.plan.CodeChoice` on it that records the candidates and
their errors. Why B and not the scales: at a given T the base trades the
resolution of the code (the step ratio B) against its range (B**-(T-1)),
and the error of the readout is a smooth, model-dependent function of it,
which the calibration samples alone rank as the test samples do
(``benchmarks/results/lowt_calibration.md``: at T = 16 it picked B = 1.25
on both measured models, halving the readout error of B = 1.4).
"""
import dataclasses
import typing as ty

import numpy as np
import torch

from lava_spiked.numerics import fixed
from lava_spiked.plan import CodeChoice, Plan, lower
from lava_spiked.progress import bar
from lava_spiked.validation import check_base, check_steps

#: Candidate bases of ``B="auto"``.
AUTO_B = (1.1, 1.15, 1.2, 1.25, 1.3, 1.4, 1.5)
#: Calibration samples (the first ones) that ``B="auto"`` measures on.
AUTO_SAMPLES = 256


def candidates(B: ty.Any) -> ty.Optional[ty.Tuple[float, ...]]:
    """The candidate bases that ``B`` asks to choose from: :data:`AUTO_B`
    for ``"auto"``, the values of a sequence of numbers, None for a single
    number (not checked here).

    Raises
    ------
    ValueError
        For another string, an empty sequence or a candidate outside
        (1, 2].
    """
    if isinstance(B, str):
        if B != "auto":
            raise ValueError(f"B must be a number in (1, 2], 'auto' or a "
                             f"sequence of candidate bases, got {B!r}")
        return AUTO_B
    if isinstance(B, (list, tuple, np.ndarray)):
        grid = tuple(check_base(b) for b in B)
        if not grid:
            raise ValueError("B: an empty sequence of candidate bases")
        return grid
    return None


def first_samples(data: ty.Any, sample_shape: ty.Tuple[int, ...],
                  n: int = AUTO_SAMPLES, attention_mask: ty.Any = None
                  ) -> ty.Tuple[np.ndarray, ty.Optional[np.ndarray]]:
    """The first ``n`` samples of calibration data (an array or an
    iterable of batches, as :func:`lava_spiked.calibration.calibrate`
    takes) and their rows of ``attention_mask``."""
    from lava_spiked.calibration import batches
    got: ty.List[np.ndarray] = []
    count = 0
    for x in batches(data, sample_shape, n, "calibration_data"):
        got.append(x.numpy()[:n - count])
        count += len(got[-1])
        if count >= n:
            break
    x = np.concatenate(got)
    mask = None if attention_mask is None else \
        np.asarray(attention_mask)[:len(x)]
    return x, mask


def readout_error(net: ty.Any, samples: ty.Any, attention_mask: ty.Any = None,
                  reference: ty.Optional[np.ndarray] = None) -> float:
    """The code's error on a network's readout: ``sum((y - r)**2) /
    sum(r**2)`` over the samples and logits, of the ``floating_pt``
    readout ``y`` (``Engine(net, "float")``) against the float model's
    ``r`` (:meth:`lava_spiked.network.SpikingNetwork.ann`).

    Parameters
    ----------
    net : SpikingNetwork
        A converted network with its captured model (not one loaded from a
        file), unless ``reference`` is given.
    samples : array_like
        (n, *sample_shape) inputs.
    attention_mask : array_like, optional
        (n, N) token masks, for a network that takes them.
    reference : numpy.ndarray, optional
        The float model's logits of ``samples`` where already computed.
    """
    from lava_spiked.engine import Engine
    x = np.asarray(samples, dtype=np.float64)
    ref = net.ann(x, attention_mask) if reference is None else \
        np.asarray(reference)
    with torch.no_grad():
        out = Engine(net, "float", compile=False)(
            x, record=False, warn=False,
            attention_mask=attention_mask).logits.cpu().numpy()
    return float(((out - ref) ** 2).sum() / (ref ** 2).sum())


def choose_base(graph: ty.Any, sigmas: ty.Dict[str, np.ndarray], T: int,
                calibration_data: ty.Any,
                grid: ty.Sequence[float] = AUTO_B,
                attention_mask: ty.Any = None, target: str = "lava",
                samples: int = AUTO_SAMPLES, progress: bool = True) -> Plan:
    """The Plan of a calibrated graph at window ``T`` whose base, among
    ``grid``, gives the least :func:`readout_error` on the first
    ``samples`` calibration samples; its ``code_choice`` records the
    candidates measured and their errors.

    A candidate at which the integer tables of ``fixed_pt`` keep fewer
    than T steps (:func:`lava_spiked.numerics.fixed.usable_steps`; e.g.
    B = 1.5 at T = 24) is left out: the floating_pt model measured here
    would not see the steps that fixed_pt loses.

    Costs one float forward of the samples through the graph and, per
    candidate, one lowering and one engine run (floating_pt): on one CPU
    thread the seven candidates of :data:`AUTO_B` took 0.3 s for the
    bundled DigitsViT (200 samples) and 4 s for a 3-block ViT of 17
    tokens x 64 channels (256 samples;
    ``benchmarks/results/lowt_calibration.md``).

    Raises
    ------
    ValueError
        If a candidate is not in (1, 2] or none keeps all T steps.
    """
    from lava_spiked.network import SpikingNetwork
    T = check_steps(T)
    grid = tuple(check_base(b) for b in grid)
    usable = tuple(b for b in grid if fixed.usable_steps(b, T) >= T)
    if not usable:
        raise ValueError(f"at T = {T} no candidate base of {grid} keeps all "
                         "T steps in fixed_pt's integer tables: use smaller "
                         "bases")
    x, mask = first_samples(calibration_data, tuple(graph[graph.input].shape),
                            samples, attention_mask)
    errors, ref, best = [], None, None
    for b in bar(usable, f"Choosing B (T = {T})", progress):
        net = SpikingNetwork(lower(graph, sigmas, b, T, target), graph,
                             sigmas)
        if ref is None:
            ref = net.ann(x, mask)
        errors.append(readout_error(net, x, mask, ref))
        # only the best Plan so far is kept: a large network's Plans are
        # gigabytes each; the first of equal errors wins, as in chosen
        if errors[-1] < min(errors[:-1], default=np.inf):
            best = net.plan
    choice = CodeChoice(usable, errors, len(x))
    return dataclasses.replace(best, code_choice=choice)
