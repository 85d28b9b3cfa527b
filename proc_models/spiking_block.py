# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""ProcessModels of :class:`lava_spiked.processes.SpikingBlock`: the
neuron-level SubProcessModel and the fused CPU models.

The fused models run the members' own ProcessModels (the ones Lava would
select for them under the same tag) as plain objects in one OS process.
Lava's channels become in-memory ports that keep the last value sent, cast
to the sending port's type as a channel is, and a receive sums its sources
into the receiving port's type as Lava's ``PyInPort`` does (a Sparse skips
the inputs that did not spike: :class:`_ActiveColumns`). The network
inside a block is feed-forward, so running the members once per step in an
order where each comes after the members it reads gives every receive the
value sent in the same step, which is what Lava's synchronised channels give
(a Sparse or TraceMatMul sends its previous step's current first, as in
Lava). Hence the same spikes, counters and readout, bit for bit.
"""
import functools
import typing as ty

import numpy as np
from lava.magma.compiler.compiler_graphs import ProcGroupDiGraphs
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.model.sub.model import AbstractSubProcessModel
from lava.magma.core.resources import CPU
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.sparse.models import PySparseModelBitAcc, PySparseModelFloat
from scipy.sparse import csr_matrix

from lava_spiked.proc_models import register
from lava_spiked.processes.spiking_block import (COUNTERS, SpikingBlock,
                                                 connect)


@implements(proc=SpikingBlock, protocol=LoihiProtocol)
class SpikingBlockNeuronLevel(AbstractSubProcessModel):
    """Every member runs as its own Process (one OS process each): the
    block's ports are connected to the members that read and drive them."""

    def __init__(self, proc: SpikingBlock) -> None:
        # Lava finds a SubProcessModel's Processes among its attributes
        for i, member in enumerate(proc.members.values()):
            setattr(self, f"member_{i}", member)
        for port in proc.proc_params["inputs"]:
            connect(proc.s_in, port)
        connect(proc.proc_params["output"], proc.s_out)


class _Sent:
    """An OutPort in memory: the last value sent, in the port's type."""

    def __init__(self, shape: ty.Tuple[int, ...], dtype) -> None:
        self.value = np.zeros(shape, dtype)

    def send(self, data: np.ndarray) -> None:
        self.value[...] = data  # casts as a Lava channel's buffer does


class _Received:
    """An InPort in memory: the sum of its sources' values, reshaped to the
    port's shape, accumulated in the port's type as ``PyInPort`` does."""

    def __init__(self, shape: ty.Tuple[int, ...], dtype,
                 sources: ty.List[_Sent]) -> None:
        self.shape, self.dtype, self.sources = tuple(shape), dtype, sources

    def recv(self) -> np.ndarray:
        return functools.reduce(
            lambda acc, src: acc + src.value.reshape(self.shape),
            self.sources, np.zeros(self.shape, self.dtype))


class _ActiveColumns:
    """Lava's Sparse model, skipping the inputs that did not spike: a
    source fires during one window of a sample period, so most steps are
    silent and cost nothing, and a large weight matrix multiplies only the
    columns of the active inputs. The same sums of the same terms in the
    same order, less the zero ones.

    Slicing columns costs about 0.1 ms, a full product of 20 k weights
    0.02 ms: only matrices of :data:`COLUMNS_MIN_WEIGHTS` or more, with
    under a quarter of their inputs active, are sliced."""

    columns = None  # the prepared weights by column (large matrices)

    def run_spk(self):
        s_in = self.s_in.recv()  # an in-memory port: receiving is reading
        active = np.flatnonzero(s_in)
        if not len(active):
            self.a_out.send(self.a_buff)
            self.a_buff = np.zeros_like(self.a_buff)
        elif self.columns is None or 4 * len(active) >= len(s_in):
            super().run_spk()  # the first time, it prepares the weights
            if self.weights.nnz >= COLUMNS_MIN_WEIGHTS and \
                    self.num_message_bits.item():
                self.columns = self.weights.tocsc()
        else:
            self.a_out.send(self.a_buff)
            self.a_buff = self.finish(self.columns[:, active] @ s_in[active])


#: Weights from which a Sparse multiplies the active columns only
COLUMNS_MIN_WEIGHTS = 1 << 20


class _ActiveColumnsFixed(_ActiveColumns, PySparseModelBitAcc):

    def finish(self, a_accum):
        """As the model's own step: the weight exponent, by shifting."""
        return np.left_shift(a_accum, self.weight_exp) \
            if self.weight_exp > 0 else \
            np.right_shift(a_accum, -self.weight_exp)


class _ActiveColumnsFloat(_ActiveColumns, PySparseModelFloat):

    def finish(self, a_accum):
        return a_accum


