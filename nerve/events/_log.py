"""`open_log` and `Log`: the durable event log every part of nerve writes to."""

from __future__ import annotations

import _thread
import contextlib
import functools
import os
import re
import shutil
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import apsw
import attrs
import orjson
import outcome
import trio

from .._gc import DEFAULT_GC_THRESHOLD, gc_tuned
from . import _archive as arch
from ._blobs import BlobStore
from ._chain import GENESIS, row_hash
from ._codec import EventRegistry, check_type_name, encode_meta, is_utf8, registry
from ._errors import (
    ArchiveError,
    EventDecodingError,
    InvalidEventError,
    LogClosedError,
    SearchQueryError,
)
from ._schema import LOG_APPLICATION_ID, MIGRATIONS
from ._sqlite import (
    create_private_file,
    map_error,
    mapped_errors,
    migrate,
    open_connection,
)
from ._trio_util import Parking, single_error
from ._types import (
    EMPTY_META,
    AppendResult,
    ExpectedVersion,
    LogStatistics,
    NewEvent,
    RecordedEvent,
)
from ._writer import (
    AppendRequest,
    EncodedEvent,
    Flight,
    InlineHook,
    LogWriter,
)

T = TypeVar("T")
_new_tuple = tuple.__new__  # a named tuple without its Python __new__
_dumps = orjson.dumps

LOG_FILE: Final = "logs.db"
DEFAULT_BLOB_THRESHOLD: Final = 64 * 1024
PAGE_SIZE: Final = 1000
MAX_BATCH: Final = 10_000
"""Most append requests in one write transaction; more wait for the next."""
STAGE_CHUNK: Final = 128
"""Appends staged between looks at whether the worker thread has landed."""
QUIET_CHECKPOINT: Final = 0.01
"""Seconds without appends after which the writer checkpoints the WAL that
big batches left (see `LogWriter.checkpoint`)."""

_SELECT = f"SELECT {arch.ROW_COLUMNS} FROM logs"
# Reads skip the hash column: only `verify` and the archive need it.
_READ = (
    "SELECT position, stream, version, type, type_version, source, ts, payload, "
    "blob, meta FROM logs"
)
_loads = orjson.loads
_DIGEST = re.compile(r"[0-9a-f]{64}")


@attrs.frozen
class SearchHit:
    """One full-text match: the event, a highlighted snippet, and its rank."""

    event: RecordedEvent
    snippet: str
    rank: float


