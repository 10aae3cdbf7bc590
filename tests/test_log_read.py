"""Behaviour of the log's read side: read, subscribe (in and across processes),
search, verify, archive (and its crash recovery) and backup."""

from __future__ import annotations

import datetime as dt
import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio
import trio.testing

import nerve
import nerve.events._log as log_module
from nerve import NO_STREAM, NewEvent
from nerve.events._log import PAGE_SIZE

DAY = 86_400.0

# -- helpers -----------------------------------------------------------------------


async def read_all(log: nerve.Log, **kwargs: Any) -> list[nerve.RecordedEvent]:
    return [ev async for ev in log.read(**kwargs)]


def positions(events: Sequence[nerve.RecordedEvent]) -> list[int]:
    return [e.position for e in events]


def db_execute(path: Path, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Run SQL on a separate connection, as another program would."""
    conn = apsw.Connection(str(path))
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Let the other tasks run until ``predicate`` holds (no timing involved)."""
    with trio.fail_after(10):  # a safety net against hanging, not a timing test
        while not predicate():
            await trio.testing.wait_all_tasks_blocked()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def utc_day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d")


def old_base() -> float:
    """1 a.m. UTC, forty days ago: events from here on fall in known UTC days."""
    t = time.time() - 40 * DAY
    return t - t % DAY + 3600


async def write_history(log: nerve.Log, clock: FakeClock) -> list[str]:
    """Three old days of events, then some of today. Returns the old days."""
    base = old_base()
    clock.now = base
    await log.append(
        "old", [NewEvent("test.a", {"n": 1}), NewEvent("test.b", {"n": 2})]
    )
    await log.append("mixed", NewEvent("test.a", {"n": 3}))
    clock.now = base + DAY
    await log.append("old", NewEvent("test.a", {"n": 4}))
    await log.append("mixed", NewEvent("test.b", {"n": 5}))
    clock.now = base + 2 * DAY + 7200
    await log.append("mixed", NewEvent("test.a", {"n": 6}))
    clock.now = time.time()
    await log.append("mixed", NewEvent("test.b", {"n": 7}))
    await log.append("new", NewEvent("test.a", {"n": 8}))
    return [utc_day(base + i * DAY) for i in range(3)]


def hot_positions(path: Path) -> list[int]:
    return [r[0] for r in db_execute(path, "SELECT position FROM logs ORDER BY 1")]


# -- read --------------------------------------------------------------------------


async def test_read_after_is_the_suffix(log: nerve.Log) -> None:
    for i in range(12):
        await log.append(f"s{i % 3}", NewEvent("test.e", {"i": i}))
    everything = await read_all(log)
    assert positions(everything) == list(range(1, 13))
    assert [e.data["i"] for e in everything] == list(range(12))
    for k in range(15):
        assert await read_all(log, after=k) == everything[k:]
    with pytest.raises(ValueError):
        log.read(after=-1)


async def test_read_by_stream_and_types(log: nerve.Log) -> None:
    await log.append("a", [NewEvent("t.x", {"i": 1}), NewEvent("t.y", {"i": 2})])
    await log.append("b", NewEvent("t.x", {"i": 3}))
    await log.append("a", NewEvent("t.z", {"i": 4}))
    await log.append("b", NewEvent("t.y", {"i": 5}))

    a = await read_all(log, stream="a")
    assert [(e.position, e.version, e.data["i"]) for e in a] == [
        (1, 1, 1),
        (2, 2, 2),
        (4, 3, 4),
    ]
    assert positions(await read_all(log, types=["t.y"])) == [2, 5]
    assert positions(await read_all(log, types=["t.x", "t.z"])) == [1, 3, 4]
    assert positions(await read_all(log, stream="b", types=["t.y"])) == [5]
    assert positions(await read_all(log, stream="a", after=2)) == [4]
    assert await read_all(log, stream="nobody") == []
    assert await read_all(log, types=["t.none"]) == []


async def test_read_across_pages(log: nerve.Log) -> None:
    total = 2 * PAGE_SIZE + 345
    for start in range(0, total, 500):
        count = min(500, total - start)
        await log.append(
            "bulk" if start % 1500 else "other",
            [NewEvent("test.e", {"i": start + j}) for j in range(count)],
        )
    everything = await read_all(log)
    assert positions(everything) == list(range(1, total + 1))
    assert [e.data["i"] for e in everything] == list(range(total))
    tail = await read_all(log, after=PAGE_SIZE + 17)
    assert positions(tail) == list(range(PAGE_SIZE + 18, total + 1))
    bulk = await read_all(log, stream="bulk")
    assert positions(bulk) == [e.position for e in everything if e.stream == "bulk"]
    assert [e.version for e in bulk] == list(range(1, len(bulk) + 1))
    assert len(bulk) > PAGE_SIZE


async def test_stream_version(log: nerve.Log) -> None:
    assert await log.stream_version("s") == 0
    await log.append("s", [NewEvent("test.e")] * 3)
    await log.append("t", NewEvent("test.e"))
    await log.append("s", NewEvent("test.e"))
    assert await log.stream_version("s") == 4
    assert await log.stream_version("t") == 1
    assert await log.stream_version("u") == 0


# -- subscribe ---------------------------------------------------------------------


async def test_subscribe_catches_up_then_follows(log: nerve.Log) -> None:
    for i in range(3):
        await log.append("s", NewEvent("test.e", {"i": i}))
    send, recv = trio.open_memory_channel[nerve.RecordedEvent](math.inf)

    async def subscriber() -> None:
        async for ev in log.subscribe():
            await send.send(ev)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber)
            assert [(await recv.receive()).position for _ in range(3)] == [1, 2, 3]
            await wait_until(lambda: log.statistics().subscribers == 1)
            assert recv.statistics().current_buffer_used == 0
            for i in range(3, 6):
                await log.append("t", NewEvent("test.e", {"i": i}))
                ev = await recv.receive()
                assert (ev.position, ev.stream, ev.data) == (i + 1, "t", {"i": i})
            # A multi-event append arrives whole, in order.
            await log.append("u", [NewEvent("test.e", {"j": j}) for j in range(4)])
            got = [await recv.receive() for _ in range(4)]
            assert positions(got) == [7, 8, 9, 10]
            nursery.cancel_scope.cancel()


