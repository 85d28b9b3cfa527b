"""One rule per ATen op: what capture does with it.

A rule is called as ``fn(cap, node, *args, **kwargs)`` with the interpreter
(:class:`lava_spiked.capture.interpreter.Interpreter`), the fx node and its
arguments, symbolic values (:mod:`lava_spiked.capture.symbolic`) where the
node reads activations. Its kind says how the op depends on them:

``"value"``
    Acts on activations: returns a symbolic value (and may make
    populations through ``cap``) or raises :class:`UnsupportedModelError`.
``"shape"``
    Reads only the shape and dtype of its activation argument
    (``x.new_zeros(...)``, ``zeros_like``): evaluated once at capture on a
    stand-in of that shape, so what is built from it (Swin's
    shifted-window mask) is a constant.
``"meta"``
    Checks metadata (``_assert_tensor_metadata``): dropped.

A :class:`~lava_spiked.capture.symbolic.Pointwise` value (a function of
one activation still being composed) reaches only rules registered with
``pointwise=True``; for every other rule the interpreter first makes it a
population (:meth:`Interpreter.activate`).

A node whose arguments are all constants is evaluated whatever its op
(constant folding: masks, relative-position lookups, ``expand`` of
parameters), so rules only see nodes that read an activation. An op with no
rule is refused by :func:`unsupported` before anything is built: nothing
falls through to a generic path.
"""
import dataclasses
import functools
import typing as ty

import numpy as np
import torch

from lava_spiked.capture.frontend import (module_path, module_type, op_name,
                                          where)
from lava_spiked.capture.symbolic import (
    SYMBOLIC, Affine, Pointwise, SpikeProduct, Softmax, UnsupportedModelError,
    Term, add, add_to_product, affine_of, as_constant, live, scaled,
    uniform)


@dataclasses.dataclass(frozen=True)
class Rule:
    fn: ty.Callable
    kind: str = "value"
    pointwise: bool = False


#: ATen op name (overload dropped) -> its rule
RULES: ty.Dict[str, Rule] = {}


def rule(*names: str, kind: str = "value", pointwise: bool = False):
    """Register the decorated function as the rule of ``names``
    (``pointwise``: it takes Pointwise values)."""
    def register(fn):
        for name in names:
            RULES[name] = Rule(fn, kind, pointwise)
        return fn
    return register


def unsupported(ep: torch.export.ExportedProgram) -> ty.List[str]:
    """Every op on activations that has no rule, named by module path,
    module type and ATen op, in graph order. Ops with a scalar result are
    not named: they follow a tensor op that is (a Python branch on the
    data reads a comparison, then its item and the branch's own asserts)."""
    user = {s.arg.name for s in ep.graph_signature.input_specs
            if s.kind == torch.export.graph_signature.InputKind.USER_INPUT}
    dependent, bad = set(user), []
    for node in ep.graph.nodes:
        if node.op != "call_function" or not any(
                n.name in dependent for n in node.all_input_nodes):
            continue
        found = RULES.get(op_name(node.target))
        if found is None and torch.is_tensor(node.meta.get("val")):
            bad.append(where(node))
        if found is None or found.kind == "value":
            dependent.add(node.name)
    return bad


# ---------------------------------------------------------------- metadata
@rule("_assert_tensor_metadata", kind="meta")
def dropped(cap, node, *args, **kwargs):
    """Nothing: the export fixed every dtype and shape already."""
    return None


@rule("new_zeros", "new_ones", "new_full", "new_empty", "zeros_like",
      "ones_like", "full_like", "empty_like", kind="shape")
def from_shape(cap, node, *args, **kwargs):
    def stand_in(a):
        return torch.zeros(a.shape, dtype=torch.float64) \
            if isinstance(a, SYMBOLIC) else a
    args, kwargs = map_args(args, kwargs, stand_in)
    value = node.target(*args, **kwargs)
    return value.double() if value.is_floating_point() else value


# ---------------------------------------------------------------- identity
@rule("clone", "alias", "detach")
def identity(cap, node, x, *args, **kwargs):
    return x