def _resolve(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(data dir, logs.db path) for a data directory or a ``.db`` file path."""
    p = Path(path)
    if p.suffix == ".db" or p.is_file():
        return p.parent, p  # a directory named *.db is refused when opened
    return p, p / LOG_FILE


def _make_data_dir(data_dir: Path) -> None:
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=0o700)
        os.chmod(data_dir, 0o700)


@contextlib.asynccontextmanager
async def open_log(
    path: str | os.PathLike[str] = "data",
    *,
    registry: EventRegistry = registry,
    source: str = "",
    fts: bool = True,
    blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
    watch_interval: float | None = 0.05,
    clock: Callable[[], float] = time.time,
    gc_threshold: int | None = DEFAULT_GC_THRESHOLD,
) -> AsyncIterator[Log]:
    """Open (creating when missing) the log in a data directory.

    Args:
        path: the data directory (created with mode 0700 if missing, holding
            ``logs.db``), or the path of a ``.db`` file.
        registry: where event classes are registered (default: `nerve.event`'s).
        source: recorded with every event this log appends (e.g. ``"kernel"``).
        fts: keep the full-text index of payloads (`Log.search`) up to date.
        blob_threshold: payloads whose JSON exceeds this many bytes go to the
            blob store; the event keeps the digest.
        watch_interval: how often (seconds) subscribers look for appends made
            by other processes; None to follow this process's appends only.
        clock: the wall clock (seconds since the epoch) for event timestamps.
        gc_threshold: CPython's young-generation collection threshold while
            the log is open (`nerve.gc_tuned`; default 10,000 instead of 700:
            with a thousand appends in flight, a quarter of the writer's time
            went to collections); None leaves the garbage collector alone.

    Raises:
        NotADatabaseError: the file exists and is not a nerve log.
        NewerSchemaError, MigrationChecksumError: the schema cannot be used.
        CorruptDatabaseError: SQLite reports corruption.
        InvalidEventError: ``source`` cannot be stored (a lone surrogate).
    """
    if not isinstance(source, str) or not is_utf8(source):
        raise InvalidEventError(
            f"source must be a string without lone surrogates, got {source!r}"
        )
    data_dir, db_path = _resolve(path)
    with gc_tuned(gc_threshold):
        async with _opened(
            await trio.to_thread.run_sync(
                lambda: Log._open_sync(
                    data_dir,
                    db_path,
                    registry,
                    source,
                    fts,
                    blob_threshold,
                    watch_interval,
                    clock,
                )
            )
        ) as log:
            yield log


@contextlib.asynccontextmanager
async def _opened(log: Log) -> AsyncIterator[Log]:
    """Run an opened log's writer until the block ends, then close it."""
    try:
        with single_error():
            async with trio.open_nursery() as nursery:
                log._nursery = nursery
                nursery.start_soon(log._writer_loop)
                try:
                    yield log
                finally:
                    with trio.CancelScope(shield=True):
                        await log.aclose()
                    nursery.cancel_scope.cancel()
    finally:
        log._close_connections()


class Log:
    """The event log. Obtain one with `open_log`.

    Appends from any number of tasks are group-committed by one writer task;
    reads and subscriptions use their own connections and never block it.
    """

    def __init__(
        self,
        data_dir: Path,
        db_path: Path,
        writer: LogWriter,
        registry: EventRegistry,
        source: str,
        blob_threshold: int,
        watch_interval: float | None,
    ) -> None:
        self.data_dir = data_dir
        self.path = db_path
        self.registry = registry
        self.source = source
        self.blobs = BlobStore(data_dir / "blobs")
        self.blob_threshold = blob_threshold
        self.watch_interval = watch_interval
        self._writer = writer
        writer.blobs = self.blobs
        writer.blob_threshold = blob_threshold
        self._pool: list[apsw.Connection] = []
        self._pending: deque[AppendRequest] = deque()
        self._parking = Parking()  # where appenders wait (this log's trio run)
        self._wakeup = trio.Event()
        self._flight_lock = _thread.allocate_lock()
        self._writer_idle = False
        """The writer task waits for `_wakeup`: a new append must set it."""
        self._jobs: deque[tuple[Callable[[apsw.Connection], Any], _JobSlot]] = deque()
        self._changed = trio.Event()
        self._head = writer.head
        # Where events of unknown types (from other processes, or from before
        # this process opened the log) end, and the last position of each
        # type this process appended: filtered readers wake on those only.
        self._foreign_head = writer.head
        self._type_heads: dict[str, int] = {}
        self._track_types = False
        """Whether `_type_heads` is kept (once some reader of some types
        only asked `_moved_past`: until then nobody needs it)."""
        self._type_names: set[str] = set()  # checked valid (a cache)
        self._closed = False
        self._writer_done = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._watching = False
        self._waiting = 0
        # statistics
        self._events = 0
        self._appends = 0
        self._batches = 0
        self._rejected = 0
        self._max_batch = 0

    @classmethod
    def _open_sync(
        cls,
        data_dir: Path,
        db_path: Path,
        registry: EventRegistry,
        source: str,
        fts: bool,
        blob_threshold: int,
        watch_interval: float | None,
        clock: Callable[[], float],
    ) -> Log:
        _make_data_dir(data_dir)
        conn = open_connection(
            db_path, synchronous="FULL", application_id=LOG_APPLICATION_ID, what="log"
        )
        try:
            migrate(
                conn, db_path, MIGRATIONS, application_id=LOG_APPLICATION_ID, what="log"
            )
            writer = LogWriter(conn, db_path, fts=fts, clock=clock)
            with mapped_errors(db_path):
                writer.refresh()
                if fts:
                    _catch_up_fts(conn, writer.head)
                # The writer task begins its transactions on the event loop and
                # must never block there: see `LogWriter.begin`.
                conn.set_busy_timeout(0)
            writer.prepare_flights()
            writer.reader = open_connection(db_path, synchronous="NORMAL", create=False)
        except BaseException:
            conn.close()
            raise
        return cls(
            data_dir, db_path, writer, registry, source, blob_threshold, watch_interval
        )

    # -- properties ------------------------------------------------------------------

    @property
    def head(self) -> int:
        """The last committed position this process knows of (0 when empty)."""
        return self._head

    def statistics(self) -> LogStatistics:
        """Counters since the log was opened."""
        return LogStatistics(
            head=self._head,
            events=self._events,
            appends=self._appends,
            batches=self._batches,
            rejected=self._rejected,
            pending=len(self._pending),
            mean_batch_size=self._appends / self._batches if self._batches else 0.0,
            max_batch_size=self._max_batch,
            subscribers=self._waiting,
        )

    def add_inline_hook(self, hook: InlineHook) -> None:
        """Fold ``hook`` inside every append transaction from now on."""
        self._writer.hooks.append(hook)

    # -- appending ---------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: NewEvent | Iterable[NewEvent],
        *,
        expected_version: int | ExpectedVersion | None = None,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        """Append events to a stream, atomically: all of them or none.

        Args:
            stream: the stream's name.
            events: the events, in order (a single `NewEvent` is accepted).
            expected_version: None to append whatever the stream's version;
                ``NO_STREAM`` if the stream must not exist yet;
                ``STREAM_EXISTS`` if it must; an int the current version
                must equal.
            idempotency_key: a repeated key (even after a restart) writes
                nothing and returns the original result, with
                ``duplicate=True``.

        Returns:
            The positions written and the stream's new version. When this
            returns, the events are on disk (fsynced).

        Raises:
            WrongExpectedVersion: the stream is not at the expected version.
            DuplicateIdempotencyKey: the key was used for another stream.
            EventEncodingError: a payload cannot be encoded.
            InvalidEventError: the stream name or an event is malformed.
            StorageFullError: the disk is full.

        Cancelled while waiting for the writer, an append that was not yet
        taken is withdrawn (nothing written); one already being written is
        waited for, so it is never reported cancelled while it commits.
        """
        request = self._enqueue(stream, events, expected_version, idempotency_key)
        # `_outcome` for a fresh request: the writer reschedules this task
        # with the outcome (`AppendRequest.finish`).
        result: AppendResult = await self._parking.wait(request)
        return result

    def submit(
        self,
        stream: str,
        events: NewEvent | Iterable[NewEvent],
        *,
        expected_version: int | ExpectedVersion | None = None,
        idempotency_key: str | None = None,
    ) -> PendingAppend:
        """Queue an append without waiting for it; `append` is ``submit`` + wait.

        Appends are written in the order they are submitted, so an actor can
        decide several things in a row and submit their events in that order
        without waiting for each fsync. Encoding errors raise here, before
        anything is queued. Await `PendingAppend.wait` for the result.
        """
        request = self._enqueue(stream, events, expected_version, idempotency_key)
        return PendingAppend(self, request)

    def _enqueue_checked(
        self,
        stream: str,
        events: NewEvent | Iterable[NewEvent] | Sequence[EncodedEvent],
        expected: int | ExpectedVersion | None,
        key: str | None,
    ) -> AppendRequest:
        """`_enqueue` the general way: check and encode an append, any
        events, and queue it.

        ``events`` may also be events `_encode` already encoded (an actor
        reusing the encoding of a constant event, or of one checked earlier).
        """
        if self._closed:
            self._check_open()
        check_stream(stream)
        if expected is not None and not _valid_expected(expected):
            raise InvalidEventError(
                f"expected_version must be None, NO_STREAM, STREAM_EXISTS or an "
                f"int >= 0, got {expected!r}"
            )
        if key is not None and (
            not isinstance(key, str) or not key or not is_utf8(key)
        ):
            raise InvalidEventError(
                "idempotency_key must be a non-empty string without lone "
                f"surrogates, got {key!r}"
            )
        if isinstance(events, NewEvent):
            events = (events,)
        elif not isinstance(events, Iterable):
            raise InvalidEventError(
                f"append to {stream!r}: expected a NewEvent or an iterable of "
                f"them, got {events.__class__.__qualname__}"
            )
        encoded: list[EncodedEvent] = []
        big = False
        threshold = self.blob_threshold
        for ev in events:
            e = ev if ev.__class__ is EncodedEvent else self._encode(ev, stream)
            payload = e.payload
            if payload is not None and len(payload) * 4 > threshold:
                big = big or _too_big(payload, threshold)  # else it fits anyway
            encoded.append(e)
        if not encoded:
            raise InvalidEventError(f"append to {stream!r} needs at least one event")
        return self._queue(
            AppendRequest(stream, encoded, expected, key, self.source, big=big)
        )

    def _queue(self, request: AppendRequest) -> AppendRequest:
        """Queue a checked append for the writer (waking it if it waits)."""
        request.pending = pending = self._pending
        pending.append(request)
        if self._writer_idle:
            self._writer_idle = False
            self._wakeup.set()
        return request

    def _encode(self, ev: Any, stream: str = "") -> EncodedEvent:
        """Check and encode one event (`EventEncodingError` if it cannot be)."""
        if ev.__class__ is not NewEvent and not isinstance(ev, NewEvent):
            where = f"append to {stream!r}: " if stream else ""
            raise InvalidEventError(
                f"{where}expected NewEvent objects, got {ev.__class__.__qualname__}"
            )
        type_ = ev.type
        known = self._type_names
        if type_ not in known:
            check_type_name(type_)
            if len(known) < 10_000:
                known.add(type_)
        payload, type_version, data = self.registry.encode(type_, ev.data)
        meta_obj = ev.meta
        meta = encode_meta(type_, meta_obj) if meta_obj else None
        return _new_tuple(
            EncodedEvent, (type_, type_version, payload, None, meta, data, meta_obj)
        )

    def _submit_encoded(
        self,
        stream: str,
        events: Sequence[EncodedEvent],
        expected: int | ExpectedVersion | None = None,
    ) -> PendingAppend:
        """`submit` events `_encode` already encoded."""
        return PendingAppend(self, self._enqueue(stream, events, expected, None))

    def _enqueue(
        self,
        stream: str,
        events: NewEvent | Iterable[NewEvent] | Sequence[EncodedEvent],
        expected: int | ExpectedVersion | None,
        key: str | None,
    ) -> AppendRequest:
        """Check, encode and queue an append for the writer.

        The common append takes fewer steps here: one event of an
        unregistered type seen before, a dict payload, no expectations.
        Anything else, or anything wrong, takes the general way
        (`_enqueue_checked`, which checks it and says what is wrong).
        """
        if events.__class__ is not NewEvent or expected is not None or key is not None:
            return self._enqueue_checked(stream, events, expected, key)
        ev: NewEvent = events
        type_ = ev.type
        data = ev.data
        if (
            self._closed
            or data.__class__ is not dict
            or stream.__class__ is not str
            or not 0 < len(stream) <= 1000
            or not stream.isascii()
            or type_ not in self._type_names
            or type_ in self.registry._by_type
        ):
            return self._enqueue_checked(stream, ev, None, None)
        try:
            out = _dumps(data)
        except (TypeError, orjson.JSONEncodeError):
            return self._enqueue_checked(stream, ev, None, None)  # says what
        payload = out.decode()
        # Maybe a NaN (orjson writes null): the general way looks. (On the
        # str: `in` on bytes costs several times more.)
        if "null" in payload:
            return self._enqueue_checked(stream, ev, None, None)
        if len(payload) * 4 > self.blob_threshold and _too_big(
            payload, self.blob_threshold
        ):
            return self._enqueue_checked(stream, ev, None, None)
        meta_obj = ev.meta
        meta = encode_meta(type_, meta_obj) if meta_obj else None
        # A plain tuple in `EncodedEvent`'s layout (a quarter of the cost of
        # building the named tuple): what reads a request's events unpacks
        # them or indexes them, never by name.
        encoded: EncodedEvent = (type_, 1, payload, None, meta, data, meta_obj)  # type: ignore[assignment]
        return self._queue(AppendRequest(stream, (encoded,), None, None, self.source))

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"the log at {self.path} is closed")

    async def _writer_loop(self) -> None:
        # Shielded: the writer stops when the log closes (`aclose`, which
        # every exit from `open_log` awaits), not when the scope around
        # `open_log` is cancelled, so appends made while its body winds down
        # a cancellation (the kernel recording interrupted runs) are written.
        with trio.CancelScope(shield=True):
            await self._write_until_closed()

    async def _write_until_closed(self) -> None:
        """Group-commit appends until the log closes.

        Appends take one of two ways. The pipelined way, whenever every
        inline hook can stage its writes (`FlightHook`) and no payload goes
        to the blob store: this task stages a batch (checks, positions, hash
        chain, the hooks' rows) and a worker thread writes and commits it in
        one statement that runs without the GIL, while this task stages the
        next batch from the appends that keep arriving. Once that batch is
        ready and this task would wait, it is sealed and offered to the
        thread, which goes straight on to it when its batch commits
        (`_offer`); else it takes off as soon as this task sees the thread
        land. Then the landed batch's appenders are woken. The classic way
        (`_write`) writes one batch at a time, in a transaction begun on the
        event loop: for what only the database can decide. Appends are
        written in the order submitted.
        """
        writer = self._writer
        self._token = trio.lowlevel.current_trio_token()
        flight: Flight | None = None  # being written by a worker thread
        nxt: Flight | None = None  # staged meanwhile; takes off when it lands
        held: list[AppendRequest] = []  # taken, to be written the classic way
        landed: Flight | None = None
        in_hand: list[AppendRequest] = []  # taken, being staged or written
        woke = False  # a landing woke appenders since this task last waited
        pending = self._pending
        try:
            while True:
                if flight is not None and flight.landed:
                    landed, flight = flight, None
                    writer.landed(landed.ok)
                    if landed.ok:
                        if nxt is not None:
                            if nxt.taken:  # the thread went straight on to it
                                flight = nxt
                            elif not writer.flights_ready():  # hooks added meanwhile
                                if nxt.sealed:  # the hooks forget its writes
                                    writer.landed(False)
                                writer.unstage(nxt.saved)
                                held[:0] = nxt.requests
                            else:
                                flight = self._take_off(nxt)
                            nxt = None
                        self._settle(
                            landed.requests,
                            landed.outcomes,
                            landed.last,
                            clean=len(landed.staged) == len(landed.requests),
                        )
                        woke = True
                    else:
                        error = landed.error
                        assert error is not None
                        if not isinstance(error, apsw.Error):
                            raise error  # a bug, not the database
                        # Nothing of it was written, nor of what was staged
                        # on top of it: the classic way sorts it out (another
                        # process wrote meanwhile; a request the database
                        # refuses). A failed COMMIT fails its appends.
                        retry = nxt.requests if nxt is not None else []
                        nxt = None
                        writer.unstage(landed.saved, failed=True)
                        if landed.committing:
                            failed = map_error(self.path, error)
                            self._settle(
                                landed.requests,
                                [failed] * len(landed.requests),
                                self._head,
                            )
                        else:
                            retry = landed.requests + retry
                        held[:0] = retry
                    # Freed now, with the next flight in the air, rather than
                    # when the next one lands and before it takes off.
                    landed = None
                    continue
                if held or self._jobs:
                    if flight is None:
                        if held:  # with whatever arrived meanwhile
                            room = MAX_BATCH - len(held)
                            if room > 0:
                                held.extend(_take(pending, room))
                            in_hand, held = held[:MAX_BATCH], held[MAX_BATCH:]
                            outcomes = await self._write(in_hand)
                            self._settle(in_hand, outcomes, writer.head)
                        else:
                            job, slot = self._jobs.popleft()
                            await self._run_job(job, slot)
                        continue
                elif pending and (
                    nxt is None
                    or (
                        not nxt.sealed
                        and len(nxt.requests) < _next_cap(flight, nxt, pending)
                    )
                ):
                    in_hand = _take(pending, STAGE_CHUNK)
                    if flight is None and nxt is None and not writer.flights_ready():
                        writer.prepare_flights()  # for the hooks there are now
                    if (
                        writer.flights_ready()
                        and writer._data_version != -1
                        and not any(r.big for r in in_hand)
                    ):
                        if nxt is None:
                            nxt = Flight(writer.save())
                        if writer.stage_flight(nxt, in_hand, flight is not None):
                            if flight is None:
                                flight = self._take_off(nxt)
                                nxt = None
                            continue
                        # Staged so far cannot be written as staged: all of
                        # it goes the classic way, in order.
                        writer.unstage(nxt.saved)
                        held.extend(nxt.requests)
                        nxt = None
                    held.extend(in_hand)
                    continue
                if (
                    self._closed
                    and flight is None
                    and not (pending or self._jobs or held or nxt)
                ):
                    return
                if flight and nxt and not woke and _ready(flight, nxt, pending):
                    self._offer(flight, nxt)  # the thread goes on to it
                woke = False
                self._wakeup = trio.Event()
                # With appends still queued, the writer waits for a landing
                # (the next flight is full), which new appends do not change.
                self._writer_idle = not pending
                if writer.wal_busy and flight is None and not (pending or held):
                    # After a burst of big batches: once the log is quiet,
                    # checkpoint the long WAL they left (`WAL_AUTOCHECKPOINT`)
                    # here, rather than in the commit of the next append.
                    with trio.move_on_after(QUIET_CHECKPOINT):
                        await self._wakeup.wait()
                    if not self._wakeup.is_set():
                        self._writer_idle = False
                        await self._in_thread(writer.checkpoint)
                        continue
                else:
                    await self._wakeup.wait()
                self._writer_idle = False
        finally:
            # Never close the connection under a worker thread: wait for
            # what it writes (`nxt` too, if it went on to it).
            for airborne in (flight, nxt):
                if airborne is not None and airborne.taken:
                    with trio.CancelScope(shield=True):
                        while not airborne.landed:
                            self._wakeup = trio.Event()
                            await self._wakeup.wait()
            for r in [
                *(landed.requests if landed is not None else ()),
                *(flight.requests if flight is not None else ()),
                *(nxt.requests if nxt is not None else ()),
                *held,
                *in_hand,
            ]:
                if not r.done:
                    r.finish(LogClosedError(f"the log's writer at {self.path} failed"))
            self._writer_done.set()

    def _take_off(self, flight: Flight) -> Flight | None:
        """Hand a staged flight to a worker thread (None: nothing to write,
        its appends all failed their checks or were duplicates, and are
        settled at once)."""
        if not flight.staged:
            self._settle(flight.requests, flight.outcomes, self._head)
            return None
        if not flight.sealed:
            self._writer.seal(flight)
        flight.taken = True
        _start_thread(functools.partial(self._fly, flight), _ignore_outcome)
        return flight

    def _offer(self, flight: Flight, nxt: Flight) -> None:
        """Seal ``nxt`` and offer it to the worker thread writing ``flight``:
        the thread goes straight on to it once ``flight`` commits (`_fly`).

        Without the offer, a batch takes off only when the event loop has
        seen the previous one land: the thread takes the GIL back (it waits
        for the loop to go idle), wakes the loop, which starts a thread
        again; two thread wake-ups, ~0.2 ms a batch, with the loop idle.
        Offered too late (``flight`` has landed), ``nxt`` takes off the usual
        way.
        """
        if not nxt.staged:
            return
        self._writer.seal(nxt)
        with self._flight_lock:
            if not flight.landed:
                flight.following = nxt

    def _fly(self, flight: Flight) -> None:
        """Write ``flight``, then each flight offered to follow it (in a
        worker thread; see `_offer`).

        A flight follows only one that committed, and only while the inline
        hooks are those it was staged with; it is then taken
        (``taken``) before the one it follows is marked landed, so the
        writer task, which looks at ``landed`` first, always knows whether
        the thread is still writing.
        """
        writer = self._writer
        token = self._token
        assert token is not None
        following: Flight | None = flight
        while following is not None:
            flight = following
            try:
                writer.write_flight(flight)
            except BaseException as e:  # a bug: the writer task raises it
                flight.error = e
            finally:
                with self._flight_lock:
                    following = flight.following
                    flight.following = None  # else each flight keeps the next
                    if following is not None:
                        if flight.error is None and writer.flights_ready():
                            following.taken = True
                        else:
                            following = None  # the writer task sorts it out
                    flight.landed = True
                token.run_sync_soon(self._wake_writer)

    def _wake_writer(self) -> None:
        self._wakeup.set()

    def _settle(
        self,
        batch: Sequence[AppendRequest],
        outcomes: Sequence[AppendResult | BaseException],
        head: int,
        *,
        clean: bool = False,
    ) -> None:
        """Wake a written batch's appenders; count it; advance the head.

        ``clean``: every append of the batch was written (none refused, no
        duplicate) and the head moved by their events only (a landed
        flight, all of it staged): counted without a look at each.
        """
        if clean and not self._track_types:
            for r, result in zip(batch, outcomes, strict=True):
                r.finish(result)
            self._batches += 1
            self._appends += len(batch)
            self._max_batch = max(self._max_batch, len(batch))
            self._events += head - self._head
            self._advance(head)
            return
        written = 0
        type_heads = self._type_heads if self._track_types else None
        rejected = 0
        for r, result in zip(batch, outcomes, strict=True):
            r.finish(result)
            if result.__class__ is AppendResult:
                if not result.duplicate:
                    last = result.last_position
                    written += last - result.first_position + 1
                    if type_heads is not None:
                        for ev in r.events:
                            type_heads[ev[0]] = last  # its type
            else:
                rejected += 1
        self._rejected += rejected
        self._batches += 1
        self._appends += len(batch) - rejected
        self._max_batch = max(self._max_batch, len(batch))
        if written:
            self._events += written
            if head != self._head + written:
                # The batch also found other processes' events.
                self._foreign_head = head
            self._advance(head)

    async def _write(
        self, batch: list[AppendRequest]
    ) -> list[AppendResult | BaseException]:
        """One batch the classic way: staged and inserted here, committed in
        a worker thread.

        The inserts are in-memory work for SQLite (microseconds per event);
        the commit is the fsync. Running the inserts on this thread spares a
        GIL hand-over per SQLite call — in a worker thread each call must win
        the GIL back from a busy event loop, which cost more than the inserts
        — and a worker thread still waits out the fsync, with the GIL released.
        """
        writer = self._writer
        blob_errors: dict[AppendRequest, BaseException] = {}
        if any(r.big for r in batch):
            blob_errors = await trio.to_thread.run_sync(writer.store_blobs, batch)
        try:
            try:
                writer.begin(wait=False)
            except apsw.BusyError:  # another process writes: wait off the loop
                await trio.to_thread.run_sync(
                    functools.partial(writer.begin, wait=True)
                )
        except apsw.Error as e:
            return [map_error(self.path, e)] * len(batch)
        saved = writer.save()
        outcomes = writer.write(batch, blob_errors, saved)
        if writer.conn.in_transaction:
            try:
                await self._in_thread(writer.commit)
            except apsw.Error as e:
                writer.abort(saved)
                return [map_error(self.path, e)] * len(batch)
        return outcomes

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """``trio.to_thread.run_sync(fn)`` for the writer task, which waits
        until the thread has started (`_start_thread`). Not cancellable: the
        writer task is shielded."""
        task = trio.lowlevel.current_task()
        token = self._token
        assert token is not None

        def deliver(result: outcome.Outcome[T]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        _start_thread(fn, deliver)
        result: T = await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED
        )
        return result

    async def _run_job(
        self, job: Callable[[apsw.Connection], Any], slot: _JobSlot
    ) -> None:
        try:
            slot.result = await trio.to_thread.run_sync(
                self._writer.run_job, job, slot.attach
            )
        except Exception as e:
            slot.error = e
        slot.done.set()
        self._foreign_head = max(self._foreign_head, self._writer.head)
        self._advance(self._writer.head)

    async def write_job(
        self,
        job: Callable[[apsw.Connection], T],
        *,
        attach: Mapping[str, Path] | None = None,
    ) -> T:
        """Run ``job(conn)`` in a write transaction, serialized with appends.

        For maintenance that must not race appends (archiving, projection
        swaps). ``job`` runs in a worker thread with the write connection;
        ``attach`` maps schema names to database files attached around the
        transaction (SQLite cannot attach inside one).
        """
        self._check_open()
        slot = _JobSlot(attach=attach)
        self._jobs.append((job, slot))
        self._wakeup.set()
        with trio.CancelScope(shield=True):
            await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[no-any-return]

    def _advance(self, head: int) -> None:
        if head != self._head:
            self._head = head
            changed, self._changed = self._changed, trio.Event()
            changed.set()

    async def aclose(self) -> None:
        """Stop taking appends, finish the ones already submitted, and close."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        await self._writer_done.wait()
        # Wake subscribers so they notice the log closed.
        self._changed.set()

    def _close_connections(self) -> None:
        for conn in self._pool:
            conn.close()
        self._pool.clear()
        if self._writer.reader is not None:
            self._writer.reader.close()
        self._writer.conn.close()

    # -- reading -----------------------------------------------------------------------

    def _acquire(self) -> apsw.Connection:
        if self._pool:
            return self._pool.pop()
        return open_connection(self.path, synchronous="NORMAL", create=False)

    def _release(self, conn: apsw.Connection) -> None:
        if self._closed or len(self._pool) >= 8:
            conn.close()
        else:
            self._pool.append(conn)

    def _read_sync(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run ``fn`` on a pooled read connection, inside one read transaction."""
        conn = self._acquire()
        try:
            with mapped_errors(self.path):
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    conn.execute("COMMIT")
        finally:
            self._release(conn)

    async def _read(self, fn: Callable[[apsw.Connection], T]) -> T:
        self._check_open()
        return await trio.to_thread.run_sync(self._read_sync, fn)

    def decode_row(self, row: Sequence[Any]) -> RecordedEvent:
        """Turn a stored row (``logs`` column order) into a `RecordedEvent`."""
        (
            position,
            stream,
            version,
            type_,
            type_version,
            source,
            ts,
            payload,
            blob,
            meta,
        ) = row[:10]
        if payload is None:
            payload = self.blobs.get_sync(blob)
        try:
            data = self.registry.decode(type_, type_version, payload)
            meta_obj = _loads(meta) if meta is not None else EMPTY_META
        except EventDecodingError as e:
            raise EventDecodingError(f"position {position}: {e}") from e
        except orjson.JSONDecodeError as e:
            raise EventDecodingError(
                f"position {position}: stored event {type_!r} is not valid JSON "
                f"({e}); Log.verify() tells whether the log was altered"
            ) from e
        return RecordedEvent(
            position, stream, version, type_, ts, data, meta_obj, source
        )

    def decode_rows(self, rows: Iterable[Sequence[Any]]) -> list[RecordedEvent]:
        """`decode_row` for a page of rows: the hot loop of every read, with
        the common case (an inline payload) decoded without a call per field.
        """
        registered = self.registry.registered_types
        flat = self.registry.flat_classes
        loads = _loads
        new = tuple.__new__  # RecordedEvent(...) without its Python __new__
        cls = RecordedEvent
        empty = EMPTY_META
        out = []
        try:
            for row in rows:
                # (position, stream, version, type, type_version, source, ts,
                # payload, blob, meta): the `logs` columns a read selects
                position, stream, version, type_, tv, source, ts, payload, _, meta = row
                if payload is None:
                    out.append(self.decode_row(row))
                    continue
                if type_ in registered:
                    # A flat class at its current version: ``cls(**payload)``;
                    # anything else (upcasts, cattrs, errors) by decode_row.
                    data = None
                    known = flat.get(type_)
                    if known is not None and known[0] == tv:
                        raw = loads(payload)
                        if raw.__class__ is dict:
                            try:
                                data = known[1](**raw)
                            except Exception:
                                data = None
                    if data is None:
                        out.append(self.decode_row(row))
                        continue
                else:
                    data = loads(payload)
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
                            empty if meta is None else loads(meta),
                            source,
                        ),
                    )
                )
        except orjson.JSONDecodeError:
            # Let decode_row name the position and the field.
            for row in rows:
                self.decode_row(row)
            raise
        return out

    def read(
        self,
        after: int = 0,
        *,
        stream: str | None = None,
        types: Iterable[str] | None = None,
    ) -> EventReader:
        """Iterate over stored events in position order, archived days included.

        Args:
            after: start after this position (0: from the beginning).
            stream: only this stream's events.
            types: only events of these types.

        Use as ``async for event in log.read(): ...``. The iteration ends at
        the head as of each page; use `subscribe` to keep following.
        """
        return EventReader(self, after, stream, types, follow=False)

    def subscribe(
        self,
        after: int = 0,
        *,
        stream: str | None = None,
        types: Iterable[str] | None = None,
    ) -> EventReader:
        """Like `read`, then follow new appends as they commit, forever.

        Appends of this process wake subscribers directly; appends of other
        processes are noticed within ``watch_interval`` (default 50 ms).
        The iteration ends when the log closes.
        """
        return EventReader(self, after, stream, types, follow=True)

    def _moved_past(self, position: int, types: tuple[str, ...] | None) -> bool:
        """Whether events a reader wants may lie past ``position``.

        A reader of some types only is woken by appends of those types (the
        writer knows each batch's types) or by events of other processes,
        whose types it does not know; not by every batch of the log.
        """
        if self._head <= position:
            return False
        if types is None or self._foreign_head > position:
            return True
        if not self._track_types:
            # The first reader of some types only: from now on the writer
            # notes where each type's events end (`_settle`); those before
            # count as of unknown types.
            self._track_types = True
            self._foreign_head = self._head
            return True
        heads = self._type_heads
        return any(heads.get(t, 0) > position for t in types)

    async def _wait_past(
        self, position: int, types: tuple[str, ...] | None = None
    ) -> bool:
        """Wait until events past ``position`` (of ``types``) may exist;
        False if the log closed."""
        while not self._moved_past(position, types):
            if self._closed:
                return False
            changed = self._changed
            self._waiting += 1
            if not self._watching and self.watch_interval and self._nursery:
                self._watching = True
                self._nursery.start_soon(self._watch_loop)
            try:
                await changed.wait()
            finally:
                self._waiting -= 1
        return True

    async def _watch_loop(self) -> None:
        """Notice other processes' appends while someone is waiting for them."""
        assert self.watch_interval is not None
        conn = await trio.to_thread.run_sync(
            lambda: open_connection(self.path, synchronous="NORMAL", create=False)
        )
        try:
            last = -1
            while self._waiting and not self._closed:
                dv, head = await trio.to_thread.run_sync(_data_version_and_head, conn)
                if dv != last:
                    last = dv
                    if head > self._head:
                        self._foreign_head = head
                        self._advance(head)
                await trio.sleep(self.watch_interval)
        finally:
            self._watching = False
            conn.close()

    async def tail(
        self, stream: str, n: int, *, types: Iterable[str] | None = None
    ) -> list[RecordedEvent]:
        """The last ``n`` events of a stream still in the hot table, oldest first.

        Actors use it to recover recent state without folding a long stream.
        """
        wanted = tuple(types) if types is not None else None

        def q(conn: apsw.Connection) -> list[RecordedEvent]:
            sql = f"{_READ} WHERE stream = ?"
            params: list[Any] = [stream]
            if wanted is not None:
                sql += f" AND type IN ({','.join('?' * len(wanted))})"
                params.extend(wanted)
            rows = conn.execute(
                sql + " ORDER BY version DESC LIMIT ?", [*params, n]
            ).fetchall()
            return [self.decode_row(r) for r in reversed(rows)]

        return await self._read(q)

    async def stream_version(self, stream: str) -> int:
        """The stream's current version (0 if it has no events)."""

        def q(conn: apsw.Connection) -> int:
            row = conn.execute(
                "SELECT max(version) FROM logs WHERE stream=?", (stream,)
            ).fetchall()
            if row[0][0] is not None:
                return int(row[0][0])
            row = conn.execute(
                "SELECT version FROM archived_streams WHERE stream=?", (stream,)
            ).fetchall()
            return int(row[0][0]) if row else 0

        return await self._read(q)

    # -- search ---------------------------------------------------------------------

    async def search(
        self, query: str, limit: int = 20, *, literal: bool = False
    ) -> list[SearchHit]:
        """Full-text search over event types, streams and payload text.

        Args:
            query: an FTS5 query (``error AND disk``, ``"exact phrase"``,
                ``type:workflow*``), or plain words with ``literal=True``.
            limit: the most hits to return, best first.
            literal: treat ``query`` as words to find, not FTS5 syntax.

        Raises:
            SearchQueryError: the query is malformed (it names the problem).
        """
        if not self._writer.fts:
            raise SearchQueryError(
                f"full-text search is off for the log at {self.path} "
                "(opened with fts=False)"
            )
        if literal:
            words = [w for w in query.split() if w]
            query = " ".join('"' + w.replace('"', '""') + '"' for w in words)
        if not query.strip():
            raise SearchQueryError("the search query is empty")

        def q(conn: apsw.Connection) -> list[SearchHit]:
            try:
                rows = conn.execute(
                    f"SELECT {_prefixed('l.')}, "
                    "snippet(logs_fts, -1, '[', ']', '…', 16), bm25(logs_fts) AS rank "
                    "FROM logs_fts JOIN logs l ON l.position = logs_fts.rowid "
                    "WHERE logs_fts MATCH ? ORDER BY rank LIMIT ?",
                    (query, limit),
                ).fetchall()
            except apsw.SQLError as e:
                raise SearchQueryError(
                    f"malformed search query {query!r}: {e}; quote words that "
                    "contain punctuation, or pass literal=True"
                ) from e
            return [SearchHit(self.decode_row(r), r[11], r[12]) for r in rows]

        return await self._read(q)

    # -- integrity ------------------------------------------------------------------

    async def verify(self) -> int | None:
        """Check the hash chain over the archive and the hot table.

        Returns:
            The first position where the chain breaks (a row or an archive
            file was altered, removed or inserted), or None if it is intact.
        """
        return await trio.to_thread.run_sync(self._verify_sync)

    def _verify_sync(self) -> int | None:
        conn = self._acquire()
        try:
            with mapped_errors(self.path):
                # One snapshot: an archive committing meanwhile would otherwise
                # look like a gap between the archive and the hot table.
                conn.execute("BEGIN")
                days = arch.list_days(conn)
                prev = GENESIS
                expected = 1
                for day in days:
                    if arch.file_checksum(self.data_dir, day) != day.sha256:
                        return day.first
                    for row in arch.iter_day(self.data_dir, day, verify=False):
                        if row[0] != expected or row_hash(prev, *row[:10]) != row[10]:
                            return expected
                        prev = row[10]
                        expected += 1
                after = expected - 1
                while True:
                    rows = conn.execute(
                        f"{_SELECT} WHERE position > ? ORDER BY position LIMIT 10000",
                        (after,),
                    ).fetchall()
                    if not rows:
                        return None
                    for row in rows:
                        if row[0] != expected or row_hash(prev, *row[:10]) != bytes(
                            row[10]
                        ):
                            return expected
                        prev = bytes(row[10])
                        expected += 1
                    after = rows[-1][0]
        except ArchiveError:
            return expected
        finally:
            with contextlib.suppress(apsw.Error):  # the error is already raised
                if conn.in_transaction:
                    conn.execute("COMMIT")
            self._release(conn)

    # -- archive ------------------------------------------------------------------

    async def archive(
        self,
        older_than: timedelta = timedelta(days=30),
        *,
        now: float | None = None,
    ) -> list[arch.ArchiveDay]:
        """Move whole UTC days older than ``older_than`` to the archive files.

        Returns:
            The days archived by this call, oldest first.

        Safe to interrupt at any point: a re-run finishes the job without losing
        or duplicating an event. A day is only archived once the log has left
        it (a later event, or the log's clock past its end): an archived day
        never gets more events.
        """
        self._check_open()
        now_ms = int((self._writer.clock() if now is None else now) * 1000)
        cutoff = arch.day_bounds(now_ms - int(older_than.total_seconds() * 1000))[0]
        # Events appended from here on are stamped at least this late.
        clock_ms = int(self._writer.clock() * 1000)
        done: list[arch.ArchiveDay] = []
        while True:
            found = await self._read(lambda c: _first_day(c, cutoff, clock_ms))
            if found is None:
                return done
            first, last, day = found
            record = await trio.to_thread.run_sync(self._export_day, first, last, day)
            if await self.write_job(functools.partial(_commit_day, day=record)):
                done.append(record)

    def _export_day(self, first: int, last: int, day: str) -> arch.ArchiveDay:
        conn = self._acquire()
        try:
            with mapped_errors(self.path):
                rows = _iter_rows(conn, first, last)
                return arch.write_day(self.data_dir, day, rows)
        finally:
            self._release(conn)

    async def prune_blobs(
        self, *, older_than: timedelta = timedelta(hours=1)
    ) -> list[str]:
        """Delete stored blobs that no event refers to; return their digests.

        A blob is kept when any event, hot or archived, names it: in its
        ``blob`` column (a large payload) or anywhere in its payload or meta
        text (a digest kept by the application, as the knowledge store
        does). Blobs put within ``older_than`` are kept too: an event naming
        one may not be appended yet. Put a blob (not only check `exists`)
        before appending the event that names it.

        Blobs of appends that were refused (a version conflict after their
        payload went to the store) are what this reclaims.
        """
        if older_than < timedelta(0):
            raise ValueError(f"older_than must not be negative, got {older_than!r}")

        def referenced(candidates: Iterable[str]) -> set[str]:
            wanted = set(candidates)
            found: set[str] = set()

            def look(rows: Iterable[Sequence[Any]]) -> None:
                for blob, payload, meta in rows:
                    if blob in wanted:
                        found.add(blob)
                    for text in (payload, meta):
                        if text:
                            found.update(wanted.intersection(_DIGEST.findall(text)))

            conn = self._acquire()
            try:
                # One snapshot of the hot table and of the archive's days.
                conn.execute("BEGIN")
                try:
                    days = arch.list_days(conn)
                    look(conn.execute("SELECT blob, payload, meta FROM logs"))
                finally:
                    conn.execute("COMMIT")
            finally:
                self._release(conn)
            for day in days:
                look((r[8], r[7], r[9]) for r in arch.iter_day(self.data_dir, day))
            return found

        return await trio.to_thread.run_sync(
            self.blobs.prune_sync, referenced, older_than.total_seconds()
        )

    async def archived_days(self) -> list[arch.ArchiveDay]:
        """The days in the archive, oldest first."""
        return await self._read(arch.list_days)

    # -- backup ---------------------------------------------------------------------

    async def backup(self, dest: str | os.PathLike[str]) -> Path:
        """Copy the log, its blobs and archive into a new data directory.

        The copy of ``logs.db`` is one consistent snapshot (SQLite's backup
        API, in one step, which never blocks appends in WAL mode); the blobs
        and archive files it refers to are immutable and copied after it.

        Returns:
            The path of the copied ``logs.db``.
        """
        dest_dir = Path(dest)
        target = dest_dir / LOG_FILE
        if target.exists():
            raise FileExistsError(f"{target} exists; back up into a new directory")

        def run() -> Path:
            _make_data_dir(dest_dir)
            src = self._acquire()
            try:
                with mapped_errors(target):
                    create_private_file(target)
                    out = apsw.Connection(str(target))
                    try:
                        with out.backup("main", src, "main") as b:
                            b.step(-1)
                        days = arch.list_days(out)
                    finally:
                        out.close()
            finally:
                self._release(src)
            os.chmod(target, 0o600)
            # Every blob, not only those the logs table names: payloads refer
            # to blobs too (knowledge files). Blobs are immutable and written
            # before the events naming them commit, so all the snapshot needs
            # are there; later ones are harmless extras. Reading verifies each.
            dst = BlobStore(dest_dir / "blobs")
            for digest in self.blobs.iter_digests_sync():
                if not dst.exists_sync(digest):
                    dst.put_sync(self.blobs.get_sync(digest))
            for day in days:
                dst_path = arch.day_path(dest_dir, day.day)
                dst_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                shutil.copy2(arch.day_path(self.data_dir, day.day), dst_path)
            return target

        return await trio.to_thread.run_sync(run)


