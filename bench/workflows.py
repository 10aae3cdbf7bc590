"""No-op workflow runs per second, end to end, every transition durable.

1. baseline: the same durable transitions without the runtime: 64 tasks
   append, per run, ``queued+started`` then ``completed`` to a new run stream
   (``workflow_runs`` attached inline, as in a kernel).
2. nerve: `open_kernel` with a no-op workflow at ``concurrency=64``,
   ``overflow="queue"``; N triggers from 64 tasks, then every handle awaited
   (trigger -> queued/started -> completed, each durable).
   Target: >= 10k runs/s; ratio to (1). The same again with
   ``gc_threshold=None`` (CPython's default GC setting), for comparison.
3. floor: SQLite alone doing the same writes per run (three ``logs`` rows, two
   ``workflow_runs`` upserts, in two transactions per wave of 64 runs), rows
   built beforehand: what the storage itself allows.
4. slot hand-over: the time from a run's end to the decision that starts the
   next queued run, in the workflow actor (no polling; excludes the fsync).
   Target: p99 <= 1 ms.

Run: ``.venv/bin/python bench/workflows.py [--quick] [--runs N]``.
"""

from __future__ import annotations

from pathlib import Path

import _common as c
import apsw
import orjson
import trio

import nerve
from nerve.events import NO_STREAM, NewEvent, open_log
from nerve.events._vocabulary import RunCompleted, RunQueued, RunStarted, run_stream
from nerve.projections import WorkflowRuns, attach_inline
from nerve.projections._workflow_runs import _UPSERT

CONCURRENCY = 64


def baseline(args: object, n: int) -> float:
    async def main() -> float:
        with c.temp_dir(args, "wf-base") as d:  # type: ignore[arg-type]
            async with open_log(d, source="bench") as log:
                await attach_inline(log, WorkflowRuns())

                async def worker(k: int) -> None:
                    for i in range(k, n, CONCURRENCY):
                        stream = run_stream(f"r{i}")
                        await log.append(
                            stream,
                            [
                                NewEvent("workflow.run.queued", RunQueued("noop")),
                                NewEvent("workflow.run.started", RunStarted()),
                            ],
                            expected_version=NO_STREAM,
                        )
                        await log.append(
                            stream, NewEvent("workflow.run.completed", RunCompleted())
                        )

                start = c.perf_counter()
                async with trio.open_nursery() as nursery:
                    for k in range(CONCURRENCY):
                        nursery.start_soon(worker, k)
                return n / (c.perf_counter() - start)

    return trio.run(main)


def sqlite_floor(args: object, n: int) -> float:
    """Runs/s of the storage work alone: nerve's schema, raw apsw."""

    async def create(d: Path) -> None:
        async with open_log(d, source="bench") as log:
            await attach_inline(log, WorkflowRuns())

    with c.temp_dir(args, "wf-floor") as d:  # type: ignore[arg-type]
        trio.run(create, d)
        conn = apsw.Connection(str(d / "logs.db"))
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            digest = bytes(32)
            ts = 1_700_000_000_000
            insert = (
                "INSERT INTO logs (position, stream, version, type, type_version, "
                "source, ts, payload, blob, meta, hash) "
                "VALUES (?,?,?,?,1,'bench',?,?,NULL,NULL,?)"
            )
            waves = []
            position = 0
            for first in range(0, n, CONCURRENCY):
                ids = [f"{i:028x}" for i in range(first, min(n, first + CONCURRENCY))]
                start_rows, start_runs, end_rows, end_runs = [], [], [], []
                queued = orjson.dumps({"workflow": "noop", "payload": None}).decode()
                started = '{"attempt":1,"resumed":false}'
                done = '{"result":null}'

                def row(pos: int, stream: str, version: int, type_: str, data: str):
                    return (pos, stream, version, type_, ts, data, digest)

                for run_id in ids:
                    stream = run_stream(run_id)
                    seq = position + 1
                    start_rows.append(
                        row(seq, stream, 1, "workflow.run.queued", queued)
                    )
                    start_rows.append(
                        row(seq + 1, stream, 2, "workflow.run.started", started)
                    )
                    position += 2
                    # payload, result, error type and error: None
                    nothing = (None, None, None, None)
                    start_runs.append(
                        (
                            run_id,
                            "noop",
                            "started",
                            1,
                            *nothing,
                            ts,
                            ts,
                            None,
                            seq,
                            seq + 1,
                        )
                    )
                for run_id, run in zip(ids, start_runs, strict=True):
                    position += 1
                    stream = run_stream(run_id)
                    end_rows.append(
                        row(position, stream, 3, "workflow.run.completed", done)
                    )
                    # `completed`: the status, ended_at and position change
                    end_runs.append(
                        (run_id, "noop", "completed", *run[3:10], ts, run[11], position)
                    )
                waves.append((start_rows, start_runs, end_rows, end_runs))
            t0 = c.perf_counter()
            for start_rows, start_runs, end_rows, end_runs in waves:
                for rows, runs in ((start_rows, start_runs), (end_rows, end_runs)):
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(insert, rows)
                    conn.executemany(_UPSERT, runs)
                    conn.execute("COMMIT")
            return n / (c.perf_counter() - t0)
        finally:
            conn.close()


