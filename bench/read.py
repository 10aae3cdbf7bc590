"""Read / replay throughput of `nerve.events.Log.read`, decoded events/s.

Writes a log once (nerve's own append, 1000-event batches, fts=False), then,
each the median of ``--runs`` interleaved runs over the same warm file:

1. baseline: raw apsw, keyset pages of 1000 rows
   (``SELECT ... FROM logs WHERE position > ? ORDER BY position LIMIT 1000``)
   and ``orjson.loads`` of each payload, on the calling thread.
2. nerve: ``async for e in log.read()``, touching each ``e.data``; payloads come
   back as dicts (the type is not registered). Target: >= 500k events/s; ratio
   to (1).
3. nerve: the same through ``EventReader.next_page()`` (a page per await, as
   projections read), to show what the per-event async iteration costs.
4. nerve: the same rows read back as a registered attrs class.
5. peer: the ``eventsourcing`` library's SQLite application recorder,
   ``select_notifications`` pages of 1000 and ``orjson.loads`` of each state
   (skipped when the package is not installed).

Run: ``.venv/bin/python bench/read.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import uuid

import _common as c
import apsw
import attrs
import orjson
import trio

from nerve.events import EventRegistry, NewEvent, open_log

try:
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
except ImportError:  # an optional peer: `pip install -e '.[bench]'`
    SQLiteDatastore = None

TYPE = "bench.tick"
MSG = "a benchmark event, about as big as a small real one"
BATCH = 1000
WRITERS = 4
PAGE = 1000
COLUMNS = (
    "position, stream, version, type, type_version, source, ts, payload, blob, meta"
)


@attrs.frozen
class Tick:
    n: int
    task: int
    msg: str


def payload(n: int, task: int) -> dict[str, object]:
    return {"n": n, "task": task, "msg": MSG}


# -- setup -------------------------------------------------------------------------


def populate(data_dir, events: int) -> float:
    """Write ``events`` with nerve's append, ``BATCH`` events per call: events/s."""
    calls = events // BATCH

    async def main() -> float:
        async with open_log(data_dir, fts=False, registry=EventRegistry()) as log:

            async def writer(w: int) -> None:
                for k in range(w, calls, WRITERS):
                    batch = [
                        NewEvent(TYPE, payload(k * BATCH + i, k)) for i in range(BATCH)
                    ]
                    await log.append(f"s{k % 1000}", batch)

            t0 = c.perf_counter()
            async with trio.open_nursery() as nursery:
                for w in range(WRITERS):
                    nursery.start_soon(writer, w)
            elapsed = c.perf_counter() - t0
            assert log.head == calls * BATCH
        return calls * BATCH / elapsed

    return trio.run(main)