class PendingAppend:
    """An append on its way to the log (see `Log.submit`)."""

    def __init__(self, log: Log, request: AppendRequest) -> None:
        self._log = log
        self._request = request

    @property
    def done(self) -> bool:
        """Whether the outcome is known."""
        return self._request.done

    @property
    def ok(self) -> bool:
        """Whether it is finished and written (not failed, not pending)."""
        return self._request.outcome.__class__ is AppendResult

    def result(self) -> AppendResult:
        """The outcome of a finished append: its result, or raise its error.

        Raises:
            RuntimeError: it is not finished yet (see `done`).
        """
        if not self._request.done:
            raise RuntimeError("the append is not finished yet; await wait()")
        return self._request.result()

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the outcome is known (at once if it is).

        It runs on the event loop, inside the log's writer task, right after
        the batch commits: it must be quick, must not block, and must not
        raise (an exception there stops the writer). Cheaper than a task
        parked in `wait` only to act once the append is durable.
        """
        request = self._request
        if request.done:
            callback()
        elif request.callbacks is None:
            request.callbacks = [callback]
        else:
            request.callbacks.append(callback)

    async def wait(
        self, *, shielded: bool = False, withdraw: bool = True
    ) -> AppendResult:
        """Wait until the append is durable and return its result.

        Raises what the append raised (`WrongExpectedVersion`, ...).
        Cancelled before the writer took it, the append is withdrawn (nothing
        written; a later wait raises `AppendWithdrawnError`); once taken, it
        is waited for, so it is never reported cancelled while it commits.
        Only the first waiter withdraws: cancelling any other one just ends
        its wait.

        Args:
            shielded: a cancellation neither withdraws the append nor ends the
                wait: the outcome is returned (or raised) and the cancellation
                takes effect at the caller's next checkpoint. Like waiting in
                a shielded cancel scope, without the cost of one.
            withdraw: False for a waiter that only observes an append someone
                else submitted: a cancellation ends its wait and withdraws
                nothing.
        """
        return await _outcome(
            self._request, self._log._parking, shielded=shielded, withdraw=withdraw
        )


async def _outcome(
    request: AppendRequest,
    parking: Parking,
    *,
    shielded: bool = False,
    withdraw: bool = True,
) -> AppendResult:
    """Wait for ``request``'s outcome: its result, or raise its error.

    The first waiter parks its task in the request (the writer reschedules it
    directly: no `trio.Event` per append); any other waiter uses an Event.
    Cancelled before the writer took the request, the first waiter withdraws
    it; afterwards the cancellation waits until the outcome is known.
    """
    if not request.done:
        if request.waiter is None and request.event is None:
            if not shielded and withdraw:
                result: AppendResult = await parking.wait(request)
                return result
            request.waiter = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                if shielded:
                    return trio.lowlevel.Abort.FAILED  # wait for the outcome
                request.waiter = None  # an observer: only its wait ends
                return trio.lowlevel.Abort.SUCCEEDED

            result = await trio.lowlevel.wait_task_rescheduled(abort)
            return result
        # Another waiter: only the first one can withdraw the append, so
        # cancelling this one just stops its wait.
        if request.event is None:
            request.event = trio.Event()
        if shielded:
            with trio.CancelScope(shield=True):
                await request.event.wait()
        else:
            await request.event.wait()
    elif shielded:
        await trio.lowlevel.cancel_shielded_checkpoint()
    else:
        await trio.lowlevel.checkpoint()
    return request.result()


@attrs.define(eq=False)
class _JobSlot:
    attach: Mapping[str, Path] | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


class EventReader:
    """The async iterator behind `Log.read` and `Log.subscribe`.

    Pages through the archive files, then the hot table, one worker-thread hop
    per page of events.
    """

    def __init__(
        self,
        log: Log,
        after: int,
        stream: str | None,
        types: Iterable[str] | None,
        *,
        follow: bool,
    ) -> None:
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise ValueError(f"after must be a position >= 0, got {after!r}")
        self._log = log
        self._after = after
        self._stream = stream
        self._types = tuple(types) if types is not None else None
        self._follow = follow
        self._buffer: list[RecordedEvent] = []
        self._index = 0
        self._archive: _ArchiveCursor | None = None

    def __aiter__(self) -> EventReader:
        return self

    @property
    def position(self) -> int:
        """How far the reader has looked: every event up to here was delivered
        or did not match its filters."""
        if self._index < len(self._buffer):
            return self._buffer[self._index].position - 1
        return self._after

    async def next_page(self) -> tuple[list[RecordedEvent], int] | None:
        """The next events as one list (at most a page), and the position the
        reader has looked up to; None when the iteration is over.

        The list is empty when the reader only skipped events its filters
        exclude: a projection still records how far it has looked. Projections
        fold a page in one transaction instead of one per event.
        """
        if self._index >= len(self._buffer):
            got = await self._fetch(report_scans=True)
            if got is False:
                return None
            if got is None:
                return [], self._after
        page = self._buffer[self._index :]
        self._index = len(self._buffer)
        return page, self._after

    async def __anext__(self) -> RecordedEvent:
        while self._index >= len(self._buffer):
            if not await self._fetch():
                raise StopAsyncIteration
        ev = self._buffer[self._index]
        self._index += 1
        return ev

    def next_page_blocking(self) -> tuple[list[RecordedEvent], int] | None:
        """`next_page`, blocking, for a worker thread (readers that do not
        follow): a rebuild folds many pages per thread hop this way."""
        if self._follow:
            raise RuntimeError("a following reader cannot read blocking")
        while self._index >= len(self._buffer):
            events, scanned, more = self._step()
            got = self._take(events, scanned, report_scans=True)
            if got is None:
                return [], self._after
            if got is False and not more:
                return None
        page = self._buffer[self._index :]
        self._index = len(self._buffer)
        return page, self._after

    async def _fetch(self, *, report_scans: bool = False) -> bool | None:
        """Fill the buffer.

        Returns True when it holds events, False when the iteration is over,
        and None (only with ``report_scans``) when the reader moved past
        events its filters skipped without finding one.
        """
        log = self._log
        while True:
            events, scanned, more = await trio.to_thread.run_sync(self._step)
            got = self._take(events, scanned, report_scans=report_scans)
            if got is not False:
                return got
            if more:
                continue
            if not self._follow:
                return False
            if not await log._wait_past(self._after, self._types):
                return False

    def _step(self) -> tuple[list[RecordedEvent], int | None, bool]:
        """Read one page, blocking (in a worker thread).

        Returns the events, the position scanned up to (or None), and whether
        to read on at once (the archive goes on, or just ended).
        """
        cursor = self._archive
        if cursor is not None:
            events, scanned = cursor.page()
            if scanned is None:
                # The archive is over: the hot table goes on from where the
                # cursor stopped (even when its last page was empty).
                self._archive = None
                scanned = cursor._after
            return events, scanned, True
        page = self._log._read_sync(self._page)
        if isinstance(page, _ArchiveCursor):
            self._archive = page
            return [], None, True
        events, scanned = page
        return events, scanned, False

    def _take(
        self, events: list[RecordedEvent], scanned: int | None, *, report_scans: bool
    ) -> bool | None:
        """Buffer a page: True if it held events; None if it only moved the
        reader past skipped events (and ``report_scans``); else False."""
        if events:
            self._buffer = events
            self._index = 0
            self._after = events[-1].position
            return True
        if scanned is not None and scanned > self._after:
            self._after = scanned
            if report_scans:
                return None
        return False

    def _page(
        self, conn: apsw.Connection
    ) -> tuple[list[RecordedEvent], int | None] | _ArchiveCursor:
        log = self._log
        wm = conn.execute(
            "SELECT value FROM meta WHERE key='archive.position'"
        ).fetchall()
        watermark = int(wm[0][0]) if wm else 0
        if self._after < watermark:
            days = [d for d in arch.list_days(conn) if d.last > self._after]
            return _ArchiveCursor(log, days, self._after, self._stream, self._types)
        where = ["position > ?"]
        params: list[Any] = [self._after]
        if self._stream is not None:
            where.append("stream = ?")
            params.append(self._stream)
        if self._types is not None:
            where.append(f"type IN ({','.join('?' * len(self._types))})")
            params.extend(self._types)
        params.append(PAGE_SIZE)
        rows = conn.execute(
            f"{_READ} WHERE {' AND '.join(where)} ORDER BY position LIMIT ?", params
        ).fetchall()
        events = log.decode_rows(rows)
        scanned = None
        if len(rows) < PAGE_SIZE and (self._stream or self._types):
            # A filtered page that came up short scanned up to the head of this
            # snapshot: remember it, so a follower does not rescan that range.
            head = conn.execute("SELECT max(position) FROM logs").fetchall()[0][0]
            scanned = head
        return events, scanned


class _ArchiveCursor:
    """Reads archived days in pages, from a worker thread."""

    def __init__(
        self,
        log: Log,
        days: list[arch.ArchiveDay],
        after: int,
        stream: str | None,
        types: tuple[str, ...] | None,
    ) -> None:
        self._log = log
        self._days = deque(days)
        self._after = after
        self._stream = stream
        self._types = set(types) if types is not None else None
        self._rows: Any = None

    def page(self) -> tuple[list[RecordedEvent], int | None]:
        """Up to a page of events; scanned position None once the archive is done."""
        events: list[RecordedEvent] = []
        decode = self._log.decode_row
        while len(events) < PAGE_SIZE:
            if self._rows is None:
                if not self._days:
                    return events, None
                self._rows = arch.iter_day(self._log.data_dir, self._days.popleft())
            row = next(self._rows, None)
            if row is None:
                self._rows = None
                continue
            if row[0] <= self._after:
                continue
            self._after = row[0]
            if self._stream is not None and row[1] != self._stream:
                continue
            if self._types is not None and row[3] not in self._types:
                continue
            events.append(decode(row))
        return events, self._after


def _start_thread(
    fn: Callable[[], T], deliver: Callable[[outcome.Outcome[T]], None]
) -> None:
    """``trio.lowlevel.start_thread_soon``, returning once the thread runs.

    A thread that wants the GIL while the event loop is busy waits up to the
    interpreter's switch interval (5 ms) for it, so it would only start once
    the loop went idle; blocking on a lock hands it the GIL at once.
    """
    started = _thread.allocate_lock()
    started.acquire()

    def run() -> T:
        started.release()
        return fn()

    trio.lowlevel.start_thread_soon(run, deliver)
    started.acquire()


def _next_cap(flight: Flight | None, nxt: Flight, pending: deque[AppendRequest]) -> int:
    """How many appends the flight staged while ``flight`` is written may hold.

    Half of all the appends in the air or waiting (at least a chunk, at most
    `MAX_BATCH`): appenders that each wait for their append fall into two
    cohorts, one written while the other is staged, and the cap keeps them
    even. Uneven, they stay uneven: the first flight takes off with the first
    chunk, the rest (say 872 of 1000) fill the next, and a small flight costs
    a commit as much as a big one (the fsync, the index pages) while the big
    one keeps the event loop idle.
    """
    waiting = len(nxt.requests) + len(pending)
    if flight is not None:
        waiting += len(flight.requests)
    return min(MAX_BATCH, max(STAGE_CHUNK, (waiting + 1) // 2))


def _ready(flight: Flight, nxt: Flight, pending: deque[AppendRequest]) -> bool:
    """Whether ``nxt``, staged while ``flight`` is written, is ready to be
    offered to follow it (`Log._offer`): it holds its share of the appends
    waiting (`_next_cap`), or, with none waiting beyond it, at least half as
    many as ``flight`` (a smaller one waits for the landing, so the
    appenders woken then may still join it).

    Never asked right after a landing woke appenders: they have yet to
    append again, and offered without them, ``nxt`` would hold only what
    waited, so the cohorts each landing wakes would stay as they are. Three
    of a third each instead of two halves: 303 commits for 100k appends
    instead of 201, and 10-15% fewer appends a second.
    """
    if nxt.sealed:
        return False
    n = len(nxt.requests)
    if pending:
        return n >= _next_cap(flight, nxt, pending)
    return 2 * n >= len(flight.requests)


def _ignore_outcome(_: outcome.Outcome[None]) -> None:
    """What `_fly` returns: nothing (it reports on its flights)."""


def _take(pending: deque[AppendRequest], n: int) -> list[AppendRequest]:
    """Take up to ``n`` appends from the front of the queue for writing."""
    if len(pending) <= n:
        batch = list(pending)
        pending.clear()
        return batch
    return [pending.popleft() for _ in range(n)]


def _too_big(payload: str, threshold: int) -> bool:
    """Whether the payload's UTF-8 exceeds ``threshold`` bytes (cheaply: a str
    has at most 4 bytes per character, and at least 1)."""
    if len(payload) > threshold:
        return True
    return len(payload) * 4 > threshold and len(payload.encode()) > threshold


def check_stream(stream: object) -> None:
    """Refuse a stream name that is not a non-empty str of <= 1000 chars
    that can be stored (no lone surrogates)."""
    if (
        stream.__class__ is not str
        or not stream
        or len(stream) > 1000
        or not is_utf8(stream)
    ):
        raise InvalidEventError(
            f"stream must be a non-empty string of at most 1000 characters "
            f"without lone surrogates, got {stream!r}"
        )


def _valid_expected(expected: object) -> bool:
    if expected is None or isinstance(expected, ExpectedVersion):
        return True
    return (
        isinstance(expected, int) and not isinstance(expected, bool) and expected >= 0
    )


def _prefixed(prefix: str) -> str:
    return ", ".join(prefix + c.strip() for c in arch.ROW_COLUMNS.split(","))


def _data_version_and_head(conn: apsw.Connection) -> tuple[int, int]:
    with mapped_errors("logs.db"):
        dv = conn.execute("PRAGMA data_version").fetchall()[0][0]
        head = conn.execute("SELECT max(position) FROM logs").fetchall()[0][0]
    return dv, head or 0


def _catch_up_fts(conn: apsw.Connection, head: int) -> None:
    """Index rows appended while the full-text index was off."""
    row = conn.execute("SELECT value FROM meta WHERE key='fts.position'").fetchall()
    done = int(row[0][0]) if row else 0
    if done >= head:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO logs_fts (rowid, type, stream, payload) "
            "SELECT position, type, stream, payload FROM logs_text WHERE position > ?",
            (done,),
        )
        conn.execute(
            "INSERT OR REPLACE INTO meta VALUES ('fts.position', ?)", (str(head),)
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _iter_rows(
    conn: apsw.Connection, first: int, last: int
) -> Iterable[tuple[Any, ...]]:
    after = first - 1
    while after < last:
        rows = conn.execute(
            f"{_SELECT} WHERE position > ? AND position <= ? ORDER BY position "
            "LIMIT 10000",
            (after, last),
        ).fetchall()
        if not rows:
            return
        yield from rows
        after = rows[-1][0]


def _first_day(
    conn: apsw.Connection, cutoff: int, clock_ms: int
) -> tuple[int, int, str] | None:
    """The hot table's oldest UTC day if it ends before ``cutoff`` and is over."""
    row = conn.execute(
        "SELECT position, ts FROM logs ORDER BY position LIMIT 1"
    ).fetchall()
    if not row:
        return None
    first, ts = row[0]
    _, end = arch.day_bounds(ts)
    if end > cutoff:
        return None
    last = conn.execute(
        "SELECT max(position) FROM logs WHERE position >= ? AND ts < ?", (first, end)
    ).fetchall()[0][0]
    later = conn.execute(
        "SELECT 1 FROM logs WHERE position > ? LIMIT 1", (last,)
    ).fetchall()
    if not later and clock_ms < end:
        return None  # the log's clock is still in this day: more may come
    day = arch.day_of(ts)
    if conn.execute(
        "SELECT 1 FROM meta WHERE key = ?", (arch.day_meta_key(day),)
    ).fetchall():
        # Exporting again would replace the archived file and lose its events.
        raise ArchiveError(
            f"day {day} is archived, yet positions {first}-{last} of that day are "
            "in the hot table (appended with a clock behind the archive's)"
        )
    return first, last, day


