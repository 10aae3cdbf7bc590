"""asyncio hosts: the trio kernel as a guest on the asyncio event loop.

nerve is written for trio. An asyncio program embeds it with::

    async with nerve.aio.open_kernel(app, "data") as kernel:
        handle = await kernel.trigger("greet", {"name": "ada"})
        outcome = await kernel.wait(handle)
        print(await kernel.runs(status="completed"))

`open_kernel` starts a trio run in *guest mode* (`trio.lowlevel.start_guest_run`)
on the running asyncio loop: trio's tasks run in callbacks of the asyncio loop,
on its thread, and trio waits for I/O in a helper thread. Nothing is copied
between threads: calls from asyncio are handed to the trio run with its
`trio.lowlevel.TrioToken`, and their results come back through asyncio
futures. Workflow and sense functions are trio code (they run in the kernel's
nurseries); from them, `run_in_asyncio` awaits an asyncio coroutine on the
host loop.

Leaving the block, or the host task being cancelled, shuts the kernel down
the trio way: no new triggers, running runs get the grace period, those still
running are recorded ``interrupted``, and the trio run has ended when the
block exits. A second cancellation during that drain interrupts the runs at
once instead of waiting out the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import outcome
import trio

from nerve.actors import App, Outcome, RunHandle
from nerve.events import KernelClosedError
from nerve.events._trio_util import single_error
from nerve.kernel import DEFAULT_GRACE, Kernel, KernelStatistics
from nerve.kernel import open_kernel as open_trio_kernel
from nerve.projections import RunRecord, SignalRecord

T = TypeVar("T")


class AioRunHandle:
    """A triggered run, seen from asyncio: ``await handle.wait()``."""

    def __init__(self, kernel: AioKernel, handle: RunHandle) -> None:
        self.kernel = kernel
        self.run_id = handle.run_id
        self.workflow = handle.workflow
        # The trio handle: only ever touched inside the trio run.
        self._handle = handle

    def __repr__(self) -> str:
        return f"<AioRunHandle {self.workflow}/{self.run_id}>"

    async def wait(self) -> Outcome:
        """Wait for the run's `Outcome` (see `AioKernel.wait`)."""
        return await self.kernel.wait(self)


