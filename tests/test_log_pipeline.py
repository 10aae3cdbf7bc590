"""The pipelined way of writing appends: a worker thread writes one batch
(a "flight") while the event loop stages the next, and what happens when a
flight cannot be written as staged."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import apsw
import outcome
import pytest
import trio
import trio.testing

import nerve
from nerve import NO_STREAM, NewEvent
from nerve.events import _log
from nerve.events._writer import AppendRequest, Flight, _Rows

SAFETY = 30  # seconds a held thread waits at most (a failing test never hangs)


class Flights:
    """Records the flights a log's writer thread writes; can hold the next one
    in the thread (before it writes anything) until released."""

    def __init__(self, log: nerve.Log, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log = log
        self.sizes: list[int] = []
        self.flights: list[Flight] = []
        self.gate: threading.Event | None = None
        self.holding = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._write = log._writer.write_flight
        monkeypatch.setattr(log._writer, "write_flight", self._write_flight)

    def _write_flight(self, flight: Flight) -> None:
        self.sizes.append(len(flight.requests))
        self.flights.append(flight)
        gate = self.gate
        if gate is not None:
            self.gate = None
            self._token.run_sync_soon(self.holding.set)
            assert gate.wait(SAFETY)
        self._write(flight)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[threading.Event]:
        """Hold the next flight in the thread for the duration of the block."""
        gate = threading.Event()
        self.gate = gate
        self.holding = trio.Event()
        try:
            yield gate
        finally:
            gate.set()


def leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in leaves(sub)]
    return [e]


async def read_all(log: nerve.Log) -> list[nerve.RecordedEvent]:
    return [e async for e in log.read()]


async def written_again(data_dir: Path) -> list[Any]:
    """The ``i`` of every event a log on ``data_dir`` reads back, once its
    hash chain is found intact."""
    async with nerve.open_log(data_dir) as log:
        assert await log.verify() is None
        return [e.data["i"] for e in await read_all(log)]


async def test_appends_made_while_a_flight_is_written_take_off_next(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    flights = Flights(log, monkeypatch)
    async with flights.held():
        first = log.submit("s0", NewEvent("t.e", {"i": 0}))
        await flights.holding.wait()  # the first flight is in the thread
        later = [
            log.submit(f"s{i % 3}", NewEvent("t.e", {"i": i})) for i in range(1, 40)
        ]
        await trio.testing.wait_all_tasks_blocked()
        # Staged meanwhile, not written: the thread still holds flight 1.
        assert log.head == 0
        assert log.statistics().pending == 0
        assert not any(p.done for p in later)
    results = [await p.wait() for p in [first, *later]]
    assert flights.sizes == [1, 39]
    assert [r.first_position for r in results] == list(range(1, 41))
    events = await read_all(log)
    assert [e.data["i"] for e in events] == list(range(40))
    assert [e.version for e in events if e.stream == "s0"] == list(range(1, 15))
    assert await log.verify() is None


async def test_the_next_flight_takes_half_of_what_waits(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a flight is written, the next one is staged with at most half of
    the appends in the air or waiting (in whole chunks); the rest wait in the
    queue. Appenders that each wait for their own append so fall into two
    even cohorts instead of one flight of a chunk and one of all the rest."""
    flights = Flights(log, monkeypatch)
    async with flights.held():
        first = log.submit("s", NewEvent("t.e", {"i": 0}))
        await flights.holding.wait()
        later = [log.submit(f"s{i}", NewEvent("t.e", {"i": i})) for i in range(1000)]
        await trio.testing.wait_all_tasks_blocked()
        # 1001 in the air or waiting: chunks of 128 are staged until the
        # next flight holds at least 501 (4 chunks).
        assert log.statistics().pending == 1000 - 4 * 128
    results = [await p.wait() for p in [first, *later]]
    assert flights.sizes == [1, 512, 488]
    assert [r.first_position for r in results] == list(range(1, 1002))
    assert await log.verify() is None


