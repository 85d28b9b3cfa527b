"""Progress bars: the one way lava-spiked shows them.

A bar is shown unless the caller passes ``progress=False`` or the
environment variable ``CI`` is set to ``true`` (as CI services do), so
logs of automated runs stay readable.
"""
import os
import typing as ty

from tqdm.auto import tqdm


class _Bar(tqdm):
    """tqdm without its monitor thread, which every tqdm (shown or not)
    starts to shorten the refresh interval of bars stuck between long
    iterations: no lava-spiked bar needs it, and a thread alive when Lava
    forks its processes is one a child could inherit a held lock from
    (Python 3.12+ warns of it on every fork)."""

    monitor_interval = 0


def bar(iterable: ty.Optional[ty.Iterable] = None, desc: str = "",
        progress: bool = True, **kwargs) -> tqdm:
    """``iterable`` wrapped in a transient tqdm bar (``kwargs`` for tqdm,
    e.g. ``total`` for a bar updated by hand), disabled where it would
    not show."""
    show = progress and os.environ.get("CI", "").lower() != "true"
    return _Bar(iterable, desc=desc, disable=not show, leave=False,
                **kwargs)
