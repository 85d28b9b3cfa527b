"""A token mask that the model's ``forward`` takes itself
(``forward(x, attention_mask)``), made a runtime input of the network.

A network over N tokens takes one mask per sample at run time
(:func:`~lava_spiked.capture.graph.mask_tokens`): padded keys never fire in
any softmax, and a mean over tokens is taken over the real ones. A model
that takes a mask is captured fed a constant mask that says every token is
real, and is then given that runtime mask. This is right exactly when the
model uses its mask for nothing else, so it is checked by what the model
computes rather than by how it is written: on samples padded to several
lengths, the model fed their masks and the captured network given them
must agree at every real token.

Three things are found that way, the first choice that agrees winning:
which parameter takes the mask (the one ``forward`` requires besides the
data, else its optional ones named ``...mask``, in order); its convention
(1 = real token in the dtype of the calibration masks, as Hugging Face
models take it, or True = padding, as PyTorch's ``key_padding_mask``); and,
for an output without a token axis, whether the model's mean over tokens
is over the real ones.
"""
import typing as ty

import numpy as np
import torch
from torch import nn

from lava_spiked.capture import capture, output_index
from lava_spiked.capture.frontend import _Flat, eval_mode, extra_inputs
from lava_spiked.capture.graph import Graph, mask_tokens, run_graph
from lava_spiked.capture.symbolic import UnsupportedModelError

#: The largest difference at real tokens, relative to the model's largest
#: output there, for a choice to agree: float32 models round to about
#: 1e-6 of that, a wrong choice differs by a large fraction of it
TOLERANCE = 1e-4
#: Samples in the check, padded to lengths spread over 1 .. N - 1 tokens
CHECKED = 8


def capture_masked(model: nn.Module, sample_shape: ty.Tuple[int, ...],
                   output: ty.Union[int, str], input_name: ty.Optional[str],
                   samples: np.ndarray, mask_dtype: ty.Any,
                   mean_pool: bool = False) -> Graph:
    """Capture ``model`` for a runtime token mask over the first axis of
    its input.

    Parameters
    ----------
    model, sample_shape, output, input_name
        As :func:`lava_spiked.capture.capture`.
    samples : numpy.ndarray
        (n, *sample_shape) data for the check (calibration samples).
    mask_dtype : dtype
        The dtype of the calibration masks (1 = real token): the model is
        fed masks of this dtype, or boolean ones for True = padding.
    mean_pool : bool
        The readout is a mean over the real tokens (a model that does not
        take the mask); for a model that takes it, only that is tried.

    Raises
    ------
    UnsupportedModelError
        If the model takes a mask and no choice agrees, naming each
        choice and its difference or error.
    """
    names, _ = extra_inputs(model, input_name)
    if not names:
        return mask_tokens(capture(model, sample_shape, output, input_name),
                           mean_pool)
    n = sample_shape[0]
    lengths = [max(1, (i + 1) * n // (CHECKED + 1)) for i in range(CHECKED)]
    real = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    x = torch.from_numpy(np.asarray(samples)[
        np.arange(CHECKED) % len(samples)]).double()
    mask_dtype = torch.from_numpy(np.zeros(0, mask_dtype)).dtype
    conventions = {
        "1 = real token": lambda m: m.to(mask_dtype),
        "True = padding": lambda m: ~m}
    tried, errors = [], []
    for name in names:
        for convention, encode in conventions.items():
            what = f"{name} with {convention}"
            try:
                graph = capture(model, sample_shape, output, input_name,
                                {name: encode(torch.ones(1, n, dtype=bool))})
                want = _model(model, input_name, output, x, {name: encode(
                    real)})
            except UnsupportedModelError as err:
                tried.append(f"{what}: {err}")
                errors.append(err)
                continue
            for pool in ([True] if mean_pool else [False, True]):
                try:
                    masked = mask_tokens(graph, pool)
                except UnsupportedModelError as err:
                    if not pool:
                        tried.append(f"{what}: {err}")
                    continue  # no mean over tokens to take over real ones
                got = run_graph(masked, x, attention_mask=real)
                error = _difference(got.reshape(want.shape), want, real)
                if error <= TOLERANCE:
                    return masked
                tried.append(f"{what}{', mean over real tokens' * pool}: "
                             f"relative difference {error:.2g}")
    if len(errors) == len(tried) and len({str(e) for e in errors}) == 1:
        raise errors[0]  # the model fails the same way whatever its mask
    raise UnsupportedModelError(
        f"{type(model).__name__}.forward's {' or '.join(names)} was tried "
        f"as the token mask, but fed the masks of samples padded to "
        f"{lengths} of {n} tokens the model does not compute what the "
        "network computes with padded keys hidden from every attention "
        "(and from a mean over tokens): " + "; ".join(tried) +
        ". The network takes a token mask only in that sense; convert "
        "without attention_mask, or let forward use its mask only to hide "
        "padded tokens")


def _model(model: nn.Module, input_name: ty.Optional[str],
           output: ty.Union[int, str], x: torch.Tensor,
           given: ty.Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The model's chosen output for ``x`` fed ``given``, in float64."""
    dtype = next((p.dtype for p in model.parameters()
                  if p.is_floating_point()), torch.float32)
    flat = _Flat(model, input_name, given)
    try:
        with eval_mode(model), torch.no_grad():
            x = x.to(dtype)
            return flat(x)[output_index(output, flat.names(x))].double()
    except ValueError:
        raise
    except Exception as err:  # whatever a model raises on a mask it
        # does not take this way
        raise UnsupportedModelError(f"{type(err).__name__}: {err}") \
            from err


def _difference(got: torch.Tensor, want: torch.Tensor,
                real: torch.Tensor) -> float:
    """Largest difference relative to the model's largest value, at real
    tokens where the output has a token axis after the batch."""
    n = real.shape[1]
    if want.dim() >= 3 and want.shape[1] == n:
        got, want = got[real], want[real]
    scale = want.abs().max()
    error = float((got - want).abs().max() / scale) if scale > 0 else \
        float((got - want).abs().max())
    return error if np.isfinite(error) else float("inf")
