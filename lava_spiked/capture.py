"""Capture a PyTorch model into a factorised graph of phase-coded populations.

:func:`capture` exports the model with ``torch.export`` for one sample
(static shapes: ``x.shape``, ``C // h``, ``unfold`` and head splits become
constants) and evaluates the ATen graph on *symbolic* values:

``Affine``
    ``bias + sum_t scale_t * term_t``: an affine function of the decoded
    spikes of populations. A :class:`Term` keeps the model's own weight
    ``(C, K)`` and two index maps: ``rows`` (R, K), the source neuron that
    feeds each input position of a row (a token), and ``out``, for each
    element of the value, the ``(row, channel)`` of the product it takes.
    Reshapes, transposes, head splits, slices and concatenations run as
    themselves on these index tensors, so memory grows with the model's
    activations, never with their square.
``Product``
    ``coef * (x @ y) + bias`` of two operand populations, masked.
``Softmax``
    the softmax of a Product, which becomes a WOSS population.

A population is made where a value must be spikes: at ReLU (unipolar), at
GELU, SiLU, tanh and sigmoid (an activation stage), at LayerNorm (a
normalisation stage; its gamma and beta fold into what reads it), at
both operands of a product, at the attention output and at the model output
(readout); where a Linear or convolution reads a value that is not a single
population scaled per channel (the paper's ``norm1_if``); and at a residual
add whose sum is used more than once (the residual stream, ``attn_if`` /
``final_if`` in the paper). Everything between populations folds into
per-channel scales and biases of the synapses.

The export runs at batch size 1; every backend runs the resulting network
at any batch size, so nothing is specialised to a batch.
"""
import contextlib
import dataclasses
import inspect
import math
import operator
import typing as ty

import numpy as np
import torch
from torch import nn

from lava_spiked.nonlinear import ACTIVATIONS
from lava_spiked.plan import STAGED, Synapse


class UnsupportedModelError(ValueError):
    """The model uses operations that have no phase-coded equivalent."""


@dataclasses.dataclass
class Population:
    """A population of phase neurons (or the input encoder).

    Attributes
    ----------
    name : str
        Says what it is, from the module path (``blocks.0.act``).
    shape : tuple of int
        Shape of one sample's value.
    kind : str
        One of :data:`lava_spiked.plan.KINDS`.
    synapses : list of Synapse
        Its sources (empty for the input and attention outputs).
    bias : numpy.ndarray
        (size,) real-unit bias.
    fn : str
        Activation of an ``'activation'`` population
        (:data:`lava_spiked.nonlinear.ACTIVATIONS`).
    eps : float
        LayerNorm's eps of a ``'layernorm'`` population.
    token_mask : bool
        Padded tokens never fire (:func:`mask_tokens`).
    """

    name: str
    shape: ty.Tuple[int, ...]
    kind: str
    synapses: ty.List[Synapse]
    bias: np.ndarray
    fn: str = ""
    eps: float = 0.0
    token_mask: bool = False

    @property
    def size(self) -> int:
        """Number of neurons."""
        return int(np.prod(self.shape))


@dataclasses.dataclass
class AttentionOp:
    """``softmax(coef * (x @ y) + bias, masked) @ v`` on populations.

    ``x`` is (h, N, K), ``y`` is (h, K, M) and ``v`` is (h, M, d); ``out``
    is the (h, N, d) population of the normalised result. ``coef``,
    ``bias`` and ``mask`` are (h, N, M); with ``key_mask`` padded keys are
    masked too (:func:`mask_tokens`).
    """

    x: str
    y: str
    v: str
    out: str
    coef: np.ndarray
    bias: np.ndarray
    mask: np.ndarray
    key_mask: bool = False

    @property
    def logits(self) -> str:
        """Name of the logit population."""
        return self.out + ":logits"


@dataclasses.dataclass
class Graph:
    """Captured network: populations in creation order (sources first),
    attention operations, the input and output population names, the
    multiply-accumulates of one forward pass of the original model, and,
    after :func:`mask_tokens`, the tokens of its runtime attention mask and
    whether its readout is a mean over them."""

    populations: ty.List[Population]
    attention: ty.List[AttentionOp]
    input: str
    output: str
    ann_macs: float
    tokens: int = 0
    mean_pool: bool = False

    def __getitem__(self, name: str) -> Population:
        return self._by_name[name]

    def __post_init__(self) -> None:
        self._by_name = {p.name: p for p in self.populations}


# ----------------------------------------------------------------- symbolic
@dataclasses.dataclass
class Term:
    """``scale * (W @ src[rows])[out]`` (``weight`` None: ``src[out]``)."""

    src: str
    rows: ty.Optional[torch.Tensor]
    weight: ty.Optional[torch.Tensor]
    out: torch.Tensor
    scale: torch.Tensor


@dataclasses.dataclass
class Affine:
    """``bias + sum(terms)``, all tensors shaped like the value."""

    terms: ty.List[Term]
    bias: torch.Tensor

    @property
    def shape(self) -> ty.Tuple[int, ...]:
        return tuple(self.bias.shape)


@dataclasses.dataclass
class Product:
    """Pending ``coef * (x @ y) + bias`` of two populations, masked; the
    tensors have the shape of the model's logits."""

    x: str
    y: str
    coef: torch.Tensor
    bias: torch.Tensor
    mask: torch.Tensor


@dataclasses.dataclass
class Softmax:
    """Softmax of a Product along its last axis."""

    product: Product


SYMBOLIC = (Affine, Product, Softmax)

# ATen operations by name (the overload is irrelevant here)
MOVEMENT = {"view", "reshape", "_unsafe_view", "permute", "transpose", "t",
            "unsqueeze", "squeeze", "flatten", "unflatten", "select",
            "slice", "expand", "contiguous", "clone", "alias", "unfold",
            "split", "split_with_sizes", "chunk", "unbind", "cat", "stack",
            "movedim", "narrow", "repeat", "lift_fresh_copy", "detach",
            "dropout", "_to_copy", "to", "type_as", "getitem",
            "index_select"}
