"""The program `test_projections_crash.py` kills with SIGKILL.

    python tests/projection_child.py MODE DATA_DIR SEED

MODE is one of:

``catch-up``
    Run a `ProjectionRunner` for the ``sys`` sense group (``keep_last=None``:
    every signal is a row) and let it catch up with the backlog in the log.
    Prints ``pos <position>`` each time the runner moves, ``caught <head>``
    once it has folded everything.
``rebuild-runs``
    Attach ``workflow_runs`` inline, then rebuild it again and again while a
    task appends lifecycle events. Prints ``progress <done> <target>`` as the
    rebuild goes and ``rebuilt <head>`` after each swap.
``rebuild-signals``
    The same with the ``sys`` signals projection, rebuilt through its runner.
``append-runs``
    Attach ``workflow_runs`` inline and append valid lifecycle events from a
    few tasks. Prints ``ack <last position>`` after each append returned.

Every line is flushed at once and printed after the fact it reports. The
module also holds the helpers the test shares with this program.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import trio
from _runs import EventByEventRuns

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
    SenseSignal,
    ThreadMessage,
    run_stream,
    sense_stream,
)
from nerve.projections import (
    ProjectionRunner,
    Signals,
    WorkflowRuns,
    attach_inline,
    rebuild,
)

GROUP = "sys"
OTHER_GROUP = "other"
MODES = ("catch-up", "rebuild-runs", "rebuild-signals", "append-runs")


def sys_signals() -> Signals:
    return Signals(GROUP, keep_last=None)


def signal(group: str, sense: str, value: Any) -> NewEvent:
    return NewEvent("sense.signal", SenseSignal(group, sense, value))


def message(role: str, content: Any) -> NewEvent:
    return NewEvent("workflow.message", ThreadMessage(role, content))


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class ValidRuns:
    """Legal lifecycle appends for many runs, continuing from known statuses."""

    def __init__(
        self,
        rng: random.Random,
        prefix: str,
        status: dict[str, str] | None = None,
        attempt: dict[str, int] | None = None,
    ) -> None:
        self.rng = rng
        self.prefix = prefix
        self.status = dict(status or {})
        self.attempt = dict(attempt or {})
        self.n = 0
        self.busy: set[str] = set()  # runs with an append in flight

    def next(self) -> tuple[str, list[NewEvent]]:
        rng = self.rng
        live = [
            r for r, s in self.status.items() if TRANSITIONS[s] and r not in self.busy
        ]
        if not live or rng.random() < 0.35:
            self.n += 1
            run = f"{self.prefix}{self.n}"
            self.status[run] = "queued"
            self.attempt[run] = 0
            events = [NewEvent("workflow.run.queued", RunQueued("wf", {"n": self.n}))]
            if rng.random() < 0.5:  # several transitions in one append
                self.status[run] = "started"
                self.attempt[run] = 1
                events.append(NewEvent("workflow.run.started", RunStarted(1)))
            return run_stream(run), events
        run = rng.choice(live)
        target = rng.choice(sorted(TRANSITIONS[self.status[run]]))
        self.status[run] = target
        data: Any
        if target == "started":
            self.attempt[run] += 1
            data = RunStarted(self.attempt[run], self.attempt[run] > 1)
        elif target == "completed":
            data = RunCompleted({"run": run})
        elif target == "failed":
            data = RunFailed("ValueError", run)
        elif target == "crashed":
            data = RunCrashed()
        elif target == "interrupted":
            data = RunInterrupted()
        else:
            data = RunDropped()
        events = [NewEvent(f"workflow.run.{target}", data)]
        if rng.random() < 0.3:
            events.append(NewEvent("workflow.message", ThreadMessage("user", run)))
        return run_stream(run), events


async def known_runs(log: nerve.Log) -> tuple[dict[str, str], dict[str, int]]:
    """Every run's status and attempt, from a fold of the log itself."""
    status: dict[str, str] = {}
    attempt: dict[str, int] = {}
    async for e in log.read(types=[f"workflow.run.{s}" for s in TRANSITIONS if s]):
        run = e.stream[len("run-") :]
        status[run] = e.type.rsplit(".", 1)[1]
        if e.type == "workflow.run.started":
            attempt[run] = e.data.attempt
        else:
            attempt.setdefault(run, 0)
    return status, attempt


async def append_runs_forever(
    log: nerve.Log, gen: ValidRuns, *, report: bool = False
) -> None:
    while True:
        stream, events = gen.next()
        run = stream[len("run-") :]
        gen.busy.add(run)
        try:
            result = await log.append(stream, events)
        finally:
            gen.busy.discard(run)
        if report:
            emit(f"ack {result.last_position}")


# -- the modes ---------------------------------------------------------------------


async def catch_up(log: nerve.Log, seed: int) -> None:
    runner = ProjectionRunner(log, sys_signals())
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        emit(f"pos {runner.position}")
        while runner.position < log.head:
            await runner.wait_for(runner.position + 1)
            emit(f"pos {runner.position}")
        emit(f"caught {log.head}")
        await trio.sleep_forever()


async def rebuild_runs(log: nerve.Log, seed: int) -> None:
    await attach_inline(log, WorkflowRuns())
    status, attempt = await known_runs(log)
    gen = ValidRuns(random.Random(seed), f"k{seed}-", status, attempt)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(append_runs_forever, log, gen)
        # Both ways a fresh build folds: in SQL, or (odd seeds) event by event.
        rebuilt = EventByEventRuns() if seed % 2 else WorkflowRuns()
        while True:
            await rebuild(
                log,
                rebuilt,
                progress=lambda done, target: emit(f"progress {done} {target}"),
            )
            emit(f"rebuilt {log.head}")


async def rebuild_signals(log: nerve.Log, seed: int) -> None:
    rng = random.Random(seed)
    runner = ProjectionRunner(log, sys_signals())

    async def appender() -> None:
        i = 0
        while True:
            i += 1
            group = rng.choice([GROUP, OTHER_GROUP])
            await log.append(sense_stream(group, "live"), signal(group, "live", i))

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        nursery.start_soon(appender)
        while True:
            await rebuild(
                log,
                runner.projection,
                runner=runner,
                progress=lambda done, target: emit(f"progress {done} {target}"),
            )
            emit(f"rebuilt {log.head}")


async def append_runs(log: nerve.Log, seed: int) -> None:
    await attach_inline(log, WorkflowRuns())
    status, attempt = await known_runs(log)
    gen = ValidRuns(random.Random(seed), f"a{seed}-", status, attempt)
    emit(f"ready {log.head}")
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(lambda: append_runs_forever(log, gen, report=True))


async def main(mode: str, data_dir: str, seed: int) -> None:
    run = {
        "catch-up": catch_up,
        "rebuild-runs": rebuild_runs,
        "rebuild-signals": rebuild_signals,
        "append-runs": append_runs,
    }[mode]
    async with nerve.open_log(data_dir) as log:
        await run(log, seed)


if __name__ == "__main__":
    mode, data_dir, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; one of {MODES}")
    trio.run(main, mode, data_dir, seed)
