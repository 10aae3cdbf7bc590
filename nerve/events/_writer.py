"""The write side of the log: one connection, group commit.

`LogWriter` owns the write connection. The log's writer task stages batches
of append requests on the event loop (checks, positions, the hash chain, each
row once: the JSON array the chain hashes) and a worker thread writes and
commits each batch in one statement, one fsync, while the next is staged
(`stage_flight`, `write_flight`). What only the database can decide goes the
classic way (`write`, then `commit`): one ``BEGIN IMMEDIATE ... COMMIT``, and
if the database refuses something (an inline projection rejecting a
transition, say) the batch is redone one request per SAVEPOINT, so only the
faulty request fails and its neighbours commit.

Positions are assigned here, in commit order, so the log has no gaps and needs
no high-water mark.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import (
    AsyncGenerator,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol, TypeVar, cast

import apsw
import orjson
import outcome
import trio

from ._blobs import BlobStore
from ._chain import GENESIS
from ._errors import (
    AppendWithdrawnError,
    DuplicateIdempotencyKey,
    NerveError,
    WrongExpectedVersion,
)
from ._sqlite import BUSY_TIMEOUT_MS, map_error
from ._types import (
    EMPTY_META,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    ExpectedVersion,
    RecordedEvent,
)

T = TypeVar("T")

_dumps = orjson.dumps
_sha256 = hashlib.sha256
_new_result = tuple.__new__  # AppendResult(...) without its Python __new__
_reschedule = trio.lowlevel.reschedule

_COLUMNS = (
    "position, stream, version, type, type_version, source, ts, payload, blob, "
    "meta, hash"
)
# Rows as they are staged: each row's chain content (`_chain.row_hash`: the
# JSON array of its first ten columns) in one JSON array, and their hashes
# concatenated, 32 bytes each, in one blob.
_SELECT_ROWS = """
        SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5,
               value->>6, value->>7, value->>8, value->>9,
               substr({hashes}, key * 32 + 1, 32)
          FROM jsonb_each(jsonb({rows}))"""
_INSERT = f"INSERT INTO logs ({_COLUMNS})" + _SELECT_ROWS.format(rows="?1", hashes="?2")
# The full-text index of positions first..last, in one statement.
_INDEX_SCHEMA = """
CREATE TEMP VIEW IF NOT EXISTS nerve_index (first, last) AS
    SELECT NULL, NULL WHERE 0;
CREATE TEMP TRIGGER IF NOT EXISTS nerve_index_write INSTEAD OF INSERT ON nerve_index
BEGIN
    INSERT INTO main.logs_fts (rowid, type, stream, payload)
        SELECT position, type, stream, payload FROM main.logs_text
         WHERE position BETWEEN NEW.first AND NEW.last;
    INSERT OR REPLACE INTO main.meta SELECT 'fts.position', CAST(NEW.last AS TEXT);
END;
"""
# A whole batch in one statement (`LogWriter.write_flight`), its rows one JSON
# array: SQLite parses it without the GIL (``executemany`` takes the GIL back
# for every row), so a worker thread writes while the event loop stages the
# next batch.
_FLIGHT_VIEW = """
CREATE TEMP VIEW IF NOT EXISTS nerve_flight
    (dv, rows, hashes, keys, first, last, fts, hooks)
    AS SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0;
"""
_FLIGHT_TRIGGER = f"""
CREATE TEMP TRIGGER nerve_flight_write INSTEAD OF INSERT ON nerve_flight
BEGIN
    -- Another connection committed since the flight was staged: what was
    -- staged from caches may be wrong (the classic way looks again).
    SELECT RAISE(ABORT, 'nerve: another connection wrote')
     WHERE (SELECT data_version FROM pragma_data_version) IS NOT NEW.dv;
    INSERT INTO main.logs ({_COLUMNS}){
    _SELECT_ROWS.format(rows="NEW.rows", hashes="NEW.hashes")
};
    INSERT INTO main.idempotency
        SELECT value->>0, value->>1, value->>2, value->>3, value->>4
          FROM jsonb_each(jsonb(NEW.keys)) WHERE NEW.keys IS NOT NULL;
    INSERT INTO nerve_index SELECT NEW.first, NEW.last WHERE NEW.fts;
    {{hooks}}