async def test_a_flight_counts_what_it_wrote_refused_and_found_written(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statistics of flights: one all written, one with a refused append, a
    duplicate and two events in one append (each counted as what it is)."""
    await log.append("s", NewEvent("t.e", {"i": 0}), idempotency_key="k")
    stats0 = log.statistics()
    flights = Flights(log, monkeypatch)
    async with flights.held():
        first = log.submit("a", NewEvent("t.e", {"i": 1}))
        await flights.holding.wait()
        clean = [log.submit(f"c{i}", NewEvent("t.e", {"i": i})) for i in range(3)]
        await trio.testing.wait_all_tasks_blocked()
    for p in [first, *clean]:
        await p.wait()
    assert flights.sizes == [1, 3]
    stats = log.statistics()
    assert (stats.events, stats.appends, stats.rejected, stats.batches) == (
        stats0.events + 4,
        stats0.appends + 4,
        stats0.rejected,
        stats0.batches + 2,
    )
    async with flights.held():
        first = log.submit("a", NewEvent("t.e", {"i": 1}))
        await flights.holding.wait()
        mixed = [
            log.submit("b", [NewEvent("t.e", {"i": 2}), NewEvent("t.e", {"i": 3})]),
            log.submit("s", NewEvent("t.e", {"i": 4}), idempotency_key="k"),
            log.submit("a", NewEvent("t.e", {"i": 5}), expected_version=0),
            log.submit("c", NewEvent("t.e", {"i": 6})),
        ]
        await trio.testing.wait_all_tasks_blocked()
    await first.wait()
    assert (await mixed[1].wait()).duplicate
    with pytest.raises(nerve.WrongExpectedVersion):
        await mixed[2].wait()
    assert flights.sizes == [1, 3, 1, 4]
    after = log.statistics()
    assert (after.events, after.appends, after.rejected, after.batches) == (
        stats.events + 4,
        stats.appends + 4,
        stats.rejected + 1,
        stats.batches + 2,
    )
    assert after.head == after.events


async def test_the_appenders_a_landing_wakes_join_the_flight_staged_next(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three cohorts of appenders, each waiting for its own append, merge
    into two: the flight staged after a landing waits for the appenders that
    landing woke instead of going on with only the cohort that waited."""
    flights = Flights(log, monkeypatch)

    async def appender(stream: str) -> None:
        for i in range(2):
            await log.append(stream, NewEvent("t.e", {"i": i}))

    async with trio.open_nursery() as nursery:
        async with flights.held():
            for i in range(4):
                nursery.start_soon(appender, f"a{i}")
            await flights.holding.wait()  # flight 1: cohort a
            for i in range(4):
                nursery.start_soon(appender, f"b{i}")
            await trio.testing.wait_all_tasks_blocked()  # b, offered next
            for i in range(4):
                nursery.start_soon(appender, f"c{i}")
            await trio.testing.wait_all_tasks_blocked()  # c waits
            hold_b = flights.held()
            await hold_b.__aenter__()
        # Flight 1 lands, waking a; the thread goes on to b and holds it.
        await flights.holding.wait()
        await trio.testing.wait_all_tasks_blocked()
        await hold_b.__aexit__(None, None, None)
    assert flights.sizes[:3] == [4, 4, 8]  # c and a's second appends together
    events = await read_all(log)
    assert len(events) == 24
    assert await log.verify() is None


def count_thread_starts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the worker threads the log's writer starts."""
    starts = [0]
    start = _log._start_thread

    def counted(*args: Any) -> None:
        starts[0] += 1
        start(*args)

    monkeypatch.setattr(_log, "_start_thread", counted)
    return starts


async def test_the_thread_goes_straight_on_to_the_flight_staged_meanwhile(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flight staged while another is written is offered to the worker
    thread, which writes it as soon as the first commits: one thread for
    both, no hand-over through the event loop."""
    flights = Flights(log, monkeypatch)
    starts = count_thread_starts(monkeypatch)
    async with flights.held():
        first = log.submit("s0", NewEvent("t.e", {"i": 0}))
        await flights.holding.wait()
        later = [
            log.submit(f"s{i % 3}", NewEvent("t.e", {"i": i})) for i in range(1, 9)
        ]
        await trio.testing.wait_all_tasks_blocked()
        offered = flights.flights[0].following
        assert offered is not None
        assert offered.sealed
        assert not offered.taken
    results = [await p.wait() for p in [first, *later]]
    assert flights.sizes == [1, 8]
    assert starts == [1]
    assert flights.flights[1] is offered
    assert offered.taken
    # Landed flights let go of the ones that followed them: none keeps the
    # whole history of flights alive.
    assert [f.following for f in flights.flights] == [None, None]
    assert [r.first_position for r in results] == list(range(1, 10))
    assert [e.data["i"] for e in await read_all(log)] == list(range(9))
    assert await log.verify() is None
    # Appends arriving while the offered flight is sealed wait for the next.
    async with flights.held():
        one = log.submit("s0", NewEvent("t.e", {"i": 9}))
        await flights.holding.wait()
        two = log.submit("s1", NewEvent("t.e", {"i": 10}))
        await trio.testing.wait_all_tasks_blocked()  # offered
        three = log.submit("s2", NewEvent("t.e", {"i": 11}))
        await trio.testing.wait_all_tasks_blocked()
        assert log.statistics().pending == 1
    assert [(await p.wait()).first_position for p in (one, two, three)] == [10, 11, 12]
    assert flights.sizes[2:] == [1, 1, 1]
    assert await log.verify() is None


async def test_closing_waits_for_the_flight_the_thread_went_on_to(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with nerve.open_log(data_dir) as log:
        flights = Flights(log, monkeypatch)
        async with trio.open_nursery() as nursery, flights.held():
            first = log.submit("s", NewEvent("t.e", {"i": 0}))
            await flights.holding.wait()
            second = log.submit("s", NewEvent("t.e", {"i": 1}))
            await trio.testing.wait_all_tasks_blocked()
            assert flights.flights[0].following is not None
            nursery.start_soon(log.aclose)
            await trio.testing.wait_all_tasks_blocked()
            assert not first.done
            assert not second.done
            # Released: the thread writes the held flight, then the next.
        assert (await first.wait()).first_position == 1
        assert (await second.wait()).first_position == 2
    assert flights.sizes == [1, 1]
    assert flights.flights[1].taken  # by the thread, not a second start
    assert await written_again(data_dir) == [0, 1]


async def test_a_bug_after_a_landing_waits_for_the_flight_that_followed(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer task fails while the thread writes the flight it went on
    to: the log closes its connection only once that flight has landed."""
    seen: list[tuple[bool, bool]] = []

    async def run() -> None:
        async with nerve.open_log(data_dir) as log:
            flights = Flights(log, monkeypatch)
            second_gate = threading.Event()
            struck = trio.Event()
            async with flights.held():
                log.submit("s", NewEvent("t.e", {"i": 0}))
                await flights.holding.wait()
                log.submit("s", NewEvent("t.e", {"i": 1}))
                await trio.testing.wait_all_tasks_blocked()
                offered = flights.flights[0].following
                assert offered is not None

                def broken(ok: bool) -> None:
                    seen.append((offered.taken, offered.landed))
                    struck.set()
                    raise ZeroDivisionError("a bug")

                monkeypatch.setattr(log._writer, "landed", broken)
                flights.gate = second_gate  # hold the second one in the thread
                flights.holding = trio.Event()
            try:
                await struck.wait()
                await flights.holding.wait()  # the second is held in the thread
            finally:
                second_gate.set()  # the log closes once it has landed
            await trio.sleep_forever()  # until the bug cancels the log

    with pytest.raises(ZeroDivisionError):
        await run()
    assert seen == [(True, False)]  # it struck while the second was in the air
    assert await written_again(data_dir) == [0, 1]


async def test_another_connection_appending_meanwhile_is_seen(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another log on the same file (as another process) appends between
    staging and writing: the flight's positions collide, nothing of it is
    written, and its appends are written the classic way, checked against
    what the other one wrote."""
    async with nerve.open_log(data_dir) as a, nerve.open_log(data_dir) as b:
        flights = Flights(a, monkeypatch)
        outcomes: dict[str, Any] = {}

        async def append(name: str, stream: str, expected: Any = None) -> None:
            try:
                outcomes[name] = await a.append(
                    stream, NewEvent("t.a", {}), expected_version=expected
                )
            except nerve.NerveError as e:
                outcomes[name] = e

        async with trio.open_nursery() as nursery, flights.held():
            nursery.start_soon(append, "new", "x", NO_STREAM)
            await flights.holding.wait()
            nursery.start_soon(append, "any", "y")
            await trio.testing.wait_all_tasks_blocked()
            await b.append("x", NewEvent("t.b", {}))  # wins the race
        assert isinstance(outcomes["new"], nerve.WrongExpectedVersion)
        assert outcomes["any"] == nerve.AppendResult("y", 2, 2, 1)
        events = await read_all(a)
        assert [(e.position, e.stream, e.version, e.type) for e in events] == [
            (1, "x", 1, "t.b"),
            (2, "y", 1, "t.a"),
        ]
        assert await a.verify() is None
        assert a.head == 2
        # Pipelined again once the classic way has caught up.
        result = await a.append("x", NewEvent("t.a", {}))
        assert (result.first_position, result.version) == (3, 2)
        assert flights.sizes[-1] == 1
        assert await a.verify() is None


async def test_a_failed_commit_fails_its_appends_and_the_next_are_written(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    await log.append("s", NewEvent("t.e", {"i": 0}))
    write = log._writer.write_flight
    failing = [True]
    gate = threading.Event()
    holding = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def fail_once(flight: Flight) -> None:
        if failing.pop() if failing else False:
            token.run_sync_soon(holding.set)
            assert gate.wait(SAFETY)
            flight.error = apsw.IOError("disk I/O error")
            flight.committing = True
            return
        write(flight)

    monkeypatch.setattr(log._writer, "write_flight", fail_once)
    outcomes: dict[int, Any] = {}

    async def append(i: int) -> None:
        try:
            outcomes[i] = await log.append("s", NewEvent("t.e", {"i": i}))
        except nerve.NerveError as e:
            outcomes[i] = e

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append, 1)
            await holding.wait()
            nursery.start_soon(append, 2)  # staged on top of the failing one
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
    finally:
        gate.set()
    assert isinstance(outcomes[1], nerve.StorageIOError)
    assert "disk I/O error" in str(outcomes[1])
    # Staged with position 3 on top of the failed flight, it is written at 2.
    assert outcomes[2] == nerve.AppendResult("s", 2, 2, 2)
    assert [e.data["i"] for e in await read_all(log)] == [0, 2]
    assert log.statistics().rejected == 1
    assert await log.verify() is None


async def test_appends_are_written_in_the_order_submitted_across_both_ways(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payload bound for the blob store takes the classic way; appends
    submitted around it keep their order."""
    async with nerve.open_log(data_dir, blob_threshold=100) as log:
        flights = Flights(log, monkeypatch)
        async with flights.held():
            first = log.submit("s", NewEvent("t.e", {"n": 0}))
            await flights.holding.wait()
            pending = [
                log.submit("s", NewEvent("t.e", {"n": 1})),
                log.submit("s", NewEvent("t.e", {"n": 2, "text": "x" * 500})),
                log.submit("s", NewEvent("t.e", {"n": 3})),
            ]
        results = [await p.wait() for p in [first, *pending]]
        assert [r.first_position for r in results] == [1, 2, 3, 4]
        assert [r.version for r in results] == [1, 2, 3, 4]
        events = await read_all(log)
        assert [e.data["n"] for e in events] == [0, 1, 2, 3]
        assert events[2].data["text"] == "x" * 500
        assert await log.verify() is None


async def test_a_hook_added_while_a_flight_is_written_sees_the_next_appends(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    flights = Flights(log, monkeypatch)
    seen: list[int] = []

    class Hook:
        def apply(self, conn: apsw.Connection, events: Any) -> None:
            seen.extend(e.position for e in events)

    async with flights.held():
        first = log.submit("s", NewEvent("t.e", {}))
        await flights.holding.wait()
        second = log.submit("s", NewEvent("t.e", {}))
        await trio.testing.wait_all_tasks_blocked()  # staged without the hook
        log.add_inline_hook(Hook())
    assert (await first.wait()).first_position == 1
    assert (await second.wait()).first_position == 2
    assert seen == [2]
    await log.append("s", NewEvent("t.e", {}))
    assert seen == [2, 3]
    assert flights.sizes == [1]  # with a hook, every append goes the classic way


async def test_a_lookup_failing_while_staging_sends_the_appends_the_classic_way(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    flights = Flights(log, monkeypatch)
    reader = log._writer.reader
    assert reader is not None
    calls = []

    class BusyReader:
        def execute(self, *args: Any) -> Any:
            calls.append(args)
            raise apsw.BusyError("database is locked")

    monkeypatch.setattr(log._writer, "reader", BusyReader())
    result = await log.append("s", NewEvent("t.e", {}))
    assert result == nerve.AppendResult("s", 1, 1, 1)
    assert calls
    assert flights.sizes == []
    monkeypatch.setattr(log._writer, "reader", reader)
    await log.append("s", NewEvent("t.e", {}))
    assert flights.sizes == [1]
    assert await log.verify() is None


@pytest.mark.parametrize("where", ["write_flight", "stage_flight"])
async def test_a_bug_in_the_writer_stops_the_log_without_hanging(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A bug in the worker thread, or while staging on the event loop."""
    outcomes: list[BaseException] = []

    async def append(log: nerve.Log) -> None:
        try:
            await log.append("s", NewEvent("t.e", {}))
        except BaseException as e:
            outcomes.append(e)
            raise

    async def run() -> None:
        async with nerve.open_log(data_dir) as log:

            def broken(*args: Any) -> None:
                raise ZeroDivisionError("a bug")

            monkeypatch.setattr(log._writer, where, broken)
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(append, log)

    with pytest.raises(BaseExceptionGroup) as info:
        await run()
    assert ZeroDivisionError in {e.__class__ for e in leaves(info.value)}
    assert len(outcomes) == 3
    # Taken appends learn the writer failed; others are cancelled with the log.
    assert all(
        isinstance(e, (nerve.LogClosedError, trio.Cancelled)) for e in outcomes
    ), outcomes
    assert any(isinstance(e, nerve.LogClosedError) for e in outcomes)
    async with nerve.open_log(data_dir) as log:
        assert log.head == 0


async def test_a_job_with_an_attached_database_locks_the_log_only(
    log: nerve.Log, tmp_path: Path
) -> None:
    """A write job holds the log's write lock; a database it attaches stays
    writable by other connections (a rebuild folds its tail into one)."""
    other_db = tmp_path / "other.db"
    conn = apsw.Connection(str(other_db))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    seen: dict[str, str] = {}

    def job(conn: apsw.Connection) -> None:
        for name, path, sql in [
            ("log", log.path, "INSERT INTO meta VALUES ('k', 'v')"),
            ("other", other_db, "INSERT INTO t VALUES (1)"),
        ]:
            elsewhere = apsw.Connection(str(path))
            elsewhere.set_busy_timeout(50)
            try:
                elsewhere.execute(sql)
                seen[name] = "written"
            except apsw.BusyError:
                seen[name] = "locked"
            finally:
                elsewhere.close()
        assert conn.execute("SELECT count(*) FROM other.t").fetchall() == [(1,)]

    await log.write_job(job, attach={"other": other_db})
    assert seen == {"log": "locked", "other": "written"}


async def test_an_append_request_is_the_outcome_its_waiter_is_woken_with() -> None:
    # The writer reschedules an appender with its request (an outcome.Outcome):
    # unwrap, send and asend give the result, or raise the error.
    result = nerve.AppendResult("s", 1, 1, 1)
    done = AppendRequest("s", (), None, None, "")
    done.finish(result)
    failed = AppendRequest("s", (), None, None, "")
    failed.finish(nerve.WrongExpectedVersion("s", 0, 1))
    assert isinstance(done, outcome.Outcome)
    assert done.unwrap() is result
    with pytest.raises(nerve.WrongExpectedVersion):
        failed.unwrap()

    def gen() -> Any:
        try:
            got = yield
        except nerve.WrongExpectedVersion:
            yield "raised"
        else:
            yield got

    for request, want in ((done, result), (failed, "raised")):
        g = gen()
        next(g)
        assert request.send(g) == want

    async def agen() -> Any:
        got: Any = "raised"
        with contextlib.suppress(nerve.WrongExpectedVersion):
            got = yield
        yield got

    for request, want in ((done, result), (failed, "raised")):
        ag = agen()
        await ag.asend(None)
        assert await request.asend(ag) == want
        await ag.aclose()
    # Requests compare by identity (`Outcome`'s attrs equality would not).
    assert done != failed
    assert len({done, failed}) == 2


def test_staged_rows_are_one_json_array_and_their_hashes() -> None:
    """Rows go into one JSON buffer and one hash buffer as they are staged;
    forgetting what was staged after a mark leaves the array well formed."""
    rows = _Rows()
    assert rows.params() == (b"[]", b"")
    rows.json += b'[1,"a"],'
    rows.hashes += b"\x01" * 32
    mark = rows.mark()
    rows.json += b'[2,"b"],'
    rows.hashes += b"\x02" * 32
    assert rows.params() == (b'[[1,"a"],[2,"b"]]', b"\x01" * 32 + b"\x02" * 32)
    rows.truncate(mark)
    assert rows.params() == (b'[[1,"a"]]', b"\x01" * 32)
    rows.truncate((1, 0))
    assert rows.params() == (b"[]", b"")
