"""Workflows through `nerve.open_kernel`: outcomes, admission limits (concurrency,
overflow, max_queue), the run's thread (say, step, emit), queries, shutdown with
a grace period, and recovery of runs found in the log at start.

Runs are held with `trio.Event`s; everything involving time uses the
`autojump_clock`. Note that the log's writes happen in a worker thread, during
which virtual time may jump to the next deadline: the tests make sure a run has
entered its function before they count on its timing.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import nerve
from nerve import (
    EventEncodingError,
    KernelClosedError,
    NewEvent,
    Outcome,
    UnknownWorkflowError,
)
from nerve.actors import Trigger, WorkflowActor
from nerve.events._vocabulary import RunQueued, RunStarted, ThreadMessage, run_stream
from nerve.projections import RunQueries, RunRecord, WorkflowRuns, attach_inline

SAFETY = 20  # seconds of real time: a net against hangs, never a timing assertion
# (not with the autojump clock: virtual time jumps while the log's thread works)

QUIET: dict[str, Any] = {"watch_interval": None}
"""For timing tests on the autojump clock: while the log writes (in a thread),
virtual time jumps to the next deadline, and the log's watch for other
processes' appends (every 50 ms) would make each write cost virtual time."""

# -- helpers -------------------------------------------------------------------


class Boom(Exception):
    pass


class Gates:
    """Holds runs: a run with payload ``{"k": key}`` enters, then waits for
    ``release(key)``; ``order`` is the order runs entered their function."""

    def __init__(self) -> None:
        self.entered: defaultdict[Any, trio.Event] = defaultdict(trio.Event)
        self.released: defaultdict[Any, trio.Event] = defaultdict(trio.Event)
        self.order: list[Any] = []
        self.times: dict[Any, float] = {}
        self.active = 0
        self.max_active = 0

    async def __call__(self, run: nerve.Run) -> Any:
        key = run.payload["k"]
        self.order.append(key)
        self.times[key] = trio.current_time()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.entered[key].set()
        try:
            await self.released[key].wait()
        finally:
            self.active -= 1
        if run.payload.get("fail"):
            raise Boom(f"run {key} failed")
        return key

    def release(self, *keys: Any) -> None:
        for key in keys:
            self.released[key].set()


def gated_app(gates: Gates, name: str = "w", **limits: Any) -> nerve.App:
    app = nerve.App()
    app.workflow(name, **limits)(gates.__call__)
    return app


async def statuses(kernel: nerve.Kernel) -> dict[str, str]:
    return {r.run_id: r.status for r in await kernel.runs()}


async def durable(kernel: nerve.Kernel) -> None:
    """Wait until every event submitted so far is durable (appends are
    written in the order they are submitted)."""
    await kernel.log.append("test-barrier", NewEvent("test.barrier", {}))


async def lifecycle(log: nerve.Log, run_id: str) -> list[str]:
    return [
        e.type.removeprefix("workflow.run.")
        async for e in log.read(stream=run_stream(run_id))
        if e.type.startswith("workflow.run.")
    ]


# -- outcomes ------------------------------------------------------------------


async def test_a_run_completes_with_its_result(tmp_path: Path) -> None:
    app = nerve.App()
    seen: list[Any] = []

    @app.workflow("greet")
    async def greet(run: nerve.Run) -> dict[str, Any]:
        seen.append((run.workflow, run.payload, run.attempt, run.resumed))
        return {"hello": run.payload["name"]}

    async with nerve.open_kernel(app, tmp_path) as kernel:
        handle = await kernel.trigger("greet", {"name": "ada"})
        outcome = await handle.wait()
        assert outcome == Outcome(handle.run_id, "greet", "completed", {"hello": "ada"})
        assert outcome.ok
        record = await kernel.run(handle.run_id)
        assert record is not None
        assert (record.status, record.result, record.attempt) == (
            "completed",
            {"hello": "ada"},
            1,
        )
        assert record.payload == {"name": "ada"}
        assert await lifecycle(kernel.log, handle.run_id) == [
            "queued",
            "started",
            "completed",
        ]
        # A handle on an ended run is resolved from the record.
        again = await kernel.handle(handle.run_id)
        assert await again.wait() == outcome
    assert seen == [("greet", {"name": "ada"}, 1, False)]