async def test_subscribe_after_position(log: nerve.Log) -> None:
    await log.append("s", [NewEvent("test.e")] * 5)
    sub = log.subscribe(after=3)
    with trio.fail_after(10):
        assert (await sub.__anext__()).position == 4
        assert (await sub.__anext__()).position == 5
        await log.append("s", NewEvent("test.e"))
        assert (await sub.__anext__()).position == 6


async def test_subscribe_filters(log: nerve.Log) -> None:
    await log.append("a", [NewEvent("t.one", {"i": 1}), NewEvent("t.two", {"i": 2})])
    await log.append("b", NewEvent("t.one", {"i": 3}))
    send, recv = trio.open_memory_channel[nerve.RecordedEvent](math.inf)

    async def subscriber() -> None:
        async for ev in log.subscribe(stream="a", types=["t.one"]):
            await send.send(ev)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(subscriber)
            assert (await recv.receive()).position == 1
            await log.append("b", NewEvent("t.one", {"i": 4}))  # other stream
            await log.append("a", NewEvent("t.two", {"i": 5}))  # other type
            await log.append("a", NewEvent("t.one", {"i": 6}))
            # Delivered in position order: 4 and 5 would have come first.
            ev = await recv.receive()
            assert (ev.position, ev.data) == (6, {"i": 6})
            await wait_until(lambda: log.statistics().subscribers == 1)
            assert recv.statistics().current_buffer_used == 0
            nursery.cancel_scope.cancel()


async def test_subscription_ends_when_the_log_closes(data_dir: Path) -> None:
    got: list[int] = []

    async def subscriber(log: nerve.Log) -> None:
        got.extend([ev.position async for ev in log.subscribe()])

    with trio.fail_after(10):
        async with nerve.open_log(data_dir) as log:
            await log.append("s", [NewEvent("test.e")] * 2)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscriber, log)
                await wait_until(lambda: log.statistics().subscribers == 1)
                await log.aclose()
            # The nursery exited: the subscription ended by itself.
        assert got == [1, 2]

        # Also when the log's block is left while a subscriber waits.
        async with trio.open_nursery() as nursery, nerve.open_log(data_dir) as log:
            nursery.start_soon(subscriber, log)
            await wait_until(lambda: log.statistics().subscribers == 1)
        assert got == [1, 2, 1, 2]


