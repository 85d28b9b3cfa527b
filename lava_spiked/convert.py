"""Capture a PyTorch transformer into a phase-coded network description.

:func:`capture` traces a model with ``torch.fx`` and evaluates its graph on
*symbolic* values instead of tensors:

``Affine``
    a value that is an affine function of the decoded spikes of the
    populations made so far. It is stored as a batch of tensors: row 0 is
    the value when every population is silent, row ``1 + i`` the value when
    only unit ``i`` of the basis is 1. Any affine torch operation (Linear,
    Conv2d, eval-mode BatchNorm, residual adds, reshapes, concatenation with
    a parameter, pooling, indexing) is evaluated by running the operation
    itself on that batch, so layouts and broadcasting are torch's own.
``Product``
    ``a @ b`` of two populations (a spike x spike product), possibly scaled
    and offset elementwise (the 1/sqrt(d) factor, a position bias, a mask).
``Softmax``
    the softmax of a Product, which becomes a WOSS population.

A population of phase neurons is made wherever a value must be spikes: at
ReLU (unipolar), at both operands of a matmul, at the attention output
(``softmax @ v``) and at the model output (readout). Chains of affine
operations between populations fold into the weights of the Dense synapses
that connect them, with their BatchNorms and residual adds.
"""
import copy
import dataclasses
import operator
import types
import typing as ty

import numpy as np
import torch
import torch.fx
from torch import nn

AFFINE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d,
                  nn.BatchNorm2d, nn.Dropout, nn.Identity, nn.Flatten,
                  nn.AvgPool2d)
RELU = (nn.ReLU, torch.relu, torch.nn.functional.relu, "relu")
MATMUL = (operator.matmul, torch.matmul, torch.bmm, "matmul")
SOFTMAX = (torch.softmax, torch.nn.functional.softmax, "softmax")
AFFINE_FUNCTIONS = {operator.add, operator.sub, operator.neg, operator.mul,
                    operator.truediv, operator.getitem, torch.cat,
                    torch.nn.functional.linear,
                    torch.flatten, torch.transpose, torch.permute,
                    torch.reshape, torch.mean, torch.sum, getattr}
AFFINE_METHODS = {"add", "sub", "mul", "div", "flatten", "transpose",
                  "permute", "reshape", "view", "contiguous", "expand",
                  "squeeze", "unsqueeze", "mean", "sum", "size"}
# operations that are linear in each symbolic argument only if the other
# argument is a constant
PRODUCTS = {operator.mul, operator.truediv, "mul", "div"}


class UnsupportedModelError(ValueError):
    """The model uses operations that have no phase-coded equivalent."""


@dataclasses.dataclass
class Population:
    """A population of phase neurons (or the input encoder).

    Attributes
    ----------
    name : str
        fx node whose value the population carries.
    shape : tuple of int
        Shape of one sample's value.
    kind : str
        'input', 'neuron', 'relu', 'operand', 'attention' or 'readout'.
    inputs : list of (Population, numpy.ndarray)
        Sources and real-unit weights (n_out, n_src) of the Dense synapses.
    bias : numpy.ndarray
        Real-unit bias (n_out,).
    shared_axes : tuple of int
        Axes (of ``shape``) along which sigma must be one value.
    """

    name: str
    shape: ty.Tuple[int, ...]
    kind: str
    inputs: ty.List[ty.Tuple["Population", np.ndarray]]
    bias: np.ndarray
    shared_axes: ty.Tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Number of neurons."""
        return int(np.prod(self.shape))


@dataclasses.dataclass
class AttentionOp:
    """``softmax(coef * (x @ y) + bias, masked) @ v`` on populations.

    ``x`` is (h, N, K), ``y`` is (h, K, M) and ``v`` is (h, M, d); ``out``
    is the (h, N, d) population of the normalised result; ``logit_node`` is
    the fx node of the softmax input (for calibration).
    """

    x: Population
    y: Population
    v: Population
    out: Population
    coef: np.ndarray
    bias: np.ndarray
    mask: np.ndarray
    logit_node: str


@dataclasses.dataclass
class Graph:
    """Captured network: populations in creation order (sources first),
    attention operations, the fx module that computes the ANN, and the
    input and output populations."""

    populations: ty.List[Population]
    attention: ty.List[AttentionOp]
    module: torch.fx.GraphModule
    input: Population
    output: Population


class _Basis:
    """The populations whose decoded spikes Affine values depend on.

    Every Affine value has ``1 + capacity`` rows from the start, so the batch
    size that the model's own code reads (``x.shape[0]``) never changes
    while populations are added.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.populations: ty.List[Population] = []
        self.offsets: ty.List[int] = []
        self.size = 0

    def add(self, pop: Population) -> "Affine":
        """Register ``pop`` and return the value it carries."""
        if self.size + pop.size > self.capacity:
            raise AssertionError("population capacity underestimated")
        rows = torch.zeros((1 + self.capacity, pop.size), dtype=torch.float64)
        rows[1 + self.size:1 + self.size + pop.size] = torch.eye(
            pop.size, dtype=torch.float64)
        self.populations.append(pop)
        self.offsets.append(self.size)
        self.size += pop.size
        return Affine(rows.reshape((1 + self.capacity,) + pop.shape), self)


