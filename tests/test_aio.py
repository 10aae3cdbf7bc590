"""nerve.aio: the trio kernel as a guest on asyncio, driven from asyncio tasks.

These tests are plain functions calling `asyncio.run`; trio runs inside it in
guest mode. Nothing waits on wall-clock time except safety nets.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import trio

import nerve
import nerve.aio
from nerve.projections import RunQueries

SAFETY = 30  # seconds: a net against hangs, never an assertion


def make_app(started: list[asyncio.Event]) -> nerve.App:
    app = nerve.App()

    @app.workflow("echo", concurrency=2)
    async def echo(run: nerve.Run) -> Any:
        await run.say("assistant", f"echo {run.payload}")
        return run.payload

    @app.workflow("forever")
    async def forever(run: nerve.Run) -> None:
        async def mark() -> None:
            started[0].set()

        await nerve.aio.run_in_asyncio(mark)
        await trio.sleep_forever()

    @app.sense("tick", every=0.01)
    async def count(sense: nerve.Sense) -> int:
        return sense.computed

    return app


def statuses(data_dir: Path) -> dict[str, str]:
    """Each run's status, read after the asyncio program has ended."""

    async def read() -> dict[str, str]:
        async with nerve.open_log(data_dir) as log:
            return {r.run_id: r.status for r in await RunQueries(log).list()}

    return trio.run(read)


def test_trigger_wait_and_queries(tmp_path: Path) -> None:
    async def main() -> None:
        started = [asyncio.Event()]
        async with nerve.aio.open_kernel(make_app(started), tmp_path) as kernel:
            handles = [await kernel.trigger("echo", {"n": i}) for i in range(5)]
            outcomes = await asyncio.gather(*(h.wait() for h in handles))
            assert [o.result for o in outcomes] == [{"n": i} for i in range(5)]
            assert all(o.ok for o in outcomes)
            # By run id too, once ended.
            assert (await kernel.wait(handles[0].run_id)).result == {"n": 0}
            rows = await kernel.runs(workflow="echo", status=["completed"])
            assert [r.run_id for r in rows] == [h.run_id for h in handles]
            record = await kernel.run(handles[1].run_id)
            assert record is not None
            assert record.status == "completed"
            assert await kernel.run("nope") is None
            stats = await kernel.statistics()
            assert stats.workflows[0].completed == 5
            assert kernel.data_dir == tmp_path

            async def first_signal(k: nerve.Kernel) -> int:
                async for e in k.log.subscribe(types=["sense.signal"]):
                    await k.projections["tick"].wait_for(e.position)
                    return e.position
                raise AssertionError("the log closed")

            position = await kernel.call(first_signal)
            signals = await kernel.signals("tick", n=100)
            assert position in [s.position for s in signals]
            with pytest.raises(nerve.UnknownWorkflowError):
                await kernel.trigger("nope")
            with pytest.raises(nerve.EventEncodingError):
                await kernel.trigger("echo", {"not json": object()})

    asyncio.run(asyncio.wait_for(main(), SAFETY))


def test_cancelling_the_host_task_drains_and_ends_the_trio_run(tmp_path: Path) -> None:
    run_ids: list[str] = []

    async def main() -> None:
        started = [asyncio.Event()]

        async def host() -> None:
            app = make_app(started)
            async with nerve.aio.open_kernel(app, tmp_path, grace=0) as kernel:
                handle = await kernel.trigger("forever")
                run_ids.append(handle.run_id)
                await handle.wait()

        task = asyncio.create_task(host())
        await started[0].wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # No trio run is left on this thread: a new guest run can start.
        async with nerve.aio.open_kernel(make_app(started), tmp_path) as kernel:
            outcome = await kernel.wait(run_ids[0])
            assert outcome.status == "interrupted"

    asyncio.run(asyncio.wait_for(main(), SAFETY))
    assert statuses(tmp_path) == {run_ids[0]: "interrupted"}


