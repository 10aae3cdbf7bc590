"""Property tests of admission: random triggers, run durations and failures
against each overflow setting, with random ``concurrency`` and ``max_queue``.

Checked from two independent views: the actor's own decisions (observed through
`WorkflowActor.on_transition`) and a replay of the log event by event:

- never more than ``concurrency`` runs started at once, never more than
  ``max_queue`` queued (at every decision, and at every log position);
- queued runs start in FIFO order; a full queue evicts its oldest run;
- every trigger ends in exactly one terminal status, its last lifecycle event;
- ``workflow_runs`` agrees with the handles' outcomes and with the actor.

Each example runs its own kernel in its own temporary directory on a
`MockClock` (autojump): durations are virtual.
"""

from __future__ import annotations

import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nerve
from nerve.events._vocabulary import (
    RUN_STATUS_OF_TYPE,
    TERMINAL_STATUSES,
    TRANSITIONS,
    run_id_of,
)
from nerve.projections import RunQueries


class Boom(Exception):
    pass


triggers_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "gap": st.sampled_from([0, 0, 0, 0.25, 1, 3]),
            "d": st.sampled_from([0, 0.5, 1, 2, 5]),
            "fail": st.booleans(),
        }
    ),
    min_size=1,
    max_size=14,
)


class Observer:
    """Checks every decision of the actor as it is made."""

    def __init__(self, concurrency: int, max_queue: int) -> None:
        self.concurrency = concurrency
        self.max_queue = max_queue
        self.status: dict[str, str] = {}
        self.queue: deque[str] = deque()
        self.transitions: list[tuple[str, str]] = []
        self.starts: list[str] = []
        self.violations: list[str] = []

    def __call__(self, run_id: str, status: str) -> None:
        self.transitions.append((run_id, status))
        before = self.status.get(run_id)
        if status == "queued":
            if before is not None:
                self.violations.append(f"{run_id} queued twice")
            self.queue.append(run_id)
        elif before == "queued":
            # A queued run leaves the queue only from its head: FIFO start,
            # oldest evicted.
            if not self.queue or self.queue[0] != run_id:
                self.violations.append(
                    f"{run_id} left the queue as {status} but the oldest is "
                    f"{self.queue[0] if self.queue else None}"
                )
            else:
                self.queue.popleft()
        if status == "started":
            self.starts.append(run_id)
        if before in TERMINAL_STATUSES:
            self.violations.append(f"{run_id} became {status} after {before}")
        self.status[run_id] = status
        started = sum(1 for s in self.status.values() if s == "started")
        if started > self.concurrency:
            self.violations.append(f"{started} started > {self.concurrency}")
        if len(self.queue) > self.max_queue:
            self.violations.append(f"{len(self.queue)} queued > {self.max_queue}")