CHILD = """
import sys
import trio
import nerve

async def main():
    async with nerve.open_log(sys.argv[1], source="child") as log:
        await log.append("from-child", nerve.NewEvent("test.child", {"hello": 1}))

trio.run(main)
"""


async def test_subscribe_sees_appends_of_another_process(data_dir: Path) -> None:
    send, recv = trio.open_memory_channel[nerve.RecordedEvent](math.inf)
    async with nerve.open_log(data_dir, source="parent") as log:
        await log.append("mine", NewEvent("test.e"))

        async def subscriber() -> None:
            async for ev in log.subscribe(after=1):
                await send.send(ev)

        with trio.fail_after(10):  # a safety net, not a timing assertion
            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscriber)
                await wait_until(lambda: log.statistics().subscribers == 1)
                await trio.run_process(
                    [sys.executable, "-c", CHILD, str(data_dir)], capture_stderr=True
                )
                ev = await recv.receive()
                assert (ev.position, ev.stream, ev.source, ev.data) == (
                    2,
                    "from-child",
                    "child",
                    {"hello": 1},
                )
                nursery.cancel_scope.cancel()
        # This process's writer continues the other process's chain.
        r = await log.append("mine", NewEvent("test.e"))
        assert (r.first_position, r.version) == (3, 2)
        assert await log.verify() is None


# -- search ------------------------------------------------------------------------


async def test_search_finds_payload_words_ranked(log: nerve.Log) -> None:
    await log.append("s", NewEvent("test.note", {"text": "the weather is fine today"}))
    await log.append(
        "s", NewEvent("test.note", {"text": "disk failure: disk full, disk error"})
    )
    await log.append(
        "s",
        NewEvent(
            "test.note",
            {"text": "a long note about many things, and the disk is mentioned once"},
        ),
    )
    hits = await log.search("disk")
    assert [h.event.position for h in hits] == [2, 3]
    assert all(isinstance(h, nerve.SearchHit) for h in hits)
    assert hits[0].rank <= hits[1].rank  # best first
    assert "[disk]" in hits[0].snippet
    assert hits[0].event.data == {"text": "disk failure: disk full, disk error"}
    assert [h.event.position for h in await log.search("weather AND fine")] == [1]
    assert await log.search("weather AND disk") == []
    assert await log.search("absent") == []
    assert len(await log.search("disk", limit=1)) == 1


async def test_search_literal_handles_punctuation(log: nerve.Log) -> None:
    await log.append("s", NewEvent("test.e", {"msg": "user-123 logged in"}))
    await log.append("s", NewEvent("test.e", {"msg": "user-456 logged in, 123 times"}))
    with pytest.raises(nerve.SearchQueryError):
        await log.search("user-123")
    hits = await log.search("user-123", literal=True)
    assert [h.event.position for h in hits] == [1]
    hits = await log.search('say "hi" (user-456)', literal=True)
    assert hits == []
    with pytest.raises(nerve.SearchQueryError):
        await log.search("   ", literal=True)


@pytest.mark.parametrize("query", ['"unterminated', "AND", "a OR", "(x", "", "  "])
async def test_malformed_search_query_raises(log: nerve.Log, query: str) -> None:
    await log.append("s", NewEvent("test.e", {"x": "y"}))
    with pytest.raises(nerve.SearchQueryError) as info:
        await log.search(query)
    assert isinstance(info.value, ValueError)


