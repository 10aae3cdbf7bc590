"""Projections: the inline ``workflow_runs`` model, the async ``_signals`` model,
catching up, version bumps, rebuilds while appends continue, recovery of
unusable sense databases, the checkpoint guard, `replay` and `verify`."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio
import trio.testing
from _runs import EventByEventRuns, SpiedRuns

import nerve
from nerve import EventDecodingError, NewEvent, RefusedByProjection
from nerve.events._vocabulary import (
    TRANSITIONS,
    RunCompleted,
    RunCrashed,
    RunDropped,
    RunFailed,
    RunInterrupted,
    RunQueued,
    RunStarted,
    SenseError,
    SenseSignal,
    StepJournaled,
    ThreadMessage,
    run_stream,
    sense_stream,
)
from nerve.projections import (
    Difference,
    Projection,
    ProjectionRecoveredWarning,
    ProjectionRunner,
    RunQueries,
    RunRecord,
    Signals,
    SkippedEventWarning,
    WorkflowRuns,
    attach_inline,
    read_signals,
    rebuild,
    replay,
    signals_database,
    verify,
)
from nerve.projections._workflow_runs import _CODE_OF_STATUS, _legal_sql

SAFETY = 30  # seconds: a net against hangs, never a timing assertion
DAY = 86_400.0
EPOCH = 1_600_000_000.0  # 2020-09-13T12:26:40Z

# -- helpers -------------------------------------------------------------------


class FakeClock:
    """A wall clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    @property
    def ms(self) -> int:
        return int(self.now * 1000)


def queued(workflow: str = "greet", payload: Any = None) -> NewEvent:
    return NewEvent("workflow.run.queued", RunQueued(workflow, payload))


def started(attempt: int = 1) -> NewEvent:
    return NewEvent("workflow.run.started", RunStarted(attempt, attempt > 1))


def completed(result: Any = None) -> NewEvent:
    return NewEvent("workflow.run.completed", RunCompleted(result))


def failed(error_type: str = "ValueError", message: str = "boom") -> NewEvent:
    return NewEvent("workflow.run.failed", RunFailed(error_type, message))


def crashed(reason: str = "killed") -> NewEvent:
    return NewEvent("workflow.run.crashed", RunCrashed(reason))


def interrupted(reason: str = "shutdown") -> NewEvent:
    return NewEvent("workflow.run.interrupted", RunInterrupted(reason))


def dropped(reason: str = "overflow") -> NewEvent:
    return NewEvent("workflow.run.dropped", RunDropped(reason))


def message(role: str, content: Any) -> NewEvent:
    return NewEvent("workflow.message", ThreadMessage(role, content))


def step(name: str, result: Any, seq: int) -> NewEvent:
    return NewEvent("workflow.step", StepJournaled(name, result, seq))


def signal(group: str, sense: str, value: Any) -> NewEvent:
    return NewEvent("sense.signal", SenseSignal(group, sense, value))


EVENT_OF_STATUS = {
    "queued": queued,
    "started": started,
    "completed": completed,
    "failed": failed,
    "crashed": crashed,
    "interrupted": interrupted,
    "dropped": dropped,
}

# The events that bring a new run to each status (None: no run at all).
PATH_TO: dict[str | None, list[str]] = {
    None: [],
    "queued": ["queued"],
    "started": ["queued", "started"],
    "completed": ["queued", "started", "completed"],
    "failed": ["queued", "started", "failed"],
    "crashed": ["queued", "started", "crashed"],
    "interrupted": ["queued", "started", "interrupted"],
    "dropped": ["queued", "dropped"],
}


def table_rows(path: Path, table: str, order: str) -> list[tuple[Any, ...]]:
    """Every row of a table, read on a separate connection (what is on disk)."""
    conn = apsw.Connection(str(path))
    try:
        return [
            tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
        ]
    finally:
        conn.close()


def checkpoint_of(path: Path, name: str) -> tuple[int, int] | None:
    conn = apsw.Connection(str(path))
    try:
        rows = conn.execute(
            "SELECT version, position FROM projections WHERE name = ?", (name,)
        ).fetchall()
    finally:
        conn.close()
    return (rows[0][0], rows[0][1]) if rows else None


def runs_table(log: nerve.Log) -> list[tuple[Any, ...]]:
    return table_rows(log.path, "workflow_runs", "run_id")


def signals_table(data_dir: Path, group: str) -> list[tuple[Any, ...]]:
    return table_rows(data_dir / f"senses/{group}-senses.db", "_signals", "position")


async def all_events(log: nerve.Log, **kwargs: Any) -> list[nerve.RecordedEvent]:
    return [e async for e in log.read(**kwargs)]


async def count_runs(log: nerve.Log) -> int:
    def q(conn: apsw.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM workflow_runs").fetchall()[0][0])

    return await log._read(q)


@contextlib.asynccontextmanager
async def writer_held(log: nerve.Log) -> AsyncIterator[None]:
    """Keep the log's writer busy until the body ends: every append submitted
    meanwhile is written in the one batch that follows."""
    gate = threading.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.write_job, lambda conn: gate.wait(SAFETY))
        await trio.testing.wait_all_tasks_blocked()
        try:
            yield
        finally:
            gate.set()


@contextlib.asynccontextmanager
async def running(
    log: nerve.Log, projection: Signals, data_dir: Path | None = None
) -> AsyncIterator[ProjectionRunner]:
    """A ProjectionRunner following the log for the duration of the block."""
    runner = ProjectionRunner(log, projection, data_dir)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        yield runner
        nursery.cancel_scope.cancel()


async def run_to(log: nerve.Log, run_id: str, status: str | None) -> None:
    """Create run ``run_id`` and bring it to ``status`` (legally)."""
    for s in PATH_TO[status]:
        await log.append(run_stream(run_id), EVENT_OF_STATUS[s]())


class ValidRuns:
    """Generates valid lifecycle appends for many runs (a tiny state machine)."""

    def __init__(self, rng: random.Random, prefix: str = "r") -> None:
        self.rng = rng
        self.prefix = prefix
        self.status: dict[str, str] = {}
        self.attempt: dict[str, int] = {}
        self.n = 0

    def next(self) -> tuple[str, list[NewEvent]]:
        """One append: a stream and its events, legal whatever came before."""
        rng = self.rng
        live = [r for r, s in self.status.items() if TRANSITIONS[s]]
        if not live or rng.random() < 0.3:
            self.n += 1
            run = f"{self.prefix}{self.n}"
            self.status[run] = "queued"
            self.attempt[run] = 0
            return run_stream(run), [queued("wf" + str(self.n % 3), {"n": self.n})]
        run = rng.choice(live)
        target = rng.choice(sorted(TRANSITIONS[self.status[run]]))
        self.status[run] = target
        if target == "started":
            self.attempt[run] += 1
            ev = started(self.attempt[run])
        else:
            ev = EVENT_OF_STATUS[target]()
        events = [ev]
        if target == "started" and rng.random() < 0.5:
            events.append(message("user", f"hello {run}"))
        return run_stream(run), events


# -- workflow_runs: the rows follow the lifecycle --------------------------------


async def test_rows_follow_every_lifecycle_event(data_dir: Path) -> None:
    clock = FakeClock()
    async with nerve.open_log(data_dir, clock=clock) as log:
        await attach_inline(log, WorkflowRuns())
        runs = RunQueries(log)

        q = await log.append("run-a", queued("greet", {"name": "Ada", "n": [1, 2]}))
        a = await runs.get("a")
        assert a == RunRecord(
            run_id="a",
            workflow="greet",
            status="queued",
            attempt=0,
            payload={"name": "Ada", "n": [1, 2]},
            result=None,
            error_type=None,
            error=None,
            queued_at=clock.ms,
            started_at=None,
            ended_at=None,
            seq=q.first_position,
            position=q.first_position,
        )
        queued_at = clock.ms

        clock.now += 1
        s = await log.append("run-a", started())
        a = await runs.get("a")
        assert a is not None
        assert (a.status, a.attempt, a.started_at, a.ended_at) == (
            "started",
            1,
            clock.ms,
            None,
        )
        assert (a.queued_at, a.seq, a.position) == (
            queued_at,
            q.first_position,
            s.first_position,
        )
        started_at = clock.ms

        clock.now += 1
        c = await log.append("run-a", completed({"greeting": "hello Ada"}))
        a = await runs.get("a")
        assert a is not None
        assert a.status == "completed"
        assert a.result == {"greeting": "hello Ada"}
        assert (a.error_type, a.error) == (None, None)
        assert (a.queued_at, a.started_at, a.ended_at) == (
            queued_at,
            started_at,
            clock.ms,
        )
        assert (a.seq, a.position) == (q.first_position, c.first_position)

        # failed: error type and message
        await run_to(log, "b", "started")
        await log.append("run-b", failed("KeyError", "'missing'"))
        b = await runs.get("b")
        assert b is not None
        assert (b.status, b.error_type, b.error, b.result) == (
            "failed",
            "KeyError",
            "'missing'",
            None,
        )

        # crashed, then resumed: attempt 2, the crash's error cleared
        await run_to(log, "c", "started")
        clock.now += 1
        await log.append("run-c", crashed("power cut"))
        c1 = await runs.get("c")
        assert c1 is not None
        assert (c1.status, c1.error_type, c1.error, c1.ended_at) == (
            "crashed",
            None,
            "power cut",
            clock.ms,
        )
        clock.now += 1
        r = await log.append("run-c", started(2))
        c2 = await runs.get("c")
        assert c2 is not None
        assert (c2.status, c2.attempt, c2.error, c2.ended_at, c2.started_at) == (
            "started",
            2,
            None,
            None,
            clock.ms,
        )
        assert c2.position == r.first_position
        await log.append("run-c", completed(42))
        c3 = await runs.get("c")
        assert c3 is not None
        assert (c3.status, c3.attempt, c3.result) == ("completed", 2, 42)

        # interrupted and dropped carry their reason
        await run_to(log, "d", "started")
        await log.append("run-d", interrupted("reload"))
        await run_to(log, "e", "queued")
        await log.append("run-e", dropped("evicted"))
        d, e = await runs.get("d"), await runs.get("e")
        assert d is not None
        assert e is not None
        assert (d.status, d.error, d.attempt) == ("interrupted", "reload", 1)
        assert (e.status, e.error, e.attempt, e.started_at) == (
            "dropped",
            "evicted",
            0,
            None,
        )
        assert await runs.get("nope") is None

        # The stored columns: JSON text for payload and result.
        raw = {r[0]: r for r in runs_table(log)}
        assert raw["a"][4] == '{"name":"Ada","n":[1,2]}'
        assert raw["a"][5] == '{"greeting":"hello Ada"}'
        assert raw["c"][5] == "42"
        assert raw["b"][4] is None  # no payload: NULL, not "null"
        assert await verify(log, [WorkflowRuns()]) == []