class AioKernel:
    """The kernel's API as asyncio awaitables. Obtain one with `open_kernel`.

    Each method runs the matching `nerve.Kernel` call inside the trio run and
    returns its result to the calling asyncio task. Cancelling the asyncio
    task cancels the call on the trio side.
    """

    def __init__(self, bridge: _Bridge) -> None:
        self._bridge = bridge

    @property
    def data_dir(self) -> os.PathLike[str]:
        return self._bridge.trio_kernel.data_dir

    async def trigger(
        self, workflow: str, payload: Any = None, *, run_id: str | None = None
    ) -> AioRunHandle:
        """Start, queue or drop a run of ``workflow`` (see `nerve.Kernel.trigger`).

        Raises:
            UnknownWorkflowError: no such workflow.
            EventEncodingError: the payload is not JSON-serializable.
            KernelClosedError: the kernel is shutting down or has stopped.
        """

        async def trigger(kernel: Kernel) -> RunHandle:
            return await kernel.trigger(workflow, payload, run_id=run_id)

        return AioRunHandle(self, await self._bridge.call(trigger))

    async def wait(self, handle: AioRunHandle | str) -> Outcome:
        """Wait until a run ends (a handle, or a run id) and return its outcome.

        Raises:
            LookupError: no run with that id.
            KernelClosedError: the kernel stopped before the run ended (it is
                still recorded, and taken up at the next start).
        """

        async def wait(kernel: Kernel) -> Outcome:
            if isinstance(handle, AioRunHandle):
                return await handle._handle.wait()
            return await (await kernel.handle(handle)).wait()

        return await self._bridge.call(wait)

    async def runs(
        self,
        *,
        workflow: str | None = None,
        status: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Rows of ``workflow_runs``, oldest first."""
        statuses = status if status is None or isinstance(status, str) else [*status]

        async def runs(kernel: Kernel) -> list[RunRecord]:
            return await kernel.runs(workflow=workflow, status=statuses, limit=limit)

        return await self._bridge.call(runs)

    async def run(self, run_id: str) -> RunRecord | None:
        """One row of ``workflow_runs`` (None: no such run)."""

        async def run(kernel: Kernel) -> RunRecord | None:
            return await kernel.run(run_id)

        return await self._bridge.call(run)

    async def signals(
        self, group: str, sense: str | None = None, n: int = 10
    ) -> list[SignalRecord]:
        """The newest signals of a sense group, oldest first."""

        async def signals(kernel: Kernel) -> list[SignalRecord]:
            return await kernel.signals(group, sense, n)

        return await self._bridge.call(signals)

    async def statistics(self) -> KernelStatistics:
        """A snapshot of the kernel's counters."""

        async def statistics(kernel: Kernel) -> KernelStatistics:
            return kernel.statistics()

        return await self._bridge.call(statistics)

    async def call(self, fn: Callable[[Kernel], Awaitable[T]]) -> T:
        """Run ``await fn(kernel)`` in the trio run, with the trio `nerve.Kernel`.

        For anything the methods above do not cover. ``fn`` is trio code.
        """
        return await self._bridge.call(fn)


class _Bridge:
    """The state shared by the asyncio side and the trio guest run.

    Both sides run on the asyncio loop's thread, one callback at a time, so
    plain attributes need no locks; but trio's own objects may only be touched
    from inside the trio run (`TrioToken.run_sync_soon`), and asyncio futures
    are only completed when not already done (a caller may have cancelled).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.host_task = asyncio.current_task()
        self.token: trio.lowlevel.TrioToken | None = None
        self.kernel: Kernel | None = None
        self.nursery: trio.Nursery | None = None
        self.stop: trio.Event | None = None
        self.closing = False
        self.cancelled_host = False
        self.ready: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[outcome.Outcome[None]] = loop.create_future()

    @property
    def trio_kernel(self) -> Kernel:
        if self.kernel is None:
            raise KernelClosedError("the kernel is not running")
        return self.kernel

    # -- the trio side ---------------------------------------------------------

    async def main(
        self, app: App, data_dir: str | os.PathLike[str], options: dict[str, Any]
    ) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.stop = trio.Event()
        if self.closing:
            return  # the host gave up before the guest run got going
        with single_error():
            await self._serve(app, data_dir, options)

    async def _serve(
        self, app: App, data_dir: str | os.PathLike[str], options: dict[str, Any]
    ) -> None:
        # Calls run in this nursery, outside the kernel's block: waiting for a
        # run's outcome goes on through the kernel's drain, which resolves it.
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            async with open_trio_kernel(app, data_dir, **options) as kernel:
                self.kernel = kernel
                if not self.ready.done():
                    self.ready.set_result(None)
                assert self.stop is not None
                await self.stop.wait()
            self.kernel = None
            nursery.cancel_scope.cancel()

    async def _run_call(
        self,
        future: asyncio.Future[T],
        fn: Callable[[Kernel], Awaitable[T]],
    ) -> None:
        with trio.CancelScope() as scope:

            def cancelled(f: asyncio.Future[T]) -> None:
                if f.cancelled():  # the asyncio caller gave up: stop the call
                    self._in_trio(scope.cancel)

            future.add_done_callback(cancelled)
            kernel = self.kernel
            try:
                if kernel is None:
                    raise KernelClosedError("the kernel has stopped")
                result = await fn(kernel)
            except trio.Cancelled:
                if not future.done():
                    future.set_exception(
                        KernelClosedError("the kernel stopped before the call returned")
                    )
                raise
            except Exception as e:
                if not future.done():
                    future.set_exception(e)
            else:
                if not future.done():
                    future.set_result(result)

    def _in_trio(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` inside the trio run soon, unless it has ended."""
        if self.token is None or self.finished.done():
            return
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(fn)

    def done(self, result: outcome.Outcome[None]) -> None:
        """The guest run ended (its ``done_callback``)."""
        if not self.finished.done():
            self.finished.set_result(result)
        if not self.closing and self.ready.done() and self.host_task is not None:
            # The kernel died under the host (an actor failed past its
            # restart limit): interrupt the body of the ``async with``, which
            # then raises the kernel's error.
            self.cancelled_host = True
            self.host_task.cancel()

    # -- the asyncio side ----------------------------------------------------------

    async def call(self, fn: Callable[[Kernel], Awaitable[T]]) -> T:
        if self.closing or self.finished.done() or self.nursery is None:
            raise KernelClosedError("the kernel is shutting down or has stopped")
        future: asyncio.Future[T] = self.loop.create_future()
        nursery = self.nursery

        def start() -> None:
            if not future.done():  # not cancelled while waiting to start
                nursery.start_soon(self._run_call, future, fn)

        self._in_trio(start)
        return await future

    def request_stop(self) -> None:
        self.closing = True

        def stop() -> None:
            if self.stop is not None:
                self.stop.set()

        self._in_trio(stop)

    def interrupt_runs(self) -> None:
        """Cut the grace period: cancel running runs now (recorded interrupted)."""

        def interrupt() -> None:
            kernel = self.kernel
            if kernel is not None:
                for actor in kernel.workflows.values():
                    actor.interrupt_all("cancelled during shutdown")

        self._in_trio(interrupt)

    async def wait_finished(self) -> bool:
        """Wait for the guest run to end, whatever happens meanwhile.

        Returns:
            Whether the host task was cancelled while waiting (the caller
            re-raises the cancellation once the trio run is over).
        """
        cancelled = False
        while not self.finished.done():
            try:
                await asyncio.shield(self.finished)
            except asyncio.CancelledError:
                cancelled = True
                self.interrupt_runs()
        return cancelled


@contextlib.asynccontextmanager
async def open_kernel(
    app: App,
    data_dir: str | os.PathLike[str] = "data",
    *,
    grace: float = DEFAULT_GRACE,
    **log_options: Any,
) -> AsyncIterator[AioKernel]:
    """Run ``app`` on the log in ``data_dir``, from asyncio code.

    The asyncio counterpart of `nerve.open_kernel` (same arguments). Must be
    entered from a task of a running asyncio loop, with no trio run active
    on this thread.

    Raises:
        ConfigError, NerveError, OSError: the kernel could not start (raised
            on entering the block).
        ActorFailed: the kernel stopped because an actor failed past its
            restart limit (raised from the block, which was cancelled).
    """
    loop = asyncio.get_running_loop()
    bridge = _Bridge(loop)
    options = {"grace": grace, **log_options}
    trio.lowlevel.start_guest_run(
        bridge.main,
        app,
        data_dir,
        options,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        run_sync_soon_not_threadsafe=loop.call_soon,
        done_callback=bridge.done,
        # asyncio owns the signal wakeup fd (asyncio.run's Ctrl-C handling).
        host_uses_signal_set_wakeup_fd=True,
    )
    try:
        started: list[asyncio.Future[Any]] = [bridge.ready, bridge.finished]
        await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        bridge.request_stop()
        await bridge.wait_finished()
        raise
    if not bridge.ready.done():
        bridge.finished.result().unwrap()  # the kernel's start-up error
        raise KernelClosedError("the kernel stopped while starting")  # pragma: no cover
    kernel = AioKernel(bridge)
    try:
        yield kernel
    except asyncio.CancelledError:
        bridge.request_stop()
        await bridge.wait_finished()
        if bridge.cancelled_host:
            # Our own cancellation, standing for the kernel's failure.
            if bridge.host_task is not None:
                bridge.host_task.uncancel()
            bridge.finished.result().unwrap()
            raise KernelClosedError("the kernel stopped unexpectedly") from None
        raise
    except BaseException:
        bridge.request_stop()
        if await bridge.wait_finished():
            raise asyncio.CancelledError from None
        raise
    bridge.request_stop()
    cancelled = await bridge.wait_finished()
    bridge.finished.result().unwrap()
    if cancelled:
        raise asyncio.CancelledError


async def run_in_asyncio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """From trio code of a kernel opened with `open_kernel`, await an asyncio
    coroutine on the host loop and return its result.

    For workflow or sense functions that need asyncio libraries. Cancelling
    the trio caller cancels the asyncio task, and waits for it to finish.

    Raises:
        RuntimeError: not inside a guest run on an asyncio loop, or the
            asyncio task was cancelled by someone else.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "run_in_asyncio needs a kernel opened with nerve.aio.open_kernel "
            "(trio in guest mode on an asyncio loop)"
        ) from None
    token = trio.lowlevel.current_trio_token()
    finished = trio.Event()

    async def call() -> T:
        return await fn(*args)

    task: asyncio.Task[T] = loop.create_task(call())

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(finished.set)

    task.add_done_callback(wake)
    try:
        await finished.wait()
    finally:
        if not task.done():
            task.cancel()
            with trio.CancelScope(shield=True):
                await finished.wait()
    if task.cancelled():
        raise RuntimeError(f"the asyncio task running {fn!r} was cancelled")
    return task.result()