class Affine:
    """Affine function of the basis populations (see module docstring)."""

    def __init__(self, rows: torch.Tensor, basis: _Basis) -> None:
        self.rows, self.basis = rows, basis

    @property
    def shape(self) -> ty.Tuple[int, ...]:
        return tuple(self.rows.shape[1:])

    def weights(self) -> ty.Tuple[ty.List[ty.Tuple[Population, np.ndarray]],
                                  np.ndarray]:
        """Dense weights (n_out, n_src) from every population it depends on,
        and the constant part (the bias)."""
        rows = self.rows.reshape(1 + self.basis.capacity, -1)
        const = rows[0]
        out = []
        for pop, off in zip(self.basis.populations, self.basis.offsets):
            w = (rows[1 + off:1 + off + pop.size] - const).T
            if torch.any(w != 0):
                out.append((pop, w.numpy().copy()))
        return out, const.numpy().copy()


@dataclasses.dataclass
class Product:
    """Pending ``coef * (x @ y) + bias`` of two populations, masked."""

    x: Population
    y: Population
    coef: torch.Tensor
    bias: torch.Tensor
    mask: torch.Tensor


@dataclasses.dataclass
class Softmax:
    """Softmax of a Product along its last axis."""

    product: Product
    node: str


def _mha_forward(self, query, key, value, key_padding_mask=None,
                 need_weights=True, attn_mask=None, average_attn_weights=True,
                 is_causal=False):
    """Inference of nn.MultiheadAttention written with plain operations, so
    that fx traces it (its own forward has data-dependent fast paths)."""
    if key_padding_mask is not None or is_causal or \
            not self._qkv_same_embed_dim or self.bias_k is not None or \
            self.add_zero_attn:
        raise UnsupportedModelError(
            "nn.MultiheadAttention is supported without key_padding_mask, "
            "is_causal, kdim/vdim, bias_k/bias_v and add_zero_attn")
    if not self.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    b, e, h = query.shape[0], self.embed_dim, self.num_heads
    d = e // h
    def project(t, i):
        w = self.in_proj_weight[i * e:(i + 1) * e]
        bb = None if self.in_proj_bias is None else \
            self.in_proj_bias[i * e:(i + 1) * e]
        return torch.nn.functional.linear(t, w, bb).reshape(
            b, t.shape[1], h, d).transpose(1, 2)

    q, k, v = project(query, 0), project(key, 1), project(value, 2)
    attn = (q @ k.transpose(-2, -1)) * d ** -0.5
    if attn_mask is not None:
        attn = attn.masked_fill(attn_mask, float("-inf")) \
            if attn_mask.dtype == torch.bool else attn + attn_mask
    out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(
        b, query.shape[1], e)
    out = self.out_proj(out)
    return (out if self.batch_first else out.transpose(0, 1)), None


def _encoder_layer_forward(self, src, src_mask=None, src_key_padding_mask=None,
                           is_causal=False):
    """Inference of nn.TransformerEncoderLayer with plain operations."""
    def sa(x):
        return self.dropout1(self.self_attn(x, x, x, attn_mask=src_mask,
                                            is_causal=is_causal)[0])

    def ff(x):
        return self.dropout2(self.linear2(self.dropout(
            self.activation(self.linear1(x)))))

    if src_key_padding_mask is not None:
        raise UnsupportedModelError("src_key_padding_mask is not supported")
    if self.norm_first:
        src = src + sa(self.norm1(src))
        return src + ff(self.norm2(src))
    src = self.norm1(src + sa(src))
    return self.norm2(src + ff(src))