END;
"""
# A deferred transaction and a statement that may write logs.db only: the
# write lock of logs.db, none of an attached database's.
_BEGIN_MAIN_ONLY = "BEGIN; DELETE FROM main.meta WHERE 0"
_FLIGHT_INSERT = "INSERT INTO nerve_flight VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_MAX_CACHED_STREAMS = 100_000
WAL_AUTOCHECKPOINT: Final = 16_384
"""WAL pages (64 MiB at 4 KiB) after which a commit checkpoints while
appends come in big batches (`BUSY_FLIGHT`), instead of SQLite's default
1000. A checkpoint stalls the commit that runs it, and such batches keep
rewriting the same index pages (one per stream appended to): a longer WAL
copies each once per checkpoint rather than once per 1000 pages (measured:
+3% appends/s over 4000 pages, +8% over 1000). Once appends stop, the
writer checkpoints what is left (`QUIET_CHECKPOINT`). Small batches keep
SQLite's cadence: while the WAL file grows to a longer working size, each
commit also extends it, which slows a lone append's fsync (p50 +0.07 ms)."""
BUSY_FLIGHT: Final = 128
"""Events in a batch from which the log checkpoints at `WAL_AUTOCHECKPOINT`
(until it is next quiet)."""
_SQLITE_AUTOCHECKPOINT = 1_000  # SQLite's default, which a new connection has


class EncodedEvent(NamedTuple):
    """An event ready to write: its stored form and its canonical data.

    A named tuple: one is built per appended event, on the event loop. The
    common append builds a plain tuple in this layout instead (cheaper
    still), so the events of a request are read by position, not by name.
    """

    type: str
    type_version: int
    payload: str | None
    blob: str | None
    meta: str | None
    data: Any
    meta_obj: Any


class AppendRequest(outcome.Outcome[AppendResult]):
    """One `Log.append` call on its way to the writer.

    A plain slotted class, not attrs: one is built per append on the event
    loop. The appender parks its task in ``waiter`` (trio.lowlevel), and the
    writer reschedules it with the outcome: cheaper than a `trio.Event`.

    It is itself the `outcome.Outcome` the waiter is rescheduled with
    (`unwrap` returns the result or raises the error): one object fewer to
    build, and to unwrap, per append than an `outcome.Value`.
    """

    __slots__ = (
        "big",
        "callbacks",
        "event",
        "events",
        "expected",
        "key",
        "outcome",
        "pending",
        "source",
        "stream",
        "waiter",
    )

    def __init__(
        self,
        stream: str,
        events: Sequence[EncodedEvent],
        expected: int | ExpectedVersion | None,
        key: str | None,
        source: str,
        big: bool = False,
    ) -> None:
        self.stream = stream
        self.events = events
        self.expected = expected
        self.key = key
        self.source = source
        self.big = big
        """Some payload exceeds the blob threshold: store it before writing."""
        self.outcome: AppendResult | BaseException | None = None
        self.waiter: trio.lowlevel.Task | None = None
        """The task parked until the outcome is known (see `Log.append`)."""
        self.event: trio.Event | None = None
        """For any further waiters (`PendingAppend.wait` called twice)."""
        self.callbacks: list[Callable[[], None]] | None = None
        self.pending: Any = None
        """The queue it waits in until the writer takes it (withdrawn from
        there if its waiter is cancelled meanwhile)."""

    # Identity: `outcome.Outcome` is an attrs class whose generated equality
    # would find any two requests equal (they have no attrs fields).
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__  # type: ignore[assignment]

    @property
    def done(self) -> bool:
        """Whether the outcome is known."""
        return self.outcome is not None

    def result(self) -> AppendResult:
        """The outcome once known: the result, or raise the error."""
        outcome = self.outcome
        if outcome.__class__ is AppendResult:
            return outcome
        if isinstance(outcome, BaseException):
            raise outcome
        raise AssertionError(f"the append to {self.stream!r} is not finished")

    unwrap = result
    """`outcome.Outcome.unwrap`, for the task `finish` rescheduled."""

    def send(self, gen: Generator[Any, AppendResult, object]) -> Any:
        """Send the result into ``gen``, or throw the error into it."""
        result = self.outcome
        if isinstance(result, BaseException):
            return gen.throw(result)
        return gen.send(self.result())

    async def asend(self, agen: AsyncGenerator[Any, AppendResult]) -> Any:
        """Send the result into ``agen``, or throw the error into it."""
        result = self.outcome
        if isinstance(result, BaseException):
            return await agen.athrow(result)
        return await agen.asend(self.result())

    def finish(self, result: AppendResult | BaseException) -> None:
        """Record the outcome and wake whoever waits for it (the first waiter
        is rescheduled with it: `Log.append` returns or raises it)."""
        self.outcome = result
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            _reschedule(waiter, self)
        if self.event is not None or self.callbacks is not None:
            self.notify()

    def notify(self) -> None:
        """Wake any further waiters and run the callbacks, once the outcome
        is known (`finish`).

        The callbacks are dropped once run: a callback often holds what
        holds this request (a workflow's run entry, its `PendingAppend`),
        and kept, each such cycle would wait for the garbage collector.
        """
        if self.event is not None:
            self.event.set()
        callbacks = self.callbacks
        if callbacks is not None:
            self.callbacks = None
            for callback in callbacks:
                callback()

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        """The first waiter's abort function (`trio.lowlevel.wait_task_rescheduled`):
        cancelled before the writer took it, the append is withdrawn; once
        taken, the cancellation waits for the outcome."""
        pending = self.pending
        if self.event is not None or pending is None or self not in pending:
            # The writer took it (it can no longer be withdrawn), or another
            # waiter waits for it too: wait for the outcome.
            return trio.lowlevel.Abort.FAILED
        self.waiter = None
        pending.remove(self)
        # Anyone who waits for it later learns it will never be written.
        self.finish(
            AppendWithdrawnError(
                f"the append to {self.stream!r} was withdrawn: the task "
                "waiting for it was cancelled before it was written"
            )
        )
        return trio.lowlevel.Abort.SUCCEEDED