@rule("_to_copy", "type_as")
def float_cast(cap, node, x, other=None, **kwargs):
    """A cast between float types: values are float64 here throughout."""
    dtype = other.dtype if torch.is_tensor(other) else kwargs.get("dtype")
    if dtype is not None and not dtype.is_floating_point:
        raise UnsupportedModelError(f"a cast of an activation to {dtype}")
    return x


@rule("getitem")
def item(cap, node, items, index):
    """One output of a multi-output op (``unbind``, ``split``, norms)."""
    return items[index]


# ------------------------------------------------------------- index maps
# Ops that move values without arithmetic. Each runs as itself on the
# bias, on every term's index map and on its scales; a position that takes
# no activation (padding, a constant concatenated) gets index -1.
# (The functionalised graph writes reshape, flatten and unflatten as view,
# chunk as split, narrow as slice, movedim as permute.)
MOVES = ("permute", "transpose", "unsqueeze", "squeeze", "select",
         "slice", "expand", "unfold", "split", "split_with_sizes", "unbind",
         "cat", "stack", "repeat", "roll", "flip", "index_select", "gather",
         "index")
# Regroupings of axes; on index maps they run as ``reshape`` (a ``view`` of
# a transposed map has no strides to view it by)
RESHAPES = ("view", "_unsafe_view")


@rule(*MOVES, *RESHAPES)
def move(cap, node, *args, **kwargs):
    target = torch.ops.aten.reshape.default \
        if op_name(node.target) in RESHAPES else node.target
    return moved(node, target, args, kwargs, *map_args(
        args, kwargs, _blank))


@rule("pad")
def pad(cap, node, x, padding, mode="constant", value=None):
    """Padding: a padded position is a source that never fires, plus the
    pad value as a bias (``replicate`` / ``reflect`` copy sources)."""
    if mode != "constant":
        return moved(node, node.target, (x, padding, mode, value), {},
                     (x, padding, mode, value), {})
    return moved(node, torch.ops.aten.pad.default,
                 (x, padding, "constant", float(value or 0.0)), {},
                 (x, padding, "constant", 0.0), {})


@rule("masked_fill")
def masked_fill(cap, node, x, mask, value):
    """A constant mask on an activation writes a constant; on ``q @ k``
    the lowest value (``-inf`` or the dtype's minimum, as Hugging Face
    writes it) masks logits."""
    if isinstance(mask, SYMBOLIC) or isinstance(value, SYMBOLIC):
        raise UnsupportedModelError("a mask computed from activations")
    if isinstance(x, SpikeProduct):
        if float(value) > torch.finfo(torch.float32).min:
            raise UnsupportedModelError(
                f"masked_fill of q @ k with {float(value)}; only -inf or "
                "the lowest float masks")
        return dataclasses.replace(x, mask=x.mask | mask.bool())
    return moved(node, node.target, (x, mask, float(value)), {},
                 (x, mask, 0.0), {})


@rule("where")
def select_where(cap, node, condition, x, other):
    """``where(condition, x, other)`` with a constant condition: on
    ``q @ k`` and a constant, a masked_fill; on activations, a move."""
    if isinstance(condition, SYMBOLIC):
        raise UnsupportedModelError("a condition computed from activations")
    if isinstance(x, SpikeProduct) and not isinstance(other, SYMBOLIC):
        return masked_fill(cap, node, x, ~condition.bool(), other)
    if isinstance(other, SpikeProduct) and not isinstance(x, SYMBOLIC):
        return masked_fill(cap, node, other, condition.bool(), x)
    return moved(node, node.target, (condition, x, other), {},
                 *map_args((condition, x, other), {}, _blank))