def _encoder_forward(self, src, mask=None, src_key_padding_mask=None,
                     is_causal=None):
    """Inference of nn.TransformerEncoder with plain operations."""
    for layer in self.layers:
        src = layer(src, src_mask=mask,
                    src_key_padding_mask=src_key_padding_mask)
    return src if self.norm is None else self.norm(src)


# torch.nn modules whose forward has data-dependent fast paths: traced
# through these equivalent forwards instead of kept as opaque leaves.
PLAIN_FORWARD = {nn.MultiheadAttention: _mha_forward,
                 nn.TransformerEncoderLayer: _encoder_layer_forward,
                 nn.TransformerEncoder: _encoder_forward}


class _Tracer(torch.fx.Tracer):
    """fx tracer that traces through the modules of PLAIN_FORWARD."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not isinstance(m, tuple(PLAIN_FORWARD)) and \
            super().is_leaf_module(m, qualname)


def plain(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose PLAIN_FORWARD modules use their
    plain forwards (same results; no fast paths)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        forward = PLAIN_FORWARD.get(type(module))
        if forward is not None:
            module.forward = types.MethodType(forward, module)
    return model


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace :func:`plain` ``(model)`` with torch.fx."""
    model = plain(model)
    try:
        graph = _Tracer().trace(model)
    except UnsupportedModelError:
        raise
    except Exception as err:  # fx raises many types for dynamic control flow
        raise UnsupportedModelError(
            f"torch.fx could not trace {type(model).__name__}: {err}. The "
            "converter needs a forward() without data-dependent control "
            "flow.") from err
    return torch.fx.GraphModule(model, graph)


def unsupported(gm: torch.fx.GraphModule) -> ty.List[str]:
    """Qualified names and types of every operation on activations that has
    no phase-coded equivalent, in graph order (operations on parameters and
    constants only are computed once and need no equivalent)."""
    modules = dict(gm.named_modules())
    dependent: ty.Set[str] = set()
    bad = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            dependent.add(node.name)
            continue
        if not any(n.name in dependent for n in node.all_input_nodes):
            continue
        dependent.add(node.name)
        if node.op == "call_module":
            mod = modules[node.target]
            if not isinstance(mod, AFFINE_MODULES + (nn.ReLU,)):
                bad.append(f"{node.target} ({type(mod).__name__})")
        elif node.op == "call_function":
            if node.target not in AFFINE_FUNCTIONS and \
                    node.target not in RELU + MATMUL + SOFTMAX:
                bad.append(f"{node.name} (function "
                           f"{getattr(node.target, '__name__', node.target)})")
        elif node.op == "call_method":
            if node.target not in AFFINE_METHODS and \
                    node.target not in RELU + MATMUL + SOFTMAX + \
                    ("masked_fill",):
                bad.append(f"{node.name} (method {node.target})")
    return bad


def capture(model: nn.Module, sample_shape: ty.Tuple[int, ...]) -> Graph:
    """Trace ``model`` and turn it into populations and attention ops.

    Parameters
    ----------
    model : torch.nn.Module
        The transformer, evaluated in eval mode.
    sample_shape : tuple of int
        Shape of one input sample (without the batch axis).

    Raises
    ------
    UnsupportedModelError
        Listing every unsupported module and function, before anything is
        built.
    """
    gm = trace(model).double()
    bad = unsupported(gm)
    if bad:
        raise UnsupportedModelError(
            "cannot convert these operations to phase-coded spikes: " +
            "; ".join(bad) + ". Supported: Linear, Conv (patch embedding), "
            "eval-mode BatchNorm, ReLU, residual adds, reshapes, pooling, "
            "concatenation with parameters, and attention written as "
            "softmax(q @ k^T * scale + bias) @ v.")
    return _Capture(gm, tuple(sample_shape)).run()