class InlineHook(Protocol):
    """Something folded inside the append transaction (an inline projection).

    ``apply`` runs in the writer's thread with the write connection, inside the
    transaction that writes ``events``. Raising refuses the events: the writer
    isolates the request that caused it and fails that request alone.
    """

    def apply(self, conn: apsw.Connection, events: Sequence[RecordedEvent]) -> None:
        """Fold ``events`` (already positioned) into the read model.

        A hook may also define ``forget()``: the writer calls it whenever
        what ``apply`` wrote may have been undone or changed by others (a
        rolled-back request or batch, another connection's commit, a
        maintenance job), so a hook can cache rows between batches.
        """


class FlightHook(InlineHook, Protocol):
    """An inline hook that can also fold appends into pipelined writes.

    Staging runs on the event loop while the previous flight is being
    written: it must not use the write connection. The
    writes it stages run inside the flight's one statement (see
    `LogWriter.write_flight`), from the SQL ``flight_sql`` gives.
    """

    def flight_sql(self, each: str) -> str | None:
        """SQL statements (each ending in ``;``) that write what `seal`
        returned, read through the table-valued expression ``each`` (one row
        per item); ``NEW.last`` is the flight's last position. None: this
        hook cannot stage (its appends go the classic way)."""

    def stage(self, events: Sequence[RecordedEvent], reader: apsw.Connection) -> bool:
        """Fold ``events`` (positioned, not yet written) into the writes of
        the flight being staged, all or nothing; False if it refuses them
        (or cannot read what it needs). What it has not cached it may read
        through ``reader``, which sees what is committed (rows a flight not
        yet landed writes are the hook's to remember)."""

    def discard(self) -> None:
        """Drop what was staged since the last seal (it will be written the
        classic way)."""

    def seal(self) -> list[Any]:
        """The writes staged since the last seal, as JSON-able items, for
        the flight taking off; the next `stage` starts the next flight."""

    def landed(self, ok: bool) -> None:
        """The oldest sealed flight was committed (``ok``) or not (then the
        hook forgets everything it staged and cached)."""


class Flight:
    """A batch staged on the event loop, then written by a worker thread.

    The log's writer task stages the next flight while a worker thread
    writes the current one (`LogWriter.write_flight`), so the event loop's
    work per append and SQLite's overlap.
    """

    __slots__ = (
        "committing",
        "error",
        "first",
        "following",
        "hashes",
        "hooks_json",
        "keys_json",
        "landed",
        "last",
        "outcomes",
        "requests",
        "rows",
        "rows_json",
        "saved",
        "sealed",
        "staged",
        "taken",
    )

    def __init__(self, saved: tuple[int, bytes, int]) -> None:
        self.saved = saved
        """The writer's state before this flight was staged."""
        self.first = saved[0] + 1
        self.last = saved[0]
        self.requests: list[AppendRequest] = []
        self.outcomes: list[AppendResult | BaseException] = []
        self.staged: list[_Staged] = []
        self.rows = _Rows()
        self.rows_json = b""
        self.hashes = b""
        self.keys_json: bytes | None = None
        self.hooks_json: bytes | None = None
        self.landed = False
        """Written and committed, or failed (set from the worker thread,
        which may go on to the flight that follows it)."""
        self.error: BaseException | None = None
        self.committing = False
        self.sealed = False
        """Encoded for `LogWriter.write_flight` (`LogWriter.seal`): nothing
        more may be staged into it."""
        self.following: Flight | None = None
        """A sealed flight the worker thread is to write as soon as this one
        commits (offered by the writer task: `Log._offer`)."""
        self.taken = False
        """A worker thread writes it (or has): the write connection is the
        thread's until it lands."""

    @property
    def ok(self) -> bool:
        """Landed, written and committed."""
        return self.landed and self.error is None


_Staged = tuple[AppendRequest, AppendResult, int]
"""One request, checked and positioned: the request, its result, its ts (a
plain tuple: one is built per append)."""


