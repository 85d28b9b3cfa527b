"""Evaluate an exported graph on symbolic values and make its populations.

Pre: the graph is functionalised (:func:`lava_spiked.capture.frontend.export`)
and every op on activations has a rule (:func:`rules.unsupported` is empty).
Post: a :class:`Graph` whose populations are in creation order (sources
first) and whose exact evaluation equals the model's output.

A population is made where a value must be spikes: at ReLU (unipolar), at
GELU, SiLU, tanh and sigmoid (an activation stage), at LayerNorm (a
normalisation stage; its gamma and beta fold into what reads it), at both
operands of a product, at the attention output and at the model output
(readout); where a Linear or convolution reads a value that is not a single
population scaled per channel (the paper's ``norm1_if``); and at a residual
add whose sum is used more than once (the residual stream, ``attn_if`` /
``final_if`` in the paper). Everything between populations folds into
per-channel scales and biases of the synapses.
"""
import dataclasses
import typing as ty

import numpy as np
import torch

from lava_spiked.capture.frontend import (constants, module_path,
                                          module_type, op_name, where)
from lava_spiked.capture.graph import AttentionOp, Graph, Population
from lava_spiked.capture.rules import RULES, flat, map_args
from lava_spiked.capture.symbolic import (
    SYMBOLIC, Affine, Pointwise, SpikeProduct, UnsupportedModelError, direct,
    scaled, synapse)
from lava_spiked.numerics.nonlinear import ACTIVATIONS, identify