async def test_several_transitions_of_one_run_in_one_append(log: nerve.Log) -> None:
    await attach_inline(log, WorkflowRuns())
    events = [queued(), started(), crashed(), started(2), message("a", "b")]
    events.append(completed("done"))
    await log.append("run-x", [*events])
    x = await RunQueries(log).get("x")
    assert x is not None
    assert (x.status, x.attempt, x.result, x.seq, x.position) == (
        "completed",
        2,
        "done",
        1,
        6,
    )
    assert await verify(log, [WorkflowRuns()]) == []


async def test_payloads_the_log_accepts_fold_like_their_replay(log: nerve.Log) -> None:
    """The inline fold sees the event as appended; a replay sees it decoded from
    its JSON. Payloads that the codec normalises (tuples, non-str keys, sets,
    bytes) must give the same row either way, and must not be refused."""
    await attach_inline(log, WorkflowRuns())
    payloads: list[Any] = [(1, 2), {1: "a"}, {"s": frozenset({3})}, b"xy", [{2: (3,)}]]
    for i, payload in enumerate(payloads):
        await log.append(f"run-p{i}", [queued("w", payload), started()])
        await log.append(f"run-p{i}", completed(payload))
    stored = await all_events(log, types=["workflow.run.queued"])
    for i, e in enumerate(stored):
        record = await RunQueries(log).get(f"p{i}")
        assert record is not None
        assert record.payload == e.data.payload
        assert record.result == e.data.payload
    assert await verify(log, [WorkflowRuns()]) == []


# -- workflow_runs: illegal transitions are refused, and nothing is written ------

ALL_STATUSES = [*EVENT_OF_STATUS]


@pytest.mark.parametrize("current", list(PATH_TO))
async def test_illegal_transitions_are_refused_and_write_nothing(
    log: nerve.Log, current: str | None
) -> None:
    await attach_inline(log, WorkflowRuns())
    illegal = [s for s in ALL_STATUSES if s not in TRANSITIONS[current]]
    assert illegal
    for target in illegal:
        run_id = f"{current}-to-{target}"
        await run_to(log, run_id, current)
        before_row = await RunQueries(log).get(run_id)
        head = log.head
        with pytest.raises(RefusedByProjection) as info:
            await log.append(run_stream(run_id), EVENT_OF_STATUS[target]())
        text = str(info.value)
        assert repr(run_id) in text
        assert f"cannot become {target}" in text
        assert ("does not exist" if current is None else f"is {current}") in text
        assert "Nothing was written" in text
        # Nothing of it: not the event, not the row, not the head.
        assert log.head == head
        assert await all_events(log, after=head) == []
        assert await log.stream_version(run_stream(run_id)) == len(PATH_TO[current])
        assert await RunQueries(log).get(run_id) == before_row
    assert await log.verify() is None
    assert await verify(log, [WorkflowRuns()]) == []
    # The log is still usable after all those refusals.
    await log.append("run-after", queued())
    assert (await RunQueries(log).get("after")) is not None


async def test_an_append_with_an_illegal_event_writes_none_of_its_events(
    log: nerve.Log,
) -> None:
    await attach_inline(log, WorkflowRuns())
    # The first two events are legal, the third is not: the whole append fails.
    with pytest.raises(RefusedByProjection, match="'x' is started: it cannot become"):
        await log.append("run-x", [queued(), started(), dropped()])
    assert log.head == 0
    assert await all_events(log) == []
    assert await RunQueries(log).get("x") is None
    assert checkpoint_of(log.path, "workflow_runs") == (1, 0)


async def test_a_refused_append_does_not_fail_its_batch_neighbours(
    log: nerve.Log,
) -> None:
    await attach_inline(log, WorkflowRuns())
    for i in range(6):
        await run_to(log, f"ok{i}", "started")
    await run_to(log, "done", "completed")
    head = log.head
    batches = log.statistics().batches
    outcomes: dict[str, Any] = {}

    async def append(name: str, stream: str, events: list[NewEvent]) -> None:
        try:
            outcomes[name] = await log.append(stream, events)
        except RefusedByProjection as e:
            outcomes[name] = e

    async with trio.open_nursery() as nursery, writer_held(log):
        for i in range(6):
            nursery.start_soon(append, f"ok{i}", f"run-ok{i}", [completed(i)])
        nursery.start_soon(append, "bad-done", "run-done", [started(2)])
        nursery.start_soon(append, "bad-new", "run-new", [started()])
        nursery.start_soon(append, "new", "run-new2", [queued(), started()])
        nursery.start_soon(append, "not-a-run", "orders", [queued()])
        await trio.testing.wait_all_tasks_blocked()
        assert log.statistics().pending == 10
    # All of them went through the writer in one batch.
    assert log.statistics().batches == batches + 1
    refused = {n for n, o in outcomes.items() if isinstance(o, RefusedByProjection)}
    assert refused == {"bad-done", "bad-new", "not-a-run"}
    written = [o for n, o in outcomes.items() if n not in refused]
    assert sum(o.last_position - o.first_position + 1 for o in written) == 8
    assert log.head == head + 8
    # Positions stay gap-free: the refused appends took none.
    events = await all_events(log, after=head)
    assert [e.position for e in events] == list(range(head + 1, head + 9))
    assert {e.stream for e in events} == {f"run-ok{i}" for i in range(6)} | {"run-new2"}
    runs = RunQueries(log)
    for i in range(6):
        r = await runs.get(f"ok{i}")
        assert r is not None
        assert (r.status, r.result) == ("completed", i)
    assert await runs.get("new") is None
    new2 = await runs.get("new2")
    assert new2 is not None
    assert new2.status == "started"
    done = await runs.get("done")
    assert done is not None
    assert done.status == "completed"
    assert checkpoint_of(log.path, "workflow_runs") == (1, log.head)
    assert await log.verify() is None
    assert await verify(log, [WorkflowRuns()]) == []


async def test_a_lifecycle_event_outside_a_run_stream_is_refused(
    log: nerve.Log,
) -> None:
    await attach_inline(log, WorkflowRuns())
    with pytest.raises(RefusedByProjection, match="run stream") as info:
        await log.append("orders-1", queued())
    assert "'orders-1'" in str(info.value)
    assert log.head == 0
    # Other events go to any stream; thread events in a run stream are fine.
    await log.append("orders-1", NewEvent("order.placed", {"n": 1}))
    await log.append("run-a", [queued(), message("user", "hi")])
    assert [r.run_id for r in await RunQueries(log).list()] == ["a"]


async def test_lifecycle_events_another_process_appended_are_folded(
    data_dir: Path,
) -> None:
    """Another process (here: another Log on the same directory) appends
    without the projection attached; the next batch folds its events first
    instead of moving the checkpoint over them."""
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        await log.append("run-a", queued())
        async with nerve.open_log(data_dir) as other:
            await other.append("run-b", [queued(), started()])
            await other.append("orders", NewEvent("order.placed", {}))
            await other.append("run-a", started())
        await log.append("run-c", queued())
        runs = {r.run_id: r.status for r in await RunQueries(log).list()}
        assert runs == {"a": "started", "b": "started", "c": "queued"}
        assert checkpoint_of(log.path, "workflow_runs") == (1, log.head)
        assert await verify(log, [WorkflowRuns()]) == []
        # ... and the transitions stay checked on top of them.
        with pytest.raises(RefusedByProjection, match="'b' is started"):
            await log.append("run-b", queued())