ELEMENTWISE = {"add", "sub", "rsub", "mul", "div", "neg"}
LINEAR = {"linear", "conv1d", "conv2d"}
REDUCTIONS = {"mean", "sum"}
NORMS = {"batch_norm", "_native_batch_norm_legit_no_training"}
LAYER_NORMS = {"layer_norm", "native_layer_norm"}
# ATen activation -> lava_spiked.nonlinear name (gelu by its approximate=)
ACTIVATION_OPS = {"gelu": "gelu", "silu": "silu", "tanh": "tanh",
                  "sigmoid": "sigmoid"}
SUPPORTED = MOVEMENT | ELEMENTWISE | LINEAR | REDUCTIONS | NORMS | \
    LAYER_NORMS | set(ACTIVATION_OPS) | {
    "relu", "matmul", "bmm", "softmax", "_softmax",
    "scaled_dot_product_attention", "masked_fill"}
# identities: a value passes through them unchanged
IDENTITY = {"dropout", "clone", "contiguous", "alias", "detach", "_to_copy",
            "to", "type_as", "lift_fresh_copy"}


def op_name(target: ty.Any) -> str:
    """``aten.view.default`` -> ``view``; ``operator.getitem`` ->
    ``getitem``."""
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", str(target)).split(".")[0]


#: Attribute under which :class:`_Flat` holds the user's model; stripped
#: from module paths so that names are the model's own.
_WRAPPED = "wrapped"


def _stack(node: torch.fx.Node) -> ty.List[ty.Tuple[str, ty.Any]]:
    """(path, type) of the modules around ``node``, innermost last: the
    user's model (path ``""``) and its submodules, without the
    :class:`_Flat` wrapper."""
    stack = node.meta.get("nn_module_stack") or {}
    return [("" if path == _WRAPPED else path.removeprefix(_WRAPPED + "."),
             kind) for path, kind in stack.values()
            if path == _WRAPPED or path.startswith(_WRAPPED + ".")]


def _module_path(node: torch.fx.Node) -> str:
    stack = _stack(node)
    return stack[-1][0] if stack else ""


def _module_type(node: torch.fx.Node) -> str:
    stack = _stack(node)
    if not stack:
        return ""
    t = stack[-1][1]
    return getattr(t, "__name__", str(t)).split(".")[-1]


class _Flat(nn.Module):
    """The user's model fed with one tensor (positionally, or as the
    keyword ``input_name``) and its output flattened into a tuple of
    tensors: tuples, lists, dicts, dataclasses and Hugging Face
    ``ModelOutput``s alike (:meth:`names` gives their key paths)."""

    def __init__(self, model: nn.Module,
                 input_name: ty.Optional[str]) -> None:
        super().__init__()
        self.add_module(_WRAPPED, model)
        self.input_name = input_name

    def call(self, x: torch.Tensor) -> ty.Any:
        """The model's own output."""
        model = getattr(self, _WRAPPED)
        return model(**{self.input_name: x}) if self.input_name else \
            model(x)

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


def _check_inputs(model: nn.Module, input_name: ty.Optional[str]) -> None:
    """Refuse a model that needs more inputs than the data, naming them."""
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
    missing = [p.name for p in params if p.name != fed and
               p.default is kinds.empty and
               p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)]
    if missing:
        raise UnsupportedModelError(
            f"{type(model).__name__}.forward also requires "
            f"{', '.join(missing)}; the converter feeds one tensor "
            f"({fed}) and supports no other inputs yet (a padding mask "
            "will be a runtime input)")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
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


def export(model: nn.Module, sample_shape: ty.Tuple[int, ...],
           input_name: ty.Optional[str] = None
           ) -> ty.Tuple[torch.export.ExportedProgram, ty.List[str]]:
    """``torch.export`` of ``model`` in eval mode for one sample; also the
    names of its flattened outputs (see :class:`_Flat`)."""
    _check_inputs(model, input_name)
    dtype = next((p.dtype for p in model.parameters()
                  if p.is_floating_point()), torch.float32)
    x = torch.zeros((1,) + tuple(sample_shape), dtype=dtype)
    flat = _Flat(model, input_name)
    with _eval_mode(model):
        try:
            with torch.no_grad():
                names = flat.names(x)
            ep = torch.export.export(flat, (x,), strict=False)
        except Exception as err:  # export raises many types
            raise UnsupportedModelError(
                f"torch.export could not capture {type(model).__name__} for "
                f"inputs of shape {tuple(sample_shape)} (one sample): "
                f"{type(err).__name__}: {err}") from err
    return ep, names


def unsupported(ep: torch.export.ExportedProgram) -> ty.List[str]:
    """Every operation on activations that has no phase-coded equivalent,
    named by module path, module type and ATen op, in graph order."""
    user = {s.arg.name for s in ep.graph_signature.input_specs
            if s.kind == torch.export.graph_signature.InputKind.USER_INPUT}
    dependent, bad = set(user), []
    for node in ep.graph.nodes:
        if node.op != "call_function" or not any(
                n.name in dependent for n in node.all_input_nodes):
            continue
        dependent.add(node.name)
        name = op_name(node.target)
        if name not in SUPPORTED:
            where = _module_path(node) or node.name
            bad.append(f"{where} ({_module_type(node) or 'function'}: "
                       f"{name})")
    return bad