async def test_search_off_then_backlog_indexed(data_dir: Path) -> None:
    async with nerve.open_log(data_dir, fts=False) as log:
        await log.append("s", NewEvent("test.e", {"text": "backlog alpha"}))
        await log.append("s", NewEvent("test.e", {"text": "backlog beta"}))
        with pytest.raises(nerve.SearchQueryError, match="off"):
            await log.search("alpha")
    async with nerve.open_log(data_dir, fts=True) as log:
        assert [h.event.position for h in await log.search("alpha")] == [1]
        await log.append("s", NewEvent("test.e", {"text": "gamma backlog"}))
        assert sorted(h.event.position for h in await log.search("backlog")) == [
            1,
            2,
            3,
        ]
    # Off again, then on again: nothing indexed twice, nothing missed.
    async with nerve.open_log(data_dir, fts=False) as log:
        await log.append("s", NewEvent("test.e", {"text": "delta backlog"}))
    async with nerve.open_log(data_dir) as log:
        hits = await log.search("backlog")
        assert sorted(h.event.position for h in hits) == [1, 2, 3, 4]


# -- verify ------------------------------------------------------------------------


async def test_verify_intact_log(log: nerve.Log) -> None:
    assert await log.verify() is None
    for i in range(5):
        await log.append(f"s{i % 2}", NewEvent("test.e", {"i": i}, meta={"m": i}))
    assert await log.verify() is None


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("UPDATE logs SET payload = ? WHERE position = 3", ['{"i":99}']),
        ("UPDATE logs SET meta = ? WHERE position = 3", ['{"m":99}']),
        ("UPDATE logs SET stream = 's9' WHERE position = 3", []),
        ("UPDATE logs SET ts = ts + 1 WHERE position = 3", []),
        ("UPDATE logs SET hash = zeroblob(32) WHERE position = 3", []),
    ],
)
async def test_verify_finds_a_tampered_row(
    log: nerve.Log, sql: str, params: list[Any]
) -> None:
    for i in range(6):
        await log.append(f"s{i % 2}", NewEvent("test.e", {"i": i}, meta={"m": i}))
    db_execute(log.path, sql, params)
    assert await log.verify() == 3


async def test_verify_finds_a_deleted_row(log: nerve.Log) -> None:
    for i in range(6):
        await log.append("s", NewEvent("test.e", {"i": i}))
    db_execute(log.path, "DELETE FROM logs WHERE position = 4")
    assert await log.verify() == 4


async def test_verify_finds_a_tampered_blob_reference(data_dir: Path) -> None:
    async with nerve.open_log(data_dir, blob_threshold=1024) as log:
        await log.append("s", NewEvent("test.e", {"text": "a" * 2000}))
        await log.append("s", NewEvent("test.e", {"text": "b" * 2000}))
        assert await log.verify() is None
        other = db_execute(log.path, "SELECT blob FROM logs WHERE position = 2")[0][0]
        db_execute(log.path, "UPDATE logs SET blob = ? WHERE position = 1", [other])
        assert await log.verify() == 1


# -- archive -----------------------------------------------------------------------


async def test_archive_moves_old_days_to_files(data_dir: Path) -> None:
    clock = FakeClock(0)
    async with nerve.open_log(data_dir, clock=clock) as log:
        days = await write_history(log, clock)
        before = await read_all(log)
        assert positions(before) == list(range(1, 9))

        archived = await log.archive(older_than=timedelta(days=30))

        assert [d.day for d in archived] == days
        assert [(d.first, d.last, d.count) for d in archived] == [
            (1, 3, 3),
            (4, 5, 2),
            (6, 6, 1),
        ]
        assert await log.archived_days() == archived
        for d in days:
            path = data_dir / "archive" / "logs" / f"{d}.jsonl"
            assert path.is_file()
        assert len(list((data_dir / "archive" / "logs").iterdir())) == 3
        assert hot_positions(log.path) == [7, 8]

        # Reading is transparent: archived days first, then the hot table.
        assert await read_all(log) == before
        for k in range(10):
            assert await read_all(log, after=k) == before[k:], k
        mixed = [e for e in before if e.stream == "mixed"]
        assert await read_all(log, stream="mixed") == mixed
        assert await read_all(log, stream="mixed", after=4) == mixed[1:]
        assert await read_all(log, stream="new") == before[7:]
        assert await read_all(log, stream="old") == [*before[:2], before[3]]
        by_type = [e for e in before if e.type == "test.b"]
        assert await read_all(log, types=["test.b"]) == by_type
        assert await read_all(log, stream="mixed", types=["test.a"]) == [
            e for e in mixed if e.type == "test.a"
        ]

        assert await log.verify() is None
        assert await log.stream_version("old") == 3
        assert await log.stream_version("mixed") == 4
        # Nothing more is old enough.
        assert await log.archive(older_than=timedelta(days=30)) == []

        r = await log.append("mixed", NewEvent("test.a", {"n": 9}), expected_version=4)
        assert (r.first_position, r.version) == (9, 5)
        assert await log.verify() is None

    # The same after a reopen.
    async with nerve.open_log(data_dir) as log:
        after = await read_all(log)
        assert after[:8] == before
        assert positions(after) == list(range(1, 10))
        assert await log.verify() is None


