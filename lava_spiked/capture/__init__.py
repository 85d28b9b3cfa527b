"""Capture a PyTorch model into a factorised graph of phase-coded populations.

The pipeline, one module per step:

1. :mod:`~lava_spiked.capture.frontend`: ``torch.export`` of the model in
   eval mode for one sample, functionalised, so each ATen op means one
   thing.
2. :mod:`~lava_spiked.capture.rules`: one rule per ATen op; an op without
   one is refused, all such ops named at once, before anything is built.
3. :mod:`~lava_spiked.capture.interpreter`: the graph evaluated on
   symbolic values (:mod:`~lava_spiked.capture.symbolic`): constants fold,
   ops that move values run on index maps, and populations are made where
   values must be spikes.
4. :mod:`~lava_spiked.capture.graph`: the result, and its exact run
   (:func:`~lava_spiked.capture.graph.run_graph`, no quantisation), which
   equals the model's output when the capture is right.

The export runs at batch size 1; every backend runs the resulting network
at any batch size, so nothing is specialised to a batch.
"""
import typing as ty

import torch
from torch import nn

from lava_spiked.capture.frontend import export_program
from lava_spiked.capture.graph import (AttentionOp, Graph, Population,
                                       mask_tokens, run_graph)
from lava_spiked.capture.interpreter import Interpreter
from lava_spiked.capture.rules import RULES, unsupported
from lava_spiked.capture.symbolic import UnsupportedModelError

__all__ = ["capture", "run_graph", "mask_tokens", "export_program",
           "unsupported",
           "Graph", "Population", "AttentionOp", "UnsupportedModelError",
           "RULES"]


def capture(model: nn.Module, sample_shape: ty.Tuple[int, ...],
            output: ty.Union[int, str] = 0,
            input_name: ty.Optional[str] = None,
            given: ty.Optional[ty.Mapping[str, torch.Tensor]] = None
            ) -> Graph:
    """Capture ``model`` into populations, synapses and attention ops.

    Parameters
    ----------
    model : torch.nn.Module
        The transformer; it is evaluated in eval mode and not changed.
    sample_shape : tuple of int
        Shape of one input sample (without the batch axis).
    output : int or str
        Which tensor of the model's flattened output to convert: tuples,
        lists, dicts, dataclasses and Hugging Face outputs are flattened
        in their order; an index or a dotted key path (``"logits"``,
        ``"hidden_states.2"``); default the first.
    input_name : str, optional
        The keyword argument of ``forward`` that takes the data (e.g.
        ``"inputs_embeds"``); default the first positional one.
    given : dict, optional
        Constant keyword inputs of ``forward`` for a batch of one (a token
        mask that says every token is real:
        :func:`lava_spiked.capture.token_mask.capture_masked`).

    Returns
    -------
    Graph

    Raises
    ------
    UnsupportedModelError
        Listing every op without a rule, before anything is built; naming
        the module and op of a computation the phase code cannot carry
        (a product of two activations, a softmax not over ``q @ k``); or
        naming inputs the model requires besides the data and ``given``.
    ValueError
        If ``output`` or ``input_name`` names nothing the model has.
    """
    ep, names = export_program(model, sample_shape, input_name, given)
    output = output_index(output, names)
    bad = unsupported(ep)
    if bad:
        raise UnsupportedModelError(
            "cannot convert these operations to phase-coded spikes: " +
            "; ".join(bad) + ". Supported: Linear, Conv (patch embedding), "
            "eval-mode BatchNorm, LayerNorm (last axis), ReLU, GELU, SiLU, "
            "tanh, sigmoid, sums, products with constants, mean or sum "
            "pooling, ops that only move values (reshapes, slices, pad, "
            "roll, cat, indexing with constants), and attention written as "
            "softmax(q @ k^T * scale + bias) @ v or "
            "scaled_dot_product_attention. lava_spiked.capture.RULES lists "
            "every op.")
    with torch.no_grad():
        return Interpreter(ep, tuple(sample_shape), output).run()


def output_index(output: ty.Union[int, str], names: ty.List[str]) -> int:
    """The position of ``output`` (an index or a key path) among the
    model's flattened outputs ``names``."""
    if isinstance(output, str):
        if output not in names:
            raise ValueError(f"output={output!r}, but the model's outputs "
                             f"are {names}")
        return names.index(output)
    if not 0 <= output < len(names):
        raise ValueError(f"output={output}, but the model returns "
                         f"{len(names)} tensors ({names})")
    return output