#: Lava's models -> the same computation, skipping silent inputs
_ACTIVE = {PySparseModelBitAcc: _ActiveColumnsFixed,
           PySparseModelFloat: _ActiveColumnsFloat}


def _model_class(proc, select_tag: str) -> type:
    """The ProcessModel class that Lava selects for ``proc`` under
    ``Loihi2SimCfg(select_tag=select_tag)`` (Sparse: its
    :class:`_ActiveColumns` form)."""
    models = ProcGroupDiGraphs._find_proc_models(proc)
    cls = Loihi2SimCfg(select_tag=select_tag).select(proc, models)
    return _ACTIVE.get(cls, cls)


def _instantiate(proc, cls: type):
    """``cls`` for ``proc`` with its Vars' values, as Lava's builder makes
    it (without ports)."""
    model = cls(proc.proc_params)
    for var in proc.vars:
        lt = getattr(cls, var.name)
        if issubclass(lt.cls, np.ndarray):
            value = np.zeros(var.shape, lt.d_type)
            value[...] = var.init
        elif issubclass(lt.cls, csr_matrix) and not isinstance(var.init,
                                                                 int):
            value = var.init
        else:
            raise TypeError(f"{proc.name}: Var {var.name!r} of type "
                            f"{lt.cls.__name__} is not supported in a block")
        setattr(model, var.name, value)
    return model


class AbstractFusedBlockModel(PyLoihiProcessModel):
    """All members of the block in this one OS process, one step at a time;
    the subclasses give the port types and the members' tag."""

    s_in = s_out = None
    events: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    masks: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=1)
    member_tag = ""

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        members = list(proc_params["members"].values())
        in_type = type(self).s_in.d_type
        self.source = _Sent(proc_params["in_shape"], in_type)
        sent: ty.Dict[int, _Sent] = {}      # id(OutPort) -> its value
        sources: ty.Dict[int, ty.List[_Sent]] = {
            id(port): [self.source] for port in proc_params["inputs"]}
        self.members = []
        for proc in members:
            cls = _model_class(proc, self.member_tag)
            model = _instantiate(proc, cls)
            for port in proc.out_ports:
                sent[id(port)] = _Sent(port.shape, getattr(cls,
                                                           port.name).d_type)
                setattr(model, port.name, sent[id(port)])
            self.members.append((proc, model))
        for src, dst in proc_params["edges"]:
            sources.setdefault(id(dst), []).append(sent[id(src)])
        for proc, model in self.members:
            cls = type(model)
            for port in proc.in_ports:
                setattr(model, port.name, _Received(
                    port.shape, getattr(cls, port.name).d_type,
                    sources.get(id(port), [])))
        self.output = sent[id(proc_params["output"])]
        #: (model, its slice of ``masks``) per masked member
        self.masked, offset = [], 0
        by_name = dict(zip(proc_params["members"], self.members))
        for name in proc_params["masked"]:
            model = by_name[name][1]
            self.masked.append((model, slice(offset,
                                             offset + model.mask.size)))
            offset += model.mask.size
        self.applied = None  # the masks applied to the members
        #: (row, model, counter columns) of the members with counters
        self.counted = [
            (i, model, [(j, var) for j, var in enumerate(COUNTERS)
                        if hasattr(proc, var)])
            for i, (proc, model) in enumerate(self.members)
            if any(hasattr(proc, var) for var in COUNTERS)]

    def run_spk(self):
        """The run function that performs the actual computation during
        execution orchestrated by a PyLoihiProcessModel using the
        LoihiProtocol."""
        if self.masked and not np.array_equal(self.masks, self.applied):
            # the host set the masks between runs
            for model, part in self.masked:
                model.mask[...] = self.masks[part].reshape(model.mask.shape)
            self.applied = self.masks.copy()
        self.source.send(self.s_in.recv())
        for _, model in self.members:
            model.time_step = self.time_step
            model.run_spk()
        self.s_out.send(self.output.value)
        for i, model, columns in self.counted:
            for j, var in columns:
                self.events[i, j] = getattr(model, var)[0]


@implements(proc=SpikingBlock, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySpikingBlockModelFloat(AbstractFusedBlockModel):
    """The block fused, members under ``floating_pt``."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    member_tag = "floating_pt"


@implements(proc=SpikingBlock, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySpikingBlockModelFixed(AbstractFusedBlockModel):
    """The block fused, members under ``fixed_pt``."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32,
                                  precision=24)
    member_tag = "fixed_pt"


register(SpikingBlockNeuronLevel, PySpikingBlockModelFloat,
         PySpikingBlockModelFixed)
