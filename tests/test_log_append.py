"""Behaviour of `Log.append`: results, atomicity, expectations, idempotency,
group commit, the codec through the log, meta/ts/source, blobs, statistics."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import stat
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import apsw
import attrs
import pytest
import trio
import trio.testing

import nerve
from nerve import NO_STREAM, STREAM_EXISTS, NewEvent
from nerve.events import PendingAppend
from nerve.events._schema import MIGRATIONS
from nerve.events._writer import BUSY_FLIGHT, WAL_AUTOCHECKPOINT

# -- helpers -----------------------------------------------------------------------


async def read_all(log: nerve.Log, **kwargs: Any) -> list[nerve.RecordedEvent]:
    return [ev async for ev in log.read(**kwargs)]


def db_rows(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run a query on a separate connection (what is really on disk)."""
    conn = apsw.Connection(str(path))
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def writer_held(log: nerve.Log) -> AsyncIterator[threading.Event]:
    """Keep the writer busy with a job until the body ends, so that every append
    submitted meanwhile is written in the one batch that follows."""
    gate = threading.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.write_job, lambda conn: gate.wait(30))
            await trio.testing.wait_all_tasks_blocked()
            try:
                yield gate
            finally:
                gate.set()
    finally:
        gate.set()


async def outcome_of(fn: Callable[[], Any], results: dict[Any, Any], key: Any) -> None:
    try:
        results[key] = await fn()
    except nerve.NerveError as e:
        results[key] = e


# -- the database as opened --------------------------------------------------------


async def test_writer_connection_is_wal_and_full_sync(log: nerve.Log) -> None:
    conn = log._writer.conn
    assert conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchall()[0][0] == 2  # FULL


def _wal_frames(path: Path) -> int:
    """Frames in the WAL of the database at ``path`` (a PASSIVE checkpoint
    from a connection of its own reports them)."""
    conn = apsw.Connection(str(path))
    try:
        return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][1])
    finally:
        conn.close()


async def test_big_batches_checkpoint_the_wal_in_long_steps(log: nerve.Log) -> None:
    # ~3000 WAL pages in batches of hundreds of appends: SQLite's default
    # checkpoint would have restarted the WAL after 1000 pages.
    pad = "x" * 3500

    async def appender(i: int) -> None:
        await log.append(f"s{i}", NewEvent("test.e", {"i": i, "pad": pad}))

    async with trio.open_nursery() as nursery:
        for i in range(3000):
            nursery.start_soon(appender, i)
    assert log.statistics().max_batch_size >= BUSY_FLIGHT
    assert 2500 < _wal_frames(log.path) < WAL_AUTOCHECKPOINT
    assert sorted([e.data["i"] async for e in log.read()]) == list(range(3000))


async def test_a_quiet_log_checkpoints_what_big_batches_left(
    data_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Big batches leave a long WAL behind; once appends stop, the writer
    # checkpoints it, so the next append restarts the WAL instead of its
    # commit copying all of it back.
    pad = "x" * 3500
    async with nerve.open_log(data_dir) as log:

        async def appender(i: int) -> None:
            await log.append(f"s{i}", NewEvent("test.e", {"i": i, "pad": pad}))

        async with trio.open_nursery() as nursery:
            for i in range(1500):
                nursery.start_soon(appender, i)
        assert log._writer.wal_busy
        await trio.sleep(1)  # quiet
        await log.append("s", NewEvent("test.e", {"i": -1}))
        assert not log._writer.wal_busy
        assert _wal_frames(log.path) < 100  # restarted by that append
        assert len([e async for e in log.read()]) == 1501


async def test_lone_appends_keep_sqlites_checkpoints(log: nerve.Log) -> None:
    # One append at a time: the WAL is checkpointed and restarted every 1000
    # pages, so it never grows much past that (a growing file slows each
    # fsync). 600 appends of a page or so each write ~2700 WAL pages in all.
    pad = "x" * 3500
    for i in range(600):
        await log.append("s", NewEvent("test.e", {"i": i, "pad": pad}))
    assert log.statistics().max_batch_size < BUSY_FLIGHT
    assert _wal_frames(log.path) < 1100
    assert [e.data["i"] async for e in log.read()] == list(range(600))


async def test_schema_version_has_one_row_per_migration(log: nerve.Log) -> None:
    rows = db_rows(log.path, "SELECT version, checksum FROM schema_version")
    assert sorted(rows) == [(m.version, m.checksum) for m in MIGRATIONS]


async def test_reopen_does_not_reapply_migrations(data_dir: Path) -> None:
    async with nerve.open_log(data_dir) as log:
        await log.append("s", NewEvent("test.e"))
        path = log.path
    before = db_rows(path, "SELECT * FROM schema_version")
    async with nerve.open_log(data_dir) as log:
        assert [e.position for e in await read_all(log)] == [1]
    assert db_rows(path, "SELECT * FROM schema_version") == before


async def test_data_dir_and_db_file_are_private(data_dir: Path) -> None:
    async with nerve.open_log(data_dir) as log:
        await log.append("s", NewEvent("test.e"))
        assert log.data_dir == data_dir
        assert log.path == data_dir / "logs.db"
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(data_dir / "logs.db").st_mode) == 0o600


