"""The front of capture: ``torch.export`` of the user's model for one
sample, functionalised, and the names it gives nodes.

The export runs the model in eval mode at batch size 1 (static shapes:
``x.shape``, ``C // h``, ``unfold`` and head splits become constants) and
is then functionalised (``run_decompositions({})``: in-place ops become
their functional forms, ``dropout`` in eval mode and ``contiguous`` go, and
no op is decomposed further), so that each remaining ATen op means one
thing and can have one rule (:mod:`lava_spiked.capture.rules`).
"""
import contextlib
import dataclasses
import inspect
import io
import logging
import operator
import sys
import typing as ty

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from lava_spiked.capture.symbolic import UnsupportedModelError


def op_name(target: ty.Any) -> str:
    """``aten.view.default`` -> ``view``; ``operator.getitem`` ->
    ``getitem``."""
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", str(target)).split(".")[0]


#: Attribute under which :class:`_Flat` holds the user's model; stripped
#: from module paths so that names are the model's own. A wrapper of the
#: library's that only feeds a model (``lava_spiked.huggingface.Body``)
#: holds it under the same name, and is stripped too.
WRAPPED = "wrapped"


def _own_path(path: str) -> str:
    parts = path.split(".")
    while parts and parts[0] == WRAPPED:
        parts = parts[1:]
    return ".".join(parts)


def _stack(node: torch.fx.Node) -> ty.List[ty.Tuple[str, ty.Any]]:
    """(path, type) of the modules around ``node``, innermost last: the
    user's model (path ``""``) and its submodules, without the
    :class:`_Flat` wrapper."""
    stack = node.meta.get("nn_module_stack") or {}
    return [(_own_path(path), kind) for path, kind in stack.values()
            if path == WRAPPED or path.startswith(WRAPPED + ".")]


def module_path(node: torch.fx.Node) -> str:
    stack = _stack(node)
    return stack[-1][0] if stack else ""


def module_type(node: torch.fx.Node) -> str:
    stack = _stack(node)
    if not stack:
        return ""
    t = stack[-1][1]
    return getattr(t, "__name__", str(t)).split(".")[-1]


def where(node: torch.fx.Node) -> str:
    """How messages name a node: ``module path (module type: op)``."""
    return (f"{module_path(node) or node.name} "
            f"({module_type(node) or 'function'}: {op_name(node.target)})")


class _Flat(nn.Module):
    """The user's model fed with one tensor (positionally, or as the
    keyword ``input_name``) and the constant keyword inputs ``given``, and
    its output flattened into a tuple of tensors: tuples, lists, dicts,
    dataclasses and Hugging Face ``ModelOutput``s alike (:meth:`names`
    gives their key paths)."""

    def __init__(self, model: nn.Module, input_name: ty.Optional[str],
                 given: ty.Optional[ty.Mapping[str, torch.Tensor]] = None
                 ) -> None:
        super().__init__()
        self.add_module(WRAPPED, model)
        self.input_name, self.given = input_name, dict(given or {})

    def call(self, x: torch.Tensor) -> ty.Any:
        """The model's own output."""
        model = getattr(self, WRAPPED)
        if self.input_name:
            return model(**{self.input_name: x}, **self.given)
        return model(x, **self.given)

    def forward(self, x: torch.Tensor) -> ty.Tuple[torch.Tensor, ...]:
        return tuple(t for _, t in _flatten_output(self.call(x), ""))

    def names(self, x: torch.Tensor) -> ty.List[str]:
        """Dotted key paths of the flattened outputs (``"logits"``,
        ``"0"``, ``"hidden_states.2"``), from one eager forward."""
        return [name for name, _ in _flatten_output(self.call(x), "")]


def _flatten_output(value: ty.Any, prefix: str
                    ) -> ty.List[ty.Tuple[str, torch.Tensor]]:
    if torch.is_tensor(value):
        return [(prefix or "0", value)]
    if isinstance(value, ty.Mapping):  # dicts and Hugging Face ModelOutput
        items = list(value.items())
    elif dataclasses.is_dataclass(value):
        items = [(f.name, getattr(value, f.name))
                 for f in dataclasses.fields(value)]
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    else:  # None, numbers: not outputs
        return []
    return [pair for key, item in items for pair in _flatten_output(
        item, f"{prefix}.{key}" if prefix else str(key))]