async def test_an_exception_fails_the_run_and_the_actor_survives(
    tmp_path: Path,
) -> None:
    app = nerve.App()

    @app.workflow("w")
    async def w(run: nerve.Run) -> str:
        if run.payload == "bad":
            raise Boom("it went wrong")
        return "fine"

    async with nerve.open_kernel(app, tmp_path) as kernel:
        outcome = await (await kernel.trigger("w", "bad")).wait()
        assert (outcome.status, outcome.error_type, outcome.error) == (
            "failed",
            "Boom",
            "it went wrong",
        )
        assert not outcome.ok
        record = await kernel.run(outcome.run_id)
        assert record is not None
        assert (record.status, record.error_type, record.error) == (
            "failed",
            "Boom",
            "it went wrong",
        )
        # The actor survived: the next trigger works.
        assert (await (await kernel.trigger("w", "ok")).wait()).result == "fine"
        stats = kernel.workflows["w"].statistics()
        assert (stats.started, stats.completed, stats.failed) == (2, 1, 1)
        assert kernel.workflows["w"].statistics().running == 0


async def test_an_unknown_workflow_is_refused_naming_the_known_ones(
    tmp_path: Path,
) -> None:
    app = nerve.App()
    for name in ("beta", "alpha"):
        app.workflow(name)(Gates().__call__)
    async with nerve.open_kernel(app, tmp_path) as kernel:
        head = kernel.log.head
        with pytest.raises(UnknownWorkflowError, match=r"'gamma'.*alpha, beta"):
            await kernel.trigger("gamma", {})
        assert kernel.log.head == head


async def test_a_payload_that_is_not_json_is_refused_by_trigger(
    tmp_path: Path,
) -> None:
    gates = Gates()
    async with nerve.open_kernel(gated_app(gates), tmp_path) as kernel:
        head = kernel.log.head
        with pytest.raises(EventEncodingError):
            await kernel.trigger("w", {"k": object()})
        assert kernel.log.head == head
        assert await kernel.runs() == []
        assert gates.order == []
        assert kernel.workflows["w"].statistics().started == 0


async def test_a_result_that_is_not_json_fails_the_run(tmp_path: Path) -> None:
    app = nerve.App()

    @app.workflow("w")
    async def w(run: nerve.Run) -> Any:
        return {1, 2} if run.payload else object()

    async with nerve.open_kernel(app, tmp_path) as kernel:
        outcome = await (await kernel.trigger("w", 0)).wait()
        assert outcome.status == "failed"
        assert outcome.error_type == "EventEncodingError"
        record = await kernel.run(outcome.run_id)
        assert record is not None
        assert (record.status, record.error_type) == ("failed", "EventEncodingError")
        assert kernel.workflows["w"].statistics().running == 0


async def test_trigger_after_shutdown_raises_kernel_closed(tmp_path: Path) -> None:
    async with nerve.open_kernel(gated_app(Gates()), tmp_path) as kernel:
        pass
    with pytest.raises(KernelClosedError):
        await kernel.trigger("w", {"k": 1})


# -- admission ----------------------------------------------------------------------


async def test_at_most_concurrency_runs_at_a_time(tmp_path: Path) -> None:
    gates = Gates()
    app = gated_app(gates, concurrency=2, overflow="queue", max_queue=10)
    async with nerve.open_kernel(app, tmp_path) as kernel:
        handles = [await kernel.trigger("w", {"k": i}) for i in range(5)]
        await gates.entered[0].wait()
        await gates.entered[1].wait()
        stats = kernel.workflows["w"].statistics()
        assert (stats.running, stats.queued) == (2, 3)
        for i in range(5):
            gates.release(i)
            await handles[i].wait()
        assert [(await h.wait()).result for h in handles] == list(range(5))
    assert gates.max_active == 2
    # Runs started together enter their functions in either order.
    assert sorted(gates.order[:2]) == [0, 1]
    assert gates.order[2:] == [2, 3, 4]


