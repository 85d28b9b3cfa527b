"""The Lava backend: a Plan as Lava processes.

``build``
    The processes of a Plan, wired and grouped into SpikingBlocks.
``runs``
    :class:`~lava_spiked.lava_backend.runs.LavaNetwork`: inference one
    sample at a time or streamed, probes, event counters.
``lifecycle``
    The OS processes and their signals: the one run/stop routine.
``imports``
    The one place Lava is imported (a clear error where it is missing).
``chain``, ``self_attention``
    Stand-alone networks: :class:`~lava_spiked.lava_backend.chain.PhaseChain`
    and :class:`~lava_spiked.lava_backend.self_attention.SpikingSelfAttention`
    (their golden models run without Lava).

Nothing is imported here, so these modules load only when used.
"""