class _Rows:
    """The rows of staged requests, as `_INSERT` and the flight trigger take
    them: each row's chain content (the JSON array `row_hash` hashes: the
    row's first ten columns), in one growing JSON array, and the rows'
    hashes, concatenated.

    Copied into buffers as they are staged rather than kept one object per
    row: orjson's output is allocated bigger than it ends and then shrunk,
    and hundreds of those alive at once made each row's `orjson.dumps`
    several times dearer (the allocator's free lists fragment).
    """

    __slots__ = ("hashes", "json")

    def __init__(self) -> None:
        self.json = bytearray(b"[")
        """``[`` and each row's content followed by a comma."""
        self.hashes = bytearray()
        """Each row's hash, 32 bytes."""

    def mark(self) -> tuple[int, int]:
        """Where the rows staged so far end, for `truncate`."""
        return len(self.json), len(self.hashes)

    def truncate(self, mark: tuple[int, int]) -> None:
        """Forget every row staged after ``mark``."""
        del self.json[mark[0] :]
        del self.hashes[mark[1] :]

    def params(self) -> tuple[bytes, bytes]:
        """(the rows' JSON array, their hashes), for `_INSERT`."""
        json = self.json
        if len(json) == 1:
            return b"[]", b""
        return b"".join((memoryview(json)[:-1], b"]")), bytes(self.hashes)