def extra_inputs(model: nn.Module, input_name: ty.Optional[str]
                 ) -> ty.Tuple[ty.List[str], bool]:
    """The parameters of ``forward`` besides the data's that may take a
    token mask, and whether ``forward`` requires that input: the one
    parameter it requires, else its optional ones whose name ends in
    ``mask``, in order.

    Raises
    ------
    UnsupportedModelError
        If ``forward`` requires more than one input besides the data.
    ValueError
        If ``input_name`` is not a parameter of ``forward``.
    """
    params = list(inspect.signature(model.forward).parameters.values())
    kinds = inspect.Parameter
    if input_name is None:
        fed = next((p.name for p in params if p.kind in (
            kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)), None)
    else:
        if input_name not in [p.name for p in params] and not any(
                p.kind == kinds.VAR_KEYWORD for p in params):
            raise ValueError(
                f"input_name={input_name!r}, but {type(model).__name__}."
                f"forward takes {', '.join(p.name for p in params)}")
        fed = input_name
    others = [p for p in params if p.name != fed and
              p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)]
    required = [p.name for p in others if p.default is kinds.empty]
    if len(required) > 1:
        raise UnsupportedModelError(
            f"{type(model).__name__}.forward also requires "
            f"{', '.join(required)}; the converter feeds the data ({fed}) "
            "and at most one more input, a token mask")
    if required:
        return required, True
    return [p.name for p in others if p.name.lower().endswith("mask")], \
        False


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode and no fused attention fast paths while exporting; the
    model's modes are restored afterwards, also after an error."""
    modes = [(m, m.training) for m in model.modules()]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, training in modes:
            m.training = training


def export_program(model: nn.Module, sample_shape: ty.Tuple[int, ...],
                   input_name: ty.Optional[str] = None,
                   given: ty.Optional[ty.Mapping[str, torch.Tensor]] = None
                   ) -> ty.Tuple[torch.export.ExportedProgram, ty.List[str]]:
    """``torch.export`` of ``model`` in eval mode for one sample, fed the
    constant keyword inputs ``given`` (a batch of one); also the names of
    its flattened outputs (see :class:`_Flat`).

    Raises
    ------
    UnsupportedModelError
        If ``forward`` requires an input besides the data that ``given``
        does not hold, or if the export fails.
    """
    names, required = extra_inputs(model, input_name)
    if required and names[0] not in (given or {}):
        raise UnsupportedModelError(
            f"{type(model).__name__}.forward also requires {names[0]}: if "
            "it is a token mask, give convert the calibration samples' "
            "masks (attention_mask=, 1 = real token) and the network takes "
            "one per sample at run time; other inputs are not supported")
    dtype = next((p.dtype for p in model.parameters()
                  if p.is_floating_point()), torch.float32)
    x = torch.zeros((1,) + tuple(sample_shape), dtype=dtype)
    flat = _Flat(model, input_name, given)
    with eval_mode(model):
        try:
            with torch.no_grad():
                names = flat.names(x)
            ep = _export(flat, x)
        except Exception as err:  # export raises many types
            raise UnsupportedModelError(
                f"torch.export could not capture {type(model).__name__} for "
                f"inputs of shape {tuple(sample_shape)} (one sample): "
                f"{type(err).__name__}: {err}") from err
    return ep, names


def _export(flat: nn.Module, x: torch.Tensor
            ) -> torch.export.ExportedProgram:
    """``torch.export``, functionalised; where the model branches on the
    values of its constants (``nn.TransformerEncoder`` asks whether its
    mask is causal), again taking the branches their values take. A branch
    on the data stays in the graph as an ``item`` of an activation, which
    has no rule and is refused."""
    shapes = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = shapes.level
    shapes.setLevel(logging.ERROR)  # it logs each such branch
    printed = io.StringIO()
    try:
        try:
            with contextlib.redirect_stderr(printed):
                ep = torch.export.export(flat, (x,), strict=False)
        except GuardOnDataDependentSymNode:
            # the graph so far, which torch printed, is no news
            with torch._functorch.config.patch(
                    fake_tensor_propagate_real_tensors=True):
                return torch.export.export(
                    flat, (x,), strict=False).run_decompositions({})
        except BaseException:
            sys.stderr.write(printed.getvalue())
            raise
        sys.stderr.write(printed.getvalue())
        return ep.run_decompositions({})
    finally:
        shapes.setLevel(level)


def constants(ep: torch.export.ExportedProgram) -> ty.Dict[str, ty.Any]:
    """Placeholder name -> parameter, buffer or constant (floats as
    float64; integer tensors stay integer)."""
    kinds = torch.export.graph_signature.InputKind
    out = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind == kinds.USER_INPUT:
            continue
        value = ep.state_dict[spec.target] if spec.target in ep.state_dict \
            else ep.constants[spec.target]
        if torch.is_tensor(value):
            value = value.detach()
            if value.is_floating_point():
                value = value.double()
        out[spec.arg.name] = value
    return out
