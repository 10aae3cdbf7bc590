"""A garbage-collector setting for event loops with thousands of objects in flight.

CPython collects its young generation every 700 net allocations of
container objects. An event loop with a thousand appends in flight (or a
backlog of queued runs) allocates that many in well under a millisecond, so
objects that live for one batch's fsync survive two young collections, are
promoted to the old generation, and die there: the full collections they
trigger scan every live object, and their number grows with the load. A
kernel running 50,000 queued runs spent a fifth of its time in 18 full
collections of ~80 ms each; with a young-generation threshold of 10,000
it ran one (``bench/workflows.py``).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

DEFAULT_GC_THRESHOLD: Final = 10_000
"""The young-generation threshold `open_kernel` runs with (CPython's: 700)."""


@contextlib.contextmanager
def gc_tuned(threshold: int | None = DEFAULT_GC_THRESHOLD) -> Iterator[None]:
    """Raise CPython's young-generation collection threshold for the block.

    ``gc.set_threshold`` is process-wide: the old setting is restored on
    exit unless someone changed it meanwhile. A threshold already at least
    ``threshold``, or ``threshold=None``, leaves the collector alone.

    Example:
        >>> with nerve.gc_tuned():
        ...     trio.run(main)
    """
    if threshold is not None and threshold < 1:
        raise ValueError(f"gc threshold must be >= 1 (or None), got {threshold!r}")
    old = gc.get_threshold()
    if threshold is None or old[0] >= threshold:
        yield
        return
    gc.set_threshold(threshold, *old[1:])
    try:
        yield
    finally:
        if gc.get_threshold()[0] == threshold:
            gc.set_threshold(*old)