async def test_overflow_drop_records_the_run_dropped(tmp_path: Path) -> None:
    gates = Gates()
    app = gated_app(gates, concurrency=1, overflow="drop")
    async with nerve.open_kernel(app, tmp_path) as kernel:
        first = await kernel.trigger("w", {"k": 1})
        second = await kernel.trigger("w", {"k": 2})
        outcome = await second.wait()
        assert outcome.status == "dropped"
        assert outcome.error is not None
        assert "slots busy" in outcome.error
        record = await kernel.run(second.run_id)
        assert record is not None
        assert record.status == "dropped"
        assert await lifecycle(kernel.log, second.run_id) == ["queued", "dropped"]
        gates.release(1)
        assert (await first.wait()).status == "completed"
        # Once the slot is free, triggers run again.
        third = await kernel.trigger("w", {"k": 3})
        gates.release(3)
        assert (await third.wait()).status == "completed"
        assert kernel.workflows["w"].statistics().dropped == 1
    assert gates.order == [1, 3]


async def test_overflow_queue_runs_in_fifo_order(tmp_path: Path) -> None:
    gates = Gates()
    app = gated_app(gates, concurrency=1, overflow="queue", max_queue=10)
    async with nerve.open_kernel(app, tmp_path) as kernel:
        handles = [await kernel.trigger("w", {"k": i}) for i in range(6)]
        await gates.entered[0].wait()
        await durable(kernel)
        queued = await kernel.runs(status="queued")
        assert [r.payload["k"] for r in queued] == [1, 2, 3, 4, 5]
        gates.release(*range(6))
        outcomes = [await h.wait() for h in handles]
    assert [o.status for o in outcomes] == ["completed"] * 6
    assert gates.order == list(range(6))


async def test_a_full_queue_evicts_its_oldest_run(tmp_path: Path) -> None:
    gates = Gates()
    app = gated_app(gates, concurrency=1, overflow="queue", max_queue=2)
    async with nerve.open_kernel(app, tmp_path) as kernel:
        a, b, c = [await kernel.trigger("w", {"k": k}) for k in "abc"]
        await gates.entered["a"].wait()
        d = await kernel.trigger("w", {"k": "d"})
        # b, the oldest queued run, made room for d; its handle says so.
        evicted = await b.wait()
        await durable(kernel)
        assert evicted.status == "dropped"
        assert evicted.error is not None
        assert "evicted" in evicted.error
        assert await lifecycle(kernel.log, b.run_id) == ["queued", "dropped"]
        assert [r.payload["k"] for r in await kernel.runs(status="queued")] == [
            "c",
            "d",
        ]
        e = await kernel.trigger("w", {"k": "e"})
        assert (await c.wait()).status == "dropped"
        gates.release(*"ade")
        assert [(await h.wait()).result for h in (a, d, e)] == ["a", "d", "e"]
    assert gates.order == ["a", "d", "e"]


async def test_max_queue_zero_drops_the_new_run(tmp_path: Path) -> None:
    gates = Gates()
    app = gated_app(gates, concurrency=1, overflow="queue", max_queue=0)
    async with nerve.open_kernel(app, tmp_path) as kernel:
        a = await kernel.trigger("w", {"k": "a"})
        b = await kernel.trigger("w", {"k": "b"})
        outcome = await b.wait()
        assert outcome.status == "dropped"
        assert await lifecycle(kernel.log, b.run_id) == ["queued", "dropped"]
        gates.release("a")
        assert (await a.wait()).status == "completed"
    assert gates.order == ["a"]


