# Copyright (C) 2026 lava-spiked contributors
# SPDX-License-Identifier: BSD-3-Clause
"""SpikingBlock: a hierarchical Process holding one block of a network."""
import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess, LogConfig
from lava.magma.core.process.variable import Var

#: The event counters a block reports per member process (see ``events``)
COUNTERS = ("sat_count", "stray_count", "clip_count")


def connect(src: OutPort, dst: InPort) -> None:
    """Connect ``src`` to ``dst``, reshaping ``src`` to ``dst``'s shape if
    it has another one (same size)."""
    if tuple(src.shape) != tuple(dst.shape):
        src = src.reshape(dst.shape)
    src.connect(dst)


class SpikingBlock(AbstractProcess):
    """A group of neuron-level Processes with one input and one output port,
    e.g. one transformer block: the members are built and wired to each
    other already; only their connections to ``s_in`` and ``s_out`` are
    made by the model that Lava's run configuration selects:

    - the SubProcessModel (``select_sub_proc_model=True`` in the run
      configuration) connects the ports to the members, and Lava runs every
      member as its own OS process: the structure a Loihi mapping sees;
    - the fused models (``floating_pt``, ``fixed_pt``; Lava's default for a
      Process that has both) run all members in this block's one OS
      process, step by step, with the members' own ProcessModels, so the
      spikes at both ports are the same bit for bit.

    Parameters
    ----------
    members : dict
        Name -> Process, in an order where every member comes after the
        members it reads (its wiring already made).
    edges : list of tuple
        ``(src OutPort, dst InPort)`` of the connections among the members
        (made already; the fused models redo them in memory). A source
        whose shape differs from its destination's is reshaped.
    inputs : list
        The members' InPorts that read ``s_in``.
    output : OutPort
        The member port that drives ``s_out``.
    in_shape, out_shape : tuple of int
        Shapes of ``s_in`` and ``s_out``.
    masked : list of str, optional
        Members whose ``mask`` Var the host sets at run time (padded
        tokens); the fused models take them from ``masks``.
    name : str, optional
    log_config : LogConfig, optional

    Attributes
    ----------
    events : Var
        (members, 3) int32: each member's :data:`COUNTERS` (0 where it has
        none), kept by the fused models; under the SubProcessModel read the
        members' own Vars.
    masks : Var
        The ``mask`` Vars of the ``masked`` members, flattened and
        concatenated ((1,) if none): set it, not theirs, when the block
        runs fused (see :meth:`set_masks`).
    """

    def __init__(self, *, members: ty.Dict[str, AbstractProcess],
                 edges: ty.List[ty.Tuple[ty.Any, ty.Any]],
                 inputs: ty.List[InPort], output: OutPort,
                 in_shape: ty.Tuple[int, ...], out_shape: ty.Tuple[int, ...],
                 masked: ty.Sequence[str] = (),
                 name: ty.Optional[str] = None,
                 log_config: ty.Optional[LogConfig] = None) -> None:
        super().__init__(name=name, log_config=log_config)
        order = list(members.values())
        for src, dst in edges:
            if order.index(src.process) >= order.index(dst.process):
                raise ValueError(f"member {dst.process.name!r} comes before "
                                 f"{src.process.name!r}, which it reads")
        self.proc_params["members"] = members
        self.proc_params["edges"] = edges
        self.proc_params["inputs"] = inputs
        self.proc_params["output"] = output
        self.proc_params["in_shape"] = tuple(in_shape)
        self.proc_params["masked"] = list(masked)
        self.s_in = InPort(shape=tuple(in_shape))
        self.s_out = OutPort(shape=tuple(out_shape))
        self.events = Var(shape=(len(members), len(COUNTERS)),
                          init=np.zeros((len(members), len(COUNTERS)), int))
        self.masks = Var(shape=(max(1, sum(members[m].mask.size
                                              for m in masked)),), init=0)
        if masked:
            self.masks.init = self._joined(
                {m: members[m].mask.init for m in masked})

    def _joined(self, masks: ty.Mapping[str, np.ndarray]) -> np.ndarray:
        """The ``masks`` Var's value for the masked members' masks."""
        return np.concatenate([
            np.broadcast_to(masks[m], self.members[m].mask.shape).ravel()
            for m in self.proc_params["masked"]]).astype(np.int32)

    def set_masks(self, masks: ty.Mapping[str, np.ndarray],
                  started: bool) -> None:
        """Set the ``mask`` of every masked member (name -> mask): before
        the first run (``started`` False) their initial values, then the
        members' own Vars or ``masks``, whichever the running model reads.
        """
        if not started:
            for name, mask in masks.items():
                self.members[name].mask.init = np.asarray(mask, np.int32)
            self.masks.init = self._joined(masks)
        elif self.expanded:
            for name, mask in masks.items():
                self.members[name].mask.set(np.asarray(mask, np.int32))
        else:
            self.masks.set(self._joined(masks))

    @property
    def members(self) -> ty.Dict[str, AbstractProcess]:
        """Name -> member Process."""
        return self.proc_params["members"]

    @property
    def expanded(self) -> bool:
        """Whether Lava runs the members as Processes of their own (the
        SubProcessModel was selected; known once compiled)."""
        return any(p.parent_proc is self for p in self.members.values())

    def member_events(self, names: ty.Iterable[str]
                      ) -> ty.Dict[str, ty.Dict[str, int]]:
        """Member name -> the :data:`COUNTERS` it has -> their cumulative
        value, for ``names``, from wherever the running model keeps them
        (one read of ``events`` when fused: Lava reads a Var element by
        element)."""
        order = list(self.members)
        rows = None if self.expanded else self.events.get()
        out = {}
        for name in names:
            member = self.members[name]
            have = [var for var in COUNTERS if hasattr(member, var)]
            out[name] = {var: int(getattr(member, var).get()[0])
                         if rows is None else
                         int(rows[order.index(name), COUNTERS.index(var)])
                         for var in have}
        return out

