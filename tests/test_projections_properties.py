"""Property: for random valid histories, appended in random groupings, the
incremental projections equal a fresh replay and an in-place rebuild, row for
row, and agree with a plain-Python model of the same history."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import apsw
import attrs
import orjson
import trio
import trio.testing
from _runs import EventByEventRuns, SpiedRuns
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nerve
from nerve import NewEvent
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
    ProjectionRunner,
    RunQueries,
    Signals,
    WorkflowRuns,
    attach_inline,
    rebuild,
    replay,
    verify,
)

EPOCH = 1_600_000_000.0
GROUPS = ("alpha", "beta")
SENSES = ("a", "b", "c")
SAFETY = 60


def projections() -> tuple[WorkflowRuns, Signals, Signals]:
    return (
        WorkflowRuns(),
        Signals("alpha", keep_last=2),
        Signals("beta", keep_last=3, max_age=timedelta(seconds=30)),
    )


# -- generating valid histories --------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
plain_json = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
# The Any fields of registered classes also take tuples and int keys: the
# codec stores them as lists and str keys; the inline fold sees them as
# appended, a replay as decoded.
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.integers(0, 3), inner, max_size=2)
    ),
    max_leaves=6,
)


@attrs.frozen
class Append:
    stream: str
    events: tuple[NewEvent, ...]


@attrs.frozen
class History:
    """Writer batches (each a list of appends to distinct streams) and how far
    the clock moves before each batch; ``attach_at``: how many batches are
    appended before the projections are attached and started."""

    batches: tuple[tuple[Append, ...], ...]
    clock_steps: tuple[float, ...]
    attach_at: int
    statuses: dict[str, str]
    attempts: dict[str, int]


@st.composite
def histories(draw: st.DrawFn) -> History:
    status: dict[str, str] = {}
    attempts: dict[str, int] = {}
    ops: list[tuple[str, NewEvent]] = []
    for _ in range(draw(st.integers(1, 60))):
        kinds = ["queue", "signal", "noise"]
        if any(TRANSITIONS[s] for s in status.values()):
            kinds += ["move", "move", "move"]
        if status:
            kinds += ["message", "step"]
        kind = draw(st.sampled_from(kinds))
        if kind == "queue":
            run = f"r{len(status)}"
            status[run] = "queued"
            attempts[run] = 0
            workflow = draw(st.sampled_from(["w1", "w2"]))
            event = NewEvent(
                "workflow.run.queued", RunQueued(workflow, draw(json_values))
            )
            ops.append((run_stream(run), event))
        elif kind == "move":
            run = draw(
                st.sampled_from(sorted(r for r, s in status.items() if TRANSITIONS[s]))
            )
            target = draw(st.sampled_from(sorted(TRANSITIONS[status[run]])))
            status[run] = target
            data: Any
            if target == "started":
                attempts[run] += 1
                data = RunStarted(attempts[run], attempts[run] > 1)
            elif target == "completed":
                data = RunCompleted(draw(json_values))
            elif target == "failed":
                data = RunFailed(
                    draw(st.sampled_from(["E", "KeyError"])), draw(st.text(max_size=4))
                )
            elif target == "crashed":
                data = RunCrashed(draw(st.text(max_size=4)))
            elif target == "interrupted":
                data = RunInterrupted()
            else:
                data = RunDropped(draw(st.sampled_from(["overflow", "evicted"])))
            ops.append((run_stream(run), NewEvent(f"workflow.run.{target}", data)))
        elif kind == "message":
            run = draw(st.sampled_from(sorted(status)))
            ops.append(
                (
                    run_stream(run),
                    NewEvent(
                        "workflow.message", ThreadMessage("user", draw(json_values))
                    ),
                )
            )
        elif kind == "step":
            run = draw(st.sampled_from(sorted(status)))
            ops.append(
                (
                    run_stream(run),
                    NewEvent("workflow.step", StepJournaled("s", draw(json_values), 0)),
                )
            )
        elif kind == "signal":
            group = draw(st.sampled_from(GROUPS))
            sense = draw(st.sampled_from(SENSES))
            value = draw(json_values)
            if draw(st.booleans()):
                ops.append(
                    (
                        sense_stream(group, sense),
                        NewEvent("sense.signal", SenseSignal(group, sense, value)),
                    )
                )
            else:
                ops.append(
                    (
                        sense_stream(group, sense),
                        NewEvent("sense.error", SenseError(group, sense, "E", "x")),
                    )
                )
        else:
            ops.append(("noise", NewEvent("noise.happened", {"v": draw(plain_json)})))
    # Consecutive events of one stream may go in one append.
    appends: list[Append] = []
    for stream, event in ops:
        if appends and appends[-1].stream == stream and draw(st.booleans()):
            appends[-1] = Append(stream, (*appends[-1].events, event))
        else:
            appends.append(Append(stream, (event,)))
    # Consecutive appends to distinct streams may share a writer batch (their
    # order inside the batch is then free, and does not matter).
    batches: list[list[Append]] = []
    for a in appends:
        if (
            batches
            and all(b.stream != a.stream for b in batches[-1])
            and draw(st.booleans())
        ):
            batches[-1].append(a)
        else:
            batches.append([a])
    steps = tuple(
        draw(st.sampled_from([0.0, 0.5, 7.0, 20.0])) for _ in range(len(batches))
    )
    return History(
        tuple(tuple(b) for b in batches),
        steps,
        draw(st.integers(0, len(batches))),
        status,
        attempts,
    )


# -- running one example -----------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = EPOCH

    def __call__(self) -> float:
        return self.now


def table(path: Path, name: str, order: str) -> list[tuple[Any, ...]]:
    conn = apsw.Connection(str(path))
    try:
        return [
            tuple(r) for r in conn.execute(f"SELECT * FROM {name} ORDER BY {order}")
        ]
    finally:
        conn.close()


def snapshot(root: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "workflow_runs": table(root / "logs.db", "workflow_runs", "run_id"),
        **{
            g: table(root / f"senses/{g}-senses.db", "_signals", "position")
            for g in GROUPS
        },
    }


@contextlib.asynccontextmanager
async def writer_held(log: nerve.Log) -> AsyncIterator[None]:
    gate = threading.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.write_job, lambda conn: gate.wait(SAFETY))
        await trio.testing.wait_all_tasks_blocked()
        try:
            yield
        finally:
            gate.set()


async def append_batch(log: nerve.Log, batch: tuple[Append, ...]) -> None:
    if len(batch) == 1:
        await log.append(batch[0].stream, batch[0].events)
        return
    async with trio.open_nursery() as nursery, writer_held(log):
        for a in batch:
            nursery.start_soon(log.append, a.stream, a.events)
        await trio.testing.wait_all_tasks_blocked()


def expected_signals(
    events: list[nerve.RecordedEvent], sig: Signals
) -> list[tuple[Any, ...]]:
    """The retention rules, computed from the whole history at once."""
    mine = [e for e in events if e.type == "sense.signal" and e.data.group == sig.group]
    if not mine:
        return []
    newest = max(e.ts for e in mine)
    kept = []
    for e in mine:
        later = [
            x for x in mine if x.data.sense == e.data.sense and x.position > e.position
        ]
        if sig.keep_last is not None and len(later) >= sig.keep_last:
            continue
        if sig.max_age_ms is not None and e.ts < newest - sig.max_age_ms:
            continue
        kept.append(
            (e.position, e.data.sense, orjson.dumps(e.data.value).decode(), e.ts)
        )
    return kept


async def check(history: History, root: Path) -> None:
    data_dir = root / "data"
    clock = FakeClock()
    runs, alpha, beta = projections()
    async with nerve.open_log(data_dir, clock=clock) as log:
        for batch, step in zip(
            history.batches[: history.attach_at], history.clock_steps, strict=False
        ):
            clock.now += step
            await append_batch(log, batch)
        await attach_inline(log, runs)
        runners = [ProjectionRunner(log, alpha), ProjectionRunner(log, beta)]
        async with trio.open_nursery() as nursery:
            for r in runners:
                await nursery.start(r.run)
            for batch, step in zip(
                history.batches[history.attach_at :],
                history.clock_steps[history.attach_at :],
                strict=True,
            ):
                clock.now += step
                await append_batch(log, batch)
            for r in runners:
                await r.wait_for(log.head)
            live = snapshot(data_dir)

            # The model agrees with a plain-Python fold of the same history.
            records = {r.run_id: r for r in await RunQueries(log).list()}
            assert {k: r.status for k, r in records.items()} == history.statuses
            assert {k: r.attempt for k, r in records.items()} == history.attempts
            events = [e async for e in log.read()]
            assert live["alpha"] == expected_signals(events, alpha)
            assert live["beta"] == expected_signals(events, beta)

            # == a fresh replay
            replayed = root / "replayed"
            spied = SpiedRuns()
            assert await replay(log, [spied, alpha, beta], into=replayed) == log.head
            assert spied.bulk == [True]  # a valid history folds in SQL...
            assert snapshot(replayed) == live
            # ...like event by event
            paged = root / "paged"
            await replay(log, [EventByEventRuns()], into=paged)
            assert (
                table(paged / "logs.db", "workflow_runs", "run_id")
                == live["workflow_runs"]
            )
            assert await verify(log, [runs, alpha, beta]) == []

            # == an in-place rebuild
            await rebuild(log, WorkflowRuns())
            await rebuild(log, alpha, runner=runners[0])
            await rebuild(log, beta, runner=runners[1])
            assert snapshot(data_dir) == live
            nursery.cancel_scope.cancel()


@settings(
    max_examples=int(os.environ.get("NERVE_PROP_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(histories())
def test_live_projections_equal_a_replay_and_a_rebuild(history: History) -> None:
    with tempfile.TemporaryDirectory(prefix="nerve-prop-") as tmp:

        async def main() -> None:
            with trio.fail_after(SAFETY):
                await check(history, Path(tmp))

        trio.run(main)