def moved(node, target, args, kwargs, blank_args, blank_kwargs):
    """``target`` run on the bias (with ``args``), and on each term's index
    map (shifted by one, so that 0 is "no source") and scales (with
    ``blank_args``: constants zeroed); a list for list results."""
    if any(isinstance(a, (SpikeProduct, Softmax)) for a in flat(args, kwargs)):
        return regrouped_logits(node, target, args, kwargs)
    syms = [a for a in flat(args, kwargs) if isinstance(a, Affine)]

    def run(a, kw, leaf):
        a, kw = map_args(a, kw, leaf)
        return target(*a, **kw)

    bias = run(args, kwargs, lambda a: a.bias if isinstance(a, Affine)
               else a.double() if _is_float(a) else a)
    parts = []
    for s in syms:
        for t in s.terms:
            def channel(own, s=s):
                return lambda a: own if a is s else torch.zeros(
                    a.shape, dtype=torch.float64) if isinstance(
                        a, Affine) else a
            out = run(blank_args, blank_kwargs,
                      channel(t.out.double() + 1.0))
            scale = run(blank_args, blank_kwargs, channel(t.scale))
            parts.append((t, out, scale))

    def affine(pick):
        return Affine(live([dataclasses.replace(
            t, out=pick(o).round().long() - 1, scale=pick(s))
            for t, o, s in parts]), pick(bias))
    if isinstance(bias, (list, tuple)):
        return [affine(lambda v, i=i: v[i]) for i in range(len(bias))]
    return affine(lambda v: v)


def regrouped_logits(node, target, args, kwargs):
    """A regrouping of the leading axes of ``q @ k`` (Swin adds its mask
    per window: ``(B*nW, h, N, N) -> (B, nW, h, N, N)`` and back): the
    product's operands keep their (heads, N, K) layout, since such a
    reshape keeps the flat order of the leading axes."""
    value = args[0]
    prod = value.product if isinstance(value, Softmax) else value
    if op_name(node.target) not in RESHAPES + ("unsqueeze", "squeeze") or \
            not isinstance(prod, SpikeProduct):
        raise UnsupportedModelError(
            "only a regrouping of the leading (batch, head) axes may act on "
            "q @ k or its softmax")

    def run(t):
        return target(t, *args[1:], **kwargs)
    out = dataclasses.replace(prod, coef=run(prod.coef), bias=run(prod.bias),
                              mask=run(prod.mask))
    if out.coef.shape[-2:] != prod.coef.shape[-2:]:
        raise UnsupportedModelError(
            f"a reshape of q @ k from {prod.shape} to {out.shape} that "
            "changes its last two axes")
    return Softmax(out) if isinstance(value, Softmax) else out


# -------------------------------------------------------------- arithmetic
@rule("add", "sub", "rsub", "mul", "div", "neg", pointwise=True)
def arithmetic(cap, node, a, b=1, alpha=1.0, **kwargs):
    """Sums with constants or activations, products with constants; on
    ``q @ k``, a constant scale or additive bias; on functions of one
    activation, their composition (:func:`composed`)."""
    name = op_name(node.target)
    if kwargs.get("rounding_mode") is not None:
        raise UnsupportedModelError(
            f"division with rounding_mode={kwargs['rounding_mode']!r}")
    if any(isinstance(v, Pointwise) for v in (a, b)) or (
            name in ("mul", "div") and isinstance(a, Affine) and
            isinstance(b, Affine)):
        # a function of one activation (x * x is one of x)
        ops = {"add": lambda x, y: x + alpha * y,
               "sub": lambda x, y: x - alpha * y,
               "rsub": lambda x, y: y - alpha * x,
               "mul": torch.mul, "div": torch.div,
               "neg": lambda x, y: -x}
        done = composed(node, ops[name], a, b, lambda cap_, a_, b_: arithmetic(
            cap_, node, a_, b_, alpha, **kwargs))
        if done is not None:
            return done
        a, b = (cap.activate(v) if isinstance(v, Pointwise) else v
                for v in (a, b))
    if any(isinstance(v, (SpikeProduct, Softmax)) for v in (a, b)):
        return logit_arithmetic(name, a, b, alpha)
    if name == "neg":
        return scaled(a, -1.0, 0.0)
    if name == "rsub":  # b - alpha * a
        return add(_times(a, -float(alpha)), b)
    if name in ("mul", "div"):
        if isinstance(a, Affine) and isinstance(b, Affine):
            raise UnsupportedModelError(
                f"an elementwise product of two activations (of "
                f"{_sources(a)} and of {_sources(b)}) has no phase-coded "
                "equivalent")
        if name == "div" and not isinstance(a, Affine):
            raise UnsupportedModelError("division by an activation")
        x, c = (a, b) if isinstance(a, Affine) else (b, a)
        c = as_constant(c)
        return scaled(x, 1.0 / c if name == "div" else c, 0.0)
    if name == "sub" or alpha != 1:
        b = _times(b, -float(alpha) if name == "sub" else float(alpha))
    total = add(a, b)
    if isinstance(a, Affine) and isinstance(b, Affine) and \
            _fanout(node) > 1:
        # a residual sum used more than once: the residual stream
        return cap.materialize(total, cap.unique(module_path(node), "add"),
                               "neuron")
    return total


