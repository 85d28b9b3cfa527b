"""Process-wide memory behaviour for many engine calls."""


def keep_freed_memory() -> bool:
    """Make this process keep the memory it frees for its next
    allocations (glibc malloc: no ``mmap`` below 1 GiB, no trimming)
    instead of returning it to the OS and faulting every page in again
    on the next call. An engine call allocates thousands of pages afresh
    and a page fault costs about 4 us here: measured in
    ``benchmarks/results/engine_vs_ann.md``.

    Process-wide and not undone: the process's resident memory stays at
    its peak. ``python -m lava_spiked.evaluate`` calls it; call it in a
    program of your own that runs the engine on many batches.

    Returns
    -------
    bool
        Whether it took effect (Linux with glibc only).
    """
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        # mallopt(M_MMAP_THRESHOLD = -3, ...), mallopt(M_TRIM_THRESHOLD = -1)
        return bool(libc.mallopt(-3, 1 << 30)) and \
            bool(libc.mallopt(-1, (1 << 31) - 1))
    except (OSError, AttributeError, TypeError):  # not glibc
        return False
