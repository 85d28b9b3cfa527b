"""Progress bars: the one way lava-spiked shows them.

A bar is shown unless the caller passes ``progress=False`` or the
environment variable ``CI`` is set to ``true`` (as CI services do), so
logs of automated runs stay readable.
"""
import os
import typing as ty

from tqdm.auto import tqdm


def bar(iterable: ty.Iterable, desc: str, progress: bool = True,
        **kwargs) -> ty.Iterable:
    """``iterable`` wrapped in a transient tqdm bar (``kwargs`` for tqdm),
    or unwrapped where it would be disabled."""
    show = progress and os.environ.get("CI", "").lower() != "true"
    return tqdm(iterable, desc=desc, disable=not show, leave=False,
                **kwargs)