async def scenario(
    data_dir: Path,
    concurrency: int,
    overflow: str,
    max_queue: int,
    triggers: list[dict[str, Any]],
) -> None:
    app = nerve.App()
    ran: list[int] = []

    @app.workflow("w", concurrency=concurrency, overflow=overflow, max_queue=max_queue)
    async def w(run: nerve.Run) -> int:
        ran.append(run.payload["i"])
        await trio.sleep(run.payload["d"])
        if run.payload["fail"]:
            raise Boom(f"run {run.payload['i']} failed")
        return int(run.payload["i"])

    observer = Observer(concurrency, max_queue)
    handles: list[nerve.RunHandle] = []
    async with nerve.open_kernel(app, data_dir, watch_interval=None) as kernel:
        actor = kernel.workflows["w"]
        actor.on_transition = observer
        for i, t in enumerate(triggers):
            await trio.sleep(t["gap"])
            handles.append(await kernel.trigger("w", {**t, "i": i}))
        outcomes = [await h.wait() for h in handles]
        stats = actor.statistics()
        assert (stats.running, stats.queued) == (0, 0)

    assert observer.violations == []
    ids = [h.run_id for h in handles]
    index = {run_id: i for i, run_id in enumerate(ids)}

    # Every trigger ended in exactly one terminal status, as the actor saw it.
    for run_id, outcome in zip(ids, outcomes, strict=True):
        terminal = [s for r, s in observer.transitions if r == run_id]
        assert terminal[-1] == outcome.status
        assert sum(s in TERMINAL_STATUSES for s in terminal) == 1
        i = index[run_id]
        if outcome.status == "completed":
            assert outcome.result == i
            assert not triggers[i]["fail"]
        elif outcome.status == "failed":
            assert (outcome.error_type, outcome.error) == ("Boom", f"run {i} failed")
            assert triggers[i]["fail"]
        else:
            assert outcome.status == "dropped", outcome
    # A run's function ran iff it started; it started once (no resume here).
    started = [r for r, s in observer.transitions if s == "started"]
    assert sorted(ran) == sorted(index[r] for r in started)
    assert len(set(started)) == len(started)
    assert {index[r] for r in started} == {
        i for i, o in enumerate(outcomes) if o.status in ("completed", "failed")
    }
    if overflow == "drop" or max_queue == 0:
        assert all(s != "queued" for _, s in observer.transitions)
    # FIFO: the queued runs that started did so in the order they were queued.
    queued = [r for r, s in observer.transitions if s == "queued"]
    started_from_queue = [r for r in started if r in set(queued)]
    assert started_from_queue == [r for r in queued if r in set(started)]

    # The log, replayed position by position, tells the same story.
    async with nerve.open_log(data_dir) as log:
        events = [
            (e.position, run_id_of(e.stream), RUN_STATUS_OF_TYPE[e.type])
            async for e in log.read()
            if e.type in RUN_STATUS_OF_TYPE
        ]
        records = {r.run_id: r for r in await RunQueries(log).list(workflow="w")}
    status: dict[str, str] = {}
    queued_at: dict[str, int] = {}
    log_queue: deque[str] = deque()
    log_starts: list[str] = []
    for k, (position, run_id, new) in enumerate(events):
        assert run_id is not None
        old = status.get(run_id)
        assert new in TRANSITIONS[old], (run_id, old, new)
        status[run_id] = new
        if new == "queued":
            queued_at[run_id] = position
            log_queue.append(run_id)
        elif old == "queued":
            if queued_at[run_id] == position - 1 and log_queue[-1] == run_id:
                log_queue.pop()  # queued and decided in one append
            else:
                assert log_queue[0] == run_id, "left the queue out of order"
                log_queue.popleft()
        if new == "started":
            log_starts.append(run_id)
        running = sum(1 for s in status.values() if s == "started")
        assert running <= concurrency, f"{running} started at {position}"
        decided_next = (
            k + 1 < len(events)
            and events[k + 1][1] == run_id
            and events[k + 1][0] == position + 1
        )
        if not (new == "queued" and decided_next):
            assert len(log_queue) <= max_queue, f"queue too long at {position}"
    assert log_starts == started
    assert set(records) == set(ids)
    for run_id, outcome in zip(ids, outcomes, strict=True):
        record = records[run_id]
        assert status[run_id] == record.status == outcome.status
        assert record.result == outcome.result
        assert record.error_type == outcome.error_type
        assert record.payload["i"] == index[run_id]
    assert [records[r].seq for r in ids] == sorted(records[r].seq for r in ids)


@pytest.mark.parametrize("overflow", ["queue", "drop"])
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    concurrency=st.integers(1, 3),
    max_queue=st.integers(0, 3),
    triggers=triggers_strategy,
)
def test_admission_holds_its_limits_and_order(
    overflow: str, concurrency: int, max_queue: int, triggers: list[dict[str, Any]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(
            scenario,
            Path(tmp) / "data",
            concurrency,
            overflow,
            max_queue,
            triggers,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