def logit_arithmetic(name, a, b, alpha=1.0):
    """``q @ k`` scaled by a constant, or plus or minus one."""
    prod = a if isinstance(a, SpikeProduct) else b
    other = b if prod is a else a
    if not isinstance(prod, SpikeProduct) or isinstance(other, SYMBOLIC) or \
            name not in ("add", "sub", "mul", "div") or (
                name in ("div", "sub") and prod is not a) or (
                alpha != 1 and prod is not a):
        raise UnsupportedModelError(
            "only scaling and adding a constant may act on q @ k before the "
            "softmax")
    c = as_constant(other)
    if name in ("add", "sub"):
        sign = -1.0 if name == "sub" else 1.0
        return add_to_product(prod, c * (sign * alpha if prod is a else 1.0))
    c = 1.0 / c if name == "div" else c
    return dataclasses.replace(prod, coef=prod.coef * c, bias=prod.bias * c)


# ------------------------------------------------------------ populations
@rule("relu")
def relu(cap, node, x):
    return cap.materialize(x, cap.unique(
        module_path(node), "" if module_type(node) == "ReLU" else "relu"),
        "relu")


#: Pointwise ATen ops on one activation, as functions of float64 tensors
POINTWISE = {
    "gelu": lambda x, approximate="none": torch.nn.functional.gelu(
        x, approximate=approximate),
    "silu": torch.nn.functional.silu, "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "pow": lambda x, exponent: torch.pow(x, exponent),
}


@rule(*POINTWISE, pointwise=True)
def pointwise(cap, node, x, *args, **kwargs):
    """A pointwise function of one activation (with number arguments):
    composed into a Pointwise value, which becomes an activation
    population where something else reads it."""
    fn = POINTWISE[op_name(node.target)]
    done = composed(node, lambda v, _: fn(v, *args, **kwargs), x, 0.0,
                    lambda cap_, x_, _: pointwise(cap_, node, x_, *args,
                                                  **kwargs))
    if done is None or any(isinstance(a, SYMBOLIC) or torch.is_tensor(a)
                           for a in flat(args, kwargs)):
        raise UnsupportedModelError(
            f"{op_name(node.target)} of an activation with arguments "
            f"{args or kwargs}; only numbers may be its arguments")
    return done


def composed(node, op, a, b, redo) -> ty.Optional[Pointwise]:
    """``op(a, b)`` as one Pointwise, when ``a`` and ``b`` are each a
    function of the same activation (a Pointwise of it, or a number times
    it plus a number) or a number; else None. ``redo(cap, a, b)`` is the
    rule run again on other values.

    The function is of the earliest value in the graph that the others are
    affine in (``x`` in ``x * sigmoid(1.702 * x)``); ``bases`` keeps the
    affine maps of it that the ops read (``1.702 * x``), in which the
    function may be an activation (SiLU of ``1.702 * x``, over 1.702)."""
    given = list(node.args[:2]) + [None, None]
    roots = [(v.source_node, v.source) for v in (a, b)
             if isinstance(v, Pointwise)] + [
        (n, v) for n, v in zip(given, (a, b)) if isinstance(v, Affine)]
    order = _order(node.graph)
    root_node, root = min(roots, key=lambda r: order.get(r[0], -1))
    parts, bases = [], {(1.0, 0.0)}
    for v in (a, b):
        if isinstance(v, (Pointwise, Affine)):
            cd = affine_of(v.source if isinstance(v, Pointwise) else v, root)
            if cd is None:
                return None
            c, d = cd
            inner = v.fn if isinstance(v, Pointwise) else (lambda t: t)
            parts.append(inner if (c, d) == (1.0, 0.0) else
                         lambda t, f=inner, c=c, d=d: f(c * t + d))
            bases |= {(c * c1, c1 * d + d1) for c1, d1 in v.bases} \
                if isinstance(v, Pointwise) else {(c, d)}
        elif isinstance(v, (int, float)) or (
                torch.is_tensor(v) and v.numel() == 1):
            parts.append(lambda t, c=float(v): c)
        else:
            return None
    fa, fb = parts
    return Pointwise(root, lambda t: op(fa(t), fb(t)), root_node,
                     tuple(sorted(bases)), node, (a, b), redo)