def populate_eventsourcing(path, events: int) -> None:
    datastore = SQLiteDatastore(str(path))
    try:
        recorder = SQLiteApplicationRecorder(datastore)
        recorder.create_table()
        ids = [uuid.uuid4() for _ in range(1000)]
        for k in range(events // BATCH):
            stored = [
                StoredEvent(
                    ids[k % 1000],
                    (k // 1000) * BATCH + i + 1,
                    TYPE,
                    orjson.dumps(payload(k * BATCH + i, k)),
                )
                for i in range(BATCH)
            ]
            recorder.insert_events(stored)
    finally:
        datastore.close()


# -- readers -----------------------------------------------------------------------


def raw_read(db_path, events: int) -> float:
    """The baseline: apsw pages and orjson, nothing else: events/s."""
    conn = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    loads = orjson.loads
    sql = (
        f"SELECT {COLUMNS}, hash FROM logs WHERE position > ? ORDER BY position LIMIT ?"
    )
    try:
        t0 = c.perf_counter()
        n = 0
        after = 0
        while True:
            rows = conn.execute(sql, (after, PAGE)).fetchall()
            if not rows:
                break
            decoded = [loads(r[7]) for r in rows]
            n += len(decoded)
            after = rows[-1][0]
        elapsed = c.perf_counter() - t0
    finally:
        conn.close()
    assert n == events, n
    return n / elapsed


def nerve_read(data_dir, events: int, registry: EventRegistry, cls=dict) -> float:
    """``async for e in log.read()``, every event's data touched: events/s."""

    async def main() -> float:
        async with open_log(data_dir, fts=False, registry=registry) as log:
            n = 0
            data = None
            t0 = c.perf_counter()
            async for e in log.read():
                data = e.data  # decoded: a lazy decode would be paid here
                n += 1
            elapsed = c.perf_counter() - t0
        assert n == events, n
        assert isinstance(data, cls), data
        return n / elapsed

    return trio.run(main)


def nerve_read_pages(data_dir, events: int, registry: EventRegistry) -> float | None:
    """``EventReader.next_page()`` (what projections use), a page per await."""

    async def main() -> float | None:
        async with open_log(data_dir, fts=False, registry=registry) as log:
            reader = log.read()
            if not hasattr(reader, "next_page"):
                return None
            n = 0
            t0 = c.perf_counter()
            while (got := await reader.next_page()) is not None:
                for e in got[0]:
                    e.data  # noqa: B018 (touch it, as above)
                n += len(got[0])
            elapsed = c.perf_counter() - t0
        assert n == events, n
        return n / elapsed

    return trio.run(main)


def eventsourcing_read(path, events: int) -> float:
    datastore = SQLiteDatastore(str(path))
    try:
        recorder = SQLiteApplicationRecorder(datastore)
        loads = orjson.loads
        t0 = c.perf_counter()
        n = 0
        start = 0
        while True:
            page = recorder.select_notifications(start, PAGE, inclusive_of_start=False)
            if not page:
                break
            decoded = [loads(x.state) for x in page]
            n += len(decoded)
            start = page[-1].id
        elapsed = c.perf_counter() - t0
    finally:
        datastore.close()
    assert n == events, n
    return n / elapsed


# -- main --------------------------------------------------------------------------


def main() -> None:
    args = c.parse_args(__doc__.splitlines()[0])
    events = c.sized(args, 1_000_000, 100_000)
    c.header("bench/read.py: read / replay", args, events=events, page=PAGE)
    plain_registry = EventRegistry()
    attrs_registry = EventRegistry()
    attrs_registry.register(TYPE, Tick)
    with c.temp_dir(args, "read") as d:
        data_dir = d / "data"
        c.progress(f"writing {events:,} events with nerve ({BATCH} per append)")
        write_rate = populate(data_dir, events)
        es_path = d / "es.db"
        if SQLiteDatastore is not None:
            c.progress(f"writing {events:,} events with eventsourcing")
            populate_eventsourcing(es_path, events)
        base, plain, pages, typed, es = (c.Series() for _ in range(5))
        for run in range(1, args.runs + 1):
            c.progress(f"run {run}/{args.runs}: baseline")
            base.add(raw_read(data_dir / "logs.db", events))
            c.progress(f"run {run}/{args.runs}: nerve, dict payloads")
            plain.add(nerve_read(data_dir, events, plain_registry))
            c.progress(f"run {run}/{args.runs}: nerve, next_page()")
            rate = nerve_read_pages(data_dir, events, plain_registry)
            if rate is not None:
                pages.add(rate)
            c.progress(f"run {run}/{args.runs}: nerve, attrs payloads")
            typed.add(nerve_read(data_dir, events, attrs_registry, Tick))
            if SQLiteDatastore is not None:
                c.progress(f"run {run}/{args.runs}: eventsourcing")
                es.add(eventsourcing_read(es_path, events))

    b = base.median
    r = c.Report("read, decoded events/s (x base: ratio to the raw apsw baseline)")
    r.add("baseline: raw apsw pages + orjson", base, "events/s", baseline=b)
    r.add(
        "nerve: log.read(), dict payloads",
        plain,
        "events/s",
        baseline=b,
        checks=[c.at_least(plain.median, 500_000, "500k/s")],
    )
    if pages:
        r.add(
            "nerve: next_page(), dict payloads",
            pages,
            "events/s",
            baseline=b,
            note="a page of events per await, as projections read: no await per event",
        )
    r.add(
        "nerve: log.read(), attrs payloads",
        typed,
        "events/s",
        baseline=b,
        note="the same rows, the type registered to an attrs class",
    )
    if es:
        r.add(
            "peer: eventsourcing select_notifications",
            es,
            "events/s",
            baseline=b,
            note="recorder-level Notification objects + orjson.loads of state; "
            f"nerve dict payloads are {plain.median / es.median:.1f}x this",
        )
    else:
        r.add(
            "peer: eventsourcing select_notifications",
            None,
            "events/s",
            note="skipped: eventsourcing is not installed "
            "(.venv/bin/pip install -e '.[bench]')",
        )
    r.note(
        f"setup: nerve wrote the {events:,} events at {c.fmt(write_rate, '/s')} "
        f"events/s ({BATCH}-event appends from {WRITERS} tasks); reads are of a "
        "warm page cache"
    )
    r.print()


if __name__ == "__main__":
    main()