async def test_a_freed_slot_starts_the_next_queued_run_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    gates = Gates()
    ended: dict[Any, float] = {}

    async def timed(run: nerve.Run) -> Any:
        try:
            return await gates(run)
        finally:
            ended[run.payload["k"]] = trio.current_time()

    app = nerve.App()
    app.workflow("w", concurrency=1, overflow="queue")(timed)
    async with nerve.open_kernel(app, tmp_path, **QUIET) as kernel:
        handles = [await kernel.trigger("w", {"k": i}) for i in range(3)]
        await gates.entered[0].wait()
        await trio.sleep(5)
        gates.release(0)
        await gates.entered[1].wait()
        await trio.sleep(5)
        gates.release(1, 2)
        for h in handles:
            await h.wait()
    # No polling: no virtual time passes between a run's end and the next start.
    assert gates.times[1] == ended[0]
    assert gates.times[2] == ended[1]
    assert ended[0] >= 5


# -- the thread of a run ------------------------------------------------------------


async def test_say_step_and_emit_are_recorded_in_the_runs_stream(
    tmp_path: Path,
) -> None:
    app = nerve.App()
    calls: list[Any] = []

    @app.workflow("chat")
    async def chat(run: nerve.Run) -> Any:
        await run.say("user", f"hi, I am {run.payload}")
        total = await run.step("add", lambda a, b: calls.append((a, b)) or a + b, 2, 3)

        async def fetch(x: int) -> list[int]:
            return [x, x]

        pair = await run.step("fetch", fetch, 7)
        await run.say("assistant", {"total": total, "pair": pair})
        await run.emit("chat.note", {"seen": len(run.messages)}, meta={"by": "test"})
        return [m.role for m in run.messages]

    async with nerve.open_kernel(app, tmp_path) as kernel:
        handle = await kernel.trigger("chat", "bob")
        outcome = await handle.wait()
        assert outcome.result == ["user", "assistant"]
        assert await kernel.queries.messages(handle.run_id) == [
            ThreadMessage("user", "hi, I am bob"),
            ThreadMessage("assistant", {"total": 5, "pair": [7, 7]}),
        ]
        steps = await kernel.queries.steps(handle.run_id)
        assert [(s.name, s.result, s.seq) for s in steps] == [
            ("add", 5, 0),
            ("fetch", [7, 7], 1),
        ]
        events = [e async for e in kernel.log.read(stream=run_stream(handle.run_id))]
        assert [e.type for e in events] == [
            "workflow.run.queued",
            "workflow.run.started",
            "workflow.message",
            "workflow.step",
            "workflow.step",
            "workflow.message",
            "chat.note",
            "workflow.run.completed",
        ]
        note = events[-2]
        assert note.data == {"seen": 2}
        assert note.meta["by"] == "test"
    assert calls == [(2, 3)]


async def test_runs_are_listed_by_workflow_and_status(tmp_path: Path) -> None:
    gates = Gates()
    app = gated_app(gates, "a", concurrency=1, overflow="queue")
    app.workflow("b", concurrency=1, overflow="drop")(gates.__call__)
    async with nerve.open_kernel(app, tmp_path) as kernel:
        a1 = await kernel.trigger("a", {"k": "a1"})
        a2 = await kernel.trigger("a", {"k": "a2", "fail": True})
        b1 = await kernel.trigger("b", {"k": "b1"})
        b2 = await kernel.trigger("b", {"k": "b2"})
        await b2.wait()
        await gates.entered["a1"].wait()
        await gates.entered["b1"].wait()
        await durable(kernel)

        def ids(records: list[RunRecord]) -> list[str]:
            return [r.run_id for r in records]

        assert ids(await kernel.runs(workflow="a")) == [a1.run_id, a2.run_id]
        assert ids(await kernel.runs(workflow="a", status="queued")) == [a2.run_id]
        assert ids(await kernel.runs(status="started")) == [a1.run_id, b1.run_id]
        assert ids(await kernel.runs(status=["dropped", "queued"])) == [
            a2.run_id,
            b2.run_id,
        ]
        assert ids(await kernel.runs(limit=2)) == [a1.run_id, a2.run_id]
        gates.release("a1", "a2", "b1")
        assert (await a2.wait()).status == "failed"
        await b1.wait()
        assert ids(await kernel.runs(workflow="a", status="failed")) == [a2.run_id]
        assert ids(await kernel.runs(workflow="b", status="completed")) == [b1.run_id]
        assert await kernel.runs(workflow="nope") == []


