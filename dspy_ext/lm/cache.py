"""A private DSPy response cache for one piece of work.

DSPy keeps one process-wide response cache. When a comparison compiles several
optimizers in one process, a call one optimizer made (the baseline prompt on
the shared val rows, say) is free for the next, and its LM-call count is no
longer what it would cost alone. :func:`private_cache` gives the work inside it
a cache of its own, on disk so that a re-run of interrupted work is still cheap.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import dspy
from dspy.clients.cache import Cache


@contextlib.contextmanager
def private_cache(directory: str | os.PathLike[str]) -> Iterator[Cache]:
    """Route DSPy's response cache to ``directory`` while the block runs.

    Not for concurrent use with other code that reads ``dspy.cache``: the
    cache is swapped process-wide (threads started inside the block are fine).

    Args:
        directory: Folder of the private on-disk cache (created if missing).

    Yields:
        The private :class:`dspy.clients.cache.Cache`.

    Example:
        >>> with private_cache("runs/ape-s0/cache"):        # doctest: +SKIP
        ...     compiled = optimizer.compile(student, trainset=train)
    """
    os.makedirs(directory, exist_ok=True)
    private = Cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(directory),
                    disk_size_limit_bytes=1 << 30)
    previous = dspy.__dict__.get("cache")  # not `dspy.cache`: reading it would build the default cache
    dspy.cache = private
    try:
        yield private
    finally:
        if previous is None:
            dspy.__dict__.pop("cache", None)  # back to building the default lazily
        else:
            dspy.cache = previous
        with contextlib.suppress(Exception):
            private.disk_cache.close()
