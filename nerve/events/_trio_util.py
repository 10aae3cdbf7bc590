"""Small trio helpers shared by nerve's resources."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def single_error() -> Iterator[None]:
    """Let a lone exception out of a nursery bare, not wrapped in a group.

    nerve's resources (`open_log`, `open_kernel`) run background tasks in a
    nursery around the caller's ``async with`` body. An error raised by that
    body, or by one background task, is what the caller wants to catch with a
    plain ``except``; a group of several real errors stays a group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if exc is group:
            raise
        raise exc from None