# -- shutdown --------------------------------------------------------------------


async def test_shutdown_interrupts_runs_still_running_after_the_grace(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    entered: dict[str, trio.Event] = {"short": trio.Event(), "long": trio.Event()}

    @app.workflow("w", concurrency=2)
    async def w(run: nerve.Run) -> str:
        entered[run.payload].set()
        await trio.sleep(3 if run.payload == "short" else 3600)
        return run.payload

    async with nerve.open_kernel(app, tmp_path, grace=5, **QUIET) as kernel:
        short = await kernel.trigger("w", "short")
        long = await kernel.trigger("w", "long")
        await entered["short"].wait()
        await entered["long"].wait()
        closing = trio.current_time()
    assert trio.current_time() - closing == pytest.approx(5, abs=0.5)
    assert (await short.wait()).status == "completed"
    interrupted = await long.wait()
    assert (interrupted.status, interrupted.error) == ("interrupted", "shutdown")
    async with nerve.open_log(tmp_path) as log:
        assert await lifecycle(log, long.run_id) == [
            "queued",
            "started",
            "interrupted",
        ]
        assert await lifecycle(log, short.run_id) == [
            "queued",
            "started",
            "completed",
        ]


async def test_shutdown_does_not_wait_the_grace_when_runs_end(
    tmp_path: Path,
) -> None:
    # The real clock: a grace of 1000 s would fail the safety net.
    gates = Gates()
    with trio.fail_after(SAFETY):
        async with nerve.open_kernel(gated_app(gates), tmp_path, grace=1000) as k:
            handle = await k.trigger("w", {"k": 1})
            await gates.entered[1].wait()
            gates.release(1)
    assert (await handle.wait()).status == "completed"


async def test_queued_runs_stay_queued_and_start_in_order_at_the_next_start(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    gates = Gates()
    app = gated_app(gates, concurrency=1, overflow="queue", max_queue=10)
    async with nerve.open_kernel(app, tmp_path, grace=1) as kernel:
        handles = [await kernel.trigger("w", {"k": i}) for i in range(4)]
        await gates.entered[0].wait()
    assert (await handles[0].wait()).status == "interrupted"
    for h in handles[1:]:
        with pytest.raises(KernelClosedError, match="next start"):
            await h.wait()

    again = Gates()
    again.release(*range(4))
    app2 = gated_app(again, concurrency=1, overflow="queue", max_queue=10)
    async with nerve.open_kernel(app2, tmp_path) as kernel:
        outcomes = [await (await kernel.handle(h.run_id)).wait() for h in handles]
        assert [o.status for o in outcomes] == [
            "interrupted",
            "completed",
            "completed",
            "completed",
        ]
    assert again.order == [1, 2, 3]


async def test_a_cancelled_handle_wait_withdraws_nothing(tmp_path: Path) -> None:
    """Waiting on a handle only observes the run's last append: cancelled
    before that append is written, it must not withdraw it."""
    app = nerve.App()
    running, finish = trio.Event(), trio.Event()

    @app.workflow("w")
    async def w(run: nerve.Run) -> str:
        running.set()
        await finish.wait()
        return "done"

    gate = threading.Event()
    with trio.fail_after(SAFETY):
        async with nerve.open_kernel(app, tmp_path) as kernel:
            handle = await kernel.trigger("w")
            await running.wait()
            async with trio.open_nursery() as nursery:
                # Hold the log's writer: the `completed` append waits for it.
                nursery.start_soon(kernel.log.write_job, lambda conn: gate.wait(30))
                await trio.testing.wait_all_tasks_blocked()
                finish.set()
                await trio.testing.wait_all_tasks_blocked()
                assert handle.done
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await handle.wait()
                assert scope.cancelled_caught
                gate.set()
            outcome = await handle.wait()
            assert (outcome.status, outcome.result) == ("completed", "done")
            (record,) = await kernel.runs()
            assert record.status == "completed"


async def test_cancelling_the_surrounding_scope_drains_with_the_grace(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    entered: dict[str, trio.Event] = {"short": trio.Event(), "long": trio.Event()}

    @app.workflow("w", concurrency=2)
    async def w(run: nerve.Run) -> str:
        entered[run.payload].set()
        await trio.sleep(12 if run.payload == "short" else 3600)
        return run.payload

    handles: list[nerve.RunHandle] = []
    with trio.CancelScope() as scope:
        async with nerve.open_kernel(app, tmp_path, grace=5, **QUIET) as kernel:
            handles.append(await kernel.trigger("w", "short"))
            handles.append(await kernel.trigger("w", "long"))
            await entered["short"].wait()
            await entered["long"].wait()
            # (A deadline set before the kernel's I/O would be reached at
            # once: the autojump clock jumps while the log's thread works.)
            start = trio.current_time()
            scope.deadline = start + 10
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(15, abs=0.5)
    short, long = [await h.wait() for h in handles]
    assert (short.status, short.result) == ("completed", "short")
    assert long.status == "interrupted"


async def test_runs_interrupted_before_their_start_is_durable_are_still_recorded(
    tmp_path: Path,
) -> None:
    # grace=0: the runs are interrupted at once, while the log may not have
    # written their "started" event yet; every trigger must still be recorded
    # and resolve its handle.
    app = nerve.App()

    @app.workflow("w", concurrency=4)
    async def w(run: nerve.Run) -> None:
        await trio.sleep_forever()

    interrupted = 0
    for _ in range(4):
        async with nerve.open_kernel(app, tmp_path, grace=0) as kernel:
            handles = [await kernel.trigger("w", i) for i in range(4)]
        async with nerve.open_log(tmp_path) as log:
            for h in handles:
                try:
                    outcome = await h.wait()
                except KernelClosedError:
                    # Still in the actor's mailbox at shutdown: recorded
                    # queued, for the next start.
                    assert await lifecycle(log, h.run_id) == ["queued"]
                else:
                    assert outcome.status == "interrupted"
                    assert await lifecycle(log, h.run_id) == [
                        "queued",
                        "started",
                        "interrupted",
                    ]
                    interrupted += 1
    assert interrupted >= 4


async def test_a_trigger_still_in_the_mailbox_at_shutdown_is_not_started(
    tmp_path: Path,
) -> None:
    app = nerve.App()
    started: list[Any] = []

    @app.workflow("w", concurrency=2)
    async def w(run: nerve.Run) -> None:
        started.append(run.payload)
        await trio.sleep_forever()

    late = nerve.RunHandle(nerve.actors.new_run_id(), "w")
    with trio.fail_after(SAFETY):
        async with nerve.open_kernel(app, tmp_path, grace=0.5) as kernel:
            # A trigger accepted just before shutdown, not yet handled.
            kernel.workflows["w"].tell_nowait(Trigger(late.run_id, "late", "api", late))
    assert started == []
    with pytest.raises(KernelClosedError):
        await late.wait()
    async with nerve.open_log(tmp_path) as log:
        # Recorded queued: taken up at the next start.
        assert await lifecycle(log, late.run_id) in ([], ["queued"])


# -- bad triggers --------------------------------------------------------------------


async def test_a_duplicate_run_id_fails_its_trigger_not_the_kernel(
    tmp_path: Path,
) -> None:
    gates = Gates()
    app = gated_app(gates, concurrency=2)
    async with nerve.open_kernel(app, tmp_path) as kernel:
        first = await kernel.trigger("w", {"k": 1}, run_id="same")
        await gates.entered[1].wait()
        second = await kernel.trigger("w", {"k": 2}, run_id="same")
        with pytest.raises(nerve.NerveError):
            await second.wait()
        gates.release(1, 2)
        assert (await first.wait()).result == 1
        # Another duplicate, of an ended run.
        third = await kernel.trigger("w", {"k": 3}, run_id="same")
        with pytest.raises(nerve.NerveError):
            await third.wait()
        # The actor is unharmed.
        fourth = await kernel.trigger("w", {"k": 4})
        gates.release(3, 4)
        assert (await fourth.wait()).result == 4
        stats = kernel.workflows["w"].statistics()
        assert stats.running == 0
        assert stats.completed == 2
        assert [r.status for r in await kernel.runs()] == ["completed", "completed"]
    assert gates.order == [1, 4]


async def test_a_run_id_the_log_would_refuse_fails_the_trigger(
    tmp_path: Path,
) -> None:
    gates = Gates()
    async with nerve.open_kernel(gated_app(gates), tmp_path) as kernel:
        with pytest.raises(nerve.InvalidEventError):
            await kernel.trigger("w", {"k": 1}, run_id="x" * 2000)
        ok = await kernel.trigger("w", {"k": 2})
        gates.release(2)
        assert (await ok.wait()).status == "completed"
        assert [r.status for r in await kernel.runs()] == ["completed"]
        assert kernel.workflows["w"].statistics().started == 1


# -- recovery (a crash simulated by writing the log directly) --------------------------


async def simulate_crash(
    data_dir: Path, workflow: str, runs: list[tuple[str, str, Any]]
) -> None:
    """Leave runs in the log as a dead process would: (run id, status, payload)."""
    async with nerve.open_log(data_dir, source="dead") as log:
        for run_id, status, payload in runs:
            events = [NewEvent("workflow.run.queued", RunQueued(workflow, payload))]
            if status == "started":
                events.append(NewEvent("workflow.run.started", RunStarted(1, False)))
            await log.append(run_stream(run_id), events)


async def test_recovery_resumes_started_runs_ahead_of_the_queued_ones(
    tmp_path: Path,
) -> None:
    await simulate_crash(
        tmp_path,
        "w",
        [
            ("s1", "started", {"k": "s1"}),
            ("q1", "queued", {"k": "q1"}),
            ("s2", "started", {"k": "s2"}),
            ("q2", "queued", {"k": "q2"}),
        ],
    )
    gates = Gates()
    gates.release("s1", "s2", "q1", "q2", "new")
    app = gated_app(gates, concurrency=1, overflow="queue", max_queue=5)
    async with nerve.open_kernel(app, tmp_path) as kernel:
        new = await kernel.trigger("w", {"k": "new"})
        handles = [await kernel.handle(r) for r in ("s1", "s2", "q1", "q2")]
        outcomes = [await h.wait() for h in [*handles, new]]
        assert [o.status for o in outcomes] == ["completed"] * 5
        for run_id in ("s1", "s2"):
            assert await lifecycle(kernel.log, run_id) == [
                "queued",
                "started",
                "crashed",
                "started",
                "completed",
            ]
            record = await kernel.run(run_id)
            assert record is not None
            assert record.attempt == 2
    assert gates.order == ["s1", "s2", "q1", "q2", "new"]


async def test_a_workflow_without_resume_leaves_crashed_runs_crashed(
    tmp_path: Path,
) -> None:
    await simulate_crash(tmp_path, "w", [("s1", "started", {"k": "s1"})])
    gates = Gates()
    app = gated_app(gates, resume=False)
    async with nerve.open_kernel(app, tmp_path) as kernel:
        outcome = await (await kernel.handle("s1")).wait()
        assert outcome.status == "crashed"
        assert [r.status for r in await kernel.runs()] == ["crashed"]
    async with nerve.open_kernel(app, tmp_path) as kernel:
        assert await lifecycle(kernel.log, "s1") == ["queued", "started", "crashed"]
    assert gates.order == []


async def test_runs_waiting_to_resume_do_not_count_against_max_queue(
    tmp_path: Path,
) -> None:
    # Three runs were started (under a larger concurrency); now concurrency is
    # 1 and max_queue 2: two crashed runs wait to resume, which are not queued.
    await simulate_crash(
        tmp_path,
        "w",
        [(f"s{i}", "started", {"k": f"s{i}"}) for i in range(3)],
    )
    gates = Gates()
    app = gated_app(gates, concurrency=1, overflow="queue", max_queue=2)
    async with nerve.open_kernel(app, tmp_path) as kernel:
        await gates.entered["s0"].wait()
        a = await kernel.trigger("w", {"k": "a"})
        b = await kernel.trigger("w", {"k": "b"})
        c = await kernel.trigger("w", {"k": "c"})  # evicts a: two are queued
        assert (await a.wait()).status == "dropped"
        gates.release("s0", "s1", "s2", "b", "c")
        assert [(await h.wait()).status for h in (b, c)] == ["completed"] * 2
    assert gates.order == ["s0", "s1", "s2", "b", "c"]


async def test_a_duplicate_of_a_crashed_run_does_not_restart_it(
    tmp_path: Path,
) -> None:
    await simulate_crash(tmp_path, "w", [("s1", "started", {"k": "s1"})])
    gates = Gates()
    app = gated_app(gates, concurrency=1, overflow="queue", resume=False)
    async with nerve.open_kernel(app, tmp_path) as kernel:
        first = await kernel.trigger("w", {"k": "a"})
        await gates.entered["a"].wait()
        # Queued behind "a": its queued event is refused (the stream exists),
        # and so must be its started event once a slot frees.
        dup = await kernel.trigger("w", {"k": "dup"}, run_id="s1")
        gates.release("a", "dup")
        assert (await first.wait()).status == "completed"
        with pytest.raises(nerve.WrongExpectedVersion):
            await dup.wait()
        await durable(kernel)
        record = await kernel.run("s1")
        assert record is not None
        assert record.status == "crashed"
        assert await lifecycle(kernel.log, "s1") == ["queued", "started", "crashed"]
        assert kernel.workflows["w"].statistics().running == 0
    assert gates.order == ["a"]


def test_run_ids_start_with_their_time_and_end_random() -> None:
    before = time.time_ns() // 1_000_000
    ids = [nerve.actors.new_run_id() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert all(len(i) == 28 and int(i, 16) >= 0 for i in ids)
    stamps = [int(i[:12], 16) for i in ids]
    # Time-ordered (new runs land at the end of the indexes), yet unique.
    assert stamps == sorted(stamps)
    assert before <= stamps[0]
    assert stamps[-1] <= after
    assert len({i[12:] for i in ids}) == len(ids)


async def test_a_start_written_after_its_actor_stopped_is_left_for_recovery(
    tmp_path: Path,
) -> None:
    """The actor stops (or fails) while a run's ``started`` event is being
    written: once it is durable there is no nursery to run it in. The run is
    let go (the actor's count of live runs drops) and stays ``started`` in
    the log, for the next start to find crashed and resume."""
    app = nerve.App()
    ran: list[str] = []

    @app.workflow("w")
    async def w(run: nerve.Run) -> None:
        ran.append(run.id)

    async with nerve.open_log(tmp_path / "data") as log:
        await attach_inline(log, WorkflowRuns())
        actor = WorkflowActor(app.workflows["w"], log)
        gate = threading.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            # The writer is busy with a job until the gate opens: the run's
            # queued and started events wait for it.
            nursery.start_soon(log.write_job, lambda conn: gate.wait(30))
            await trio.testing.wait_all_tasks_blocked()
            handle = nerve.RunHandle("r1", "w")
            actor.admit(Trigger("r1", None, "api", handle))
            assert actor.statistics().running == 1
            actor.stop()  # its runs' nursery closes: it holds no run task yet
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        await log.append("other", nerve.NewEvent("test.after", {}))  # written after
        assert ran == []
        assert actor._alive == 0
        assert actor._all_done.is_set()
        record = await RunQueries(log).get("r1")
        assert record is not None
        assert record.status == "started"