async def test_a_replay_has_every_index_of_the_live_model(
    data_dir: Path, tmp_path: Path
) -> None:
    """`workflow_runs` builds its plain indexes at the end of a fresh build
    (defer_indexes); `_signals` keeps its own throughout (its retention reads
    through it). Either way the result has the live model's indexes."""
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        await run_to(log, "a", "completed")
        await log.append(sense_stream("g", "a"), signal("g", "a", 1))
        async with running(log, Signals("g", keep_last=1)) as runner:
            await runner.wait_for(log.head)
        into = tmp_path / "fresh"
        await replay(log, [WorkflowRuns(), Signals("g", keep_last=1)], into=into)

    def indexes(path: Path) -> list[tuple[Any, ...]]:
        conn = apsw.Connection(str(path))
        try:
            return [
                tuple(r)
                for r in conn.execute(
                    "SELECT name, sql FROM sqlite_schema WHERE type = 'index' "
                    "AND sql IS NOT NULL ORDER BY name"
                )
            ]
        finally:
            conn.close()

    live = indexes(data_dir / "logs.db")
    assert "workflow_runs_by_status_only" in {i[0] for i in live}
    fresh = indexes(into / "logs.db")
    assert [i for i in live if i[0].startswith("workflow_runs")] == [
        i for i in fresh if i[0].startswith("workflow_runs")
    ]
    signals = indexes(data_dir / signals_database("g"))
    assert signals
    assert indexes(into / signals_database("g")) == signals


async def test_an_illegal_transition_another_process_appended_is_skipped(
    data_dir: Path,
) -> None:
    """Appended without the projection attached, an event it refuses is in the
    log for good: catching up, rebuilding and replaying all skip it (with a
    warning) instead of never getting past it."""
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        await run_to(log, "a", "started")
    async with nerve.open_log(data_dir) as detached:
        await detached.append("run-ghost", completed())  # never queued
        await detached.append("run-a", queued())  # a is started already
        await detached.append("run-b", [queued(), started()])
    async with nerve.open_log(data_dir) as log:
        with pytest.warns(SkippedEventWarning) as caught:
            await attach_inline(log, WorkflowRuns())
        assert sorted(str(w.message).split(":")[1].strip() for w in caught) == [
            "skipped position 3 (workflow.run.completed in 'run-ghost'), which it "
            "refuses; the event stays in the log",
            "skipped position 4 (workflow.run.queued in 'run-a'), which it "
            "refuses; the event stays in the log",
        ]
        runs = {r.run_id: r.status for r in await RunQueries(log).list()}
        assert runs == {"a": "started", "b": "started"}
        assert checkpoint_of(log.path, "workflow_runs") == (1, log.head)
        # New appends are still checked...
        with pytest.raises(RefusedByProjection):
            await log.append("run-ghost", completed())
        await log.append("run-a", completed())
        # ...and a fresh replay or a rebuild skips the same events.
        with pytest.warns(SkippedEventWarning):
            assert await verify(log, [WorkflowRuns()]) == []
        with pytest.warns(SkippedEventWarning):
            await rebuild(log, WorkflowRuns())
        runs = {r.run_id: r.status for r in await RunQueries(log).list()}
        assert runs == {"a": "completed", "b": "started"}


# -- workflow_runs: the fold in SQL of fresh builds ----------------------------------

UNFIT = {
    "fit": "nothing: SQL folds it",
    "illegal": "an illegal transition another process appended",
    "outside": "a lifecycle event outside a run stream",
    "blob": "a payload stored as a blob",
    "archived": "archived days",
    "missing_field": "a started event without its attempt (the default applies)",
    "wrong_type": "an attempt stored as a string",
    "malformed": "a payload that is not JSON",
}


def rewrite_payload(data_dir: Path, position: int, payload: str) -> None:
    conn = apsw.Connection(str(data_dir / "logs.db"))
    try:
        conn.execute(
            "UPDATE logs SET payload = ? WHERE position = ?", (payload, position)
        )
    finally:
        conn.close()


@pytest.mark.parametrize("case", sorted(UNFIT))
async def test_a_fresh_build_folds_in_sql_only_what_it_folds_alike(
    data_dir: Path, case: str
) -> None:
    """A fresh build folds ``workflow_runs`` in one SQL statement only when
    that gives what folding event by event gives; otherwise (each of `UNFIT`)
    it folds event by event. Either way a replay equals the event-by-event
    replay row for row."""
    clock = FakeClock(EPOCH - 3 * DAY)
    async with nerve.open_log(data_dir, clock=clock, blob_threshold=100) as log:
        await attach_inline(log, WorkflowRuns())
        for run, status in [("a", "completed"), ("b", "started"), ("c", "dropped")]:
            await run_to(log, run, status)
        await run_to(log, "d", "crashed")
        await log.append("run-d", [started(2), failed("E", "boom")])
        clock.now = EPOCH
        await run_to(log, "e", "queued")
        if case == "blob":
            await run_to(log, "f", None)
            await log.append("run-f", queued("big", {"text": "x" * 500}))
        started_at = (await all_events(log, types=["workflow.run.started"]))[0]
        live = runs_table(log)
        if case == "archived":
            assert await log.archive(timedelta(days=1), now=EPOCH)
    if case in ("illegal", "outside"):
        async with nerve.open_log(data_dir) as detached:
            if case == "illegal":
                await detached.append("run-a", started())  # a has completed
            else:
                await detached.append("not-a-run", queued())
    elif case == "missing_field":
        rewrite_payload(data_dir, started_at.position, '{"resumed":false}')
    elif case == "wrong_type":
        rewrite_payload(data_dir, started_at.position, '{"attempt":"1"}')
    elif case == "malformed":
        rewrite_payload(data_dir, started_at.position, '{"attempt":')
    async with nerve.open_log(data_dir) as log:
        spied = SpiedRuns()
        if case == "malformed":
            with pytest.raises(EventDecodingError, match=f"{started_at.position}"):
                await replay(log, [spied], into=data_dir.parent / "sql")
            assert spied.bulk == [False]
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedEventWarning)
            await replay(log, [spied], into=data_dir.parent / "sql")
            await replay(log, [EventByEventRuns()], into=data_dir.parent / "paged")
        assert spied.bulk == [case == "fit"], UNFIT[case]
        rows = table_rows(
            data_dir.parent / "sql" / "logs.db", "workflow_runs", "run_id"
        )
        paged = table_rows(
            data_dir.parent / "paged" / "logs.db", "workflow_runs", "run_id"
        )
        assert rows == paged
        assert len(rows) >= 5
        if case in ("fit", "blob", "archived"):
            assert rows == live
        if case == "missing_field":
            assert {r[0]: r[3] for r in rows}["a"] == 1  # RunStarted's default


async def test_cancelling_a_rebuild_interrupts_its_sql_fold(data_dir: Path) -> None:
    """The SQL fold runs in a worker thread: cancelling the rebuild interrupts
    its statement instead of waiting for it; the live model is untouched."""
    entered = trio.Event()
    token = trio.lowlevel.current_trio_token()
    outcome: list[str] = []

    class SlowRuns(WorkflowRuns):
        def bulk_fold(self, conn: apsw.Connection, source: str, upto: int) -> bool:
            trio.from_thread.run_sync(entered.set, trio_token=token)
            try:  # seconds of work, unless interrupted
                conn.execute(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
                    "FROM c WHERE x < 300000000) SELECT count(*) FROM c"
                ).fetchall()
            except apsw.InterruptError:
                outcome.append("interrupted")
                raise
            outcome.append("finished")
            return False

    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        for run, status in [("a", "completed"), ("b", "started")]:
            await run_to(log, run, status)
        live = runs_table(log)
        with trio.fail_after(SAFETY):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rebuild, log, SlowRuns())
                await entered.wait()
                nursery.cancel_scope.cancel()
        assert outcome == ["interrupted"]
        assert runs_table(log) == live
        assert checkpoint_of(log.path, "workflow_runs") == (1, log.head)
        assert rebuild_files(data_dir) == []
        await rebuild(log, WorkflowRuns())  # and the next one works
        assert runs_table(log) == live


def legal_moves(codes: str) -> bool:
    """A walk of TRANSITIONS over a run's statuses, one code each."""
    status_of = {code: status for status, code in _CODE_OF_STATUS.items()}
    current = None
    for code in codes:
        status = status_of[code]
        if status not in TRANSITIONS[current]:
            return False
        current = status
    return True


def test_the_sql_legality_test_is_the_transition_table() -> None:
    """`_legal_sql` (the bulk fold's test of a run's statuses) accepts exactly
    the strings a walk of TRANSITIONS does, of 1 to 7 codes."""
    codes = "".join(_CODE_OF_STATUS.values())
    strings = [
        "".join(p) for n in range(1, 8) for p in itertools.product(codes, repeat=n)
    ]
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE t (codes TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [(x,) for x in strings])
    legal_in_sql = {
        x for (x,) in conn.execute(f"SELECT codes FROM t WHERE {_legal_sql('codes')}")
    }
    legal = {x for x in strings if legal_moves(x)}
    assert legal_in_sql == legal
    assert {"Q", "QD", "QS", "QSC", "QSXSXSI"} <= legal


# -- workflow_runs: queries ------------------------------------------------------------