def kernel_rate(args: object, n: int, **options: object) -> tuple[float, list[float]]:
    app = nerve.App()

    @app.workflow("noop", concurrency=CONCURRENCY, overflow="queue", max_queue=n)
    async def noop(run: nerve.Run) -> None:
        return None

    async def main() -> tuple[float, list[float]]:
        with c.temp_dir(args, "wf") as d:  # type: ignore[arg-type]
            async with nerve.open_kernel(app, d, **options) as kernel:
                actor = kernel.workflows["noop"]
                handover: list[float] = []
                freed: list[float] = []

                # A run's end and the start it frees a slot for happen in one
                # synchronous call of the actor: pair them there.
                def observe(run_id: str, status: str) -> None:
                    now = c.perf_counter()
                    if status == "completed":
                        freed[:] = [now] if actor.queue else []
                    elif status == "started" and freed:
                        handover.append(now - freed.pop())

                actor.on_transition = observe
                handles: list[nerve.RunHandle] = []

                async def trigger(k: int) -> None:
                    for _ in range(k, n, CONCURRENCY):
                        handles.append(await kernel.trigger("noop"))  # noqa: PERF401

                start = c.perf_counter()
                async with trio.open_nursery() as nursery:
                    for k in range(CONCURRENCY):
                        nursery.start_soon(trigger, k)
                for h in handles:
                    await h.wait()
                rate = n / (c.perf_counter() - start)
                return rate, handover

    return trio.run(main)


def main() -> None:
    args = c.parse_args(__doc__ or "")
    n = c.sized(args, 100_000, 5_000)
    c.header("workflows: no-op runs end to end", args, runs_per_figure=n)
    base, kern, floor, plain_gc = c.Series(), c.Series(), c.Series(), c.Series()
    handover: list[float] = []
    for run in range(args.runs):
        c.progress(f"run {run + 1}/{args.runs}: baseline")
        base.add(baseline(args, n))
        c.progress(f"run {run + 1}/{args.runs}: floor, SQLite alone")
        floor.add(sqlite_floor(args, n))
        c.progress(f"run {run + 1}/{args.runs}: kernel")
        rate, ho = kernel_rate(args, n)
        kern.add(rate)
        handover.extend(ho)
        c.progress(f"run {run + 1}/{args.runs}: kernel, CPython's default GC")
        plain_gc.add(kernel_rate(args, n, gc_threshold=None)[0])
    report = c.Report("workflows")
    report.add("durable transitions, no runtime (baseline)", base, "runs/s")
    report.add(
        "floor: SQLite alone, the same writes",
        floor,
        "runs/s",
        baseline=base.median,
        note="3 logs rows + 2 workflow_runs upserts per run, 2 transactions per "
        f"wave of {CONCURRENCY} runs, rows built beforehand; the kernel reaches "
        f"{kern.median / floor.median:.0%} of it",
    )
    report.add(
        "kernel: trigger -> completed",
        kern,
        "runs/s",
        baseline=base.median,
        checks=[c.at_least(kern.median, 10_000, "10k runs/s")],
    )
    report.add(
        "kernel, gc_threshold=None",
        plain_gc,
        "runs/s",
        baseline=base.median,
        note="the same with CPython's default young-generation GC threshold "
        "(700) instead of the kernel's 10,000",
    )
    if handover:
        p50 = c.percentile(handover, 50) * 1000
        p99 = c.percentile(handover, 99) * 1000
        report.add("slot hand-over p50", p50, "ms")
        report.add(
            "slot hand-over p99",
            p99,
            "ms",
            checks=[c.at_most(p99, 1.0, "1 ms")],
        )
    report.print()


if __name__ == "__main__":
    main()