def test_a_second_cancellation_interrupts_runs_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        started = [asyncio.Event()]
        kernels: list[nerve.aio.AioKernel] = []

        async def host() -> None:
            # With an hour of grace, only the second cancellation ends the drain.
            app = make_app(started)
            async with nerve.aio.open_kernel(app, tmp_path, grace=3600) as kernel:
                kernels.append(kernel)
                await kernel.trigger("forever")
                await asyncio.Event().wait()

        task = asyncio.create_task(host())
        await started[0].wait()
        task.cancel()
        # A bounded wait for a state change (no clock involved): the first
        # cancellation has reached the block and the drain has begun.
        while not kernels[0]._bridge.closing:  # noqa: ASYNC110
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), SAFETY))
    assert list(statuses(tmp_path).values()) == ["interrupted"]


def test_leaving_the_block_interrupts_runs_past_the_grace(tmp_path: Path) -> None:
    async def main() -> nerve.aio.AioKernel:
        started = [asyncio.Event()]
        app = make_app(started)
        async with nerve.aio.open_kernel(app, tmp_path, grace=0) as kernel:
            handle = await kernel.trigger("forever")
            waiter = asyncio.create_task(handle.wait())
            await started[0].wait()
        # The wait ended with the drain: the run was interrupted.
        assert (await waiter).status == "interrupted"
        return kernel

    kernel = asyncio.run(asyncio.wait_for(main(), SAFETY))

    async def after() -> None:
        with pytest.raises(nerve.KernelClosedError):
            await kernel.runs()

    asyncio.run(after())


def test_a_cancelled_call_is_cancelled_in_trio(tmp_path: Path) -> None:
    async def main() -> None:
        started = [asyncio.Event()]
        async with nerve.aio.open_kernel(make_app(started), tmp_path, grace=0) as k:
            handle = await k.trigger("forever")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(handle.wait(), 0.05)
            # The kernel is fine and answers.
            assert (await k.run(handle.run_id)) is not None

    asyncio.run(asyncio.wait_for(main(), SAFETY))


def test_start_up_errors_are_raised_on_entering(tmp_path: Path) -> None:
    (tmp_path / "logs.db").write_bytes(b"not a database at all, not even close")

    async def main() -> None:
        with pytest.raises(nerve.NotADatabaseError):
            async with nerve.aio.open_kernel(nerve.App(), tmp_path):
                raise AssertionError("not reached")

    asyncio.run(asyncio.wait_for(main(), SAFETY))


def test_an_error_in_the_body_still_shuts_down(tmp_path: Path) -> None:
    async def main() -> None:
        started = [asyncio.Event()]

        async def failing_body() -> None:
            async with nerve.aio.open_kernel(make_app(started), tmp_path) as kernel:
                await kernel.trigger("echo", 1)
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await failing_body()
        async with nerve.aio.open_kernel(make_app(started), tmp_path) as kernel:
            assert len(await kernel.runs()) == 1

    asyncio.run(asyncio.wait_for(main(), SAFETY))


async def test_run_in_asyncio_needs_a_guest_run() -> None:
    async def nothing() -> None:
        pass

    with pytest.raises(RuntimeError, match=r"nerve\.aio\.open_kernel"):
        await nerve.aio.run_in_asyncio(nothing)


def test_a_kernel_failure_interrupts_the_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An actor failing past its restart limit stops the kernel; the block is
    cancelled and raises the kernel's error."""
    from nerve.actors import Actor

    async def escalate(self: Actor[Any], error: Exception) -> None:
        raise nerve.ActorFailed(f"actor {self.name!r} gave up: {error}") from error

    monkeypatch.setattr(Actor, "_restart_or_escalate", escalate)
    app = nerve.App()

    @app.workflow("w")
    async def w(run: nerve.Run) -> None:
        pass

    original = nerve.actors.WorkflowActor.handle

    async def handle(self: nerve.actors.WorkflowActor, message: Any) -> None:
        if message.payload == "boom":
            raise RuntimeError("the actor broke")
        await original(self, message)

    monkeypatch.setattr(nerve.actors.WorkflowActor, "handle", handle)
    reached = []

    async def main() -> None:
        with pytest.raises(nerve.ActorFailed, match="the actor broke"):
            await body()
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    async def body() -> None:
        async with nerve.aio.open_kernel(app, tmp_path) as kernel:
            await kernel.trigger("w", "boom")
            await asyncio.Event().wait()
            reached.append(True)

    asyncio.run(asyncio.wait_for(main(), SAFETY))
    assert not reached