class RefusesSomeCrashes(Projection):
    """An inline projection folded after ``workflow_runs``: it refuses a
    crash whose reason is "refuse", after ``workflow_runs`` folded it."""

    name = "refuses_some_crashes"
    types = frozenset({"workflow.run.crashed"})

    def setup(self, conn: apsw.Connection) -> None:
        pass

    def apply(
        self, conn: apsw.Connection, events: Sequence[nerve.RecordedEvent]
    ) -> None:
        if any(e.data.reason == "refuse" for e in events):
            raise RefusedByProjection("this crash is refused")


async def test_cached_rows_follow_a_rolled_back_fold(log: nerve.Log) -> None:
    """``workflow_runs`` keeps active runs' rows between batches; a fold it
    made that another projection's refusal rolls back is forgotten."""
    await attach_inline(log, WorkflowRuns())
    await attach_inline(log, RefusesSomeCrashes())
    await run_to(log, "a", "started")
    with pytest.raises(RefusedByProjection, match="this crash is refused"):
        await log.append("run-a", crashed("refuse"))
    await log.append("run-a", completed())  # legal: "a" is still started
    record = await RunQueries(log).get("a")
    assert record is not None
    assert record.status == "completed"


async def test_cached_rows_follow_another_connections_commits(
    log: nerve.Log,
) -> None:
    await attach_inline(log, WorkflowRuns())
    await run_to(log, "a", "started")  # cached by the projection
    other = apsw.Connection(str(log.path))  # as another process would
    try:
        other.execute(
            "UPDATE workflow_runs SET status = 'completed' WHERE run_id = 'a'"
        )
    finally:
        other.close()
    with pytest.raises(RefusedByProjection, match="'a' is completed"):
        await log.append("run-a", failed())


async def test_cached_rows_follow_a_maintenance_job(log: nerve.Log) -> None:
    await attach_inline(log, WorkflowRuns())
    await run_to(log, "a", "started")
    await log.write_job(
        lambda conn: conn.execute(
            "UPDATE workflow_runs SET status = 'completed' WHERE run_id = 'a'"
        )
    )
    with pytest.raises(RefusedByProjection, match="'a' is completed"):
        await log.append("run-a", failed())


class FlightSpy:
    """Counts the flights a log's writer thread writes with inline-hook rows."""

    def __init__(self, log: nerve.Log, monkeypatch: pytest.MonkeyPatch) -> None:
        self.with_hooks = 0
        write = log._writer.write_flight

        def spy(flight: Any) -> None:
            self.with_hooks += flight.hooks_json is not None
            write(flight)

        monkeypatch.setattr(log._writer, "write_flight", spy)


