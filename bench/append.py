"""Durable append throughput and latency of `nerve.events.Log.append`.

Figures, each the median of ``--runs`` interleaved runs (default 5):

1. baseline: raw apsw, WAL, synchronous=FULL, one transaction per event into a
   database with nerve's own schema (its migrations), one task, 1000 streams
   round-robin.
2. nerve: 1000 concurrent trio tasks appending single events, each to its own
   stream, ``fts=False``;
   events/s and the ratio to (1). Targets: >= 100k events/s and >= 30x.
   The same with 4x the events (a longer log: bigger commits), with the
   1000 tasks sharing 10 streams, and with
   ``gc_threshold=None`` (CPython's own collector setting instead of the
   log's), for comparison (no target).
3. the same with ``fts=True``. Target: >= 60k events/s.
4. one appender alone: p50 and p99 of ``await log.append``. Target: p50 <= 1 ms.
5. peer: the ``eventsourcing`` library's SQLite application recorder, one event
   per transaction (skipped when the package is not installed).
6. floor: raw apsw writing the same rows in transactions of 1000 (one
   ``executemany`` + COMMIT each, same schema, 1000 streams), rows built
   beforehand: SQLite's own cost for this workload, no Python per event.
7. ceiling: the same 1000 trio tasks handing one request each at a time to a
   single writer task that wakes them in batches, with no encoding and no I/O:
   what the runtime alone allows, as a ratio for (2). The tasks park as the
   log's appenders do (`Parking`).
8. bound: the pipeline alone, at its barest: the 1000 tasks park (as in 7) on
   a writer task that positions each event, chains its hash and stages its row, while
   a worker thread writes the previous batch with nerve's own one-statement
   insert (same schema, synchronous=FULL) and, as the log's does, goes
   straight on to the batch staged meanwhile once it is offered; no API, no
   checks, no registry, no statistics. What this design allows on this
   machine (SQLite, the disk and trio together), as a ratio for (2).

Run: ``.venv/bin/python bench/append.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import _thread
import contextlib
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import _common as c
import apsw
import orjson
import outcome
import trio

import nerve
from nerve.events import EventRegistry, NewEvent, open_log
from nerve.events._schema import LOG_APPLICATION_ID, MIGRATIONS
from nerve.events._sqlite import migrate
from nerve.events._trio_util import Parking
from nerve.events._writer import _FLIGHT_INSERT, WAL_AUTOCHECKPOINT, LogWriter

try:
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
except ImportError:  # an optional peer: `pip install -e '.[bench]'`
    SQLiteDatastore = None

TYPE = "bench.appended"
MSG = "a benchmark event, about as big as a small real one"
STREAMS = 1000

INSERT = "INSERT INTO logs VALUES (?,?,?,?,?,?,?,?,?,?,?)"


def payload(n: int, task: int) -> dict[str, object]:
    return {"n": n, "task": task, "msg": MSG}


# -- 1. baseline -------------------------------------------------------------------


@contextlib.contextmanager
def raw_log(args, name: str) -> Iterator[apsw.Connection]:
    """A fresh apsw database with nerve's own schema, WAL, synchronous=FULL."""
    with c.temp_dir(args, name) as d:
        conn = apsw.Connection(str(d / "logs.db"))
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            migrate(
                conn,
                d / "logs.db",
                MIGRATIONS,
                application_id=LOG_APPLICATION_ID,
                what="log",
            )
            yield conn
        finally:
            conn.close()