async def test_archived_rows_leave_the_search_index(data_dir: Path) -> None:
    clock = FakeClock(0)
    async with nerve.open_log(data_dir, clock=clock) as log:
        clock.now = old_base()
        await log.append("s", NewEvent("test.e", {"text": "ancient word"}))
        clock.now = time.time()
        await log.append("s", NewEvent("test.e", {"text": "recent word"}))
        await log.archive(older_than=timedelta(days=30))
        assert [h.event.position for h in await log.search("word")] == [2]
    async with nerve.open_log(data_dir) as log:
        assert [h.event.position for h in await log.search("word")] == [2]


async def test_expected_version_of_a_fully_archived_stream(data_dir: Path) -> None:
    clock = FakeClock(0)
    async with nerve.open_log(data_dir, clock=clock) as log:
        await write_history(log, clock)
        await log.archive(older_than=timedelta(days=30))
        assert await log.stream_version("old") == 3
        with pytest.raises(nerve.WrongExpectedVersion) as info:
            await log.append("old", NewEvent("test.e"), expected_version=NO_STREAM)
        assert info.value.actual == 3
        with pytest.raises(nerve.WrongExpectedVersion):
            await log.append("old", NewEvent("test.e"), expected_version=2)
    async with nerve.open_log(data_dir) as log:
        with pytest.raises(nerve.WrongExpectedVersion) as info:
            await log.append("old", NewEvent("test.e"), expected_version=0)
        assert info.value.actual == 3
        r = await log.append("old", NewEvent("test.e"), expected_version=3)
        assert (r.first_position, r.version) == (9, 4)
        old = await read_all(log, stream="old")
        assert [e.version for e in old] == [1, 2, 3, 4]


async def test_archive_everything_then_append(data_dir: Path) -> None:
    clock = FakeClock(old_base())
    async with nerve.open_log(data_dir, clock=clock) as log:
        await log.append("s", [NewEvent("test.e", {"i": i}) for i in range(3)])
        await log.append("t", NewEvent("test.e", {"i": 3}))
        # While the log's clock is still in that day, the day is not over.
        assert await log.archive(older_than=timedelta(days=30)) == []
        clock.now = time.time()
        archived = await log.archive(older_than=timedelta(days=30))
        assert [(d.first, d.last) for d in archived] == [(1, 4)]
        assert hot_positions(log.path) == []
        assert log.head == 4
        r = await log.append("u", NewEvent("test.e", {"i": 4}))
        assert r.first_position == 5
        assert await log.verify() is None
        events = await read_all(log)
        assert positions(events) == [1, 2, 3, 4, 5]
        assert events[-1].ts >= events[-2].ts

    # Reopened with every event archived, the log still knows where it stands.
    later = time.time() + 2 * DAY
    async with nerve.open_log(data_dir, clock=FakeClock(later)) as log:
        assert log.head == 5
        await log.archive(older_than=timedelta(days=0), now=later)
        assert hot_positions(log.path) == []
        assert log.head == 5
    async with nerve.open_log(data_dir, clock=FakeClock(old_base())) as log:
        assert log.head == 5
        r = await log.append("s", NewEvent("test.e", {"i": 5}), expected_version=3)
        assert (r.first_position, r.version) == (6, 4)
        events = await read_all(log)
        assert positions(events) == [1, 2, 3, 4, 5, 6]
        ts = [e.ts for e in events]
        assert ts == sorted(ts)  # the clock is behind, ts still does not go back
        assert await log.verify() is None


