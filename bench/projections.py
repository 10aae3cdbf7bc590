"""Projection rebuild speed and async projection lag.

1. baseline: the raw read rate of the same history in the same run
   (``async for e in log.read(types=...)``, decoded).
2. rebuild of ``workflow_runs`` from N lifecycle events (queued, started,
   completed per run) into a fresh database: events/s. Target: >= 200k/s.
   The same event by event (its SQL fold turned off), for comparison.
3. lag of an async projection (``_signals`` of one sense group) following a
   sustained stream of 20k events/s: the time from an append's return to the
   moment the projection has folded it, p50 and p99. Target: p99 <= 100 ms.

Run: ``.venv/bin/python bench/projections.py [--quick] [--runs N]``.
"""

from __future__ import annotations

from pathlib import Path

import _common as c
import trio

from nerve.events import Log, NewEvent, open_log
from nerve.events._vocabulary import (
    RunCompleted,
    RunQueued,
    RunStarted,
    SenseSignal,
    run_stream,
    sense_stream,
)
from nerve.projections import ProjectionRunner, Signals, WorkflowRuns, replay

TYPES = ["workflow.run.queued", "workflow.run.started", "workflow.run.completed"]


async def write_history(log: Log, runs: int) -> None:
    """``runs`` runs of three lifecycle events each, in big batches."""
    batch = 2000
    for first in range(0, runs, batch):
        pending = [
            log.submit(
                run_stream(f"r{i}"),
                [
                    NewEvent("workflow.run.queued", RunQueued("bench", {"i": i})),
                    NewEvent("workflow.run.started", RunStarted()),
                    NewEvent("workflow.run.completed", RunCompleted({"ok": True})),
                ],
            )
            for i in range(first, min(first + batch, runs))
        ]
        for p in pending:
            await p.wait()


class EventByEventRuns(WorkflowRuns):
    """``workflow_runs`` with its SQL fold turned off: page by page."""

    def bulk_fold(self, conn: object, source: str, upto: int) -> bool:
        return False


def rebuild_figures(args: object, events: int) -> tuple[c.Series, c.Series, c.Series]:
    read_rate, rebuild_rate, paged_rate = c.Series(), c.Series(), c.Series()

    async def main() -> None:
        with c.temp_dir(args, "proj") as d:  # type: ignore[arg-type]
            async with open_log(d / "data", fts=False) as log:
                c.progress(f"writing {events:,} lifecycle events")
                await write_history(log, events // 3)
                n = log.head
                for run in range(args.runs):  # type: ignore[attr-defined]
                    c.progress(f"run {run + 1}: read, then rebuild")
                    start = c.perf_counter()
                    count = 0
                    async for e in log.read(types=TYPES):
                        count += e.data is not None
                    read_rate.add(count / (c.perf_counter() - start))
                    into = Path(d) / f"replay-{run}"
                    start = c.perf_counter()
                    await replay(log, [WorkflowRuns()], into=into)
                    rebuild_rate.add(n / (c.perf_counter() - start))
                    into = Path(d) / f"paged-{run}"
                    start = c.perf_counter()
                    await replay(log, [EventByEventRuns()], into=into)
                    paged_rate.add(n / (c.perf_counter() - start))

    trio.run(main)
    return read_rate, rebuild_rate, paged_rate


def lag_figures(args: object, seconds: float, rate: int) -> list[float]:
    lags: list[float] = []

    async def main() -> None:
        with c.temp_dir(args, "lag") as d:  # type: ignore[arg-type]
            async with open_log(d / "data", fts=False) as log:
                runner = ProjectionRunner(log, Signals("bench", keep_last=1000))
                async with trio.open_nursery() as nursery:
                    await nursery.start(runner.run)
                    tick = 0.01
                    per_tick = int(rate * tick)
                    start = trio.current_time()
                    k = 0
                    async with trio.open_nursery() as watchers:
                        while trio.current_time() - start < seconds:
                            k += 1
                            stream = sense_stream("bench", f"s{k % 4}")
                            result = await log.append(
                                stream,
                                [
                                    NewEvent(
                                        "sense.signal",
                                        SenseSignal("bench", f"s{k % 4}", j),
                                    )
                                    for j in range(per_tick)
                                ],
                            )
                            watchers.start_soon(
                                watch, runner, result.last_position, c.perf_counter()
                            )
                            await trio.sleep_until(start + k * tick)
                    nursery.cancel_scope.cancel()

    async def watch(runner: ProjectionRunner, position: int, appended: float) -> None:
        await runner.wait_for(position)
        lags.append(c.perf_counter() - appended)

    trio.run(main)
    return lags


def main() -> None:
    args = c.parse_args(__doc__ or "")
    events = c.sized(args, 1_000_000, 60_000)
    seconds = c.sized(args, 10, 2)
    c.header("projections: rebuild and lag", args, events=events, lag_seconds=seconds)
    read_rate, rebuild_rate, paged_rate = rebuild_figures(args, events)
    c.progress("lag under 20k events/s")
    lags = lag_figures(args, seconds, 20_000)
    report = c.Report("projections")
    report.add("read lifecycle events (baseline)", read_rate, "events/s")
    report.add(
        "rebuild workflow_runs",
        rebuild_rate,
        "events/s",
        baseline=read_rate.median,
        checks=[c.at_least(rebuild_rate.median, 200_000, "200k/s")],
    )
    report.add(
        "rebuild workflow_runs event by event (SQL fold off)",
        paged_rate,
        "events/s",
        baseline=read_rate.median,
    )
    if lags:
        p50 = c.percentile(lags, 50) * 1000
        p99 = c.percentile(lags, 99) * 1000
        report.add("async projection lag p50 @20k events/s", p50, "ms")
        report.add(
            "async projection lag p99 @20k events/s",
            p99,
            "ms",
            checks=[c.at_most(p99, 100, "100 ms")],
        )
    report.print()


if __name__ == "__main__":
    main()