async def test_open_with_a_db_file_path(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "events.db"
    async with nerve.open_log(db) as log:
        assert log.path == db
        await log.append("s", NewEvent("test.e", {"n": 1}))
    assert db.is_file()
    assert not (db.parent / "logs.db").exists()
    async with nerve.open_log(str(db)) as log:
        events = await read_all(log)
    assert [(e.position, e.data) for e in events] == [(1, {"n": 1})]

    # A logs.db path and its data directory name the same log.
    async with nerve.open_log(tmp_path / "d" / "logs.db") as log:
        await log.append("s", NewEvent("test.e", {"n": 2}))
    async with nerve.open_log(tmp_path / "d") as log:
        assert [e.data for e in await read_all(log)] == [{"n": 2}]


# -- append basics -----------------------------------------------------------------


async def test_append_result_fields(log: nerve.Log) -> None:
    r1 = await log.append("a", NewEvent("test.e", {"i": 1}))
    assert r1 == nerve.AppendResult("a", 1, 1, 1, duplicate=False)
    assert r1.positions == range(1, 2)

    r2 = await log.append("b", [NewEvent("test.e"), NewEvent("test.e")])
    assert (r2.stream, r2.first_position, r2.last_position, r2.version) == (
        "b",
        2,
        3,
        2,
    )
    assert list(r2.positions) == [2, 3]
    assert r2.duplicate is False

    r3 = await log.append("a", (NewEvent("test.e") for _ in range(3)))
    assert (r3.first_position, r3.last_position, r3.version) == (4, 6, 4)
    assert log.head == 6

    events = await read_all(log)
    assert [(e.position, e.stream, e.version) for e in events] == [
        (1, "a", 1),
        (2, "b", 1),
        (3, "b", 2),
        (4, "a", 2),
        (5, "a", 3),
        (6, "a", 4),
    ]


async def test_multi_event_append_is_atomic(log: nerve.Log) -> None:
    await log.append("s", NewEvent("test.e", {"i": 0}))
    with pytest.raises(nerve.EventEncodingError):
        await log.append(
            "s",
            [NewEvent("test.e", {"i": 1}), NewEvent("test.e", {"bad": {1, 2}})],
        )
    with pytest.raises(nerve.EventEncodingError):
        await log.append(
            "s",
            [NewEvent("test.e", {"i": 1}), NewEvent("test.e", meta={"m": object()})],
        )
    with pytest.raises(nerve.InvalidEventError):
        await log.append("s", [NewEvent("test.e"), NewEvent("")])
    with pytest.raises(nerve.InvalidEventError):
        await log.append("s", [])
    assert log.head == 1
    assert await log.stream_version("s") == 1
    assert [e.data for e in await read_all(log)] == [{"i": 0}]
    assert db_rows(log.path, "SELECT count(*) FROM logs") == [(1,)]
    # The log goes on from where it was: no position was consumed.
    r = await log.append("s", NewEvent("test.e", {"i": 2}))
    assert (r.first_position, r.version) == (2, 2)


async def test_expected_version_int(log: nerve.Log) -> None:
    r = await log.append("acct", NewEvent("test.e"), expected_version=0)
    assert r.version == 1
    r = await log.append("acct", NewEvent("test.e"), expected_version=1)
    assert r.version == 2
    await log.append("other", NewEvent("test.e"))

    with pytest.raises(nerve.WrongExpectedVersion) as info:
        await log.append("acct", [NewEvent("test.e")] * 2, expected_version=1)
    err = info.value
    assert (err.stream, err.expected, err.actual) == ("acct", 1, 2)
    message = str(err)
    assert "'acct'" in message
    assert "expected version 1" in message
    assert "version 2" in message

    with pytest.raises(nerve.WrongExpectedVersion) as info:
        await log.append("acct", NewEvent("test.e"), expected_version=5)
    assert info.value.actual == 2

    with pytest.raises(nerve.WrongExpectedVersion) as info:
        await log.append("ghost", NewEvent("test.e"), expected_version=3)
    assert (info.value.stream, info.value.expected, info.value.actual) == (
        "ghost",
        3,
        0,
    )
    assert "does not exist" in str(info.value)

    assert log.head == 3
    assert await log.stream_version("acct") == 2
    assert await log.stream_version("ghost") == 0
    assert len(await read_all(log)) == 3


async def test_expected_version_no_stream(log: nerve.Log) -> None:
    r = await log.append("new", NewEvent("test.e"), expected_version=NO_STREAM)
    assert r.version == 1
    with pytest.raises(nerve.WrongExpectedVersion) as info:
        await log.append("new", NewEvent("test.e"), expected_version=NO_STREAM)
    assert (info.value.stream, info.value.expected, info.value.actual) == (
        "new",
        NO_STREAM,
        1,
    )
    assert "'new'" in str(info.value)
    assert "NO_STREAM" in str(info.value)
    assert "version 1" in str(info.value)
    assert log.head == 1


async def test_expected_version_stream_exists(log: nerve.Log) -> None:
    with pytest.raises(nerve.WrongExpectedVersion) as info:
        await log.append("s", NewEvent("test.e"), expected_version=STREAM_EXISTS)
    assert (info.value.stream, info.value.expected, info.value.actual) == (
        "s",
        STREAM_EXISTS,
        0,
    )
    assert "STREAM_EXISTS" in str(info.value)
    assert log.head == 0
    assert await read_all(log) == []

    await log.append("s", NewEvent("test.e"))
    r = await log.append("s", NewEvent("test.e"), expected_version=STREAM_EXISTS)
    assert (r.first_position, r.version) == (2, 2)


@pytest.mark.parametrize("bad", [-1, True, 1.0, "1", "no-stream"])
async def test_malformed_expected_version_is_refused(log: nerve.Log, bad: Any) -> None:
    with pytest.raises(nerve.InvalidEventError):
        await log.append("s", NewEvent("test.e"), expected_version=bad)
    assert log.head == 0


async def test_idempotency_key_returns_original_result(log: nerve.Log) -> None:
    first = await log.append(
        "orders",
        [NewEvent("test.e", {"n": 1}), NewEvent("test.e")],
        idempotency_key="k1",
    )
    await log.append("orders", NewEvent("test.e", {"n": 2}))
    again = await log.append(
        "orders", NewEvent("test.e", {"n": 999}), idempotency_key="k1"
    )
    assert again.duplicate is True
    assert again._replace(duplicate=False) == first
    assert (again.first_position, again.last_position, again.version) == (1, 2, 2)
    # The repeat is recognised even with an expectation that no longer holds.
    again2 = await log.append(
        "orders", NewEvent("test.e"), idempotency_key="k1", expected_version=NO_STREAM
    )
    assert again2 == again
    events = await read_all(log)
    assert [e.data for e in events] == [{"n": 1}, {}, {"n": 2}]
    assert log.statistics().events == 3


async def test_idempotency_key_survives_reopen(data_dir: Path) -> None:
    async with nerve.open_log(data_dir) as log:
        first = await log.append("s", NewEvent("test.e", {"v": 1}), idempotency_key="k")
    async with nerve.open_log(data_dir) as log:
        again = await log.append("s", NewEvent("test.e", {"v": 2}), idempotency_key="k")
        assert again == first._replace(duplicate=True)
        with pytest.raises(nerve.DuplicateIdempotencyKey):
            await log.append("t", NewEvent("test.e"), idempotency_key="k")
        assert [e.data for e in await read_all(log)] == [{"v": 1}]


async def test_idempotency_key_for_another_stream_raises(log: nerve.Log) -> None:
    await log.append("s1", NewEvent("test.e"), idempotency_key="key")
    with pytest.raises(nerve.DuplicateIdempotencyKey) as info:
        await log.append("s2", NewEvent("test.e"), idempotency_key="key")
    err = info.value
    assert (err.key, err.original_stream, err.stream) == ("key", "s1", "s2")
    assert isinstance(err, nerve.AppendError)
    assert await log.stream_version("s2") == 0
    assert log.head == 1


async def test_an_append_cancelled_before_it_is_taken_is_withdrawn(
    log: nerve.Log,
) -> None:
    await log.append("s", NewEvent("test.e", {"i": 0}))
    async with writer_held(log):
        pending = log.submit("s", NewEvent("test.e", {"i": 1}))
        with trio.CancelScope() as scope:  # the writer is busy: not taken
            scope.cancel()
            await pending.wait()
        assert scope.cancelled_caught
    # Withdrawn: nothing of it was written, and a later wait says so.
    with pytest.raises(nerve.AppendWithdrawnError, match="withdrawn"):
        await pending.wait()
    assert pending.done
    assert [e.data for e in await read_all(log)] == [{"i": 0}]
    r = await log.append("s", NewEvent("test.e", {"i": 2}))
    assert (r.first_position, r.version) == (2, 2)


async def test_withdrawing_one_queued_append_leaves_its_neighbours_queued(
    log: nerve.Log,
) -> None:
    async with writer_held(log):
        first = log.submit("s", NewEvent("test.e", {"i": 1}))
        middle = log.submit("s", NewEvent("test.e", {"i": 2}))
        last = log.submit("s", NewEvent("test.e", {"i": 3}))
        with trio.CancelScope() as scope:
            scope.cancel()
            await middle.wait()
    with pytest.raises(nerve.AppendWithdrawnError):
        await middle.wait()
    assert (await first.wait()).first_position == 1
    assert (await last.wait()).first_position == 2
    assert [e.data for e in await read_all(log)] == [{"i": 1}, {"i": 3}]


async def test_a_shielded_wait_neither_withdraws_nor_ends_early(
    log: nerve.Log,
) -> None:
    results: list[nerve.AppendResult] = []
    async with trio.open_nursery() as nursery, writer_held(log):
        pending = log.submit("s", NewEvent("test.e", {"i": 1}))
        other = log.submit("s", NewEvent("test.e", {"i": 2}))

        async def shielded() -> None:
            with trio.CancelScope() as scope:
                scope.cancel()
                # Cancelled before the writer took it, yet not withdrawn:
                # the wait goes on until the outcome is known.
                results.append(await pending.wait(shielded=True))

        nursery.start_soon(shielded)
        await trio.testing.wait_all_tasks_blocked()
        # A second waiter's cancellation ends its wait, withdraws nothing.
        with trio.CancelScope() as scope:
            scope.cancel()
            await pending.wait()
        assert scope.cancelled_caught
        # The first waiter of `other`, cancelled: it is withdrawn.
        with trio.CancelScope() as scope:
            scope.cancel()
            await other.wait()
        assert results == []
        assert not pending.done
    assert results == [nerve.AppendResult("s", 1, 1, 1)]
    assert [e.data for e in await read_all(log)] == [{"i": 1}]
    with pytest.raises(nerve.AppendWithdrawnError):
        await other.wait()


async def test_result_of_a_finished_append(log: nerve.Log) -> None:
    async with writer_held(log):
        ok = log.submit("s", NewEvent("test.e"), expected_version=NO_STREAM)
        refused = log.submit("s", NewEvent("test.e"), expected_version=NO_STREAM)
        with pytest.raises(RuntimeError, match="not finished"):
            ok.result()
    with pytest.raises(nerve.WrongExpectedVersion):
        await refused.wait()
    assert ok.result() == nerve.AppendResult("s", 1, 1, 1)
    with pytest.raises(nerve.WrongExpectedVersion):
        refused.result()


async def test_on_done_runs_once_the_append_is_durable(log: nerve.Log) -> None:
    calls: list[tuple[str, int]] = []

    def on_disk() -> int:  # what another connection sees
        return int(db_rows(log.path, "SELECT count(*) FROM logs")[0][0])

    async with writer_held(log):
        pending = log.submit("s", NewEvent("test.e", {"i": 1}))
        pending.on_done(lambda: calls.append(("first", on_disk())))
        pending.on_done(lambda: calls.append(("second", on_disk())))
        await trio.testing.wait_all_tasks_blocked()
        assert calls == []  # not written yet
    await pending.wait()
    # Called in order, once each, when the event was committed.
    assert calls == [("first", 1), ("second", 1)]
    # Already done: called at once.
    pending.on_done(lambda: calls.append(("late", on_disk())))
    assert calls == [("first", 1), ("second", 1), ("late", 1)]


async def test_a_callback_holding_its_append_leaves_no_garbage_cycle(
    log: nerve.Log,
) -> None:
    """What a callback holds may hold the append (a workflow's run entry
    does): once run, the callback is let go, so reference counting frees
    all of it and no cycle waits for the garbage collector."""

    class Holder:
        def __init__(self, pending: PendingAppend) -> None:
            self.pending = pending
            self.seen: nerve.AppendResult | None = None

        def done(self) -> None:
            self.seen = self.pending.result()

    gc.collect()
    gc.disable()
    try:
        holder = Holder(log.submit("s", NewEvent("test.e", {})))
        holder.pending.on_done(holder.done)
        await holder.pending.wait()
        assert holder.seen == nerve.AppendResult("s", 1, 1, 1)
        freed = weakref.ref(holder)
        del holder
        assert freed() is None
    finally:
        gc.enable()


async def test_an_observers_cancelled_wait_withdraws_nothing(log: nerve.Log) -> None:
    async with writer_held(log):
        pending = log.submit("s", NewEvent("test.e", {"i": 1}))
        with trio.CancelScope() as scope:
            scope.cancel()
            await pending.wait(withdraw=False)  # the first waiter, cancelled
        assert scope.cancelled_caught
        assert not pending.done
    assert await pending.wait() == nerve.AppendResult("s", 1, 1, 1)
    assert [e.data for e in await read_all(log)] == [{"i": 1}]


class NoHook:
    """An inline hook folding nothing: appends take the classic way."""

    def apply(self, conn: object, events: object) -> None:
        pass


@pytest.mark.parametrize("way", ["pipelined", "classic"])
async def test_an_append_cancelled_while_it_commits_reports_its_result(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    writer = log._writer
    gate = threading.Event()
    committing = trio.Event()
    token = trio.lowlevel.current_trio_token()
    name = "write_flight" if way == "pipelined" else "commit"
    commit = getattr(writer, name)
    if way == "classic":
        log.add_inline_hook(NoHook())

    def held_commit(*args: Any) -> None:
        token.run_sync_soon(committing.set)
        gate.wait(30)
        commit(*args)

    monkeypatch.setattr(writer, name, held_commit)
    results: list[nerve.AppendResult] = []
    scope = trio.CancelScope()

    async def appender() -> None:
        with scope:
            results.append(await log.append("s", NewEvent("test.e", {"i": 1})))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(appender)
        await committing.wait()
        scope.cancel()  # too late to withdraw: it is being written
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        gate.set()
    # The append was not reported cancelled: it returned what it wrote.
    assert results == [nerve.AppendResult("s", 1, 1, 1)]
    assert [e.data for e in await read_all(log)] == [{"i": 1}]


async def test_same_key_twice_in_one_batch_writes_once(log: nerve.Log) -> None:
    results: dict[int, Any] = {}
    async with trio.open_nursery() as nursery, writer_held(log):
        for i in range(2):
            nursery.start_soon(
                outcome_of,
                lambda i=i: log.append(
                    "s", NewEvent("test.e", {"i": i}), idempotency_key="same"
                ),
                results,
                i,
            )
        await trio.testing.wait_all_tasks_blocked()
        assert log.statistics().pending == 2
    assert {r.duplicate for r in results.values()} == {False, True}
    assert {r._replace(duplicate=False) for r in results.values()} == {
        nerve.AppendResult("s", 1, 1, 1)
    }
    assert len(await read_all(log)) == 1


# -- one batch, many requests ------------------------------------------------------


async def test_key_collision_in_a_batch_fails_alone(log: nerve.Log) -> None:
    """The seed's all-or-nothing check: the faulty request of a batch writes
    nothing, its neighbours in the same transaction commit."""
    await log.append("owner", NewEvent("test.e"), idempotency_key="taken")
    stats0 = log.statistics()
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery, writer_held(log):
        for name in ["a", "b", "thief", "c"]:
            key = "taken" if name == "thief" else f"key-{name}"
            nursery.start_soon(
                outcome_of,
                lambda name=name, key=key: log.append(
                    name,
                    [NewEvent("test.e", {"who": name}), NewEvent("test.e")],
                    idempotency_key=key,
                ),
                results,
                name,
            )
        await trio.testing.wait_all_tasks_blocked()
        assert log.statistics().pending == 4
    stats = log.statistics()
    assert stats.batches == stats0.batches + 1  # really one transaction
    assert isinstance(results["thief"], nerve.DuplicateIdempotencyKey)
    ok = [results[n] for n in ["a", "b", "c"]]
    assert all(isinstance(r, nerve.AppendResult) for r in ok)
    events = await read_all(log)
    assert [e.position for e in events] == list(range(1, 8))
    assert "thief" not in {e.stream for e in events}
    assert {e.stream for e in events} == {"owner", "a", "b", "c"}
    for r in ok:
        got = [e for e in events if e.stream == r.stream]
        assert [e.position for e in got] == list(r.positions)
        assert [e.version for e in got] == [1, 2]
    assert stats.rejected == stats0.rejected + 1


async def test_wrong_expectations_in_one_batch_fail_alone(log: nerve.Log) -> None:
    for i in range(10):
        await log.append(f"s{i}", NewEvent("test.e", {"setup": i}))
    results: dict[int, Any] = {}
    wrong = {i for i in range(60) if i % 7 == 3}
    async with trio.open_nursery() as nursery, writer_held(log):
        for i in range(60):
            stream = f"s{i % 10}" if i < 30 else f"fresh{i}"
            if i in wrong:
                expected: Any = 5 if i < 30 else STREAM_EXISTS
            else:
                expected = None if i < 30 else NO_STREAM
            nursery.start_soon(
                outcome_of,
                lambda stream=stream, expected=expected, i=i: log.append(
                    stream, NewEvent("test.e", {"i": i}), expected_version=expected
                ),
                results,
                i,
            )
        await trio.testing.wait_all_tasks_blocked()
        assert log.statistics().pending == 60
    assert log.statistics().max_batch_size == 60
    for i, r in results.items():
        if i in wrong:
            assert isinstance(r, nerve.WrongExpectedVersion), i
        else:
            assert isinstance(r, nerve.AppendResult), (i, r)
    events = await read_all(log)
    assert [e.position for e in events] == list(range(1, 10 + 60 - len(wrong) + 1))
    written = {e.data["i"] for e in events if "i" in e.data}
    assert written == set(range(60)) - wrong
    for i, r in results.items():
        if i not in wrong:
            (ev,) = [e for e in events if e.data.get("i") == i]
            assert (ev.position, ev.version) == (r.first_position, r.version)
    _assert_streams_contiguous(events)


@attrs.frozen
class Refuser:
    """An inline hook that refuses any event whose data says so."""

    seen: list[int] = attrs.field(factory=list)

    def apply(
        self, conn: apsw.Connection, events: Sequence[nerve.RecordedEvent]
    ) -> None:
        for ev in events:
            if isinstance(ev.data, dict) and ev.data.get("refuse"):
                raise nerve.events.RefusedByProjection(
                    f"refused position {ev.position}"
                )
        self.seen.extend(ev.position for ev in events)


async def test_refused_request_in_a_batch_fails_alone(log: nerve.Log) -> None:
    hook = Refuser()
    log.add_inline_hook(hook)
    results: dict[int, Any] = {}
    async with trio.open_nursery() as nursery, writer_held(log):
        for i in range(8):
            data = {"i": i, "refuse": i in (2, 5)}
            nursery.start_soon(
                outcome_of,
                lambda i=i, data=data: log.append(
                    f"s{i % 3}", [NewEvent("test.e", data), NewEvent("test.e")]
                ),
                results,
                i,
            )
    for i in (2, 5):
        assert isinstance(results[i], nerve.events.RefusedByProjection)
    assert all(isinstance(results[i], nerve.AppendResult) for i in (0, 1, 3, 4, 6, 7))
    events = await read_all(log)
    assert [e.position for e in events] == list(range(1, 13))
    assert {e.data["i"] for e in events if "i" in e.data} == {0, 1, 3, 4, 6, 7}
    _assert_streams_contiguous(events)
    # The events the hook folded (in the transaction that committed) are the
    # ones stored, at the positions stored.
    assert sorted(set(hook.seen)) == list(range(1, 13))
    assert await log.verify() is None


def _assert_streams_contiguous(events: Sequence[nerve.RecordedEvent]) -> None:
    by_stream: dict[str, list[int]] = {}
    for ev in events:
        by_stream.setdefault(ev.stream, []).append(ev.version)
    for stream, versions in by_stream.items():
        assert versions == list(range(1, len(versions) + 1)), stream


async def test_a_thousand_concurrent_appenders(log: nerve.Log) -> None:
    n = 1000
    results: dict[int, Any] = {}
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(
                outcome_of,
                lambda i=i: log.append(f"s{i % 37}", NewEvent("test.e", {"i": i})),
                results,
                i,
            )
    assert all(isinstance(r, nerve.AppendResult) for r in results.values())
    events = await read_all(log)
    assert [e.position for e in events] == list(range(1, n + 1))
    assert sorted({r.first_position for r in results.values()}) == list(range(1, n + 1))
    _assert_streams_contiguous(events)
    by_position = {e.position: e for e in events}
    for i, r in results.items():
        ev = by_position[r.first_position]
        assert (ev.data, ev.stream, ev.version) == ({"i": i}, f"s{i % 37}", r.version)
    stats = log.statistics()
    assert stats.appends == n
    assert stats.events == n
    assert stats.head == n
    assert stats.batches < stats.appends  # group commit happened
    assert stats.mean_batch_size > 1
    assert stats.mean_batch_size == stats.appends / stats.batches
    assert await log.verify() is None


# -- the codec through the log -----------------------------------------------------


@attrs.frozen
class Placed:
    order_id: str
    amount: int
    tags: list[str] = attrs.field(factory=list)


@attrs.frozen
class UserV1:
    name: str


@attrs.frozen
class UserV2:
    name: str
    email: str


@pytest.fixture
def reg() -> nerve.EventRegistry:
    r = nerve.EventRegistry()
    r.register("test.placed", Placed)
    return r


async def test_registered_class_comes_back_as_instance(
    data_dir: Path, reg: nerve.EventRegistry
) -> None:
    async with nerve.open_log(data_dir, registry=reg) as log:
        await log.append("o", NewEvent("test.placed", Placed("o1", 5, ["x"])))
        await log.append("o", NewEvent("test.placed", {"order_id": "o2", "amount": 7}))
        await log.append("o", NewEvent("test.free", {"anything": [1, "two"]}))
        events = await read_all(log)
    assert events[0].data == Placed("o1", 5, ["x"])
    assert events[1].data == Placed("o2", 7, [])
    assert type(events[1].data) is Placed
    assert events[2].data == {"anything": [1, "two"]}
    # Stored as plain JSON: another registry without the class reads dicts.
    async with nerve.open_log(data_dir, registry=nerve.EventRegistry()) as log:
        raw = await read_all(log)
    assert raw[0].data == {"order_id": "o1", "amount": 5, "tags": ["x"]}


@pytest.mark.parametrize(
    "bad",
    [
        {"order_id": "o1"},  # missing field
        {"order_id": "o1", "amount": "not a number"},
        {"order_id": "o1", "amount": 1, "tags": 5},
    ],
)
async def test_bad_mapping_for_registered_type_is_refused(
    data_dir: Path, reg: nerve.EventRegistry, bad: dict[str, Any]
) -> None:
    async with nerve.open_log(data_dir, registry=reg) as log:
        with pytest.raises(nerve.EventEncodingError):
            await log.append(
                "o",
                [
                    NewEvent("test.placed", Placed("ok", 1)),
                    NewEvent("test.placed", bad),
                ],
            )
        assert log.head == 0
        assert await read_all(log) == []


async def test_wrong_data_kinds_are_refused(
    data_dir: Path, reg: nerve.EventRegistry
) -> None:
    async with nerve.open_log(data_dir, registry=reg) as log:
        # a registered class under another type name
        with pytest.raises(nerve.EventEncodingError):
            await log.append("o", NewEvent("test.other", Placed("o", 1)))
        # an unregistered attrs class
        with pytest.raises(nerve.EventEncodingError):
            await log.append("o", NewEvent("test.other", UserV1("x")))
        # neither a mapping nor the class
        with pytest.raises(nerve.EventEncodingError):
            await log.append("o", NewEvent("test.placed", ["o", 1]))
        with pytest.raises(nerve.EventEncodingError):
            await log.append("o", NewEvent("test.free", [1, 2]))
        assert log.head == 0


async def test_upcasters_bring_old_events_up_to_date(data_dir: Path) -> None:
    old = nerve.EventRegistry()
    old.register("test.user", UserV1)
    async with nerve.open_log(data_dir, registry=old) as log:
        await log.append("u", NewEvent("test.user", UserV1("ada")))

    new = nerve.EventRegistry()
    new.register(
        "test.user",
        UserV2,
        version=2,
        upcasters={1: lambda d: {**d, "email": d["name"] + "@example.org"}},
    )
    async with nerve.open_log(data_dir, registry=new) as log:
        await log.append("u", NewEvent("test.user", UserV2("bob", "b@x.org")))
        events = await read_all(log)
    assert [e.data for e in events] == [
        UserV2("ada", "ada@example.org"),
        UserV2("bob", "b@x.org"),
    ]
    rows = db_rows(data_dir / "logs.db", "SELECT type_version FROM logs ORDER BY 1")
    assert rows == [(1,), (2,)]

    # The old program cannot read the newer event: it says so instead of guessing.
    async with nerve.open_log(data_dir, registry=old) as log:
        with pytest.raises(nerve.EventDecodingError, match="position 2"):
            await read_all(log)


# -- meta, ts, source --------------------------------------------------------------


async def test_meta_round_trip(log: nerve.Log) -> None:
    meta = {"correlation": "c-1", "actor": {"id": 7, "roles": ["a", "b"]}, "n": 1.5}
    await log.append("s", [NewEvent("test.e", {"x": 1}, meta=meta), NewEvent("test.e")])
    first, second = await read_all(log)
    assert first.meta == meta
    assert second.meta == {}
    assert db_rows(log.path, "SELECT meta IS NULL FROM logs ORDER BY position") == [
        (0,),
        (1,),
    ]


async def test_ts_follows_clock_and_never_decreases(data_dir: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    async with nerve.open_log(data_dir, clock=clock) as log:
        await log.append("s", NewEvent("test.e"))
        clock.now += 5
        await log.append("s", NewEvent("test.e"))
        clock.now -= 3600  # the wall clock jumps back
        await log.append("s", NewEvent("test.e"))
        clock.now += 7200
        await log.append("s", NewEvent("test.e"))
        events = await read_all(log)
    ts = [e.ts for e in events]
    assert ts[0] == 1_700_000_000_000
    assert ts[1] == 1_700_000_005_000
    assert ts[2] == ts[1]  # held, not moved back
    assert ts[3] == 1_700_003_605_000
    assert ts == sorted(ts)
    assert events[0].time.timestamp() == 1_700_000_000.0

    # Still non-decreasing after a reopen with a clock that is behind.
    async with nerve.open_log(data_dir, clock=FakeClock(1_600_000_000.0)) as log:
        await log.append("s", NewEvent("test.e"))
        events = await read_all(log)
    assert events[-1].ts == ts[-1]


async def test_real_clock_ts_is_non_decreasing(log: nerve.Log) -> None:
    for _ in range(20):
        await log.append("s", NewEvent("test.e"))
    ts = [e.ts for e in await read_all(log)]
    assert ts == sorted(ts)
    assert ts[0] > 1_600_000_000_000


async def test_source_is_recorded(data_dir: Path) -> None:
    async with nerve.open_log(data_dir, source="kernel") as log:
        assert log.source == "kernel"
        await log.append("s", NewEvent("test.e"))
    async with nerve.open_log(data_dir) as log:
        await log.append("s", NewEvent("test.e"))
        events = await read_all(log)
    assert [e.source for e in events] == ["kernel", ""]


# -- blobs -------------------------------------------------------------------------


async def test_large_payload_goes_to_the_blob_store(data_dir: Path) -> None:
    big = {"text": "x" * 5000, "n": 1}
    async with nerve.open_log(data_dir, blob_threshold=1024) as log:
        await log.append("s", NewEvent("test.big", big))
        await log.append("s", NewEvent("test.small", {"text": "y" * 100}))
        events = await read_all(log)
        assert [e.data for e in events] == [big, {"text": "y" * 100}]
        assert await log.verify() is None
    rows = db_rows(data_dir / "logs.db", "SELECT payload, blob FROM logs ORDER BY 1")
    (payload1, blob1), (payload2, blob2) = rows
    assert payload1 is None
    assert blob1 is not None
    assert len(blob1) == 64
    assert payload2 is not None
    assert blob2 is None
    blob_file = data_dir / "blobs" / blob1[:2] / blob1[2:]
    assert blob_file.is_file()
    content = blob_file.read_bytes()
    assert hashlib.sha256(content).hexdigest() == blob1
    assert content.decode() == '{"text":"' + "x" * 5000 + '","n":1}'

    # Transparent after a reopen too.
    async with nerve.open_log(data_dir, blob_threshold=1024) as log:
        again = await read_all(log)
        assert again[0].data == big


async def test_a_large_payload_of_a_type_seen_before_goes_to_the_blob_store(
    data_dir: Path,
) -> None:
    """The common append's shorter way (one event of a type seen before, no
    expectations) sends a big payload to the blob store too."""
    big = {"text": "x" * 5000}
    async with nerve.open_log(data_dir, blob_threshold=1024) as log:
        await log.append("s", NewEvent("test.e", {"text": "small"}))
        await log.append("s", NewEvent("test.e", big))
        assert [e.data for e in await read_all(log)] == [{"text": "small"}, big]
        assert await log.verify() is None
    rows = db_rows(data_dir / "logs.db", "SELECT payload IS NULL, blob FROM logs")
    assert [(inline, blob is not None) for inline, blob in rows] == [
        (0, False),
        (1, True),
    ]


async def test_the_common_append_and_the_general_way_store_the_same_rows(
    data_dir: Path,
) -> None:
    """One event without expectations is queued by a shorter way than a list
    of events; both write the same rows, hash-chained."""
    events = [
        ("s", NewEvent("t.a", {"n": 1, "s": 'é\n"q"'}, meta={"who": "x"})),
        ("s", NewEvent("t.a", {"n": 2})),
        ("strëam", NewEvent("t.a", {"n": 3})),  # not ASCII: the general way
        ("s", NewEvent("t.a")),
    ]
    async with nerve.open_log(data_dir / "one") as log:
        for stream, ev in events:
            await log.append(stream, ev)
        assert await log.verify() is None
    async with nerve.open_log(data_dir / "general") as log:
        for stream, ev in events:
            await log.append(stream, [ev])
        assert await log.verify() is None
    query = (
        "SELECT position, stream, version, type, type_version, source, payload, "
        "blob, meta FROM logs ORDER BY position"
    )
    one = db_rows(data_dir / "one" / "logs.db", query)
    general = db_rows(data_dir / "general" / "logs.db", query)
    assert one == general
    assert [r[6] for r in one] == [
        '{"n":1,"s":"é\\n\\"q\\""}',
        '{"n":2}',
        '{"n":3}',
        "{}",
    ]
    assert one[0][8] == '{"who":"x"}'


async def test_identical_large_payloads_are_stored_once(data_dir: Path) -> None:
    big = {"text": "z" * 4096}
    async with nerve.open_log(data_dir, blob_threshold=1024) as log:
        await log.append("a", NewEvent("test.big", big))
        await log.append("b", [NewEvent("test.big", big), NewEvent("test.big", big)])
        events = await read_all(log)
    assert [e.data for e in events] == [big] * 3
    blobs = db_rows(data_dir / "logs.db", "SELECT blob FROM logs")
    assert len({b for (b,) in blobs}) == 1
    files = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
    assert len(files) == 1


def _age(data_dir: Path, digest: str, seconds: float) -> None:
    """Make a stored blob look ``seconds`` old."""
    path = data_dir / "blobs" / digest[:2] / digest[2:]
    then = path.stat().st_mtime - seconds
    os.utime(path, (then, then))


async def test_prune_blobs_deletes_only_what_no_event_names(data_dir: Path) -> None:
    big = {"text": "x" * 5000}
    async with nerve.open_log(data_dir, blob_threshold=1024) as log:
        kept = (await log.append("s", NewEvent("test.big", big))).first_position
        # Refused after its payload went to the store: an orphan.
        with pytest.raises(nerve.WrongExpectedVersion):
            await log.append(
                "s", NewEvent("test.big", {"text": "y" * 5000}), expected_version=0
            )
        # Put by the application and named in a payload (as knowledge does).
        named = await log.blobs.put(b"a file's content")
        await log.append("f", NewEvent("test.file", {"content": named}))
        # Put, named by nothing yet, but recent: an event may be on its way.
        recent = await log.blobs.put(b"recent")
        stored = sorted(log.blobs.iter_digests_sync())
        assert len(stored) == 4
        (big_digest,) = db_rows(log.path, "SELECT blob FROM logs WHERE blob NOT NULL")[
            0
        ]
        orphan = next(d for d in stored if d not in {big_digest, named, recent})
        for digest in stored:
            if digest != recent:
                _age(data_dir, digest, 7200)

        assert await log.prune_blobs() == [orphan]
        assert sorted(log.blobs.iter_digests_sync()) == sorted(
            {big_digest, named, recent}
        )
        # Everything that was named still reads back.
        assert (await read_all(log))[kept - 1].data == big
        assert await log.blobs.get(named) == b"a file's content"
        # Nothing left to prune; with no grace, the recent one goes too.
        assert await log.prune_blobs() == []
        assert await log.prune_blobs(older_than=timedelta(0)) == [recent]
        with pytest.raises(ValueError, match="negative"):
            await log.prune_blobs(older_than=timedelta(seconds=-1))


async def test_prune_blobs_keeps_what_archived_events_name(data_dir: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    async with nerve.open_log(data_dir, blob_threshold=1024, clock=clock) as log:
        await log.append("s", NewEvent("test.big", {"text": "x" * 5000}))
        named = await log.blobs.put(b"content named by an archived event")
        await log.append("f", NewEvent("test.file", {"content": named}))
        clock.now += 3 * 86400  # the log leaves that day
        await log.append("s", NewEvent("test.later", {}))
        assert len(await log.archive(timedelta(days=1), now=clock.now)) == 1
        assert db_rows(log.path, "SELECT count(*) FROM logs") == [(1,)]
        stored = sorted(log.blobs.iter_digests_sync())
        assert len(stored) == 2
        for digest in stored:
            _age(data_dir, digest, 7200)
        assert await log.prune_blobs() == []
        assert sorted(log.blobs.iter_digests_sync()) == stored
        assert (await read_all(log))[0].data == {"text": "x" * 5000}


async def test_putting_a_stored_blob_again_renews_it(data_dir: Path) -> None:
    async with nerve.open_log(data_dir) as log:
        digest = await log.blobs.put(b"content")
        _age(data_dir, digest, 7200)
        assert await log.blobs.put(b"content") == digest  # dedup: not rewritten
        assert await log.prune_blobs() == []  # but young again: kept
        assert await log.blobs.get(digest) == b"content"


async def test_registered_class_through_the_blob_store(data_dir: Path) -> None:
    reg = nerve.EventRegistry()
    reg.register("test.placed", Placed)
    ev = Placed("o", 1, ["t" * 100] * 30)
    async with nerve.open_log(data_dir, registry=reg, blob_threshold=1024) as log:
        await log.append("o", NewEvent("test.placed", ev))
        (got,) = await read_all(log)
    assert got.data == ev
    assert db_rows(data_dir / "logs.db", "SELECT payload IS NULL FROM logs") == [(1,)]


# -- statistics --------------------------------------------------------------------


async def test_statistics_fields(log: nerve.Log) -> None:
    stats = log.statistics()
    assert stats == nerve.LogStatistics(
        head=0,
        events=0,
        appends=0,
        batches=0,
        rejected=0,
        pending=0,
        mean_batch_size=0.0,
        max_batch_size=0,
        subscribers=0,
    )
    await log.append("s", [NewEvent("test.e")] * 3, idempotency_key="k")
    await log.append("s", NewEvent("test.e"))
    await log.append("s", NewEvent("test.e"), idempotency_key="k")  # duplicate
    with pytest.raises(nerve.WrongExpectedVersion):
        await log.append("s", NewEvent("test.e"), expected_version=0)
    stats = log.statistics()
    assert stats.head == 4
    assert stats.events == 4
    assert stats.appends == 3  # the duplicate counts, the refused one does not
    assert stats.rejected == 1
    assert stats.batches == 4
    assert stats.pending == 0
    assert stats.max_batch_size == 1
    assert stats.mean_batch_size == 3 / 4
    assert stats.subscribers == 0


async def test_closed_log_refuses_appends(data_dir: Path) -> None:
    async with nerve.open_log(data_dir) as log:
        await log.append("s", NewEvent("test.e"))
    with pytest.raises(nerve.LogClosedError):
        await log.append("s", NewEvent("test.e"))