async def test_read_when_exactly_a_page_is_archived(data_dir: Path) -> None:
    clock = FakeClock(old_base())
    async with nerve.open_log(data_dir, clock=clock) as log:
        await log.append(
            "old", [NewEvent("test.e", {"i": i}) for i in range(PAGE_SIZE)]
        )
        clock.now = time.time()
        await log.append("new", [NewEvent("test.e", {"i": i}) for i in range(3)])
        before = await read_all(log)
        await log.archive(older_than=timedelta(days=30))
        assert hot_positions(log.path) == [PAGE_SIZE + 1, PAGE_SIZE + 2, PAGE_SIZE + 3]
        assert await read_all(log) == before
        assert await read_all(log, stream="new") == before[PAGE_SIZE:]
        assert await read_all(log, after=5) == before[5:]


async def test_subscribe_streams_archive_then_hot_then_live(data_dir: Path) -> None:
    clock = FakeClock(0)
    send, recv = trio.open_memory_channel[nerve.RecordedEvent](math.inf)
    async with nerve.open_log(data_dir, clock=clock) as log:
        await write_history(log, clock)
        before = await read_all(log)
        await log.archive(older_than=timedelta(days=30))

        async def subscriber(**kwargs: Any) -> None:
            async for ev in log.subscribe(**kwargs):
                await send.send(ev)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscriber)
                assert [await recv.receive() for _ in range(8)] == before
                await log.append("live", NewEvent("test.a", {"n": 9}))
                ev = await recv.receive()
                assert (ev.position, ev.stream) == (9, "live")
                nursery.cancel_scope.cancel()

            # Filtered: a stream with no archived events, and one with both.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(subscriber, stream="new"))
                ev = await recv.receive()
                assert (ev.position, ev.stream) == (8, "new")
                await log.append("new", NewEvent("test.a", {"n": 10}))
                assert (await recv.receive()).position == 10
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(subscriber, stream="mixed", after=4)
                )
                assert positions([await recv.receive() for _ in range(3)]) == [5, 6, 7]
                await log.append("mixed", NewEvent("test.a", {"n": 11}))
                assert (await recv.receive()).position == 11
                nursery.cancel_scope.cancel()


async def test_tampered_archive_file_is_detected(data_dir: Path) -> None:
    clock = FakeClock(0)
    async with nerve.open_log(data_dir, clock=clock) as log:
        days = await write_history(log, clock)
        archived = await log.archive(older_than=timedelta(days=30))
        assert await log.verify() is None
        second = archived[1]
        path = data_dir / "archive" / "logs" / f"{days[1]}.jsonl"
        content = path.read_bytes()
        assert content.count(b'\\"n\\":5') == 1
        path.write_bytes(content.replace(b'\\"n\\":5', b'\\"n\\":6'))
        bad = await log.verify()
        assert bad is not None
        assert second.first <= bad <= second.last
        with pytest.raises(nerve.ArchiveError):
            await read_all(log)


async def test_missing_archive_file_is_detected(data_dir: Path) -> None:
    clock = FakeClock(0)
    async with nerve.open_log(data_dir, clock=clock) as log:
        days = await write_history(log, clock)
        archived = await log.archive(older_than=timedelta(days=30))
        (data_dir / "archive" / "logs" / f"{days[2]}.jsonl").unlink()
        assert await log.verify() == archived[2].first
        with pytest.raises(nerve.ArchiveError):
            await read_all(log)