class _Capture:
    """Evaluate an fx graph on symbolic values."""

    def __init__(self, gm: torch.fx.GraphModule,
                 sample_shape: ty.Tuple[int, ...]) -> None:
        self.gm, self.sample_shape = gm, sample_shape
        self.modules = dict(gm.named_modules())
        self.basis = _Basis(_capacity(gm, sample_shape))
        self.attention: ty.List[AttentionOp] = []
        self.input: ty.Optional[Population] = None

    def run(self) -> Graph:
        env: ty.Dict[str, ty.Any] = {}
        with torch.no_grad():
            for node in self.gm.graph.nodes:
                args = torch.fx.node.map_arg(node.args, lambda n: env[n.name])
                kwargs = torch.fx.node.map_arg(node.kwargs,
                                               lambda n: env[n.name])
                if node.op == "output":
                    # named after the output node: the value it reads may
                    # already be a population (a model ending in ReLU)
                    out = self.materialize(args[0], node.name, "readout")
                    self.basis.add(out)
                    return Graph(self.basis.populations, self.attention,
                                 self.gm, self.input, out)
                env[node.name] = self.evaluate(node, args, kwargs)
        raise UnsupportedModelError("the traced graph has no output")

    def evaluate(self, node, args, kwargs):
        if node.op == "placeholder":
            if self.input is not None:
                raise UnsupportedModelError("models with more than one input "
                                            "are not supported")
            self.input = Population(node.name, self.sample_shape, "input", [],
                                    np.zeros(int(np.prod(self.sample_shape))))
            return self.basis.add(self.input)
        if node.op == "get_attr":
            obj = self.gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj.detach().double() if torch.is_tensor(obj) else obj
        target = self.modules[node.target] if node.op == "call_module" \
            else node.target
        symbolic = [a for a in _flat(args, kwargs)
                    if isinstance(a, (Affine, Product, Softmax))]
        if not symbolic:
            return self.call(node, target, args, kwargs)
        if target is getattr or target == "size":  # shapes, not values
            args, kwargs = _replace(args, kwargs, lambda a: a.rows)
            return self.call(node, target, args, kwargs)
        if target in RELU or isinstance(target, nn.ReLU):
            return self.identity(self.materialize(args[0], node.name,
                                                  "relu"))
        if target in MATMUL:
            return self.matmul(node, *args[:2])
        if target in SOFTMAX:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            # the last axis: -1, or its index counting the batch axis
            if not isinstance(args[0], Product) or dim not in (-1, len(
                    args[0].coef.shape)):
                raise UnsupportedModelError(
                    f"{node.name}: softmax must act on the last axis of a "
                    "q @ k product")
            return Softmax(args[0], node.args[0].name)
        if any(isinstance(a, (Product, Softmax)) for a in symbolic):
            return self.product_op(node, target, args, kwargs)
        if target in PRODUCTS and len(symbolic) > 1:
            raise UnsupportedModelError(
                f"{node.name}: elementwise product of two activations has "
                "no phase-coded equivalent")
        basis = symbolic[0].basis
        args, kwargs = _replace(args, kwargs, lambda a: a.rows)
        return Affine(self.call(node, target, args, kwargs), basis)

    def call(self, node, target, args, kwargs):
        if node.op == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        return target(*args, **kwargs)

    def identity(self, pop: Population) -> Affine:
        return self.basis.add(pop)

    def materialize(self, value, name: str, kind: str,
                    shared_axes: ty.Tuple[int, ...] = ()) -> Population:
        """Make a population that carries ``value``."""
        if not isinstance(value, Affine):
            raise UnsupportedModelError(
                f"{name}: a {type(value).__name__} cannot feed a {kind} "
                "population")
        inputs, bias = value.weights()
        return Population(name, value.shape, kind, inputs, bias, shared_axes)

    def matmul(self, node, a, b):
        if isinstance(a, Softmax) and isinstance(b, Affine):
            return self.attention_output(node, a, b)
        if not (isinstance(a, Affine) and isinstance(b, Affine)) or \
                len(a.shape) != 3 or len(b.shape) != 3:
            raise UnsupportedModelError(
                f"{node.name}: matmul is supported between two (heads, rows, "
                "cols) activations (q @ k^T) and between their softmax and "
                "v")
        nd = len(a.shape)
        x = self.materialize(a, node.args[0].name, "operand", (nd - 1,))
        self.basis.add(x)
        y = self.materialize(b, node.args[1].name, "operand", (nd - 2,))
        self.basis.add(y)
        shape = a.shape[:-1] + b.shape[-1:]
        return Product(x, y, torch.ones(shape, dtype=torch.float64),
                       torch.zeros(shape, dtype=torch.float64),
                       torch.zeros(shape, dtype=torch.bool))

    def product_op(self, node, target, args, kwargs):
        """Elementwise scale, offset or mask of a pending product."""
        prod = args[0]
        if not isinstance(prod, Product) or len(args) < 2:
            raise UnsupportedModelError(
                f"{node.name}: only scaling, adding a constant and masking "
                "may act on q @ k before the softmax")
        other = args[1]
        if isinstance(other, (Affine, Product, Softmax)):
            raise UnsupportedModelError(
                f"{node.name}: q @ k combined with another activation")
        other = torch.as_tensor(other, dtype=torch.float64)
        per_sample = other[0] if other.dim() > len(prod.coef.shape) else other
        if target in (operator.mul, "mul"):
            return dataclasses.replace(prod, coef=prod.coef * per_sample,
                                       bias=prod.bias * per_sample)
        if target in (operator.truediv, "div"):
            return dataclasses.replace(prod, coef=prod.coef / per_sample,
                                       bias=prod.bias / per_sample)
        if target in (operator.add, "add"):
            return dataclasses.replace(prod, bias=prod.bias + per_sample)
        if target == "masked_fill" and float(args[2]) == float("-inf"):
            return dataclasses.replace(prod, mask=prod.mask | per_sample.bool())
        raise UnsupportedModelError(
            f"{node.name}: {getattr(target, '__name__', target)} on q @ k")

    def attention_output(self, node, soft: Softmax, v: Affine) -> Affine:
        prod = soft.product
        v_pop = self.materialize(v, node.args[1].name, "operand",
                                 (len(v.shape) - 2,))
        self.basis.add(v_pop)
        shape = prod.coef.shape[:-1] + v.shape[-1:]
        out = Population(node.name, tuple(shape), "attention", [],
                         np.zeros(int(np.prod(shape))))
        self.attention.append(AttentionOp(
            prod.x, prod.y, v_pop, out, prod.coef.numpy(), prod.bias.numpy(),
            prod.mask.numpy(), soft.node))
        return self.identity(out)