@functools.lru_cache(maxsize=4)
def _order(graph: torch.fx.Graph) -> ty.Dict[torch.fx.Node, int]:
    return {n: i for i, n in enumerate(graph.nodes)}


@rule("layer_norm")
def layer_norm(cap, node, x, shape, weight=None, bias=None, eps=1e-5,
               *rest):
    """LayerNorm over the last axis: a population with a normalisation
    stage, read as ``gamma * z + beta``."""
    shape = list(shape)
    if len(shape) != 1 or not isinstance(x, Affine) or \
            x.shape[-1] != shape[0]:
        raise UnsupportedModelError(
            f"LayerNorm over {tuple(shape)}; only the last axis "
            "(normalized_shape of one int) is supported")
    own = "norm" in module_type(node).lower()
    z = cap.materialize(x, cap.unique(module_path(node),
                                      "" if own else "norm"),
                        "layernorm", eps=float(eps))
    return scaled(z, weight if weight is not None else 1.0,
                  bias if bias is not None else 0.0)


@rule("_native_batch_norm_legit_no_training")
def batch_norm(cap, node, x, weight, bias, mean, var, momentum, eps):
    """Eval-mode BatchNorm (a model's BatchNorm in training mode exports
    as another op, which has no rule): a per-channel scale and shift."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale + (bias if bias is not None else 0.0)
    view = (1, -1) + (1,) * (len(x.shape) - 2)
    return scaled(x, scale.reshape(view), shift.reshape(view)), None, None


# ----------------------------------------------------------------- weights
@rule("linear", "conv1d", "conv2d")
def linear(cap, node, x, weight, bias=None, *conv, name=None):
    """Linear or convolution (``name``: which, default the node's op): a
    new Term with the model's weight."""
    name = name or op_name(node.target)
    x = cap.direct(node, x)
    t = x.terms[0] if x.terms else None
    weight = as_constant(weight)
    if name == "linear":
        k = weight.shape[1]
        in_rows = t.out.reshape(-1, k) if t else None
        in_scale = t.scale.reshape(-1, k) if t else None
        w2 = weight
        out_shape = x.shape[:-1] + (weight.shape[0],)
        new_bias = torch.nn.functional.linear(x.bias, weight, bias)
        rows_layout = None
        cap.macs += float(np.prod(out_shape)) * k
    else:
        if name == "conv1d":
            x, weight = _conv1d_as_2d(x), weight.unsqueeze(-2)
            t = x.terms[0] if x.terms else None
            conv = _conv1d_args_as_2d(conv)
        stride, padding, dilation, groups = (list(conv) + [1, 0, 1, 1][
            len(conv):])[:4]
        if groups != 1:
            raise UnsupportedModelError("grouped convolution")
        unfold = dict(kernel_size=weight.shape[2:], dilation=dilation,
                      padding=padding, stride=stride)
        new_bias = torch.nn.functional.conv2d(
            x.bias, weight, bias, stride, padding, dilation)
        cap.macs += float(new_bias.numel()) * float(np.prod(weight.shape[1:]))
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
    # a scale per input channel folds into the weight's columns; one per
    # row (a mean over tokens of a per-channel scaled value, e.g.
    # LayerNorm's gamma) moves to the output
    valid = in_rows >= 0
    per_k = uniform(in_scale, valid, 0)
    per_r = uniform(in_scale, valid, 1) if per_k is None else None
    if per_k is None and per_r is None:
        raise UnsupportedModelError(
            f"the input of this {name} is scaled per token and per channel, "
            "which a token-shared weight cannot fold")
    if per_k is not None:
        term = Term(t.src, in_rows, w2 * per_k, out,
                    torch.ones(out_shape, dtype=torch.float64))
    else:
        term = Term(t.src, in_rows, w2, out, per_r[out // c])
    return Affine([term], new_bias.reshape(out_shape))


@rule("addmm")
def addmm(cap, node, bias, x, weight, beta=1, alpha=1):
    """``beta * bias + alpha * x @ weight`` (Hugging Face's ``Conv1D``): a
    Linear with the transposed weight."""
    if not isinstance(x, Affine) or isinstance(bias, SYMBOLIC):
        raise UnsupportedModelError(
            "addmm is supported as bias + activation @ constant")
    return linear(cap, node, x, alpha * as_constant(weight).T,
                  beta * as_constant(bias), name="linear")


@rule("mean", "sum")
def reduce(cap, node, x, dim=None, keepdim=False, *, mean=None,
           **kwargs):
    """Mean or sum (``mean``: which, default the node's op) over axes: a
    Linear over those axes."""
    if mean is None:
        mean = op_name(node.target) == "mean"
    x = cap.direct(node, x)
    nd = len(x.shape)
    dims = list(range(nd)) if dim is None else \
        [d % nd for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
    keep = [d for d in range(nd) if d not in dims]
    n = int(np.prod([x.shape[d] for d in dims]))
    flat_x = _reshaped(x, lambda v: v.permute(keep + dims).reshape(
        [x.shape[d] for d in keep] + [n]))
    w = torch.full((1, n), 1.0 / n if mean else 1.0, dtype=torch.float64)
    y = linear(cap, node, flat_x, w, name="linear")
    shape = [1 if d in dims else x.shape[d] for d in range(nd)] \
        if keepdim else [x.shape[d] for d in keep]
    return _reshaped(y, lambda v: v.reshape(shape))


@rule("adaptive_avg_pool2d", "adaptive_avg_pool1d")
def adaptive_avg_pool(cap, node, x, output_size):
    """Adaptive average pooling onto sizes that divide the input's: a
    mean over equal windows."""
    size = list(output_size)
    spatial = list(x.shape[-len(size):])
    if any(s % o for s, o in zip(spatial, size)):
        raise UnsupportedModelError(
            f"adaptive pooling of {tuple(spatial)} to {tuple(size)}, which "
            "does not divide it into equal windows")
    split = [v for s, o in zip(spatial, size) for v in (o, s // o)]
    lead = len(x.shape) - len(size)
    windows = _reshaped(x, lambda v: v.reshape(list(x.shape[:lead]) + split))
    axes = [lead + 2 * i + 1 for i in range(len(size))]
    return reduce(cap, node, windows, axes, mean=True)


# --------------------------------------------------------------- attention
@rule("matmul", "bmm")
def matmul(cap, node, a, b):
    """With a constant: a Linear; of two activations: ``q @ k``; of a
    softmax and an activation: the attention output."""
    if isinstance(a, Affine) and not isinstance(b, SYMBOLIC):
        return linear(cap, node, a, as_constant(b).T, name="linear")
    if isinstance(a, Softmax) and isinstance(b, Affine):
        return cap.attention_output(node, a.product, b)
    if not (isinstance(a, Affine) and isinstance(b, Affine)):
        raise UnsupportedModelError(
            "matmul is supported between two activations (q @ k^T), between "
            "their softmax and v, and with a constant matrix")
    if a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise UnsupportedModelError(
            f"operands of shapes {a.shape} and {b.shape}; a spike product "
            "needs equal leading (head) axes")
    path = module_path(node)
    x = cap.operand(a, cap.unique(path, "q"))
    y = cap.operand(b, cap.unique(path, "k"))
    shape = a.shape[:-1] + b.shape[-1:]
    cap.macs += float(np.prod(shape)) * a.shape[-1]
    return SpikeProduct(x, y, torch.ones(shape, dtype=torch.float64),
                        torch.zeros(shape, dtype=torch.float64),
                        torch.zeros(shape, dtype=torch.bool))


@rule("softmax")
def softmax(cap, node, x, dim, *rest, **kwargs):
    if not isinstance(x, SpikeProduct) or dim not in (-1, len(x.shape) - 1):
        raise UnsupportedModelError(
            "softmax must act on the last axis of a q @ k product")
    return Softmax(x)


@rule("scaled_dot_product_attention")
def sdpa(cap, node, q, k, v, attn_mask=None, dropout_p=0.0,
         is_causal=False, scale=None, enable_gqa=False):
    if dropout_p:
        raise UnsupportedModelError("attention dropout")
    kt = _reshaped(k, lambda t: t.transpose(-2, -1))
    prod = matmul(cap, node, q, kt)
    coef = scale if scale is not None else q.shape[-1] ** -0.5
    prod = dataclasses.replace(prod, coef=prod.coef * coef)
    n, m = prod.coef.shape[-2:]
    if is_causal:
        prod.mask |= ~torch.ones(n, m, dtype=torch.bool).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            prod.mask |= ~attn_mask
        else:
            prod = add_to_product(prod, as_constant(attn_mask))
    cap.macs += float(np.prod(prod.shape)) * v.shape[-1]
    return cap.attention_output(node, prod, v)


# ----------------------------------------------------------------- helpers
def flat(args, kwargs) -> ty.List[ty.Any]:
    out = []
    for a in list(args) + list(kwargs.values()):
        out.extend(flat(a, {}) if isinstance(a, (list, tuple)) else [a])
    return out


def map_args(args, kwargs, fn):
    """``fn`` applied to every tensor and symbolic value in the (nested)
    arguments."""
    def sub(a):
        if isinstance(a, (list, tuple)):
            return type(a)(sub(x) for x in a)
        return fn(a) if isinstance(a, SYMBOLIC) or torch.is_tensor(a) else a
    return sub(args), {k: sub(v) for k, v in kwargs.items()}


def _is_float(a) -> bool:
    return torch.is_tensor(a) and a.is_floating_point()


def _blank(a):
    """A constant's stand-in in index maps and scales: a float constant
    moved next to activations (a class token concatenated) takes no
    source; integer and boolean tensors (indices, masks) and symbolic
    values stay."""
    return torch.zeros_like(a, dtype=torch.float64) if _is_float(a) else a


def _reshaped(x: Affine, fn) -> Affine:
    """``fn`` (a reshape or permutation) applied to every map of ``x``."""
    return Affine([dataclasses.replace(t, out=fn(t.out), scale=fn(t.scale))
                   for t in x.terms], fn(x.bias))


def _times(v, c: float):
    """An activation or a constant times ``c``."""
    return scaled(v, c, 0.0) if isinstance(v, Affine) else \
        c * as_constant(v)


def _sources(x: Affine) -> str:
    return ", ".join(sorted({t.src for t in x.terms})) or "constants"


def _fanout(node: torch.fx.Node) -> int:
    """Users of a node, looking through identities."""
    total = 0
    for user in node.users:
        found = RULES.get(op_name(user.target)) \
            if user.op == "call_function" else None
        total += _fanout(user) if found and found.fn is identity else 1
    return total


def _conv1d_as_2d(x: Affine) -> Affine:
    return _reshaped(x, lambda v: v.unsqueeze(-2))


def _conv1d_args_as_2d(conv):
    def pair(v, fill):
        v = v[0] if isinstance(v, (list, tuple)) else v
        return [fill, v]
    stride, padding, dilation, groups = (list(conv) + [1, 0, 1, 1][
        len(conv):])[:4]
    if isinstance(padding, str):
        raise UnsupportedModelError("string padding of conv1d")
    return [pair(stride, 1), pair(padding, 0), pair(dilation, 1), groups]