@pytest.mark.parametrize("crash_on", [1, 2])
async def test_archive_recovers_from_a_crash_after_export(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, crash_on: int
) -> None:
    """A crash between writing a day's file and deleting its rows loses nothing
    and duplicates nothing: the next run finishes the job."""
    original = log_module._commit_day
    calls = 0

    def crashing(conn: apsw.Connection, day: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == crash_on:
            raise RuntimeError("simulated crash after the export")
        return original(conn, day)

    clock = FakeClock(0)
    async with nerve.open_log(data_dir, clock=clock) as log:
        days = await write_history(log, clock)
        before = await read_all(log)
        monkeypatch.setattr(log_module, "_commit_day", crashing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            await log.archive(older_than=timedelta(days=30))
        monkeypatch.undo()
        # The crashed day's file was written, but its rows are still hot.
        crashed_day = days[crash_on - 1]
        assert (data_dir / "archive" / "logs" / f"{crashed_day}.jsonl").is_file()
        done = await log.archived_days()
        assert [d.day for d in done] == days[: crash_on - 1]
        expected_hot = [p for p in range(1, 9) if p > (3 if crash_on == 2 else 0)]
        assert hot_positions(log.path) == expected_hot
        assert await read_all(log) == before
        assert await log.verify() is None

    async with nerve.open_log(data_dir) as log:
        archived = await log.archive(older_than=timedelta(days=30))
        assert [d.day for d in archived] == days[crash_on - 1 :]
        assert [d.day for d in await log.archived_days()] == days
        assert (await log.archived_days())[-1].last == 6  # the watermark
        assert hot_positions(log.path) == [7, 8]
        after = await read_all(log)
        assert after == before
        assert await log.verify() is None
        r = await log.append("x", NewEvent("test.e"))
        assert r.first_position == 9


# -- backup ------------------------------------------------------------------------


async def test_backup_while_appending(tmp_path: Path) -> None:
    src = tmp_path / "src"
    dest = tmp_path / "backup"
    clock = FakeClock(0)
    async with nerve.open_log(src, clock=clock, blob_threshold=1024) as log:
        days = await write_history(log, clock)
        await log.archive(older_than=timedelta(days=30))
        big = {"text": "B" * 3000}
        await log.append("big", NewEvent("test.big", big))
        digest = db_execute(log.path, "SELECT blob FROM logs WHERE stream='big'")[0][0]
        start = log.head
        stop = trio.Event()

        async def appender() -> None:
            i = 0
            while not stop.is_set():
                await log.append(f"live{i % 3}", NewEvent("test.live", {"i": i}))
                i += 1

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(appender)
                await wait_until(lambda: log.head >= start + 5)
                at_start = log.head
                target = await log.backup(dest)
                stop.set()
        source = await read_all(log)
        with pytest.raises(FileExistsError):
            await log.backup(dest)

    assert target == dest / "logs.db"
    assert (dest / "logs.db").stat().st_mode & 0o777 == 0o600
    for d in days:
        name = f"{d}.jsonl"
        copied = dest / "archive" / "logs" / name
        assert copied.read_bytes() == (src / "archive" / "logs" / name).read_bytes()
    assert (dest / "blobs" / digest[:2] / digest[2:]).is_file()

    async with nerve.open_log(dest, blob_threshold=1024) as copy:
        assert await copy.verify() is None
        copied_events = await read_all(copy)
        assert len(copied_events) >= at_start
        assert copied_events == source[: len(copied_events)]
        assert any(e.data == big for e in copied_events)
        # The copy is a log of its own: it goes on from its own head.
        r = await copy.append("after-restore", NewEvent("test.e"))
        assert r.first_position == len(copied_events) + 1
        assert await copy.verify() is None


async def test_a_reader_of_some_types_wakes_for_those_types_only(
    log: nerve.Log,
) -> None:
    await log.append("s", NewEvent("t.a"))
    await log.append("s", NewEvent("t.b"))
    # Before any reader of some types asked, the log noted no type's last
    # position: whatever lies past a reader's position may be of its types.
    assert log._moved_past(0, ("t.none",))
    assert log._moved_past(1, ("t.none",))
    assert not log._moved_past(2, ("t.none",))
    # From then on appends are noted by type.
    await log.append("s", NewEvent("t.a"))
    assert not log._moved_past(2, ("t.b",))
    assert log._moved_past(2, ("t.a",))
    assert log._moved_past(2, ("t.b", "t.a"))
    assert log._moved_past(2, None)
    await log.append("s", NewEvent("t.b"))
    assert not log._moved_past(3, ("t.a",))
    assert log._moved_past(3, ("t.b",))
