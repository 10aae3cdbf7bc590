"""Small trio helpers shared by nerve's resources."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import Any, Protocol

import trio

_current_task = trio.lowlevel.current_task


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


class Parkable(Protocol):
    """What `parked` waits on: the task to reschedule goes in ``waiter``;
    ``abort`` is the `trio.lowlevel.wait_task_rescheduled` abort function;
    the waiter is rescheduled with an `outcome.Outcome` (``unwrap``)."""

    waiter: trio.lowlevel.Task | None

    def abort(self, raise_cancel: Any, /) -> trio.lowlevel.Abort: ...


try:
    # trio's own trap: what `wait_task_rescheduled` yields to the run loop.
    from trio._core._traps import WaitTaskRescheduled as _WaitTaskRescheduled
except ImportError:  # pragma: no cover - another trio: the public way below
    _WaitTaskRescheduled = None  # type: ignore[misc, assignment]


@types.coroutine
def _parked_trap(on: Parkable) -> Generator[Any, Any, Any]:
    on.waiter = _current_task()
    return (yield _WaitTaskRescheduled(on.abort)).unwrap()


async def _parked_public(on: Parkable) -> Any:
    on.waiter = _current_task()
    return await trio.lowlevel.wait_task_rescheduled(on.abort)


parked: Callable[[Parkable], Awaitable[Any]] = (
    _parked_public if _WaitTaskRescheduled is None else _parked_trap
)
"""Park the current task in ``on.waiter`` until something reschedules it;
return what it is rescheduled with, unwrapped.

`trio.lowlevel.wait_task_rescheduled`, inlined: it yields trio's trap from
two coroutines deep, and a task parked and woken per append pays for each
layer (the two cost ~0.3 µs of the ~2 µs a park and wake takes). Where trio
no longer has the trap under that name, the public call does the same.
"""