class LogWriter:
    """Owns the write connection and the staged state (head, hash chain,
    cached stream versions). Staging runs on the event loop; `write_flight`
    and `commit` run in a worker thread."""

    def __init__(
        self,
        conn: apsw.Connection,
        path: Path,
        *,
        fts: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.conn = conn
        self.path = path
        self.fts = fts
        self.clock = clock
        self.hooks: list[InlineHook] = []
        self.blobs: BlobStore | None = None
        self.blob_threshold = 0
        self.head = 0
        self.last_hash = GENESIS
        self.last_ts = 0
        self._versions: dict[str, int] = {}
        self._batch_first = 1
        self._data_version = -1
        self.reader: apsw.Connection | None = None
        """A connection of its own for staging while a batch is being
        written (`stage_flight`); opened by the log."""
        self.flight_keys: dict[str, AppendResult] = {}
        """Idempotency keys staged in flights not yet written (and those read
        for them), for `stage_flight`."""
        self._flight_hooks: tuple[InlineHook, ...] = ()
        self._flights_ok = False
        self._checkpoint_every = _SQLITE_AUTOCHECKPOINT
        """The write connection's ``wal_autocheckpoint`` (`write_flight`)."""

    # -- state ------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload head, last hash and last ts when another connection wrote.

        ``PRAGMA data_version`` changes only when a *different* connection
        committed, so in the usual case (this process is the only writer) the
        cached state stays valid and costs one pragma per batch.
        """
        dv = self.conn.execute("PRAGMA data_version").fetchall()[0][0]
        if dv == self._data_version:
            return
        self._data_version = dv
        self._forget_cached_rows()
        row = self.conn.execute(
            "SELECT position, hash, ts FROM logs ORDER BY position DESC LIMIT 1"
        ).fetchall()
        if row:
            self.head, self.last_hash, self.last_ts = (
                row[0][0],
                bytes(row[0][1]),
                row[0][2],
            )
            return
        # Everything may have moved to the archive: its watermark remembers
        # where the chain stands (the keys `_log._commit_day` writes).
        meta = dict(
            self.conn.execute(
                "SELECT key, value FROM meta WHERE key IN "
                "('archive.position', 'archive.hash', 'archive.ts')"
            ).fetchall()
        )
        self.head = int(meta.get("archive.position", 0))
        self.last_hash = (
            bytes.fromhex(meta["archive.hash"]) if "archive.hash" in meta else GENESIS
        )
        self.last_ts = int(meta.get("archive.ts", 0))

    def stream_version(self, stream: str, conn: apsw.Connection | None = None) -> int:
        v = self._versions.get(stream)
        if v is None:
            self.prefetch_versions([stream], conn)
            v = self._versions[stream]
        return v

    def _forget_cached_rows(self) -> None:
        """The database may differ from what was cached (a rollback, another
        connection's commit, a maintenance job): forget the stream versions
        and let each hook forget what it caches (`InlineHook.forget`)."""
        self._versions.clear()
        for hook in self.hooks:
            forget = getattr(hook, "forget", None)
            if forget is not None:
                forget()

    def prefetch_versions(
        self,
        streams: Iterable[str],
        conn: apsw.Connection | None = None,
        *,
        keep: bool = False,
    ) -> None:
        """Load the versions of streams not cached, in one query per 500.

        A batch of appends to new streams (every workflow run is one) would
        otherwise cost a query per append. A full cache is emptied first,
        unless it holds versions staged but not yet written (``keep``).
        """
        versions = self._versions
        missing = list({s for s in streams if s not in versions})
        if not missing:
            return
        if len(versions) + len(missing) > _MAX_CACHED_STREAMS and not keep:
            versions.clear()
        conn = conn or self.conn
        for i in range(0, len(missing), 500):
            chunk = missing[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found = dict(
                conn.execute(
                    f"SELECT stream, max(version) FROM logs WHERE stream IN ({marks}) "
                    "GROUP BY stream",
                    chunk,
                ).fetchall()
            )
            absent = [s for s in chunk if s not in found]
            if absent:
                found.update(
                    conn.execute(
                        "SELECT stream, version FROM archived_streams WHERE stream IN "
                        f"({','.join('?' * len(absent))})",
                        absent,
                    ).fetchall()
                )
            for stream in chunk:
                versions[stream] = found.get(stream, 0)

    # -- the batch ----------------------------------------------------------------

    def begin(self, *, wait: bool, main_only: bool = False) -> None:
        """``BEGIN IMMEDIATE``; without ``wait``, raise `apsw.BusyError` at once
        if another process holds the write lock (the event loop must not
        block on it: the caller retries with ``wait`` in a worker thread).

        ``main_only``: take the write lock of ``logs.db`` alone, not of the
        attached databases too (as ``BEGIN IMMEDIATE`` does), so that other
        connections may write those meanwhile (a rebuild's fresh database).
        """
        sql = _BEGIN_MAIN_ONLY if main_only else "BEGIN IMMEDIATE"
        conn = self.conn
        if wait:
            conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        try:
            conn.execute(sql)
        except apsw.Error:
            if conn.in_transaction:  # BEGIN, then no lock
                self._rollback()
            raise
        finally:
            if wait:
                conn.set_busy_timeout(0)

    def save(self) -> tuple[int, bytes, int]:
        """The state to restore if the batch fails."""
        return self.head, self.last_hash, self.last_ts

    def write(
        self,
        requests: Sequence[AppendRequest],
        blob_errors: Mapping[AppendRequest, BaseException],
        saved: tuple[int, bytes, int],
    ) -> list[AppendResult | BaseException]:
        """Stage and insert the batch inside the open transaction.

        On a fault of the whole transaction, rolls back and returns that
        fault as every request's outcome (then there is nothing to commit).
        """
        try:
            self.refresh()
            self._batch_first = self.head + 1  # what `commit` indexes
            if blob_errors:
                outcomes = self._write_all(
                    [r for r in requests if r not in blob_errors]
                )
                it = iter(outcomes)
                return [blob_errors.get(r) or next(it) for r in requests]
            return self._write_all(requests)
        except BaseException as e:
            self.abort(saved)
            if not isinstance(e, Exception):
                raise
            err = map_error(self.path, e) if isinstance(e, apsw.Error) else e
            return [err] * len(requests)

    def commit(self) -> None:
        """Index the batch for full-text search, then ``COMMIT`` (the fsync).

        Blocking; the writer task runs it in a worker thread. The full-text
        indexing is one statement of C work (no GIL): done here, it runs on
        the second core while the event loop prepares the next batch.
        """
        if self.fts and self.head >= self._batch_first:
            # One statement: a worker thread takes the GIL back once per
            # statement.
            self.conn.execute(
                "INSERT INTO nerve_index VALUES (?, ?)", (self._batch_first, self.head)
            )
        self.conn.execute("COMMIT")

    # -- the pipelined batch -----------------------------------------------------------

    def stage_flight(
        self, flight: Flight, requests: Sequence[AppendRequest], airborne: bool
    ) -> bool:
        """Stage ``requests`` into ``flight`` on the event loop, while another
        flight may be being written (``airborne``).

        Everything not cached is read first, through `reader` (the write
        connection may be busy in a worker thread); returns False, having
        changed nothing, when that fails (the database is busy, say): the
        caller writes those requests the classic way.
        """
        reader = self.reader
        assert reader is not None
        keys = self.flight_keys
        unwritten = airborne or bool(flight.staged)
        if not unwritten:
            keys.clear()  # every key staged so far is written
        versions = self._versions
        try:
            missing = [r.stream for r in requests if r.stream not in versions]
            if missing:
                self.prefetch_versions(missing, reader, keep=unwritten)
            for r in requests:
                key = r.key
                if key is not None and key not in keys:
                    original = self._lookup_key(key, reader)
                    if original is not None:
                        keys[key] = original
        except apsw.Error:
            return False
        staged = flight.staged
        n = len(staged)
        rows = flight.rows
        mark = rows.mark()
        outcomes = self._stage_all(requests, keys, None, staged, rows)
        hooks = self.hooks
        if hooks and len(staged) > n:
            events = _recorded(staged[n:])
            for hook in hooks:
                if not cast(FlightHook, hook).stage(events, reader):
                    # Something only the classic way can sort out (a row not
                    # cached, a refused transition): the caller discards the
                    # whole flight (`unstage`) and writes it that way.
                    del staged[n:]
                    rows.truncate(mark)
                    return False
        flight.requests.extend(requests)
        flight.outcomes.extend(outcomes)
        flight.last = self.head
        return True

    def seal(self, flight: Flight) -> None:
        """Encode a staged flight for `write_flight` (on the event loop)."""
        flight.sealed = True
        staged = flight.staged
        flight.rows_json, flight.hashes = flight.rows.params()
        # Every key staged in a flight not yet written is in `flight_keys`.
        keyed = _keyed(staged) if self.flight_keys else None
        if keyed:
            flight.keys_json = orjson.dumps(keyed)
        if self.hooks:
            flight.hooks_json = orjson.dumps(
                [cast(FlightHook, hook).seal() for hook in self.hooks]
            )

    def write_flight(self, flight: Flight) -> None:
        """Write and commit a sealed flight (blocking: in a worker thread).

        One statement does it all: an insert into the temporary view
        ``nerve_flight``, whose trigger writes the rows, the idempotency keys,
        the full-text index and the inline hooks' rows, run in autocommit
        mode (SQLite begins and commits around it). SQLite runs it without
        the GIL, and the thread takes the GIL back once rather than once per
        statement: with the event loop busy, every time costs up to the
        interpreter's switch interval.

        A batch of `BUSY_FLIGHT` events or more sets the connection's
        checkpoint cadence to `WAL_AUTOCHECKPOINT` pages first; it goes back
        to SQLite's once the log is quiet (`checkpoint`), not with the
        smaller batch that ends a burst, whose commit would then copy the
        whole long WAL back.

        On failure nothing is written and ``error`` says why; an I/O error
        or a full disk (``committing``) fails the flight's appends, anything
        else (another connection wrote since the flight was staged; a
        constraint; the database is busy) lets the log write them the
        classic way.
        """
        conn = self.conn
        busy = flight.last - flight.first + 1 >= BUSY_FLIGHT
        conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        try:
            if busy and self._checkpoint_every != WAL_AUTOCHECKPOINT:
                conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
                self._checkpoint_every = WAL_AUTOCHECKPOINT
            conn.execute(
                _FLIGHT_INSERT,
                (
                    self._data_version,
                    flight.rows_json,
                    flight.hashes,
                    flight.keys_json,
                    flight.first,
                    flight.last,
                    self.fts,
                    flight.hooks_json,
                ),
            )
        except (apsw.IOError, apsw.FullError) as e:
            flight.error = e
            flight.committing = True
        except apsw.Error as e:
            flight.error = e
        finally:
            conn.set_busy_timeout(0)

    @property
    def wal_busy(self) -> bool:
        """Whether the write connection checkpoints at `WAL_AUTOCHECKPOINT`
        (big batches were written since the log was last quiet), so the WAL
        may be long."""
        return self._checkpoint_every != _SQLITE_AUTOCHECKPOINT

    def checkpoint(self) -> None:
        """Go back to SQLite's cadence and checkpoint the WAL (PASSIVE:
        readers are not waited for); blocking: in a worker thread, while no
        batch is being written. A failed checkpoint is left to SQLite's
        next one (the cadence is back either way, so it is tried once per
        quiet spell)."""
        conn = self.conn
        conn.execute(f"PRAGMA wal_autocheckpoint={_SQLITE_AUTOCHECKPOINT}")
        self._checkpoint_every = _SQLITE_AUTOCHECKPOINT
        with contextlib.suppress(apsw.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def flights_ready(self) -> bool:
        """Whether appends can be pipelined now: every inline hook can stage
        its writes (`FlightHook`) and the flight trigger writes them."""
        return self._flights_ok and self._flight_hooks == tuple(self.hooks)

    def prepare_flights(self) -> None:
        """(Re)create the temporary view and trigger `write_flight` inserts
        into, with the SQL of the inline hooks there are now. Only while no
        flight is being written."""
        hooks = tuple(self.hooks)
        sql: list[str] | None = []
        for i, hook in enumerate(hooks):
            flight_sql = getattr(hook, "flight_sql", None)
            part = (
                None
                if flight_sql is None
                else flight_sql(f"jsonb_each(jsonb(NEW.hooks), '$[{i}]')")
            )
            if part is None or sql is None:
                sql = None
                break
            sql.append(part)
        conn = self.conn
        conn.execute(_INDEX_SCHEMA)
        conn.execute(_FLIGHT_VIEW)
        conn.execute("DROP TRIGGER IF EXISTS temp.nerve_flight_write")
        if sql is not None:
            conn.execute(_FLIGHT_TRIGGER.format(hooks="\n    ".join(sql)))
        self._flight_hooks = hooks
        self._flights_ok = sql is not None

    def unstage(self, saved: tuple[int, bytes, int], *, failed: bool = False) -> None:
        """Forget what was staged after ``saved`` (it will not be written as
        staged): positions, chain, cached versions and keys, and what hooks
        staged. After a ``failed`` flight (another connection may have
        written), forget every cache and look at the database again."""
        self.head, self.last_hash, self.last_ts = saved
        self.flight_keys.clear()
        if failed:
            self._forget_cached_rows()
            self._data_version = -1
            return
        self._versions.clear()
        for hook in self.hooks:
            discard = getattr(hook, "discard", None)
            if discard is not None:
                discard()

    def landed(self, ok: bool) -> None:
        """Tell the hooks the oldest sealed flight landed (see `FlightHook`)."""
        for hook in self.hooks:
            landed = getattr(hook, "landed", None)
            if landed is not None:
                landed(ok)

    def abort(self, saved: tuple[int, bytes, int]) -> None:
        """Roll back and forget what the batch did to the cached state."""
        self._rollback()
        self.head, self.last_hash, self.last_ts = saved
        # Caches: cleared rather than copied before every batch.
        self._forget_cached_rows()
        self._data_version = -1

    def store_blobs(
        self, requests: Sequence[AppendRequest]
    ) -> dict[AppendRequest, BaseException]:
        """Move big payloads to the blob store, before the transaction.

        The blob is on disk before the event naming it commits. A request whose
        blob cannot be stored fails alone.
        """
        errors: dict[AppendRequest, BaseException] = {}
        if self.blobs is None:
            return errors
        for req in requests:
            if not req.big:
                continue
            try:
                req.events = [
                    ev._replace(
                        payload=None, blob=self.blobs.put_sync(ev.payload.encode())
                    )
                    if ev.payload is not None
                    and len(ev.payload.encode()) > self.blob_threshold
                    else ev
                    for ev in req.events
                ]
                req.big = False
            except NerveError as e:
                errors[req] = e
        return errors

    def _rollback(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        except apsw.Error:
            pass  # SQLite already rolled back (e.g. after SQLITE_FULL)

    def _write_all(
        self, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | BaseException]:
        conn = self.conn
        start_state = self.save()
        staged: list[_Staged] = []
        rows = _Rows()
        outcomes = self._stage_all(requests, None, conn, staged, rows)
        if not staged:
            return outcomes
        conn.execute("SAVEPOINT batch")
        try:
            self._insert(staged, rows)
            conn.execute("RELEASE batch")
            return outcomes
        except (apsw.FullError, apsw.IOError):
            raise  # the whole transaction is lost; every request fails
        except Exception:
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
        # Slow path: one SAVEPOINT per request finds the culprit(s).
        self.head, self.last_hash, self.last_ts = start_state
        self._forget_cached_rows()  # reloaded from the rolled-back database
        outcomes = []
        for request in requests:
            # The state before staging: a refused request must give its
            # positions (and its place in the hash chain) back.
            state = self.save()
            one_staged: list[_Staged] = []
            one_rows = _Rows()
            one_outcomes = self._stage_all([request], None, conn, one_staged, one_rows)
            if not one_staged:
                outcomes.extend(one_outcomes)
                continue
            conn.execute("SAVEPOINT one")
            try:
                self._insert(one_staged, one_rows)
                conn.execute("RELEASE one")
                outcomes.extend(one_outcomes)
            except (apsw.FullError, apsw.IOError):
                raise
            except Exception as e:
                conn.execute("ROLLBACK TO one")
                conn.execute("RELEASE one")
                self.head, self.last_hash, self.last_ts = state
                self._forget_cached_rows()
                outcomes.append(
                    map_error(self.path, e) if isinstance(e, apsw.Error) else e
                )
        return outcomes

    def _stage_all(
        self,
        requests: Sequence[AppendRequest],
        keys: dict[str, AppendResult] | None,
        conn: apsw.Connection | None,
        staged: list[_Staged],
        rows: _Rows,
    ) -> list[AppendResult | BaseException]:
        """Check and position every request into ``staged`` and ``rows``;
        advance the in-memory state.

        ``keys`` holds the idempotency keys staged but not yet committed;
        ``conn`` is where stream versions and keys not cached are looked up
        (the write connection, inside its transaction), or None when they
        were all looked up beforehand (`stage_flight`).
        """
        outcomes: list[AppendResult | BaseException] = []
        if keys is None:
            keys = {}
        now = max(int(self.clock() * 1000), self.last_ts)
        if len(requests) > 1 and conn is not None:
            self.prefetch_versions((r.stream for r in requests), conn)
        json = rows.json
        hashes = rows.hashes
        versions = self._versions
        head = self.head
        prev = self.last_hash
        for req in requests:
            stream = req.stream
            current = versions.get(stream)
            if current is None or req.key is not None or req.expected is not None:
                try:
                    checked = self._check(req, keys, conn)
                except NerveError as e:
                    outcomes.append(e)
                    continue
                if isinstance(checked, AppendResult):
                    outcomes.append(checked)  # a duplicate: its original result
                    continue
                current = checked
            position = head
            version = current
            source = req.source
            for ev in req.events:
                position += 1
                version += 1
                type_, tv, payload, blob, meta, _, _ = ev
                # `row_hash`, inlined: the content is also the row as written.
                content = _dumps(
                    (
                        position,
                        stream,
                        version,
                        type_,
                        tv,
                        source,
                        now,
                        payload,
                        blob,
                        meta,
                    )
                )
                prev = _sha256(prev + content).digest()
                json += content
                json += b","
                hashes += prev
            result = _new_result(
                AppendResult, (stream, head + 1, position, version, False)
            )
            staged.append((req, result, now))
            outcomes.append(result)
            head = position
            versions[stream] = version
            if req.key is not None:
                keys[req.key] = result
        if head != self.head:
            self.head = head
            self.last_hash = prev
            self.last_ts = now
        return outcomes

    def _check(
        self,
        req: AppendRequest,
        keys: dict[str, AppendResult],
        conn: apsw.Connection | None,
    ) -> int | AppendResult:
        """The stream's current version if ``req`` may be appended; its
        original result if its idempotency key was seen (a duplicate)."""
        stream = req.stream
        if req.key is not None:
            original = keys.get(req.key)
            if original is None and conn is not None:
                original = self._lookup_key(req.key, conn)
            if original is not None:
                if original.stream != stream:
                    raise DuplicateIdempotencyKey(req.key, original.stream, stream)
                return original._replace(duplicate=True)
        current = self.stream_version(stream, conn or self.reader)
        expected = req.expected
        if expected is not None:
            if expected is NO_STREAM:
                ok = current == 0
            elif expected is STREAM_EXISTS:
                ok = current > 0
            else:
                ok = current == expected
            if not ok:
                raise WrongExpectedVersion(stream, expected, current)
        return current

    def _lookup_key(self, key: str, conn: apsw.Connection) -> AppendResult | None:
        row = conn.execute(
            "SELECT stream, first_position, last_position, version FROM idempotency "
            "WHERE key=?",
            (key,),
        ).fetchall()
        if not row:
            return None
        stream, first, last, version = row[0]
        return AppendResult(stream, first, last, version)

    def _insert(self, staged: Sequence[_Staged], rows: _Rows) -> None:
        conn = self.conn
        conn.execute(_INSERT, rows.params())
        keyed = _keyed(staged)
        if keyed:
            conn.executemany("INSERT INTO idempotency VALUES (?,?,?,?,?)", keyed)
        if self.hooks:
            recorded = _recorded(staged)
            for hook in self.hooks:
                hook.apply(conn, recorded)

    # -- maintenance jobs ------------------------------------------------------------

    def run_job(
        self,
        job: Callable[[apsw.Connection], T],
        attach: Mapping[str, Path] | None = None,
    ) -> T:
        """Run ``job`` in its own write transaction, serialized with appends."""
        conn = self.conn
        attached: list[str] = []
        try:
            for schema, path in (attach or {}).items():
                conn.execute("ATTACH DATABASE ? AS " + _quote(schema), (str(path),))
                attached.append(schema)
            self.begin(wait=True, main_only=bool(attached))
        except apsw.Error as e:
            self._detach(attached)
            raise map_error(self.path, e) from e
        try:
            self.refresh()
            result = job(conn)
            conn.execute("COMMIT")
        except BaseException as e:
            self._rollback()
            self._data_version = -1
            self._detach(attached)
            if isinstance(e, apsw.Error):
                raise map_error(self.path, e) from e
            raise
        self._detach(attached)
        # The job may have changed what the cached state is derived from.
        self._data_version = -1
        return result

    def _detach(self, schemas: Sequence[str]) -> None:
        for schema in schemas:
            self.conn.execute("DETACH DATABASE " + _quote(schema))


def _keyed(staged: Sequence[_Staged]) -> list[tuple[Any, ...]]:
    """The ``idempotency`` rows of the staged requests that have a key."""
    return [(req.key, *result[:4]) for req, result, _ in staged if req.key is not None]


def _recorded(staged: Sequence[_Staged]) -> list[RecordedEvent]:
    """The staged events as inline hooks see them."""
    new = tuple.__new__  # RecordedEvent(...) without its Python __new__
    cls = RecordedEvent
    out: list[RecordedEvent] = []
    for req, result, ts in staged:
        stream = req.stream
        source = req.source
        position = result.first_position
        version = result.version - (result.last_position - position)
        for type_, _, _, _, _, data, meta_obj in req.events:
            out.append(
                new(
                    cls,
                    (
                        position,
                        stream,
                        version,
                        type_,
                        ts,
                        data,
                        meta_obj or EMPTY_META,
                        source,
                    ),
                )
            )
            position += 1
            version += 1
    return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