def _commit_day(conn: apsw.Connection, day: arch.ArchiveDay) -> bool:
    """Delete an exported day's rows and advance the watermark, in one transaction."""
    row = conn.execute("SELECT min(position) FROM logs").fetchall()
    if row[0][0] != day.first:
        return False  # another archiver got here first
    last = conn.execute(
        "SELECT hash, ts FROM logs WHERE position = ?", (day.last,)
    ).fetchall()
    if not last:
        raise ArchiveError(f"position {day.last} vanished while archiving {day.day}")
    after = conn.execute(
        "SELECT ts FROM logs WHERE position > ? ORDER BY position LIMIT 1", (day.last,)
    ).fetchall()
    day_end = arch.day_bounds(last[0][1])[1]
    if after and after[0][0] < day_end:
        return False  # the day got more events after the export: not over yet
    fts_row = conn.execute("SELECT value FROM meta WHERE key='fts.position'").fetchall()
    fts_done = int(fts_row[0][0]) if fts_row else 0
    if fts_done:
        conn.execute(
            "INSERT INTO logs_fts (logs_fts, rowid, type, stream, payload) "
            "SELECT 'delete', position, type, stream, payload FROM logs_text "
            "WHERE position BETWEEN ? AND ?",
            (day.first, min(day.last, fts_done)),
        )
    conn.execute(
        "INSERT INTO archived_streams (stream, version) "
        "SELECT stream, max(version) FROM logs WHERE position BETWEEN ? AND ? "
        "GROUP BY stream "
        "ON CONFLICT (stream) DO UPDATE SET version = max(version, excluded.version)",
        (day.first, day.last),
    )
    conn.execute(
        "DELETE FROM logs WHERE position BETWEEN ? AND ?", (day.first, day.last)
    )
    conn.executemany(
        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
        [
            ("archive.position", str(day.last)),
            ("archive.hash", bytes(last[0][0]).hex()),
            # The end of the day, not the last event's ts: when the hot table
            # is empty the writer stamps new events no earlier than this, so
            # none lands in an archived day even if the clock is behind.
            ("archive.ts", str(day_end)),
            (arch.day_meta_key(day.day), day.to_json()),
        ],
    )
    return True


__all__ = ["LOG_FILE", "EventReader", "Log", "PendingAppend", "SearchHit", "open_log"]