class Interpreter:
    """Runs the nodes of an exported program in order: constants are
    evaluated (folded), every other node goes to its op's rule."""

    def __init__(self, ep: torch.export.ExportedProgram,
                 sample_shape: ty.Tuple[int, ...], output: int) -> None:
        self.ep, self.sample_shape, self.output = ep, sample_shape, output
        self.populations: ty.List[Population] = []
        self.attention: ty.List[AttentionOp] = []
        self.names: ty.Set[str] = set()
        self.materialized: ty.Dict[str, Affine] = {}
        self.macs = 0.0  # multiply-accumulates of the model (energy)
        self.input = ""

    def run(self) -> Graph:
        env = constants(self.ep)
        for node in self.ep.graph.nodes:
            if node.op == "placeholder" and node.name not in env:
                env[node.name] = self.add_input()
            elif node.op == "call_function":
                args, kwargs = torch.fx.node.map_arg(
                    (node.args, node.kwargs), lambda n: env[n.name])
                env[node.name] = self.run_node(node, args, kwargs)
            elif node.op == "output":
                outs = flat(node.args[0], {})
                value = self.activate(env[outs[self.output].name])
                name = self.unique(module_path(outs[self.output]) or
                                   "output")
                self.materialize(value, name, "readout")
                return Graph(self.populations, self.attention, self.input,
                             name, self.macs)
        raise UnsupportedModelError("the exported graph has no output")

    def run_node(self, node, args, kwargs):
        rule = RULES.get(op_name(node.target))
        try:
            if rule is not None and not rule.pointwise:
                args, kwargs = map_args(args, kwargs, self.activate)
            if rule is not None and rule.kind == "meta":
                # dropped also on constants, which are float64 here,
                # whatever dtype the assert expects
                return rule.fn(self, node, *args, **kwargs)
            if not any(isinstance(a, SYMBOLIC) for a in flat(args, kwargs)):
                return node.target(*args, **kwargs)  # a constant
            return rule.fn(self, node, *args, **kwargs)
        except UnsupportedModelError as err:
            raise UnsupportedModelError(f"{where(node)}: {err}") from err
        except Exception as err:  # a rule met a case it does not know
            raise UnsupportedModelError(
                f"{where(node)}: capture failed ({type(err).__name__}: "
                f"{err}); please report this with the model") from err

    # ------------------------------------------------------- populations
    def unique(self, path: str, role: str = "") -> str:
        """A new population name: the module path, with ``role`` appended
        unless the path ends with it, numbered when taken."""
        base = path if not role or path.endswith(role) else \
            f"{path}.{role}" if path else role
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def add_input(self) -> Affine:
        shape = self.sample_shape
        self.input = self.unique("input")
        self.populations.append(Population(self.input, shape, "input", [],
                                           np.zeros(int(np.prod(shape)))))
        return direct(self.input, (1,) + shape)

    def direct(self, node, x) -> Affine:
        """``x`` as at most one population read directly (materialised at
        the node that produced it when it is more than that)."""
        if not isinstance(x, Affine):
            raise UnsupportedModelError(
                f"a {type(x).__name__} cannot feed a weight")
        if len(x.terms) <= 1 and all(t.weight is None for t in x.terms):
            return x
        src = node.args[0]
        if src.name not in self.materialized:
            # outside any module (e.g. the CLS token picked in the model's
            # own forward): named after the layer it feeds
            consumer = module_path(node)
            name = module_path(src) or (f"{consumer}.input" if consumer
                                        else src.name)
            self.materialized[src.name] = self.materialize(
                x, self.unique(name), "neuron")
        return self.materialized[src.name]

    def materialize(self, x, name: str, kind: str, **stage) -> Affine:
        """Make a population that carries ``x`` and return its value
        (``stage``: ``fn`` or ``eps`` of a staged kind)."""
        if not isinstance(x, Affine):
            raise UnsupportedModelError(
                f"{name}: a {type(x).__name__} cannot feed a {kind} "
                "population")
        shape = _pop_shape(x.shape, kind)
        factor = shift = None
        try:
            synapses = [synapse(t, name, self.channels(t.src))
                        for t in x.terms]
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
            synapses = [synapse(x.terms[0], name, self.channels(t.src))]
        self.populations.append(Population(
            name, shape, kind, synapses, x.bias.reshape(-1).numpy().copy(),
            **stage))
        value = direct(name, x.shape)
        return value if factor is None else scaled(value, factor, shift)

    def activate(self, x):
        """``x`` itself, or a Pointwise as an activation population (one
        per Pointwise) read as ``a * g + b``, where its function is
        ``a * g(c * source + d) + b`` for ``g`` one of
        :data:`lava_spiked.numerics.nonlinear.ACTIVATIONS` and ``(c, d)`` one
        of its ``bases`` (:func:`lava_spiked.numerics.nonlinear.identify`);
        where not, its arguments become populations first and its op runs on
        them (GELU of GELU is two activation stages, ``x + gelu(x)`` one and
        a sum)."""
        if not isinstance(x, Pointwise):
            return x
        key = x.node.name
        if key in self.materialized:
            return self.materialized[key]
        for c, d in x.bases:  # the function of c * source + d
            found = identify(lambda v: x.fn(torch.from_numpy(
                (v - d) / c)).numpy())
            if found is not None:
                break
        if found is not None:
            fn, a, b = found
            role = "gelu" if fn.startswith("gelu") else fn
            # a module of its own (nn.GELU, Hugging Face's
            # NewGELUActivation) names the population; a call inside a
            # bigger module gets a suffix
            own = role in module_type(x.node).lower()
            name = self.unique(module_path(x.node), "" if own else role)
            value = self.materialize(scaled(x.source, c, d), name,
                                     "activation", fn=fn)
            value = value if (a, b) == (1.0, 0.0) else scaled(value, a, b)
        elif any(isinstance(v, Pointwise) for v in x.args):
            value = self.activate(x.redo(self, *map(self.activate, x.args)))
        else:
            raise UnsupportedModelError(
                f"{where(x.node)}: a pointwise function of an activation "
                f"that is none of {', '.join(ACTIVATIONS)} (up to a scale "
                "and a shift), which are what an activation stage computes "
                "(lava_spiked.numerics.nonlinear.ACTIVATIONS)")
        self.materialized[key] = value
        return value

    def channels(self, name: str) -> int:
        """Size of the last axis of population ``name``."""
        return next(p.shape[-1] for p in self.populations if p.name == name)

    def operand(self, x, name) -> str:
        """A population that feeds a spike product."""
        self.materialize(x, name, "operand")
        return name

    def attention_output(self, node, prod: SpikeProduct, v: Affine) -> Affine:
        """``softmax(prod) @ v``: an attention population."""
        path = module_path(node)
        v_name = self.operand(v, self.unique(path, "v"))
        shape = tuple(prod.coef.shape[:-1]) + (v.shape[-1],)
        name = self.unique(path, "attention")
        size = int(np.prod(shape))
        self.populations.append(Population(
            name, tuple(np.zeros(size).reshape((-1,) + shape[-2:]).shape),
            "attention", [], np.zeros(size)))
        logit_shape = (-1,) + tuple(prod.coef.shape[-2:])
        self.attention.append(AttentionOp(
            prod.x, prod.y, v_name, name,
            *(t.reshape(logit_shape).numpy().copy()
              for t in (prod.coef, prod.bias, prod.mask))))
        return direct(name, shape)


def _pop_shape(shape: ty.Tuple[int, ...], kind: str) -> ty.Tuple[int, ...]:
    """A population's shape: the value's at batch 1, without a leading
    batch axis; operands of products are (heads, rows, cols)."""
    if kind == "operand":
        return (int(np.prod(shape[:-2])),) + tuple(shape[-2:])
    return tuple(shape[1:]) if len(shape) > 1 and shape[0] == 1 else \
        tuple(shape)