def capture(model: nn.Module, sample_shape: ty.Tuple[int, ...],
            output: ty.Union[int, str] = 0,
            input_name: ty.Optional[str] = None) -> Graph:
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

    Raises
    ------
    UnsupportedModelError
        Listing every unsupported operation, before anything is built; or
        naming inputs the model requires besides the data.
    ValueError
        If ``output`` or ``input_name`` names nothing the model has.
    """
    ep, names = export(model, sample_shape, input_name)
    if isinstance(output, str):
        if output not in names:
            raise ValueError(f"output={output!r}, but the model's outputs "
                             f"are {names}")
        output = names.index(output)
    elif not 0 <= output < len(names):
        raise ValueError(f"output={output}, but the model returns "
                         f"{len(names)} tensors ({names})")
    bad = unsupported(ep)
    if bad:
        raise UnsupportedModelError(
            "cannot convert these operations to phase-coded spikes: " +
            "; ".join(bad) + ". Supported: Linear, Conv (patch embedding), "
            "eval-mode BatchNorm, LayerNorm (last axis), ReLU, GELU, SiLU, "
            "tanh, sigmoid, residual adds, reshapes, mean or sum pooling, "
            "concatenation with parameters, and attention written as "
            "softmax(q @ k^T * scale + bias) @ v or "
            "scaled_dot_product_attention.")
    with torch.no_grad():
        return _Capture(ep, tuple(sample_shape), output).run()


def _constants(ep: torch.export.ExportedProgram) -> ty.Dict[str, ty.Any]:
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


class _Capture:
    """Evaluate an exported graph on symbolic values."""

    def __init__(self, ep, sample_shape, output: int) -> None:
        self.ep, self.sample_shape, self.output = ep, sample_shape, output
        self.populations: ty.List[Population] = []
        self.attention: ty.List[AttentionOp] = []
        self.names: ty.Set[str] = set()
        self.materialized: ty.Dict[str, Affine] = {}
        self.macs = 0.0
        self.input = ""

    # ----------------------------------------------------------- driver
    def run(self) -> Graph:
        env = _constants(self.ep)
        for node in self.ep.graph.nodes:
            if node.op == "placeholder" and node.name not in env:
                env[node.name] = self.add_input(node)
            elif node.op == "call_function":
                args, kwargs = torch.fx.node.map_arg(
                    (node.args, node.kwargs), lambda n: env[n.name])
                env[node.name] = self.evaluate(node, args, kwargs)
                self.count_macs(node, env[node.name], args)
            elif node.op == "output":
                outs = _flat(node.args[0], {})
                value = env[outs[self.output].name]
                name = self.unique(_module_path(outs[self.output]) or
                                   "output")
                self.materialize(value, name, "readout")
                return Graph(self.populations, self.attention, self.input,
                             name, self.macs)
        raise UnsupportedModelError("the exported graph has no output")

    def unique(self, path: str, role: str = "") -> str:
        base = path if not role or path.endswith(role) else \
            f"{path}.{role}" if path else role
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def add_input(self, node) -> Affine:
        shape = self.sample_shape
        name = self.unique("input")
        self.input = name
        self.populations.append(Population(name, shape, "input", [],
                                           np.zeros(int(np.prod(shape)))))
        return _direct(name, (1,) + shape)

    def count_macs(self, node, value, args) -> None:
        """Multiply-accumulates of the original model (energy baseline)."""
        name = op_name(node.target)
        numel = float(np.prod(value.shape)) if hasattr(value, "shape") \
            else 0.0
        if name == "linear":
            self.macs += numel * args[1].shape[-1]
        elif name in ("conv1d", "conv2d"):
            self.macs += numel * float(np.prod(args[1].shape[1:]))
        elif name in ("matmul", "bmm"):
            self.macs += numel * _shape(args[0])[-1]
        elif name == "scaled_dot_product_attention":
            q, k = _shape(args[0]), _shape(args[1])
            self.macs += numel * k[-2] + numel / q[-1] * k[-2] * q[-1]

    # ------------------------------------------------------- operations
    def evaluate(self, node, args, kwargs):
        name = op_name(node.target)
        symbolic = [a for a in _flat(args, kwargs)
                    if isinstance(a, SYMBOLIC)]
        if not symbolic:
            return node.target(*args, **kwargs)
        if name in IDENTITY and name != "dropout" or (
                name == "dropout" and len(args) > 2 and not args[2]):
            return args[0]
        if name == "dropout":
            raise UnsupportedModelError(f"{node.name}: dropout in training "
                                        "mode")
        if name == "relu":
            return self.materialize(args[0], self.unique(
                _module_path(node), "relu" if _module_type(node) != "ReLU"
                else ""), "relu", node)
        if name in ACTIVATION_OPS:
            return self.activation(node, name, args, kwargs)
        if name in LAYER_NORMS:
            return self.layer_norm(node, name, *args, **kwargs)
        if name in ("matmul", "bmm"):
            return self.matmul(node, *args[:2])
        if name in ("softmax", "_softmax"):
            dim = args[1]
            prod = args[0]
            if not isinstance(prod, Product) or dim not in (
                    -1, prod.coef.dim() - 1):
                raise UnsupportedModelError(
                    f"{node.name}: softmax must act on the last axis of a "
                    "q @ k product")
            return Softmax(prod)
        if name == "scaled_dot_product_attention":
            return self.sdpa(node, *args, **kwargs)
        if any(isinstance(a, (Product, Softmax)) for a in symbolic):
            return self.product_op(node, name, args)
        if name in LINEAR:
            return self.linear(node, name, *args)
        if name in NORMS:
            return self.batch_norm(node, *args)
        if name in REDUCTIONS:
            return self.reduce(node, name, *args, **kwargs)
        if name in ELEMENTWISE:
            return self.elementwise(node, name, args)
        return self.move(node, args, kwargs)

    def move(self, node, args, kwargs):
        """Data movement: the op runs on biases, scales and index maps."""
        syms = [a for a in _flat(args, kwargs) if isinstance(a, Affine)]

        def call(leaf):
            a, kw = _replace(args, kwargs, leaf)
            return node.target(*a, **kw)

        bias = call(lambda a: a.bias if isinstance(a, Affine) else
                    (a.double() if torch.is_tensor(a) and
                     a.is_floating_point() else a))
        parts = []  # per term: (out, scale) results
        for s in syms:
            for t in s.terms:
                out = call(lambda a, s=s, t=t: t.out if a is s else
                           _fill(a, -1, torch.int64))
                scale = call(lambda a, s=s, t=t: t.scale if a is s else
                             _fill(a, 0.0, torch.float64))
                parts.append((t, out, scale))
        if isinstance(bias, (list, tuple)):
            return [Affine(_live([dataclasses.replace(t, out=o[i], scale=s[i])
                                  for t, o, s in parts]), b)
                    for i, b in enumerate(bias)]
        return Affine(_live([dataclasses.replace(t, out=o, scale=s)
                             for t, o, s in parts]), bias)

    def elementwise(self, node, name, args):
        a, b = (args + (1,))[:2] if name == "neg" else args[:2]
        if name == "neg":
            return _scaled(a, -1.0, 0.0)
        if name == "rsub":  # b - a * alpha
            return _add(_scaled(a, -float(args[2] if len(args) > 2 else 1),
                                0.0), b)
        if name in ("mul", "div"):
            if isinstance(a, Affine) and isinstance(b, Affine):
                raise UnsupportedModelError(
                    f"{node.name}: an elementwise product of two activations "
                    "has no phase-coded equivalent")
            a, b = (a, b) if isinstance(a, Affine) else (b, a)
            if name == "div" and args[0] is not a:
                raise UnsupportedModelError(
                    f"{node.name}: division by an activation")
            c = _as_tensor(b)
            return _scaled(a, 1.0 / c if name == "div" else c, 0.0)
        alpha = float(args[2]) if len(args) > 2 else 1.0
        if name == "sub":
            b = _scaled(b, -alpha, 0.0) if isinstance(b, Affine) else \
                -alpha * _as_tensor(b)
        elif alpha != 1.0:
            b = _scaled(b, alpha, 0.0) if isinstance(b, Affine) else \
                alpha * _as_tensor(b)
        total = _add(a, b)
        if isinstance(a, Affine) and isinstance(b, Affine) and \
                _fanout(node) > 1:
            # a residual sum used more than once: the residual stream
            return self.materialize(total, self.unique(_module_path(node),
                                                       "add"), "neuron")
        return total

    def batch_norm(self, node, x, weight, bias, mean, var, *rest):
        training = rest[0] if op_name(node.target) == "batch_norm" else False
        eps = rest[-1] if op_name(node.target) == "batch_norm" else rest[1]
        if op_name(node.target) == "batch_norm":
            eps = rest[2]
        if training:
            raise UnsupportedModelError(f"{node.name}: BatchNorm in "
                                        "training mode")
        scale = torch.rsqrt(var + eps)
        if weight is not None:
            scale = scale * weight
        shift = -mean * scale + (bias if bias is not None else 0.0)
        view = (1, -1) + (1,) * (len(x.shape) - 2)
        out = _scaled(x, scale.reshape(view), shift.reshape(view))
        if op_name(node.target) == "batch_norm":
            return out
        return (out, None, None)

    def activation(self, node, name, args, kwargs):
        """A pointwise activation: a population with an activation stage."""
        fn = ACTIVATION_OPS[name]
        if name == "gelu":
            approximate = kwargs.get("approximate", args[1] if len(args) > 1
                                     else "none")
            fn = "gelu_tanh" if approximate == "tanh" else "gelu"
        role = "gelu" if fn == "gelu_tanh" else fn
        # a module of its own (nn.GELU, Hugging Face's GELUActivation) names
        # the population; a call inside a bigger module gets a suffix
        own = role in _module_type(node).lower()
        return self.materialize(args[0], self.unique(
            _module_path(node), "" if own else role), "activation", fn=fn)

    def layer_norm(self, node, name, x, shape, weight=None, bias=None,
                   eps=1e-5, *rest, **kwargs):
        """LayerNorm over the last axis: a population with a normalisation
        stage, read as ``gamma * z + beta``."""
        shape = list(shape)
        if len(shape) != 1 or not isinstance(x, Affine) or \
                x.shape[-1] != shape[0]:
            raise UnsupportedModelError(
                f"{node.name}: LayerNorm over {tuple(shape)}; only the "
                "last axis (normalized_shape of one int) is supported")
        own = "norm" in _module_type(node).lower()
        z = self.materialize(x, self.unique(_module_path(node),
                                            "" if own else "norm"),
                             "layernorm", eps=float(eps))
        gamma = weight if weight is not None else 1.0
        beta = bias if bias is not None else 0.0
        out = _scaled(z, gamma, beta)
        return (out, None, None) if name == "native_layer_norm" else out

    def linear(self, node, name, x, weight, bias=None, *conv):
        """Linear or convolution: a new Term with the model's weight."""
        x = self.direct(node, x)
        t = x.terms[0] if x.terms else None
        weight = weight.double()
        if name == "linear":
            k = weight.shape[1]
            in_rows = t.out.reshape(-1, k) if t else None
            in_scale = t.scale.reshape(-1, k) if t else None
            w2 = weight
            out_shape = x.shape[:-1] + (weight.shape[0],)
            new_bias = torch.nn.functional.linear(x.bias, weight, bias)
            rows_layout = None
        else:
            if name == "conv1d":
                x, weight = _conv1d_as_2d(x), weight.unsqueeze(-2)
                t = x.terms[0] if x.terms else None
                conv = _conv1d_args_as_2d(conv)
            stride, padding, dilation, groups = (list(conv) + [1, 0, 1, 1][
                len(conv):])[:4]
            if groups != 1:
                raise UnsupportedModelError(f"{node.name}: grouped "
                                            "convolution")
            ksize = weight.shape[2:]
            unfold = dict(kernel_size=ksize, dilation=dilation,
                          padding=padding, stride=stride)
            new_bias = torch.nn.functional.conv2d(
                x.bias, weight, bias, stride, padding, dilation)
            if name == "conv1d":
                new_bias = new_bias.squeeze(-2)
            w2 = weight.reshape(weight.shape[0], -1)
            if t:
                ids = torch.nn.functional.unfold(t.out.double() + 1, **unfold)
                in_rows = (ids[0].T - 1).long()
                in_scale = torch.nn.functional.unfold(t.scale, **unfold)[0].T
            rows_layout = new_bias.shape
            out_shape = tuple(new_bias.shape)
        if t is None:  # a constant input
            return Affine([], new_bias)
        rows_n, c = in_rows.shape[0], w2.shape[0]
        if rows_layout is None:  # linear: (..., C), rows first
            out = torch.arange(rows_n * c).reshape(out_shape)
        else:  # conv: (1, C, *spatial), spatial positions are the rows
            out = torch.arange(rows_n * c).reshape(rows_n, c).T.reshape(
                out_shape)
        # a scale per input channel folds into the weight's columns; one
        # per row (a mean over tokens of a per-channel scaled value, e.g.
        # LayerNorm's gamma) moves to the output
        valid = in_rows >= 0
        per_k = _uniform(in_scale, valid, 0)
        per_r = _uniform(in_scale, valid, 1) if per_k is None else None
        if per_k is None and per_r is None:
            raise UnsupportedModelError(
                f"{node.name}: the input of this {name} is scaled per token "
                "and per channel, which a token-shared weight cannot fold")
        if per_k is not None:
            term = Term(t.src, in_rows, w2 * per_k, out,
                        torch.ones(out_shape, dtype=torch.float64))
        else:
            term = Term(t.src, in_rows, w2, out, per_r[out // c])
        return Affine([term], new_bias.reshape(out_shape))

    def reduce(self, node, name, x, dim=None, keepdim=False, **kwargs):
        """Mean or sum over axes: a Linear over those axes."""
        x = self.direct(node, x)
        nd = len(x.shape)
        dims = list(range(nd)) if dim is None else \
            [d % nd for d in (dim if isinstance(dim, (list, tuple))
                              else [dim])]
        keep = [d for d in range(nd) if d not in dims]
        perm = keep + dims
        n = int(np.prod([x.shape[d] for d in dims]))
        moved = self.move_fn(x, lambda v: v.permute(perm).reshape(
            [x.shape[d] for d in keep] + [n]))
        w = torch.full((1, n), 1.0 / n if name == "mean" else 1.0,
                       dtype=torch.float64)
        y = self.linear(node, "linear", moved, w)
        shape = [1 if d in dims else x.shape[d] for d in range(nd)] \
            if keepdim else [x.shape[d] for d in keep]
        return self.move_fn(y, lambda v: v.reshape(shape))

    def move_fn(self, x: Affine, fn) -> Affine:
        return Affine([dataclasses.replace(t, out=fn(t.out),
                                           scale=fn(t.scale))
                       for t in x.terms], fn(x.bias))

    def direct(self, node, x) -> Affine:
        """``x`` as at most one population read directly (materialised at
        the node that produced it when it is more than that)."""
        if not isinstance(x, Affine):
            raise UnsupportedModelError(
                f"{node.name}: a {type(x).__name__} cannot feed a weight")
        if len(x.terms) <= 1 and all(t.weight is None for t in x.terms):
            return x
        src = node.args[0]
        key = src.name
        if key not in self.materialized:
            # outside any module (e.g. the CLS token picked in the model's
            # own forward): named after the layer it feeds
            consumer = _module_path(node)
            name = _module_path(src) or (f"{consumer}.input" if consumer
                                         else src.name)
            self.materialized[key] = self.materialize(
                x, self.unique(name), "neuron")
        return self.materialized[key]

    def materialize(self, x, name: str, kind: str, node=None,
                    **stage) -> Affine:
        """Make a population that carries ``x`` and return its value
        (``stage``: ``fn`` or ``eps`` of a staged kind)."""
        if not isinstance(x, Affine):
            raise UnsupportedModelError(
                f"{name}: a {type(x).__name__} cannot feed a {kind} "
                "population")
        shape = _pop_shape(x.shape, kind)
        factor = shift = None
        try:
            synapses = [_synapse(t, name) for t in x.terms]
        except UnsupportedModelError:
            # one weighted term scaled per row after its weight (a mean
            # over tokens of LayerNorm's gamma * z + beta): the population
            # holds the mean of z alone, and its readers fold gamma and
            # beta; kept in the population, beta / gamma would be a large
            # constant on which the phase code's relative error drowns the
            # signal
            t = x.terms[0]
            if len(x.terms) != 1 or kind != "neuron":
                raise
            factor, shift = t.scale, x.bias
            x = Affine([dataclasses.replace(t, scale=torch.ones_like(
                t.scale))], torch.zeros_like(x.bias))
            synapses = [_synapse(x.terms[0], name)]
        self.populations.append(Population(
            name, shape, kind, synapses, x.bias.reshape(-1).numpy().copy(),
            **stage))
        value = _direct(name, x.shape)
        return value if factor is None else _scaled(value, factor, shift)

    # --------------------------------------------------------- attention
    def operand(self, x, name) -> str:
        self.materialize(x, name, "operand")
        return name

    def matmul(self, node, a, b):
        if isinstance(a, Affine) and not isinstance(b, SYMBOLIC):
            return self.linear(node, "linear", a, _as_tensor(b).T)
        if isinstance(a, Softmax) and isinstance(b, Affine):
            return self.attention_output(node, a.product, b)
        if not (isinstance(a, Affine) and isinstance(b, Affine)):
            raise UnsupportedModelError(
                f"{node.name}: matmul is supported between two activations "
                "(q @ k^T), between their softmax and v, and with a "
                "constant matrix")
        path = _module_path(node)
        x = self.operand(a, self.unique(path, "q"))
        y = self.operand(b, self.unique(path, "k"))
        if a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
            raise UnsupportedModelError(
                f"{node.name}: operands of shapes {a.shape} and {b.shape}; "
                "a spike product needs equal leading (head) axes")
        shape = a.shape[:-1] + b.shape[-1:]
        return Product(x, y, torch.ones(shape, dtype=torch.float64),
                       torch.zeros(shape, dtype=torch.float64),
                       torch.zeros(shape, dtype=torch.bool))

    def sdpa(self, node, q, k, v, attn_mask=None, dropout_p=0.0,
             is_causal=False, scale=None, enable_gqa=False):
        if dropout_p:
            raise UnsupportedModelError(f"{node.name}: attention dropout")
        kt = self.move_fn(k, lambda t: t.transpose(-2, -1))
        prod = self.matmul(node, q, kt)
        coef = scale if scale is not None else q.shape[-1] ** -0.5
        prod = dataclasses.replace(prod, coef=prod.coef * coef)
        n, m = prod.coef.shape[-2:]
        if is_causal:
            prod.mask |= ~torch.ones(n, m, dtype=torch.bool).tril()
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                prod.mask |= ~attn_mask
            else:
                prod = _add_to_product(prod, attn_mask)
        return self.attention_output(node, prod, v)

    def product_op(self, node, name, args):
        """Elementwise scale, offset or mask of a pending product."""
        prod, other = args[0], args[1] if len(args) > 1 else None
        if not isinstance(prod, Product) and name in ("mul", "add") and \
                isinstance(other, Product):
            prod, other = other, prod
        if not isinstance(prod, Product) or isinstance(other, SYMBOLIC):
            raise UnsupportedModelError(
                f"{node.name}: only scaling, adding a constant and masking "
                "may act on q @ k before the softmax")
        if name == "mul":
            c = _as_tensor(other)
            return dataclasses.replace(prod, coef=prod.coef * c,
                                       bias=prod.bias * c)
        if name == "div":
            c = _as_tensor(other)
            return dataclasses.replace(prod, coef=prod.coef / c,
                                       bias=prod.bias / c)
        if name == "add":
            return _add_to_product(prod, _as_tensor(other))
        if name == "masked_fill" and float(args[2]) == float("-inf"):
            return dataclasses.replace(prod, mask=prod.mask | other.bool())
        raise UnsupportedModelError(f"{node.name}: {name} on q @ k")

    def attention_output(self, node, prod: Product, v: Affine) -> Affine:
        path = _module_path(node)
        v_name = self.operand(v, self.unique(path, "v"))
        shape = tuple(prod.coef.shape[:-1]) + (v.shape[-1],)
        name = self.unique(path, "attention")
        size = int(np.prod(shape))
        out_shape = (-1,) + shape[-2:]
        self.populations.append(Population(
            name, tuple(np.zeros(size).reshape(out_shape).shape),
            "attention", [], np.zeros(size)))
        logit_shape = (-1,) + tuple(prod.coef.shape[-2:])
        self.attention.append(AttentionOp(
            prod.x, prod.y, v_name, name,
            *(t.reshape(logit_shape).numpy().copy()
              for t in (prod.coef, prod.bias, prod.mask))))
        return _direct(name, shape)


# ------------------------------------------------------------------ helpers
def _direct(name: str, shape: ty.Tuple[int, ...]) -> Affine:
    size = int(np.prod(shape))
    return Affine([Term(name, None, None, torch.arange(size).reshape(shape),
                        torch.ones(shape, dtype=torch.float64))],
                  torch.zeros(shape, dtype=torch.float64))


def _uniform(scale: torch.Tensor, valid: torch.Tensor,
             axis: int) -> ty.Optional[torch.Tensor]:
    """The (R, K) ``scale`` as one value per column (``axis=0``) or per row
    (``axis=1``) where ``valid``, or None if it is not."""
    first = valid.to(torch.uint8).argmax(axis)  # first valid entry
    picked = scale.gather(axis, first.unsqueeze(axis)).squeeze(axis)
    spread = picked.unsqueeze(axis).expand_as(scale)
    if torch.equal(torch.where(valid, scale, 0.0),
                   torch.where(valid, spread, 0.0)):
        return picked
    return None


def _live(terms: ty.List[Term]) -> ty.List[Term]:
    """The terms that feed some element: picking one item of a list (the
    ``getitem`` after ``unbind``/``split``) leaves the other items' terms
    with every ``out`` at -1, which would become empty synapses that still
    store and multiply the whole weight."""
    live = [t for t in terms if bool(((t.out >= 0) & (t.scale != 0)).any())]
    return live or terms[:1]


def _pop_shape(shape: ty.Tuple[int, ...], kind: str) -> ty.Tuple[int, ...]:
    """A population's shape: the value's at batch 1, without a leading
    batch axis; operands of products are (heads, rows, cols)."""
    if kind == "operand":
        return (int(np.prod(shape[:-2])),) + tuple(shape[-2:])
    return tuple(shape[1:]) if len(shape) > 1 and shape[0] == 1 else \
        tuple(shape)


def _synapse(t: Term, dst: str) -> Synapse:
    """A Term as a token-shared synapse: a direct read becomes a diagonal
    weight over the value's last axis; per-channel scales fold into the
    weight's rows."""
    out, scale = t.out.reshape(-1), t.scale.reshape(-1)
    if t.weight is None:
        c = t.out.shape[-1]
        rows = t.out.reshape(-1, c)
        weight = torch.eye(c, dtype=torch.float64)
        out = torch.where(rows.reshape(-1) >= 0,
                          torch.arange(rows.numel()), -1)
    else:
        rows, weight = t.rows, t.weight
        c = weight.shape[0]
    out = torch.where(scale != 0, out, -1)
    channel = torch.where(out >= 0, out % c, 0)
    per_c = torch.zeros(c, dtype=torch.float64).scatter_(
        0, channel[out >= 0], scale[out >= 0])
    if not torch.equal(torch.where(out >= 0, per_c[channel], 0.0),
                       torch.where(out >= 0, scale, 0.0)):
        raise UnsupportedModelError(
            f"{dst}: a per-token scale after a weight cannot be folded into "
            "a token-shared weight")
    return Synapse(t.src, rows.numpy().astype(np.int64),
                   (weight * per_c[:, None]).numpy(),
                   out.numpy().astype(np.int64))


def _add(a, b):
    if not isinstance(a, Affine):
        a, b = b, a
    if not isinstance(b, Affine):
        return _scaled(a, 1.0, _as_tensor(b))
    shape = torch.broadcast_shapes(a.shape, b.shape)
    terms = [_expand(t, shape) for t in a.terms + b.terms]
    return Affine(terms, (a.bias + b.bias).expand(shape).clone())


def _expand(t: Term, shape) -> Term:
    return dataclasses.replace(t, out=t.out.expand(shape).clone(),
                               scale=t.scale.expand(shape).clone())


def _scaled(x: Affine, scale, shift) -> Affine:
    """``x * scale + shift`` (constants that broadcast)."""
    scale, shift = _as_tensor(scale), _as_tensor(shift)
    bias = x.bias * scale + shift
    shape = tuple(bias.shape)
    return Affine([dataclasses.replace(
        _expand(t, shape), scale=(t.scale * scale).expand(shape).clone())
        for t in x.terms], bias)


def _add_to_product(prod: Product, c: torch.Tensor) -> Product:
    """An additive constant on the logits; -inf entries are a mask."""
    c = torch.broadcast_to(c, prod.coef.shape)
    masked = torch.isneginf(c)
    return dataclasses.replace(prod, bias=prod.bias + torch.where(
        masked, 0.0, c), mask=prod.mask | masked)


def _as_tensor(c) -> torch.Tensor:
    if isinstance(c, Affine):
        raise UnsupportedModelError("an activation where a constant is "
                                    "needed")
    return torch.as_tensor(c, dtype=torch.float64)


def _fill(a, value, dtype):
    if isinstance(a, Affine):
        return torch.full(a.shape, value, dtype=dtype)
    if torch.is_tensor(a):
        return torch.full(a.shape, value, dtype=dtype)
    return a


def _shape(a) -> ty.Tuple[int, ...]:
    if isinstance(a, Softmax):
        return tuple(a.product.coef.shape)
    return tuple(a.shape)


def _fanout(node: torch.fx.Node) -> int:
    """Users of a node, looking through identities (dropout, clone)."""
    total = 0
    for user in node.users:
        total += _fanout(user) if op_name(user.target) in IDENTITY else 1
    return total


def _conv1d_as_2d(x: Affine) -> Affine:
    return Affine([dataclasses.replace(t, out=t.out.unsqueeze(-2),
                                       scale=t.scale.unsqueeze(-2))
                   for t in x.terms], x.bias.unsqueeze(-2))


def _conv1d_args_as_2d(conv):
    def pair(v, fill):
        v = v[0] if isinstance(v, (list, tuple)) else v
        return [fill, v]
    stride, padding, dilation, groups = (list(conv) + [1, 0, 1, 1][
        len(conv):])[:4]
    if isinstance(padding, str):
        raise UnsupportedModelError("string padding of conv1d")
    return [pair(stride, 1), pair(padding, 0), pair(dilation, 1), groups]


def _flat(args, kwargs) -> ty.List[ty.Any]:
    out = []
    for a in list(args) + list(kwargs.values()):
        out.extend(_flat(a, {}) if isinstance(a, (list, tuple)) else [a])
    return out


def _replace(args, kwargs, fn):
    def sub(a):
        if isinstance(a, (list, tuple)):
            return type(a)(sub(x) for x in a)
        return fn(a) if isinstance(a, Affine) or torch.is_tensor(a) else a
    return sub(args), {k: sub(v) for k, v in kwargs.items()}


def mask_tokens(graph: Graph, mean_pool: bool = False) -> Graph:
    """``graph`` with a runtime attention mask over the N tokens of its
    input (the first axis): every attention masks padded keys; with
    ``mean_pool`` (the readout is a mean over tokens) the populations the
    readout reads never fire for padded tokens and the readout divides by
    the real tokens (:meth:`lava_spiked.plan.Plan.pool`).

    Raises
    ------
    UnsupportedModelError
        If an attention's keys or a pooled population's first axis are not
        the N tokens.
    """
    n = graph[graph.input].shape[0]
    for op in graph.attention:
        if op.coef.shape[-1] != n:
            raise UnsupportedModelError(
                f"{op.out}: attends over {op.coef.shape[-1]} keys, not the "
                f"{n} tokens of the attention mask")
    pooled = _pooled_tokens(graph, n) if mean_pool else set()
    return dataclasses.replace(
        graph, tokens=n, mean_pool=mean_pool,
        attention=[dataclasses.replace(op, key_mask=True)
                   for op in graph.attention],
        populations=[dataclasses.replace(p, token_mask=p.name in pooled)
                     for p in graph.populations])


def _pooled_tokens(graph: Graph, n: int) -> ty.Set[str]:
    """The token populations (N, ...) whose mean the readout takes:
    reached from the readout through populations without a token axis
    (the pooled vector), and read by nothing else."""
    readers: ty.Dict[str, ty.Set[str]] = {}
    for pop in graph.populations:
        for syn in pop.synapses:
            readers.setdefault(syn.src, set()).add(pop.name)
    for op in graph.attention:
        for src in (op.x, op.y, op.v):
            readers.setdefault(src, set()).add(op.out)
    chain, pooled = {graph.output}, set()
    frontier = [graph.output]
    while frontier:
        for syn in graph[frontier.pop()].synapses:
            src = graph[syn.src]
            if len(src.shape) >= 2 and src.shape[0] == n:
                pooled.add(src.name)
            elif src.kind != "input" and src.name not in chain:
                chain.add(src.name)
                frontier.append(src.name)
    if not pooled:
        raise UnsupportedModelError(
            f"mean_pool: the readout reads no population of {n} tokens")
    for name in pooled:
        other = readers[name] - chain
        if other:
            raise UnsupportedModelError(
                f"mean_pool: {name} is pooled but also read by "
                f"{sorted(other)}; its padded tokens cannot be silenced")
    return pooled


def evaluate(graph: Graph, x: torch.Tensor,
             record: ty.Optional[ty.Callable[[str, torch.Tensor], None]] = None,
             attention_mask: ty.Optional[torch.Tensor] = None
             ) -> torch.Tensor:
    """The captured network without quantisation, batched, in float64:
    the folded synapses, ReLU, the activations and LayerNorm (unclipped)
    and exact softmax attention. It equals the
    model's output up to float rounding exactly when the capture is right.

    With ``record``, calls ``record(name, values)`` with each population's
    values (batch, size) (and the logits of each attention, masked entries
    0, and the membrane ``<name>:pre`` of each activation and LayerNorm
    population) as soon as they exist. Every value is dropped after its
    last reader, so memory holds the live activations only (calibration
    reduces each one in its callback).

    A graph with a runtime mask (:func:`mask_tokens`) takes
    ``attention_mask`` (batch, N), True for real tokens: padded keys are
    masked, pooled padded tokens are 0 and a mean-pooled readout divides
    by the real tokens, as the model computes with its attention mask.
    """
    n = len(x)
    if graph.tokens:
        attention_mask = torch.ones(n, graph.tokens, dtype=torch.bool) \
            if attention_mask is None else \
            torch.as_tensor(attention_mask).bool()
    dead = _dead_after(graph)
    val = {graph.input: x.reshape(n, -1).double()}
    if record is not None:
        record(graph.input, val[graph.input])
    attention = {op.out: op for op in graph.attention}
    for i, pop in enumerate(graph.populations[1:], 1):
        op = attention.get(pop.name)
        if op is not None:
            xs, ys, vs = (val[p].reshape((n,) + graph[p].shape)
                          for p in (op.x, op.y, op.v))
            z = torch.from_numpy(op.coef) * (xs @ ys) + \
                torch.from_numpy(op.bias)
            mask = torch.from_numpy(op.mask)
            if op.key_mask:
                mask = mask | ~attention_mask[:, None, None, :]
            if record is not None:
                record(op.logits, z.masked_fill(mask, 0.0).reshape(n, -1))
            p = torch.softmax(z.masked_fill(mask, -math.inf), -1)
            val[pop.name] = torch.nan_to_num(p @ vs, nan=0.0).reshape(n, -1)
        else:
            a = torch.from_numpy(pop.bias).expand(n, -1)
            for syn in pop.synapses:
                a = a + _apply(syn, val[syn.src])
            if pop.kind in STAGED and record is not None:
                record(pop.name + ":pre", a)
            val[pop.name] = _activate(pop, a)
            if pop.token_mask:
                val[pop.name] = (val[pop.name].reshape((n, pop.shape[0], -1))
                                 * attention_mask[..., None]).reshape(n, -1)
        if record is not None:
            record(pop.name, val[pop.name])
        for name in dead.get(i, ()):
            del val[name]
    out = graph[graph.output]
    y = val[graph.output].reshape((n,) + out.shape)
    if graph.mean_pool:
        b = torch.from_numpy(out.bias).reshape(out.shape)
        ratio = graph.tokens / attention_mask.sum(1).double()
        y = (y - b) * ratio.reshape((-1,) + (1,) * len(out.shape)) + b
    return y


def _activate(pop: Population, a: torch.Tensor) -> torch.Tensor:
    """What a population holds given its integrated input ``a`` (batch,
    size), exactly (float64)."""
    if pop.kind == "relu":
        return a.clamp(min=0.0)
    if pop.kind == "layernorm":
        n = pop.shape[-1]
        z = torch.nn.functional.layer_norm(a.reshape(-1, n), (n,),
                                           eps=pop.eps)
        return z.reshape(a.shape)
    if pop.kind == "activation":
        return torch.from_numpy(ACTIVATIONS[pop.fn][0](a.numpy()))
    return a


def _dead_after(graph: Graph) -> ty.Dict[int, ty.List[str]]:
    """Population index -> the values no later population reads."""
    last: ty.Dict[str, int] = {}
    attention = {op.out: op for op in graph.attention}
    for i, pop in enumerate(graph.populations[1:], 1):
        op = attention.get(pop.name)
        for src in (op.x, op.y, op.v) if op is not None else \
                (syn.src for syn in pop.synapses):
            last[src] = i
    dead: ty.Dict[int, ty.List[str]] = {}
    for name, i in last.items():
        if name != graph.output:
            dead.setdefault(i, []).append(name)
    return dead


def _is_arange(idx: np.ndarray) -> bool:
    return bool(np.array_equal(idx.reshape(-1), np.arange(idx.size)))


def _apply(syn: Synapse, x: torch.Tensor) -> torch.Tensor:
    """``syn`` applied to real source values ``x`` (batch, src size): the
    torch twin of :meth:`lava_spiked.plan.Synapse.apply`, so calibration
    stays on torch tensors. Identity index maps (a Linear reading a whole
    population, a product taken whole) are views, not gathers."""
    n, (r, k) = len(x), syn.rows.shape
    w = torch.as_tensor(syn.weight.T, dtype=x.dtype)
    if _is_arange(syn.rows):
        g = x[:, :r * k].reshape(n, r, k)
    else:
        rows = torch.as_tensor(syn.rows)
        g = x.index_select(1, rows.clamp(min=0).reshape(-1)).reshape(
            n, r, k)
        if (rows < 0).any():
            g = g.masked_fill(rows < 0, 0.0)
    y = (g @ w).reshape(n, -1)
    if len(syn.out) == y.shape[1] and _is_arange(syn.out):
        return y
    out = torch.as_tensor(syn.out)
    y = y.index_select(1, out.clamp(min=0))
    return y.masked_fill(out < 0, 0.0) if (out < 0).any() else y