async def test_workflow_runs_folded_in_flights_equals_a_replay(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends from many tasks at once: batches are staged while others are
    written, ``workflow_runs`` rows staged from the rows of flights not yet
    landed; the live model is what a replay folds event by event."""
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        spy = FlightSpy(log, monkeypatch)

        async def appender(prefix: str) -> None:
            gen = ValidRuns(random.Random(prefix), prefix)
            for _ in range(60):
                stream, events = gen.next()
                await log.append(stream, events)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(appender, f"t{i}-")
        assert spy.with_hooks > 10
        assert checkpoint_of(log.path, "workflow_runs") == (1, log.head)
        fresh = data_dir.parent / "fresh"
        await replay(log, [EventByEventRuns()], into=fresh)
        assert table_rows(fresh / "logs.db", "workflow_runs", "run_id") == runs_table(
            log
        )
        assert await log.verify() is None


async def test_a_run_not_cached_is_read_while_staging(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    projection = WorkflowRuns()
    await attach_inline(log, projection)
    spy = FlightSpy(log, monkeypatch)
    await run_to(log, "a", "started")
    flights = spy.with_hooks
    projection.forget()  # as after a restart: "a" is only in the database
    await log.append("run-a", completed("done"))
    assert spy.with_hooks == flights + 1  # its row was read, not a reason to wait
    record = await RunQueries(log).get("a")
    assert record is not None
    assert (record.status, record.result) == ("completed", "done")
    projection.forget()
    with pytest.raises(RefusedByProjection, match="'a' is completed"):
        await log.append("run-a", started())  # read, then refused the classic way
    assert await log.verify() is None


async def test_a_refused_transition_in_a_staged_batch_fails_alone(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    await attach_inline(log, WorkflowRuns())
    spy = FlightSpy(log, monkeypatch)
    await run_to(log, "a", "completed")
    pending = [
        log.submit("run-b", queued()),
        log.submit("run-a", started()),  # "a" has ended
        log.submit("run-c", queued()),
    ]
    outcomes: list[Any] = []
    for p in pending:
        try:
            outcomes.append(await p.wait())
        except RefusedByProjection as e:
            outcomes.append(e)
    assert isinstance(outcomes[1], RefusedByProjection)
    assert [o.stream for o in (outcomes[0], outcomes[2])] == ["run-b", "run-c"]
    assert [r[0] for r in runs_table(log)] == ["a", "b", "c"]
    assert runs_table(log)[0][2] == "completed"
    assert await log.verify() is None
    before = spy.with_hooks
    await log.append("run-b", started())  # in flights again at once
    assert spy.with_hooks == before + 1


async def test_run_queries(log: nerve.Log) -> None:
    await attach_inline(log, WorkflowRuns())
    await run_to(log, "g1", "completed")
    await run_to(log, "g2", "queued")
    await log.append("run-s1", queued("summarize"))
    await run_to(log, "g3", "started")
    await run_to(log, "g4", "queued")
    await run_to(log, "s2", "started")  # workflow "greet" by default
    await log.append("run-s3", queued("summarize"))
    await log.append("run-s3", [started(), failed()])
    await log.append("run-s4", queued("summarize"))
    await log.append("run-s4", started())
    runs = RunQueries(log)

    def ids(records: Sequence[RunRecord]) -> list[str]:
        return [r.run_id for r in records]

    # oldest first (by the position of the queued event)
    assert ids(await runs.list()) == ["g1", "g2", "s1", "g3", "g4", "s2", "s3", "s4"]
    assert ids(await runs.list(workflow="greet")) == ["g1", "g2", "g3", "g4", "s2"]
    assert ids(await runs.list(status="queued")) == ["g2", "s1", "g4"]
    assert ids(await runs.list(workflow="greet", status="queued")) == ["g2", "g4"]
    assert ids(await runs.list(status=["failed", "completed"])) == ["g1", "s3"]
    assert ids(await runs.list(status=("started",), workflow="summarize")) == ["s4"]
    assert ids(await runs.list(status="queued", limit=2)) == ["g2", "s1"]
    # the newest two, still oldest first
    assert ids(await runs.list(status="queued", limit=2, newest=True)) == ["s1", "g4"]
    assert ids(await runs.list(newest=True)) == ids(await runs.list())
    assert ids(await runs.list(limit=0)) == []
    assert ids(await runs.list(workflow="nope")) == []
    assert ids(await runs.active()) == ["g2", "s1", "g3", "g4", "s2", "s4"]
    assert ids(await runs.active("summarize")) == ["s1", "s4"]


async def test_thread_messages_and_step_journal(log: nerve.Log) -> None:
    await attach_inline(log, WorkflowRuns())
    await log.append("run-a", [queued(), started(), message("user", "hi")])
    await log.append("run-b", [queued(), message("user", "other run")])
    await log.append("run-a", step("fetch", {"rows": [1, 2]}, 0))
    await log.append("run-a", message("assistant", {"text": "hello", "n": 1}))
    await log.append("run-a", [crashed(), started(2)])
    await log.append("run-a", [step("summarize", "short", 1), completed()])
    runs = RunQueries(log)
    assert await runs.messages("a") == [
        ThreadMessage("user", "hi"),
        ThreadMessage("assistant", {"text": "hello", "n": 1}),
    ]
    assert await runs.steps("a") == [
        StepJournaled("fetch", {"rows": [1, 2]}, 0),
        StepJournaled("summarize", "short", 1),
    ]
    assert await runs.messages("b") == [ThreadMessage("user", "other run")]
    assert await runs.steps("b") == []
    assert await runs.messages("nope") == []
    a = await runs.get("a")
    assert a is not None
    assert (a.status, a.attempt) == ("completed", 2)


# -- attaching: rebuild, catch up, version bump, dropped tables ------------------


async def append_runs(log: nerve.Log, n: int, gen: ValidRuns) -> None:
    for _ in range(n):
        stream, events = gen.next()
        await log.append(stream, events)


async def test_attach_to_a_log_with_history_rebuilds(data_dir: Path) -> None:
    gen = ValidRuns(random.Random(1))
    async with nerve.open_log(data_dir) as log:
        await log.append("other", NewEvent("x.y", {}))
        await append_runs(log, 300, gen)
        head = log.head
    async with nerve.open_log(data_dir) as log:
        calls: list[tuple[int, int]] = []
        await attach_inline(
            log, WorkflowRuns(), progress=lambda a, b: calls.append((a, b))
        )
        assert calls
        assert calls[-1] == (head, head)
        assert checkpoint_of(log.path, "workflow_runs") == (1, head)
        statuses = {r.run_id: r.status for r in await RunQueries(log).list()}
        assert statuses == gen.status
        assert await verify(log, [WorkflowRuns()]) == []
        # It follows appends from now on.
        await append_runs(log, 20, gen)
        assert checkpoint_of(log.path, "workflow_runs") == (1, log.head)
        assert await verify(log, [WorkflowRuns()]) == []


async def test_attach_catches_up_with_appends_made_while_detached(
    data_dir: Path,
) -> None:
    gen = ValidRuns(random.Random(2))
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        await append_runs(log, 50, gen)
        attached_head = log.head
    async with nerve.open_log(data_dir) as log:  # appends, nobody folding them
        await append_runs(log, 50, gen)
        head = log.head
        assert head > attached_head
    assert checkpoint_of(data_dir / "logs.db", "workflow_runs") == (1, attached_head)
    async with nerve.open_log(data_dir) as log:
        calls: list[tuple[int, int]] = []
        hook = await attach_inline(
            log, WorkflowRuns(), progress=lambda a, b: calls.append((a, b))
        )
        assert calls == []  # caught up from its checkpoint: no rebuild
        assert checkpoint_of(log.path, "workflow_runs") == (1, head)
        statuses = {r.run_id: r.status for r in await RunQueries(log).list()}
        assert statuses == dict(gen.status)
        assert await verify(log, [WorkflowRuns()]) == []
        # Attaching twice gives the same hook and folds nothing twice.
        assert await attach_inline(log, WorkflowRuns()) is hook
        await append_runs(log, 5, gen)
        assert await verify(log, [WorkflowRuns()]) == []


class WorkflowRunsV2(WorkflowRuns):
    version = 2


async def test_a_version_bump_rebuilds_on_attach(data_dir: Path) -> None:
    gen = ValidRuns(random.Random(3))
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        await append_runs(log, 80, gen)
        rows_v1 = runs_table(log)
        head = log.head
    assert checkpoint_of(data_dir / "logs.db", "workflow_runs") == (1, head)
    async with nerve.open_log(data_dir) as log:
        calls: list[tuple[int, int]] = []
        await attach_inline(
            log, WorkflowRunsV2(), progress=lambda a, b: calls.append((a, b))
        )
        assert calls[-1] == (head, head)  # it rebuilt
        assert checkpoint_of(log.path, "workflow_runs") == (2, head)
        assert runs_table(log) == rows_v1
        # v1 no longer matches the stored model.
        assert await verify(log, [WorkflowRuns()]) == [
            Difference("workflow_runs", "checkpoint", ("version",), (2,), (1,))
        ]
        assert await verify(log, [WorkflowRunsV2()]) == []
        await append_runs(log, 10, gen)
        assert checkpoint_of(log.path, "workflow_runs") == (2, log.head)


async def test_dropped_tables_are_rebuilt_on_attach(data_dir: Path) -> None:
    gen = ValidRuns(random.Random(4))
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        await append_runs(log, 60, gen)
        rows = runs_table(log)
    conn = apsw.Connection(str(data_dir / "logs.db"))
    conn.execute("DROP TABLE workflow_runs")
    conn.close()
    async with nerve.open_log(data_dir) as log:
        calls: list[tuple[int, int]] = []
        await attach_inline(
            log, WorkflowRuns(), progress=lambda a, b: calls.append((a, b))
        )
        assert calls
        assert runs_table(log) == rows
        assert await verify(log, [WorkflowRuns()]) == []
        # The indexes came back too.
        names = {r[1] for r in table_rows(log.path, "sqlite_schema", "name")}
        assert {"workflow_runs_by_status", "workflow_runs_by_status_only"} <= names


async def test_attach_refuses_a_projection_of_another_database(log: nerve.Log) -> None:
    with pytest.raises(ValueError, match="ProjectionRunner"):
        await attach_inline(log, Signals("system"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attach_inline"):
        ProjectionRunner(log, WorkflowRuns())


# -- rebuild while appends continue ------------------------------------------------


@pytest.mark.parametrize("fold", ["sql", "event_by_event"])
async def test_rebuild_while_appends_continue_equals_a_replay(
    data_dir: Path, fold: str
) -> None:
    rebuilt = SpiedRuns() if fold == "sql" else EventByEventRuns()
    gen = ValidRuns(random.Random(5))
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        # Enough history for the build to take several pages.
        for _ in range(40):
            batch = [gen.next() for _ in range(60)]
            async with trio.open_nursery() as nursery:
                for stream, events in batch:
                    # one append per stream in a nursery: no ordering needed
                    nursery.start_soon(log.append, stream, events)
                    await trio.lowlevel.checkpoint()
        start_head = log.head
        assert start_head > 2500
        calls: list[tuple[int, int]] = []
        low_water = await count_runs(log)
        seen: list[int] = []
        stop = trio.Event()
        appended = 0

        async def appender(prefix: str) -> None:
            nonlocal appended
            mine = ValidRuns(random.Random(prefix), prefix)
            while not stop.is_set():
                stream, events = mine.next()
                await log.append(stream, events)
                appended += len(events)

        async def reader() -> None:
            last = low_water
            while not stop.is_set():
                n = await count_runs(log)
                # Runs are never removed: a drop would be a half-built table.
                assert n >= last, f"workflow_runs went from {last} to {n} rows"
                last = n
                seen.append(n)

        with trio.fail_after(SAFETY):
            async with trio.open_nursery() as nursery:
                for p in ("x", "y", "z"):
                    nursery.start_soon(appender, p)
                nursery.start_soon(reader)
                await rebuild(log, rebuilt, progress=lambda a, b: calls.append((a, b)))
                stop.set()
        # Appends really went on during the rebuild, past its target.
        target = calls[-1][1]
        assert calls[-1] == (target, target)
        assert target >= start_head
        assert appended > 0
        assert log.head > target
        assert all(b == target for _, b in calls)
        assert [a for a, _ in calls] == sorted(a for a, _ in calls)
        if fold == "sql":
            assert rebuilt.bulk == [True]  # type: ignore[attr-defined]
            assert calls == [(0, target), (target, target)]
        else:
            assert len(calls) >= 3  # a call per page
        assert len(seen) > 1
        assert checkpoint_of(log.path, "workflow_runs") == (1, log.head)
        assert await verify(log, [WorkflowRuns()]) == []
        fresh = data_dir.parent / "fresh"
        await replay(log, [WorkflowRuns()], into=fresh)
        assert table_rows(fresh / "logs.db", "workflow_runs", "run_id") == runs_table(
            log
        )
    assert rebuild_files(data_dir) == []


async def test_two_rebuilds_of_one_projection_at_once(data_dir: Path) -> None:
    """Each rebuild has its own fresh database: the second one to start must
    not delete (or swap in) the first one's half-built file."""
    gen = ValidRuns(random.Random(12))
    sig = Signals("g", keep_last=None)
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        for _ in range(30):
            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    stream, events = gen.next()
                    nursery.start_soon(log.append, stream, events)
                    await trio.lowlevel.checkpoint()
            await log.append(
                sense_stream("g", "a"), [signal("g", "a", i) for i in range(100)]
            )
        async with running(log, sig) as runner:
            for projection, kwargs in [
                (WorkflowRuns(), {}),
                (sig, {"runner": runner}),
                (sig, {}),
            ]:
                first_page = trio.Event()

                def progress(
                    done: int, target: int, ev: trio.Event = first_page
                ) -> None:
                    ev.set()

                with trio.fail_after(SAFETY):
                    async with trio.open_nursery() as nursery:

                        async def first(p: Any = projection, kw: Any = kwargs) -> None:
                            await rebuild(log, p, progress=progress, **kw)

                        nursery.start_soon(first)
                        await first_page.wait()
                        await rebuild(log, projection)
                await runner.wait_for(log.head)
                assert await verify(log, [WorkflowRuns(), sig]) == []
    assert rebuild_files(data_dir) == []


async def test_rebuild_of_a_detached_projection_then_attach(data_dir: Path) -> None:
    gen = ValidRuns(random.Random(6))
    async with nerve.open_log(data_dir) as log:
        await append_runs(log, 40, gen)
        await rebuild(log, WorkflowRuns())
        assert checkpoint_of(log.path, "workflow_runs") == (1, log.head)
        await append_runs(log, 40, gen)  # not folded: nobody attached
        calls: list[tuple[int, int]] = []
        await attach_inline(
            log, WorkflowRuns(), progress=lambda a, b: calls.append((a, b))
        )
        assert calls == []  # it caught up
        assert await verify(log, [WorkflowRuns()]) == []


# -- _signals: the async projection ------------------------------------------------


async def test_signals_hold_only_their_groups_signals(data_dir: Path) -> None:
    clock = FakeClock()
    async with nerve.open_log(data_dir, clock=clock) as log:
        await log.append(sense_stream("system", "cpu"), signal("system", "cpu", 0.5))
        await log.append(sense_stream("garden", "soil"), signal("garden", "soil", 31))
        await log.append(
            sense_stream("system", "cpu"),
            NewEvent("sense.error", SenseError("system", "cpu", "OSError", "no /proc")),
        )
        await log.append("run-a", queued())
        clock.now += 1
        await log.append(
            sense_stream("system", "disk"), signal("system", "disk", {"free": 12})
        )
        sig = Signals("system")
        async with running(log, sig) as runner:
            await runner.wait_for(log.head)
            assert signals_table(data_dir, "system") == [
                (1, "cpu", "0.5", int(EPOCH * 1000)),
                (5, "disk", '{"free":12}', int(EPOCH * 1000) + 1000),
            ]
            records = await runner.query(read_signals)
            assert [(r.sense, r.value) for r in records] == [
                ("cpu", 0.5),
                ("disk", {"free": 12}),
            ]
            assert [
                r.value for r in await runner.query(lambda c: read_signals(c, "cpu"))
            ] == [0.5]
            # Signals appended while it runs arrive too.
            await log.append(
                sense_stream("system", "cpu"), signal("system", "cpu", 0.9)
            )
            await log.append(
                sense_stream("garden", "soil"), signal("garden", "soil", 1)
            )
            await runner.wait_for(log.head)
            assert [r[2] for r in signals_table(data_dir, "system")] == [
                "0.5",
                '{"free":12}',
                "0.9",
            ]
        assert not (data_dir / "senses" / "garden-senses.db").exists()
        assert await verify(log, [sig]) == []


async def test_signals_keep_the_last_n_per_sense(
    log: nerve.Log, data_dir: Path
) -> None:
    sig = Signals("g", keep_last=2)
    async with running(log, sig) as runner:
        for i in range(5):
            await log.append(sense_stream("g", "a"), signal("g", "a", i))
        # several senses in one append and in one batch
        await log.append(
            sense_stream("g", "b"),
            [signal("g", "b", i) for i in range(3)] + [signal("g", "c", 0)],
        )
        await log.append(sense_stream("g", "a"), signal("g", "a", 5))
        await runner.wait_for(log.head)
        rows = signals_table(data_dir, "g")
        by_sense: dict[str, list[int]] = {}
        for _, sense, value, _ in rows:
            by_sense.setdefault(sense, []).append(int(value))
        assert by_sense == {"a": [4, 5], "b": [1, 2], "c": [0]}
        assert [
            r.value for r in await runner.query(lambda c: read_signals(c, "a", 1))
        ] == [5]
    assert await verify(log, [sig]) == []


async def test_signals_max_age_is_relative_to_the_newest_signal(data_dir: Path) -> None:
    clock = FakeClock()
    sig = Signals("g", keep_last=None, max_age=timedelta(seconds=10))
    async with nerve.open_log(data_dir, clock=clock) as log:
        async with running(log, sig) as runner:
            for dt, sense in [(0, "a"), (4, "b"), (9, "a"), (12, "a"), (16, "b")]:
                clock.now = EPOCH + dt
                await log.append(sense_stream("g", sense), signal("g", sense, dt))
                await runner.wait_for(log.head)
            # newest is at +16 s: everything older than +6 s is gone
            assert [int(r[2]) for r in signals_table(data_dir, "g")] == [9, 12, 16]
            # Time passing without signals removes nothing (no wall clock).
            clock.now = EPOCH + 1000
            await log.append("other", NewEvent("x.y", {}))
            await runner.wait_for(log.head)
            assert [int(r[2]) for r in signals_table(data_dir, "g")] == [9, 12, 16]
            # Another group's signals do not age this group's.
            await log.append(sense_stream("h", "a"), signal("h", "a", 0))
            await runner.wait_for(log.head)
            assert len(signals_table(data_dir, "g")) == 3
            await log.append(sense_stream("g", "c"), signal("g", "c", 1000))
            await runner.wait_for(log.head)
            assert [int(r[2]) for r in signals_table(data_dir, "g")] == [1000]
        assert await verify(log, [sig]) == []


async def test_signals_statistics_report_position_and_lag(
    log: nerve.Log, data_dir: Path
) -> None:
    for i in range(10):
        await log.append(sense_stream("g", "a"), signal("g", "a", i))
    await log.append("other", NewEvent("x.y", {}))
    sig = Signals("g")
    runner = ProjectionRunner(log, sig)
    stats = runner.statistics()
    assert (stats.name, stats.version, stats.position, stats.head, stats.lag) == (
        "signals:g",
        1,
        0,
        11,
        11,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await runner.wait_for(log.head)
        stats = runner.statistics()
        assert (stats.position, stats.head, stats.lag) == (11, 11, 0)
        assert stats.rebuilds == 1  # a new projection is built from the history
        assert not stats.rebuilding
        await log.append(sense_stream("g", "a"), [signal("g", "a", 1)] * 3)
        # Right after the append returns, the runner has not folded it yet.
        stats = runner.statistics()
        assert (stats.position, stats.head, stats.lag) == (11, 14, 3)
        await runner.wait_for(log.head)
        stats = runner.statistics()
        assert (stats.position, stats.head, stats.lag) == (14, 14, 0)
        assert stats.events == 3
        assert stats.batches >= 1
        # Events it does not handle move its position too.
        await log.append("other", NewEvent("x.y", {}))
        await runner.wait_for(log.head)
        assert runner.statistics().lag == 0
        assert runner.statistics().events == 3
        nursery.cancel_scope.cancel()
    # A page of events it does not handle moves its position without a write.
    assert checkpoint_of(data_dir / "senses/g-senses.db", "signals:g") in {
        (1, 14),
        (1, 15),
    }


async def test_a_runner_alone_never_trips_its_checkpoint_guard(
    log: nerve.Log, data_dir: Path
) -> None:
    """Pages of events it skips move the runner's position past its stored
    checkpoint; that must not look like a rebuild by someone else (which
    makes it throw the page away and read it again)."""
    runner = ProjectionRunner(log, Signals("g", keep_last=None))
    folds: list[bool] = []
    original = runner._fold

    def spy(events: list[nerve.RecordedEvent], position: int) -> bool:
        ok = original(events, position)
        folds.append(ok)
        return ok

    runner._fold = spy  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        for i in range(10):
            await log.append("other", NewEvent("x.y", {"i": i}))
            await runner.wait_for(log.head)
            await log.append(sense_stream("g", "a"), signal("g", "a", i))
            await runner.wait_for(log.head)
        nursery.cancel_scope.cancel()
    assert folds == [True] * 10, str(folds)
    assert len(signals_table(data_dir, "g")) == 10
    assert await verify(log, [Signals("g", keep_last=None)]) == []


async def test_a_runner_resumes_from_its_checkpoint(data_dir: Path) -> None:
    sig = Signals("g", keep_last=None)
    async with nerve.open_log(data_dir) as log:
        await log.append(
            sense_stream("g", "a"), [signal("g", "a", i) for i in range(5)]
        )
        async with running(log, sig) as runner:
            await runner.wait_for(log.head)
        await log.append(
            sense_stream("g", "a"), [signal("g", "a", i) for i in range(3)]
        )
        async with running(log, sig) as runner:
            assert runner.statistics().rebuilds == 0
            assert runner.position == 5
            await runner.wait_for(log.head)
            assert runner.statistics().events == 3
        assert len(signals_table(data_dir, "g")) == 8
        assert await verify(log, [sig]) == []


async def _populated_signals(data_dir: Path, n: int = 30) -> list[tuple[Any, ...]]:
    """Append ``n`` signals of group g (and some noise); return the live rows."""
    async with nerve.open_log(data_dir) as log:
        for i in range(n):
            await log.append(sense_stream("g", "a"), signal("g", "a", i))
            await log.append(sense_stream("h", "a"), signal("h", "a", i))
        async with running(log, Signals("g")) as runner:
            await runner.wait_for(log.head)
        return signals_table(data_dir, "g")


def _replace_db(db: Path, content: bytes) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(content)


def rebuild_files(data_dir: Path) -> list[Path]:
    return sorted(data_dir.rglob(".rebuild-*"))


def _sense_db(data_dir: Path) -> Path:
    return data_dir / "senses" / "g-senses.db"


def _unusable_copies(data_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in (data_dir / "senses").iterdir()
        if ".unusable-" in p.name and not p.name.endswith(("-wal", "-shm"))
    )


async def _recovers(data_dir: Path, original: bytes, rows: list[Any]) -> None:
    """Open a runner on the unusable sense DB: it is moved aside and rebuilt."""
    async with nerve.open_log(data_dir) as log:
        runner = ProjectionRunner(log, Signals("g"))
        async with trio.open_nursery() as nursery:
            with pytest.warns(ProjectionRecoveredWarning, match="moved it aside"):
                await nursery.start(runner.run)
            await runner.wait_for(log.head)
            assert runner.statistics().rebuilds == 1
            nursery.cancel_scope.cancel()
        assert signals_table(data_dir, "g") == rows
        assert await verify(log, [Signals("g")]) == []
    aside = _unusable_copies(data_dir)
    assert len(aside) == 1
    assert aside[0].read_bytes() == original  # never deleted, never changed


async def test_a_sense_db_of_random_bytes_is_moved_aside_and_rebuilt(
    data_dir: Path,
) -> None:
    rows = await _populated_signals(data_dir)
    garbage = random.Random(7).randbytes(10_000)
    _replace_db(_sense_db(data_dir), garbage)
    await _recovers(data_dir, garbage, rows)


async def test_a_corrupt_sense_db_is_moved_aside_and_rebuilt(data_dir: Path) -> None:
    rows = await _populated_signals(data_dir)
    # A SQLite header followed by garbage: corrupt, not foreign.
    good = _edit_db(_sense_db(data_dir))
    broken = good[:100] + random.Random(8).randbytes(len(good) - 100)
    _replace_db(_sense_db(data_dir), broken)
    await _recovers(data_dir, broken, rows)


def _edit_db(path: Path, *sql: str, journal: str = "WAL") -> bytes:
    """Change a (closed) database; return its bytes, all in the main file."""
    conn = apsw.Connection(str(path))
    for s in sql:
        conn.execute(s)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.close()
    assert not Path(str(path) + "-wal").exists()
    return path.read_bytes()


async def test_a_sense_db_of_a_newer_schema_is_moved_aside(data_dir: Path) -> None:
    rows = await _populated_signals(data_dir)
    original = _edit_db(
        _sense_db(data_dir),
        "INSERT INTO schema_version VALUES (99, 'x', 'from the future', 0)",
    )
    await _recovers(data_dir, original, rows)


async def test_a_sense_db_of_another_application_is_moved_aside(
    data_dir: Path,
) -> None:
    rows = await _populated_signals(data_dir)
    # Another application's database, in SQLite's default journal mode: opening
    # it in WAL mode would rewrite its header before refusing it.
    original = _edit_db(
        _sense_db(data_dir), "PRAGMA application_id = 1234", journal="DELETE"
    )
    await _recovers(data_dir, original, rows)


async def test_a_sense_db_with_an_edited_migration_is_moved_aside(
    data_dir: Path,
) -> None:
    rows = await _populated_signals(data_dir)
    original = _edit_db(
        _sense_db(data_dir), "UPDATE schema_version SET checksum = 'edited'"
    )
    await _recovers(data_dir, original, rows)


async def test_a_sense_db_missing_its_table_is_rebuilt(data_dir: Path) -> None:
    rows = await _populated_signals(data_dir)
    _edit_db(_sense_db(data_dir), "DROP TABLE _signals")
    async with nerve.open_log(data_dir) as log:
        async with running(log, Signals("g")) as runner:
            assert runner.statistics().rebuilds == 1
        assert signals_table(data_dir, "g") == rows
    assert _unusable_copies(data_dir) == []


class SignalsV2(Signals):
    version = 2


async def test_a_signals_version_bump_rebuilds_on_start(data_dir: Path) -> None:
    rows = await _populated_signals(data_dir)
    async with nerve.open_log(data_dir) as log:
        assert checkpoint_of(_sense_db(data_dir), "signals:g") == (1, log.head)
        sig = SignalsV2("g")
        async with running(log, sig) as runner:
            assert runner.statistics().rebuilds == 1
            assert runner.statistics().version == 2
        assert checkpoint_of(_sense_db(data_dir), "signals:g") == (2, log.head)
        assert signals_table(data_dir, "g") == rows
        assert await verify(log, [sig]) == []
        # Opened again at the same version: no rebuild.
        async with running(log, SignalsV2("g")) as runner:
            assert runner.statistics().rebuilds == 0


async def test_rebuild_signals_with_its_runner_while_appends_continue(
    data_dir: Path,
) -> None:
    sig = Signals("g", keep_last=3)
    async with nerve.open_log(data_dir) as log:
        for i in range(30):
            await log.append(
                sense_stream("g", "a"),
                [signal("g", f"s{j}", i * 100 + j) for j in range(100)],
            )
        async with running(log, sig) as runner:
            await runner.wait_for(log.head)
            before = runner.statistics().rebuilds
            stop = trio.Event()
            calls: list[tuple[int, int]] = []
            counts: list[int] = []

            async def appender() -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    await log.append(sense_stream("g", "b"), signal("g", "b", i))

            async def reader() -> None:
                def count(conn: apsw.Connection) -> int:
                    return int(
                        conn.execute("SELECT count(*) FROM _signals").fetchall()[0][0]
                    )

                while not stop.is_set():
                    counts.append(await runner.query(count))

            with trio.fail_after(SAFETY):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(appender)
                    nursery.start_soon(reader)
                    await rebuild(
                        log,
                        sig,
                        runner=runner,
                        progress=lambda a, b: calls.append((a, b)),
                    )
                    stop.set()
                await runner.wait_for(log.head)
            assert runner.statistics().rebuilds == before + 1
            assert calls[-1][0] == calls[-1][1]
            assert log.head > calls[-1][1]
            # 100 senses x 3 kept, plus the "b" sense: never fewer, never a
            # half-built table.
            assert min(counts) >= 300
        assert await verify(log, [sig]) == []
        fresh = data_dir.parent / "fresh"
        await replay(log, [sig], into=fresh)
        assert table_rows(
            fresh / "senses/g-senses.db", "_signals", "position"
        ) == signals_table(data_dir, "g")


async def test_rebuild_signals_without_a_runner(data_dir: Path) -> None:
    sig = Signals("g", keep_last=None)
    async with nerve.open_log(data_dir) as log:
        await log.append(
            sense_stream("g", "a"), [signal("g", "a", i) for i in range(7)]
        )
        # No database yet: rebuild creates it.
        await rebuild(log, sig)
        assert len(signals_table(data_dir, "g")) == 7
        assert checkpoint_of(_sense_db(data_dir), "signals:g") == (1, 7)
        # A runner started afterwards carries on from there.
        async with running(log, sig) as runner:
            assert runner.statistics().rebuilds == 0
            await log.append(sense_stream("g", "a"), signal("g", "a", 7))
            await runner.wait_for(log.head)
        assert await verify(log, [sig]) == []


async def test_the_checkpoint_guard_rereads_after_a_rebuild_elsewhere(
    data_dir: Path,
) -> None:
    """Another connection (another process) rebuilds the sense DB under a
    running runner: the runner must notice its checkpoint moved and read on
    from the new one, never folding the rebuilt range a second time."""
    sig = Signals("g", keep_last=None)
    async with nerve.open_log(data_dir) as log:
        await log.append(
            sense_stream("g", "a"), [signal("g", "a", i) for i in range(5)]
        )
        async with running(log, sig) as runner:
            await runner.wait_for(log.head)
            # Freeze the runner (it folds under this lock) while, elsewhere,
            # more signals are appended and the DB is rebuilt past them.
            async with runner._lock:
                await log.append(
                    sense_stream("g", "a"), [signal("g", "a", i) for i in range(5, 9)]
                )
                async with nerve.open_log(data_dir) as other:
                    await rebuild(other, Signals("g", keep_last=None))
                await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(SAFETY):
                await runner.wait_for(log.head)
            assert runner.position == log.head
            await log.append(sense_stream("g", "a"), signal("g", "a", 9))
            with trio.fail_after(SAFETY):
                await runner.wait_for(log.head)
        values = [int(r[2]) for r in signals_table(data_dir, "g")]
        assert values == list(range(10))
        assert await verify(log, [sig]) == []


async def test_rebuilds_elsewhere_racing_a_runner_never_double_apply(
    data_dir: Path,
) -> None:
    sig = Signals("g", keep_last=None)
    async with nerve.open_log(data_dir) as log:
        async with running(log, sig) as runner:
            n = 0
            with trio.fail_after(SAFETY):
                for _round in range(6):
                    async with trio.open_nursery() as nursery:

                        async def appender() -> None:
                            nonlocal n
                            for _ in range(20):
                                await log.append(
                                    sense_stream("g", "a"), signal("g", "a", n)
                                )
                                n += 1

                        nursery.start_soon(appender)
                        async with nerve.open_log(data_dir) as other:
                            await rebuild(other, Signals("g", keep_last=None))
                    await log.append(sense_stream("g", "a"), signal("g", "a", n))
                    n += 1
                    await runner.wait_for(log.head)
        values = [int(r[2]) for r in signals_table(data_dir, "g")]
        assert values == list(range(n))
        assert await verify(log, [sig]) == []


# -- replay and verify ---------------------------------------------------------------


async def _mixed_history(log: nerve.Log, seed: int, n: int = 200) -> None:
    rng = random.Random(seed)
    gen = ValidRuns(rng)
    for _ in range(n):
        if rng.random() < 0.4:
            group = rng.choice(["system", "garden"])
            sense = rng.choice(["a", "b", "c"])
            await log.append(
                sense_stream(group, sense), signal(group, sense, rng.random())
            )
        else:
            stream, events = gen.next()
            await log.append(stream, events)


async def test_replay_builds_the_same_databases_elsewhere(data_dir: Path) -> None:
    projections = [WorkflowRuns(), Signals("system", keep_last=2), Signals("garden")]
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        async with (
            running(log, projections[1]) as r1,
            running(log, projections[2]) as r2,
        ):
            await _mixed_history(log, 9)
            await r1.wait_for(log.head)
            await r2.wait_for(log.head)
            into = data_dir.parent / "replayed"
            calls: list[tuple[int, int]] = []
            done = await replay(
                log, projections, into=into, progress=lambda a, b: calls.append((a, b))
            )
            assert done == log.head
            assert calls[-1] == (done, done)
        assert sorted(str(p.relative_to(into)) for p in into.rglob("*.db")) == [
            "logs.db",
            "senses/garden-senses.db",
            "senses/system-senses.db",
        ]
        assert table_rows(into / "logs.db", "workflow_runs", "run_id") == runs_table(
            log
        )
        assert runs_table(log)
        for group in ("system", "garden"):
            live = signals_table(data_dir, group)
            assert live
            assert signals_table(into, group) == live
            assert checkpoint_of(
                into / f"senses/{group}-senses.db", f"signals:{group}"
            ) == (1, done)
        # The replayed logs.db holds the projection only, not the log.
        names = {r[1] for r in table_rows(into / "logs.db", "sqlite_schema", "name")}
        assert "logs" not in names
        # It never overwrites.
        with pytest.raises(FileExistsError):
            await replay(log, projections, into=into)
        with pytest.raises(FileExistsError):
            await replay(log, [Signals("garden")], into=into)
        # A replay up to a position.
        part = data_dir.parent / "part"
        assert await replay(log, [WorkflowRuns()], into=part, upto=50) == 50
        assert checkpoint_of(part / "logs.db", "workflow_runs") == (1, 50)
        with pytest.raises(ValueError, match="unique"):
            await replay(log, [Signals("x"), Signals("x")], into=data_dir.parent / "d")


async def test_verify_reports_every_tampered_row(data_dir: Path) -> None:
    sig = Signals("system", keep_last=None)
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        await run_to(log, "a", "completed")
        await run_to(log, "b", "started")
        await run_to(log, "c", "queued")
        await log.append(
            sense_stream("system", "cpu"),
            [signal("system", "cpu", i) for i in range(4)],
        )
        async with running(log, sig) as runner:
            await runner.wait_for(log.head)
        assert await verify(log, [WorkflowRuns(), sig]) == []
        live = {r[0]: r for r in runs_table(log)}

        conn = apsw.Connection(str(log.path))
        conn.set_busy_timeout(5000)
        conn.execute("UPDATE workflow_runs SET status = 'failed' WHERE run_id = 'b'")
        conn.execute("DELETE FROM workflow_runs WHERE run_id = 'c'")
        conn.execute(
            "INSERT INTO workflow_runs SELECT 'zz', workflow, status, attempt, payload,"
            " result, error_type, error, queued_at, started_at, ended_at, seq, position"
            " FROM workflow_runs WHERE run_id = 'a'"
        )
        conn.close()
        sconn = apsw.Connection(str(_sense_db_of(data_dir, "system")))
        sconn.set_busy_timeout(5000)
        first = signals_table(data_dir, "system")[0][0]
        sconn.execute("UPDATE _signals SET value = '99' WHERE position = ?", (first,))
        sconn.close()

        diffs = await verify(log, [WorkflowRuns(), sig])
        by_key = {(d.projection, d.table, d.key): d for d in diffs}
        assert len(diffs) == 4
        b = by_key["workflow_runs", "workflow_runs", ("b",)]
        assert b.replayed == live["b"]
        assert b.live is not None
        assert b.live[2] == "failed"
        assert b.replayed is not None
        assert b.replayed[2] == "started"
        c = by_key["workflow_runs", "workflow_runs", ("c",)]
        assert (c.live, c.replayed) == (None, live["c"])
        zz = by_key["workflow_runs", "workflow_runs", ("zz",)]
        assert zz.replayed is None
        assert zz.live == ("zz", *live["a"][1:])
        s = by_key["signals:system", "_signals", (first,)]
        assert s.live is not None
        assert s.replayed is not None
        assert (s.live[2], s.replayed[2]) == ("99", "0")
        assert "missing from the live model" in str(c)
        assert "not in the replay" in str(zz)
        assert "!=" in str(b)
        # A rebuild repairs it.
        await rebuild(log, WorkflowRuns())
        await rebuild(log, sig)
        assert await verify(log, [WorkflowRuns(), sig]) == []


def _sense_db_of(data_dir: Path, group: str) -> Path:
    return data_dir / "senses" / f"{group}-senses.db"


async def test_verify_reports_a_missing_or_stale_checkpoint(data_dir: Path) -> None:
    async with nerve.open_log(data_dir) as log:
        await log.append("run-a", queued())
        await rebuild(log, WorkflowRuns())
        assert await verify(log, [WorkflowRuns()]) == []
        assert await verify(log, [WorkflowRunsV2()]) == [
            Difference("workflow_runs", "checkpoint", ("version",), (1,), (2,))
        ]
        conn = apsw.Connection(str(log.path))
        conn.execute("DELETE FROM projections WHERE name = 'workflow_runs'")
        conn.close()
        assert await verify(log, [WorkflowRuns()]) == [
            Difference("workflow_runs", "checkpoint", (), None, ("absent",))
        ]


async def test_verify_of_empty_models(log: nerve.Log) -> None:
    """No runs, no signals yet: empty tables verify (and differ) too."""
    sig = Signals("g")
    await attach_inline(log, WorkflowRuns())
    await log.append("other", NewEvent("x.y", {}))
    async with running(log, sig) as runner:
        await runner.wait_for(log.head)
    assert await verify(log, [WorkflowRuns(), sig]) == []
    await log.append("run-a", queued())
    conn = apsw.Connection(str(log.path))
    conn.execute("DELETE FROM workflow_runs")
    conn.close()
    [d] = await verify(log, [WorkflowRuns()])
    assert (d.key, d.live) == (("a",), None)


async def test_verify_and_rebuild_read_archived_days(data_dir: Path) -> None:
    clock = FakeClock(EPOCH - 10 * DAY)
    sig = Signals("system", keep_last=3)
    async with nerve.open_log(data_dir, clock=clock) as log:
        await attach_inline(log, WorkflowRuns())
        gen = ValidRuns(random.Random(10))
        for day in range(6):
            clock.now = EPOCH - (10 - day) * DAY
            for _ in range(30):
                stream, events = gen.next()
                await log.append(stream, events)
                await log.append(
                    sense_stream("system", "cpu"), signal("system", "cpu", day)
                )
                clock.now += 60
        rows = runs_table(log)
        clock.now = EPOCH  # the log has left those days: they can be archived
        archived = await log.archive(timedelta(days=1), now=EPOCH)
        assert len(archived) == 6
        assert await log.archived_days()
        assert await verify(log, [WorkflowRuns()]) == []
        # A new projection built from an all-archived history.
        async with running(log, sig) as runner:
            await runner.wait_for(log.head)
            assert [int(r[2]) for r in signals_table(data_dir, "system")] == [5, 5, 5]
        assert await verify(log, [WorkflowRuns(), sig]) == []
        await rebuild(log, WorkflowRuns())
        assert runs_table(log) == rows
        into = data_dir.parent / "replayed"
        await replay(log, [WorkflowRuns(), sig], into=into)
        assert table_rows(into / "logs.db", "workflow_runs", "run_id") == rows
        assert signals_table(into, "system") == signals_table(data_dir, "system")


async def test_attach_rebuilds_when_its_checkpoint_was_archived(
    data_dir: Path,
) -> None:
    """Events after the checkpoint moved to the archive while detached: the
    hot table cannot catch it up, so attaching rebuilds from the archive."""
    clock = FakeClock(EPOCH - 10 * DAY)
    gen = ValidRuns(random.Random(11))
    async with nerve.open_log(data_dir, clock=clock) as log:
        await attach_inline(log, WorkflowRuns())
        for _ in range(20):
            await log.append(*gen.next())
    async with nerve.open_log(data_dir, clock=clock) as log:
        clock.now += 2 * DAY
        for _ in range(20):
            await log.append(*gen.next())
        head = log.head
        clock.now = EPOCH
        assert (await log.archive(timedelta(days=1), now=EPOCH))[-1].last == head
        for _ in range(5):
            await log.append(*gen.next())
    async with nerve.open_log(data_dir, clock=clock) as log:
        calls: list[tuple[int, int]] = []
        await attach_inline(
            log, WorkflowRuns(), progress=lambda a, b: calls.append((a, b))
        )
        assert calls  # rebuilt
        assert {r.run_id: r.status for r in await RunQueries(log).list()} == gen.status
        assert await verify(log, [WorkflowRuns()]) == []


async def test_leftover_rebuild_files_are_swept(data_dir: Path) -> None:
    async with nerve.open_log(data_dir) as log:
        await run_to(log, "a", "started")
        await attach_inline(log, WorkflowRuns())
    # What rebuilds killed in a process that is gone leave behind...
    gone = await _dead_pid()
    stale = [
        data_dir / f".rebuild-workflow_runs-{gone}-0badcafe.db",
        data_dir / f".rebuild-workflow_runs-{gone}-0badcafe.db-wal",
        data_dir / f"senses/.rebuild-signals_g-{gone}-12345678.db",
    ]
    (data_dir / "senses").mkdir()
    for path in stale:
        path.write_bytes(os.urandom(4096))
    # ...and what a live rebuild (this process) or someone else uses.
    busy = data_dir / f".rebuild-workflow_runs-{os.getpid()}-feedf00d.db"
    busy.write_bytes(b"in use")
    unrelated = data_dir / ".rebuild-notes.txt"
    unrelated.write_bytes(b"mine")
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        await rebuild(log, WorkflowRuns())
        await log.append(sense_stream("g", "a"), signal("g", "a", 1))
        async with running(log, Signals("g")) as runner:
            await runner.wait_for(log.head)
            await rebuild(log, Signals("g"), runner=runner)
        assert await verify(log, [WorkflowRuns(), Signals("g")]) == []
    assert [p for p in stale if p.exists()] == []
    assert busy.read_bytes() == b"in use"
    assert unrelated.read_bytes() == b"mine"


async def _dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    child = await trio.lowlevel.open_process([sys.executable, "-c", "pass"])
    await child.wait()
    return child.pid