def _capacity(gm: torch.fx.GraphModule,
              sample_shape: ty.Tuple[int, ...]) -> int:
    """Upper bound on the neurons of all populations: the input plus every
    tensor that enters or leaves a ReLU, a matmul or the output."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        ShapeProp(gm).propagate(torch.zeros((1,) + sample_shape,
                                            dtype=torch.float64))
    except Exception as err:
        raise ValueError(f"the model does not accept inputs of shape "
                         f"{sample_shape} (one sample): {err}") from err

    def numel(n) -> int:
        meta = n.meta.get("tensor_meta") if isinstance(n, torch.fx.Node) \
            else None
        return int(np.prod(meta.shape[1:])) if hasattr(meta, "shape") else 0

    total = int(np.prod(sample_shape))
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        target = modules.get(node.target) if node.op == "call_module" \
            else node.target
        if target in RELU + MATMUL or isinstance(target, nn.ReLU) or \
                node.op == "output":
            total += numel(node) + sum(numel(a) for a in node.all_input_nodes)
    return total


def _flat(args, kwargs) -> ty.List[ty.Any]:
    out = []
    for a in list(args) + list(kwargs.values()):
        out.extend(_flat(a, {}) if isinstance(a, (list, tuple)) else [a])
    return out


def _replace(args, kwargs, fn):
    def sub(a):
        if isinstance(a, (list, tuple)):
            return type(a)(sub(x) for x in a)
        return fn(a) if isinstance(a, Affine) else a
    return sub(args), {k: sub(v) for k, v in kwargs.items()}


def evaluate(graph: Graph, sample: ty.Any) -> np.ndarray:
    """The captured network without any quantisation: the folded affine
    maps, ReLU and exact softmax attention. It equals the model's output up
    to float rounding exactly when the capture is right."""
    val = {graph.input.name: np.asarray(sample, dtype=np.float64).ravel()}
    attention = {op.out.name: op for op in graph.attention}
    for pop in graph.populations[1:]:
        op = attention.get(pop.name)
        if op is not None:
            x, y, v = (val[p.name].reshape(p.shape) for p in (op.x, op.y, op.v))
            z = np.where(op.mask, -np.inf, op.coef * (x @ y) + op.bias)
            z_max = z.max(-1, keepdims=True)
            e = np.exp(z - np.where(np.isfinite(z_max), z_max, 0.0))
            total = e.sum(-1, keepdims=True)
            p = np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)
            val[pop.name] = (p @ v).ravel()
            continue
        a = pop.bias + sum(w @ val[src.name] for src, w in pop.inputs)
        val[pop.name] = np.maximum(a, 0.0) if pop.kind == "relu" else a
    return val[graph.output.name].reshape(graph.output.shape)
