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
    """What `Parking.wait` parks a task on: the task to reschedule goes in
    ``waiter``; ``abort`` is the `trio.lowlevel.wait_task_rescheduled` abort
    function; the waiter is rescheduled with an `outcome.Outcome`."""

    waiter: trio.lowlevel.Task | None

    def abort(self, raise_cancel: Any, /) -> trio.lowlevel.Abort: ...


def _trap_type() -> type[Any] | None:
    """trio's own trap, what `wait_task_rescheduled` yields to the run loop,
    if it is still the class with an ``abort_func`` in its ``__dict__`` that
    `Parking` reuses; else None (`Parking` takes the public way)."""
    try:
        from trio._core._traps import WaitTaskRescheduled
    except ImportError:  # pragma: no cover - another trio
        return None
    try:
        fields = WaitTaskRescheduled(_no_abort).__dict__
    except (AttributeError, TypeError):  # pragma: no cover - another trio
        return None
    return WaitTaskRescheduled if list(fields) == ["abort_func"] else None


def _no_abort(_: Any) -> trio.lowlevel.Abort:  # pragma: no cover - never called
    return trio.lowlevel.Abort.FAILED


_TRAP_TYPE = _trap_type()


class Parking:
    """Where the tasks of one trio run park until rescheduled (`wait`).

    `trio.lowlevel.wait_task_rescheduled`, inlined, for a task parked and
    woken per append: that yields trio's trap from two coroutines deep and
    builds a new trap object each time; here the task yields the trap
    itself, and one trap serves every wait: the run loop takes its abort
    function as soon as the task yields it, before any other task runs
    (measured: ~0.7 µs less event-loop CPU per append). So a `Parking` must not
    serve two trio runs at once (in two threads): each log has its own.
    Where trio's trap is not what this expects, the public call does it.
    """

    __slots__ = ("_fields", "_trap", "wait")

    def __init__(self) -> None:
        self.wait: Callable[[Parkable], Awaitable[Any]]
        """Park the current task in ``on.waiter`` until something reschedules
        it; return what it is rescheduled with, unwrapped."""
        if _TRAP_TYPE is None:  # pragma: no cover - another trio
            self.wait = self._wait_public
        else:
            self._trap = _TRAP_TYPE(_no_abort)
            self._fields: dict[str, Any] = self._trap.__dict__
            self.wait = self._wait_trap  # type: ignore[assignment]  # types.coroutine

    @types.coroutine
    def _wait_trap(self, on: Parkable) -> Generator[Any, Any, Any]:
        on.waiter = _current_task()
        self._fields["abort_func"] = on.abort
        return (yield self._trap).unwrap()

    async def _wait_public(self, on: Parkable) -> Any:
        on.waiter = _current_task()
        return await trio.lowlevel.wait_task_rescheduled(on.abort)
