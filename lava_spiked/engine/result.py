"""What an engine call returns: :class:`EngineResult`."""
import typing as ty

import torch


class EngineResult:
    """Logits, saturation counts and, decoded on first access, every
    population's spikes.

    Attributes
    ----------
    logits : torch.Tensor
        (batch, *out_shape).
    steps, signs : dict of str to torch.Tensor
        Per spiking layer (and ``<attention>:logits`` / ``:softmax``): fire
        steps (-1 = silent, int64) and signs (float64), each (batch, size)
        in the layer's flat (row-major) order. Only after a call with
        ``record=True``.
    saturated : torch.Tensor
        (batch,) saturation events per sample, as the ``sat_count`` Vars of
        the fixed_pt models count them (all zero in float mode, where
        floating_pt does not saturate).
    clipped : dict of str to torch.Tensor
        Population (the input, every spiking layer and every
        ``<attention>:logits``; not the readout) -> (batch,) int64 clipped
        neurons per sample, as the ``clip_count`` Vars of the Lava models
        count them: ``|v| > 2**16`` (fixed) or ``|v| > 1`` (float) on the
        closed membrane, ``v`` only above for ReLU layers (see
        :mod:`lava_spiked.golden.models`). Counted with ``record=False`` too.
        Divide by the population sizes of
        :func:`lava_spiked.golden.models.clip_sizes` (also
        ``Engine.clip_sizes``) for fractions.
    """

    def __init__(self, logits: torch.Tensor, saturated: torch.Tensor,
                 membranes: ty.Optional[dict], engine: ty.Any,
                 clipped: ty.Optional[dict] = None) -> None:
        self.logits, self.saturated = logits, saturated
        self.clipped = clipped if clipped is not None else {}
        self._membranes, self._engine = membranes, engine
        self._spikes: ty.Optional[dict] = None

    def _decoded(self) -> dict:
        if self._membranes is None:
            raise ValueError("spikes were not recorded: call the engine "
                             "with record=True")
        if self._spikes is None:
            self._spikes = {name: self._engine.arith.decode(v, kind)
                            for name, (v, kind) in self._membranes.items()}
        return self._spikes

    @property
    def steps(self) -> ty.Dict[str, torch.Tensor]:
        return {k: step for k, (step, _) in self._decoded().items()}

    @property
    def signs(self) -> ty.Dict[str, torch.Tensor]:
        return {k: sign for k, (_, sign) in self._decoded().items()}
