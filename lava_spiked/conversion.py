"""``convert``: a PyTorch transformer into a :class:`SpikingNetwork`.

Capture (:mod:`lava_spiked.capture`), calibration
(:mod:`lava_spiked.calibration`) and lowering (:func:`lava_spiked.plan.lower`)
in one call; the network runs in Lava, on the engine, or goes to a file.
"""
import typing as ty

import numpy as np
import torch

from lava_spiked.calibration import absorb_masks, calibrate
from lava_spiked.calibration import center_logits as center_logits_of
from lava_spiked.capture import capture
from lava_spiked.capture.token_mask import capture_masked
from lava_spiked.code_error import candidates, choose_base
from lava_spiked.network import SpikingNetwork
from lava_spiked.plan import lower
from lava_spiked.validation import check_base, check_steps


def convert(model: torch.nn.Module, calibration_data: ty.Any,
            B: ty.Union[float, str, ty.Sequence[float]] = 1.15,
            T: int = 40, statistic: str = "max",
            percentile: float = 99.9, granularity: str = "channel",
            output: ty.Union[int, str] = 0,
            input_name: ty.Optional[str] = None, progress: bool = True,
            record: bool = False, attention_mask: ty.Any = None,
            mean_pool: bool = False, target: str = "lava",
            center_logits: bool = False) -> SpikingNetwork:
    """Convert a PyTorch transformer into a phase-coded spiking network.

    Parameters
    ----------
    model : torch.nn.Module
        Built from supported operations (see :mod:`lava_spiked.capture`);
        not changed.
    calibration_data : array_like, torch.Tensor or iterable of batches
        (n, *sample_shape) inputs for calibration, separate from the data
        you evaluate on.
    B : float, 'auto' or sequence of float
        Base of the phase code, 1 < B <= 2; ``'auto'``: the base among
        :data:`lava_spiked.code_error.AUTO_B` (1.1 to 1.5) with the least
        readout error of the coded network on the first
        :data:`lava_spiked.code_error.AUTO_SAMPLES` (256) calibration
        samples (:func:`lava_spiked.code_error.choose_base`; recorded in
        ``net.plan.code_choice``); a sequence: the same among its values.
    T : int
        Window length of the phase code.
    statistic, percentile, granularity
        See :func:`lava_spiked.calibration.calibrate`.
    output : int or str
        Which tensor of the model's output to convert: an index into its
        flattened tuples, dicts, dataclasses or Hugging Face outputs, or a
        key path such as ``"logits"``; default the first.
    input_name : str, optional
        The ``forward`` keyword that takes the data (e.g.
        ``"inputs_embeds"``); default the first positional parameter.
    record : bool
        Probe every layer's spikes in Lava (``SpikingNetwork.recorded``).
    attention_mask : array_like, optional
        (n, N) token mask of the calibration samples (1 = real token) of a
        model over N tokens: the network then takes one per sample at run
        time (padded keys never fire in any softmax;
        :func:`lava_spiked.capture.mask_tokens`). Calibration sees the
        model as it computes with these masks. A model whose ``forward``
        takes a mask itself (``forward(x, attention_mask)``, PyTorch's
        ``key_padding_mask`` too) is checked to use it only so
        (:mod:`lava_spiked.capture.token_mask`); the network's mask is
        1 = real token whatever the model's convention.
    mean_pool : bool
        With ``attention_mask``: the readout is a mean over the tokens, to
        be taken over the real ones (found by itself for a model that
        takes the mask).
    center_logits : bool
        Move each attention row's logits by a calibrated constant so that
        its largest is near 0 (:func:`lava_spiked.calibration.center_logits`).
    target : {'lava', 'loihi2'}
        Integer formats of ``fixed_pt``: Lava's (default), or conformant
        to Loihi 2 where this library can make them so
        (:func:`lava_spiked.plan.loihi2.conform`; what still does not fit:
        :func:`lava_spiked.plan.loihi2.check`).

    Raises
    ------
    UnsupportedModelError
        Listing every unsupported operation.
    ValueError
        On invalid B, T or calibration data.
    """
    grid = candidates(B)
    if grid is None:
        check_base(B)
    check_steps(T)
    first = next(iter(_first_batch(calibration_data)))
    if attention_mask is not None:
        graph = capture_masked(model, tuple(first.shape[1:]), output,
                               input_name, first,
                               np.asarray(attention_mask).dtype, mean_pool)
    elif mean_pool:
        raise ValueError("mean_pool needs attention_mask")
    else:
        graph = capture(model, tuple(first.shape[1:]), output, input_name)
    graph = absorb_masks(graph, calibration_data, progress=progress,
                         attention_mask=attention_mask)
    if center_logits:
        graph = center_logits_of(graph, calibration_data, progress=progress,
                                 attention_mask=attention_mask)
    sigmas = calibrate(graph, calibration_data, statistic, percentile,
                       granularity, progress=progress,
                       attention_mask=attention_mask)
    plan = lower(graph, sigmas, B, T, target) if grid is None else \
        choose_base(graph, sigmas, T, calibration_data, grid, attention_mask,
                    target, progress=progress)
    return SpikingNetwork(plan, graph, sigmas, record)


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