def baseline(args, events: int) -> float:
    """Raw apsw, one BEGIN IMMEDIATE / INSERT / COMMIT per event: events/s."""
    with raw_log(args, "baseline") as conn:
        prev = bytes(32)
        t0 = c.perf_counter()
        for i in range(events):
            stream = f"s{i % STREAMS}"
            text = orjson.dumps(payload(i, i % STREAMS)).decode()
            prev = hashlib.sha256(prev + text.encode()).digest()
            ts = int(time.time() * 1000)
            row = (i + 1, stream, i // STREAMS + 1, TYPE, 1, "", ts, text)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(INSERT, (*row, None, None, prev))
            conn.execute("COMMIT")
        return events / (c.perf_counter() - t0)


# -- 2, 3. nerve, concurrent appenders ---------------------------------------------


def nerve_concurrent(
    args,
    events: int,
    tasks: int,
    *,
    fts: bool,
    streams: int | None = None,
    gc_threshold: int | None = nerve.DEFAULT_GC_THRESHOLD,
) -> tuple[float, str]:
    """``tasks`` tasks appending single events, each to its own stream (or to
    one of ``streams`` shared ones)."""
    per_task = events // tasks

    async def main() -> tuple[float, str]:
        with c.temp_dir(args, "nerve") as d:
            async with open_log(
                d, fts=fts, registry=EventRegistry(), gc_threshold=gc_threshold
            ) as log:

                async def appender(task: int) -> None:
                    stream = f"s{task if streams is None else task % streams}"
                    for i in range(per_task):
                        await log.append(stream, NewEvent(TYPE, payload(i, task)))

                t0 = c.perf_counter()
                async with trio.open_nursery() as nursery:
                    for task in range(tasks):
                        nursery.start_soon(appender, task)
                elapsed = c.perf_counter() - t0
                s = log.statistics()
                assert s.events == per_task * tasks, s
            info = (
                f"{s.batches:,} transactions, mean {s.mean_batch_size:.0f} "
                f"appends each (max {s.max_batch_size:,})"
            )
            return per_task * tasks / elapsed, info

    return trio.run(main)


# -- 6. SQLite's floor --------------------------------------------------------------


def sqlite_floor(args, events: int, streams: int = STREAMS) -> float:
    """Rows/s of executemany + COMMIT alone, 1000 rows per transaction."""
    with raw_log(args, "floor") as conn:
        ts = int(time.time() * 1000)
        digest = hashlib.sha256(b"row").digest()
        batches = []
        for b in range(events // 1000):
            batch = []
            for i in range(1000):
                n = b * 1000 + i
                text = orjson.dumps(payload(n, i)).decode()
                row = (n + 1, f"s{i % streams}", n // streams + 1, TYPE, 1, "")
                batch.append((*row, ts, text, None, None, digest))
            batches.append(batch)
        elapsed = 0.0
        for batch in batches:
            t0 = c.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, batch)
            conn.execute("COMMIT")
            elapsed += c.perf_counter() - t0
        return len(batches) * 1000 / elapsed


# -- 7. the runtime's ceiling -------------------------------------------------------


class Spot:
    """Where one appender task parks (`Parking.wait`), as an append request."""

    __slots__ = ("waiter",)

    def __init__(self) -> None:
        self.waiter: trio.lowlevel.Task | None = None

    def abort(self, _: object) -> trio.lowlevel.Abort:
        return trio.lowlevel.Abort.FAILED


def trio_ceiling(events: int, tasks: int) -> float:
    """Hand-offs/s of ``tasks`` tasks parking on one writer task, no I/O."""
    per_task = events // tasks

    async def main() -> float:
        pending: list[Spot] = []
        idle: list[trio.lowlevel.Task] = []
        parking = Parking()  # as the log parks its appenders

        def abort(_: object) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED

        async def appender() -> None:
            spot = Spot()
            for _ in range(per_task):
                pending.append(spot)
                if idle:
                    trio.lowlevel.reschedule(idle.pop())
                await parking.wait(spot)

        async def writer(total: int) -> None:
            done = 0
            while done < total:
                if not pending:
                    idle.append(trio.lowlevel.current_task())
                    await trio.lowlevel.wait_task_rescheduled(abort)
                batch = pending[:]
                pending.clear()
                await trio.lowlevel.checkpoint()  # where the commit would be
                for spot in batch:
                    trio.lowlevel.reschedule(spot.waiter)
                done += len(batch)

        t0 = c.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, per_task * tasks)
            for _ in range(tasks):
                nursery.start_soon(appender)
        return per_task * tasks / (c.perf_counter() - t0)

    return trio.run(main)


# -- 8. the pipeline's bound ------------------------------------------------------


def pipeline_bound(args, events: int, tasks: int) -> float:
    """Events/s of the barest form of nerve's pipeline (see the docstring)."""
    per_task = events // tasks
    chunk = 128  # as the log stages: the first chunk takes off at once

    with raw_log(args, "bound") as conn:
        flights = LogWriter(conn, Path("bound"), fts=False)
        flights.prepare_flights()  # the temporary view and trigger
        # As the log checkpoints under big batches.
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
        data_version = conn.execute("PRAGMA data_version").fetchall()[0][0]

        async def main() -> float:
            token = trio.lowlevel.current_trio_token()
            pending: list[tuple[str, str, Spot]] = []
            parking = Parking()  # as the log parks its appenders
            writer_idle: list[trio.lowlevel.Task] = []  # woken by appends
            writer_full: list[trio.lowlevel.Task] = []  # woken by landings only
            landed: list[bool] = []

            def abort(_: object) -> trio.lowlevel.Abort:
                return trio.lowlevel.Abort.FAILED

            def wake_writer() -> None:
                if writer_idle:
                    trio.lowlevel.reschedule(writer_idle.pop())

            async def appender(task: int) -> None:
                stream = f"s{task}"
                spot = Spot()
                for i in range(per_task):
                    text = orjson.dumps(payload(i, task)).decode()
                    pending.append((stream, text, spot))
                    wake_writer()
                    await parking.wait(spot)

            lock = _thread.allocate_lock()
            offered: list[tuple[object, ...]] = []  # the batch offered to follow
            landings: list[bool] = []  # per landing: whether it went on

            def params(rows: bytearray, hashes: bytearray) -> tuple[object, ...]:
                rows[-1:] = b"]"
                return (data_version, bytes(rows), bytes(hashes), None, None, None)

            def take_off(batch: tuple[object, ...]) -> None:
                started = _thread.allocate_lock()
                started.acquire()

                def fly() -> None:  # as the log: on to each batch offered
                    started.release()
                    following: tuple[object, ...] | None = batch
                    while following is not None:
                        conn.execute(_FLIGHT_INSERT, (*following, False, None))
                        with lock:
                            following = offered.pop() if offered else None
                            landings.append(following is not None)
                        token.run_sync_soon(seen)

                def seen() -> None:
                    landed.append(True)
                    writer_idle.extend(writer_full)
                    writer_full.clear()
                    wake_writer()

                trio.lowlevel.start_thread_soon(fly, lambda _: None)
                started.acquire()  # as the log: the thread runs at once

            async def writer(total: int) -> None:
                head, prev, versions, done = 0, bytes(32), {}, 0
                flying: list[tuple[Spot, int]] | None = None
                nxt: list[tuple[Spot, int]] = []
                sealed = False  # nxt is offered to the thread
                rows, hashes = bytearray(b"["), bytearray()
                while done < total:
                    if landed:
                        landed.pop()
                        with lock:
                            went_on = landings.pop(0)
                        assert flying is not None
                        written, flying = flying, None
                        if went_on:
                            flying, nxt, sealed = nxt, [], False
                            rows, hashes = bytearray(b"["), bytearray()
                        elif nxt:
                            take_off(params(rows, hashes))
                            flying, nxt, sealed = nxt, [], False
                            rows, hashes = bytearray(b"["), bytearray()
                        for spot, position in written:
                            result = outcome.Value(position)
                            trio.lowlevel.reschedule(spot.waiter, result)
                        done += len(written)
                    elif (
                        pending
                        and not sealed
                        and (
                            # as the log: the next batch takes at most half of
                            # what waits, so that the cohorts stay even
                            flying is None
                            or len(nxt)
                            < max(chunk, (len(flying) + len(nxt) + len(pending)) // 2)
                        )
                    ):
                        batch = pending[:chunk]
                        del pending[:chunk]
                        now = int(time.time() * 1000)
                        for stream, text, spot in batch:
                            version = versions.get(stream, 0) + 1
                            versions[stream] = version
                            head += 1
                            row = (head, stream, version, TYPE, 1, "", now, text)
                            content = orjson.dumps((*row, None, None))
                            prev = hashlib.sha256(prev + content).digest()
                            rows += content
                            rows += b","
                            hashes += prev
                            nxt.append((spot, head))
                        if flying is None:
                            take_off(params(rows, hashes))
                            flying, nxt = nxt, []
                            rows, hashes = bytearray(b"["), bytearray()
                    else:  # nothing to do, or the next batch is full
                        if flying and nxt and not sealed:
                            # as the log: offered, unless the flight landed
                            with lock:
                                if not landings:
                                    offered.append(params(rows, hashes))
                                    sealed = True
                        waits = writer_full if pending else writer_idle
                        waits.append(trio.lowlevel.current_task())
                        await trio.lowlevel.wait_task_rescheduled(abort)

            t0 = c.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, per_task * tasks)
                for task in range(tasks):
                    nursery.start_soon(appender, task)
            elapsed = c.perf_counter() - t0
            count = conn.execute("SELECT count(*) FROM logs").fetchall()[0][0]
            assert count == per_task * tasks, count
            return per_task * tasks / elapsed

        with nerve.gc_tuned():
            return trio.run(main)


# -- 4. nerve, one appender --------------------------------------------------------


def nerve_latency(args, events: int) -> tuple[float, float]:
    """One task appending single events in turn: (p50, p99) in ms."""

    async def main() -> tuple[float, float]:
        with c.temp_dir(args, "latency") as d:
            async with open_log(d, fts=False, registry=EventRegistry()) as log:
                for i in range(50):  # warm up: the thread cache, statements
                    await log.append("warm", NewEvent(TYPE, payload(i, 0)))
                latencies = []
                for i in range(events):
                    ev = NewEvent(TYPE, payload(i, 0))
                    t0 = c.perf_counter()
                    await log.append("alone", ev)
                    latencies.append((c.perf_counter() - t0) * 1000)
        return c.percentile(latencies, 50), c.percentile(latencies, 99)

    return trio.run(main)


# -- 5. eventsourcing, the peer ----------------------------------------------------


def eventsourcing_run(args, events: int) -> tuple[float, int]:
    """SQLiteApplicationRecorder.insert_events, one event per call (transaction).

    Returns events/s and the ``PRAGMA synchronous`` its connections run with.
    """
    with c.temp_dir(args, "eventsourcing") as d:
        datastore = SQLiteDatastore(str(d / "es.db"))
        try:
            recorder = SQLiteApplicationRecorder(datastore)
            recorder.create_table()
            with datastore.transaction(commit=False) as cur:
                cur.execute("PRAGMA synchronous")
                synchronous = cur.fetchone()[0]
            ids = [uuid.uuid4() for _ in range(STREAMS)]
            t0 = c.perf_counter()
            for i in range(events):
                state = orjson.dumps(payload(i, i % STREAMS))
                stored = StoredEvent(ids[i % STREAMS], i // STREAMS + 1, TYPE, state)
                recorder.insert_events([stored])
            return events / (c.perf_counter() - t0), synchronous
        finally:
            datastore.close()


# -- main --------------------------------------------------------------------------


def main() -> None:
    # Five runs per figure, not three: the ratio divides an fsync-bound
    # baseline by a CPU-bound figure on a shared machine, and a run disturbed
    # from outside (seen here: one run at 158k amid runs at 180k) should
    # not move the median.
    args = c.parse_args(__doc__.splitlines()[0], runs=5)
    tasks = 1000
    events = c.sized(args, 100_000, 10_000)
    base_events = c.sized(args, 5_000, 1_000)
    lat_events = c.sized(args, 3_000, 300)
    c.header(
        "bench/append.py: durable appends (synchronous=FULL)",
        args,
        events=events,
        tasks=tasks,
        baseline_events=base_events,
        latency_events=lat_events,
    )
    base, plain, shared, fts, p50, p99, es, untuned = (c.Series() for _ in range(8))
    sustained = c.Series()
    floor, ceiling, bound = c.Series(), c.Series(), c.Series()
    plain_info = fts_info = ""
    synchronous = None
    for run in range(1, args.runs + 1):
        c.progress(f"run {run}/{args.runs}: baseline")
        base.add(baseline(args, base_events))
        c.progress(f"run {run}/{args.runs}: nerve, {tasks} appenders, fts=False")
        rate, plain_info = nerve_concurrent(args, events, tasks, fts=False)
        plain.add(rate)
        c.progress(f"run {run}/{args.runs}: nerve, {tasks} appenders, no GC tuning")
        untuned.add(
            nerve_concurrent(args, events, tasks, fts=False, gc_threshold=None)[0]
        )
        c.progress(f"run {run}/{args.runs}: nerve, {tasks} appenders, 10 streams")
        shared.add(nerve_concurrent(args, events, tasks, fts=False, streams=10)[0])
        c.progress(f"run {run}/{args.runs}: nerve, {tasks} appenders, 4x the events")
        sustained.add(nerve_concurrent(args, 4 * events, tasks, fts=False)[0])
        c.progress(f"run {run}/{args.runs}: nerve, {tasks} appenders, fts=True")
        rate, fts_info = nerve_concurrent(args, events, tasks, fts=True)
        fts.add(rate)
        c.progress(f"run {run}/{args.runs}: floor, SQLite alone")
        floor.add(sqlite_floor(args, events))
        c.progress(f"run {run}/{args.runs}: ceiling, trio hand-offs alone")
        ceiling.add(trio_ceiling(events, tasks))
        c.progress(f"run {run}/{args.runs}: bound, the pipeline alone")
        bound.add(pipeline_bound(args, events, tasks))
        c.progress(f"run {run}/{args.runs}: nerve, one appender")
        lo, hi = nerve_latency(args, lat_events)
        p50.add(lo)
        p99.add(hi)
        if SQLiteDatastore is not None:
            c.progress(f"run {run}/{args.runs}: eventsourcing")
            rate, synchronous = eventsourcing_run(args, base_events)
            es.add(rate)

    b = base.median
    r = c.Report("durable append, events/s (x base: ratio to the raw apsw baseline)")
    r.add("baseline: raw apsw, 1 txn/event", base, "events/s", baseline=b)
    if es:
        r.add(
            "peer: eventsourcing SQLite, 1 txn/event",
            es,
            "events/s",
            baseline=b,
            note=f"SQLiteApplicationRecorder, PRAGMA synchronous={synchronous} "
            "(2 = FULL); nerve fts=False is "
            f"{plain.median / es.median:.1f}x this",
        )
    else:
        r.add(
            "peer: eventsourcing SQLite, 1 txn/event",
            None,
            "events/s",
            note="skipped: eventsourcing is not installed "
            "(.venv/bin/pip install -e '.[bench]')",
        )
    r.add(
        f"nerve: {tasks} appenders, fts=False",
        plain,
        "events/s",
        baseline=b,
        checks=[
            c.at_least(plain.median, 100_000, "100k/s"),
            c.at_least(plain.median / b, 30, "30x"),
        ],
        note=f"last run: {plain_info}",
    )
    r.add(
        f"nerve: {tasks} appenders, gc_threshold=None",
        untuned,
        "events/s",
        baseline=b,
        note="fts=False, CPython's young-generation GC threshold (700) instead "
        "of the log's default (10,000)",
    )
    r.add(
        f"nerve: {tasks} appenders, 10 streams",
        shared,
        "events/s",
        baseline=b,
        note="fts=False, the appenders share 10 streams instead of one each: "
        "fewer UNIQUE(stream, version) index pages dirtied per commit",
    )
    r.add(
        f"nerve: {tasks} appenders, {4 * events:,} events",
        sustained,
        "events/s",
        baseline=b,
        note=f"fts=False, 4x the events ({4 * events // tasks} per stream): each "
        "commit dirties one UNIQUE(stream, version) index page per stream "
        "appended to, a page of its own once a stream outgrows its neighbours, "
        "so commits (and checkpoints) grow with the log before they level off",
    )
    r.add(
        f"nerve: {tasks} appenders, fts=True",
        fts,
        "events/s",
        baseline=b,
        checks=[c.at_least(fts.median, 60_000, "60k/s")],
        note=f"last run: {fts_info}",
    )
    r.add(
        "nerve: one appender, p50 latency",
        p50,
        "ms",
        checks=[c.at_most(p50.median, 1.0, "1 ms")],
        note=f"{lat_events:,} sequential appends per run; "
        f"baseline mean {1000 / b:.3f} ms per commit",
    )
    r.add("nerve: one appender, p99 latency", p99, "ms")
    r.add(
        "floor: SQLite alone, 1000-row transactions",
        floor,
        "events/s",
        baseline=b,
        note="the same rows (1000 streams) by executemany + COMMIT, built "
        "beforehand: what SQLite itself allows for this workload; nerve "
        f"fts=False reaches {plain.median / floor.median:.0%} of it",
    )
    r.add(
        f"ceiling: {tasks} tasks hand off, no I/O",
        ceiling,
        "hand-offs/s",
        baseline=b,
        note="trio's park/wake of the appenders alone, no encoding, no SQLite: "
        f"nerve fts=False reaches {plain.median / ceiling.median:.0%} of it",
    )
    r.add(
        f"bound: the pipeline alone, {tasks} tasks",
        bound,
        "events/s",
        baseline=b,
        note="positions, hash chain and nerve's one-statement insert, the "
        "thread going on to the batch staged meanwhile, nothing else (no API, "
        "no checks): what this design "
        "allows on this machine (trio, SQLite and the disk together); nerve "
        f"fts=False reaches {plain.median / bound.median:.0%} of it",
    )
    r.print()


if __name__ == "__main__":
    main()
