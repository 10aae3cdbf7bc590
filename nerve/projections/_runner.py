"""Async projections: follow the log and fold it into their own database.

A `ProjectionRunner` subscribes to the log from its projection's checkpoint
and folds each page of new events in one transaction of the projection's
database, checkpoint included. It reports its lag (head - position). A
database that is corrupt or of an unknown schema is moved aside, never
deleted, and the projection is rebuilt from the log with a warning.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import apsw
import trio

from nerve.events import (
    DatabaseError,
    Log,
    NotADatabaseError,
    RecordedEvent,
    SchemaError,
)
from nerve.events._errors import CorruptDatabaseError
from nerve.events._sqlite import open_connection

from ._base import (
    Progress,
    Projection,
    ProjectionStatistics,
    fold,
    open_projection_db,
    read_checkpoint,
    table_exists,
)
from ._build import build, copy_in, temporary_db

T = TypeVar("T")


async def _wait_any(*events: trio.Event) -> None:
    """Wait until one of ``events`` is set."""
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)


class ProjectionRecoveredWarning(UserWarning):
    """A projection database was unusable; it was moved aside and rebuilt."""


class ProjectionRunner:
    """Keeps one async projection, in its own database, following the log.

    Use ``await nursery.start(runner.run)``: it returns once the projection
    has caught up with its stored checkpoint (rebuilding it first if it is new
    or its version changed), then follows the log until the log closes.
    """

    def __init__(
        self, log: Log, projection: Projection, data_dir: Path | None = None
    ) -> None:
        if projection.database == "logs.db":
            raise ValueError(
                f"{projection!r} lives in logs.db: attach it inline "
                "(attach_inline) instead of running it"
            )
        self.log = log
        self.projection = projection
        self.path = (data_dir or log.data_dir) / projection.database
        self._conn: apsw.Connection | None = None
        self._lock = trio.Lock()
        self._position = 0
        # The checkpoint as this runner last stored (or read) it. Pages of
        # events the projection does not handle move ``_position`` without a
        # write, so the two differ; the guard in `_fold` compares this one.
        self._stored = 0
        self._restart = False
        self._events = 0
        self._batches = 0
        self._rebuilds = 0
        self._rebuilding = False
        self._following = False
        self._progress = trio.Event()

    # -- state ------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The last position folded (or scanned past)."""
        return self._position

    def _effective_position(self) -> int:
        """How far the model is current: its position, or the head when the
        events since are of types it does not fold (a filtered subscription
        is not woken by those, so its position does not move over them)."""
        types = tuple(self.projection.types) if self.projection.types else None
        if (
            self._following
            and not self._rebuilding
            and not self.log._moved_past(self._position, types)
        ):
            return max(self._position, self.log.head)
        return self._position

    def statistics(self) -> ProjectionStatistics:
        position = self._effective_position()
        head = max(self.log.head, position)
        return ProjectionStatistics(
            name=self.projection.name,
            version=self.projection.version,
            position=position,
            head=head,
            lag=head - position,
            events=self._events,
            batches=self._batches,
            rebuilds=self._rebuilds,
            rebuilding=self._rebuilding,
        )

    async def wait_for(self, position: int) -> None:
        """Wait until the projection has folded everything up to ``position``."""
        while self._effective_position() < position:
            await _wait_any(self._progress, self.log._changed)

    async def query(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run ``fn(conn)`` on a read connection to the projection's database."""

        def run() -> T:
            conn = open_connection(self.path, synchronous="NORMAL", create=False)
            try:
                self.projection.prepare(conn)
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    conn.execute("COMMIT")
            finally:
                conn.close()

        return await trio.to_thread.run_sync(run)

    # -- running ----------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open (or recover) the database, then follow the log until it closes."""
        try:
            self._conn = await trio.to_thread.run_sync(self._open)
            if not await trio.to_thread.run_sync(self._is_current):
                await self.rebuild()
            task_status.started()
            await self._follow()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _open(self) -> apsw.Connection:
        try:
            return open_projection_db(self.path, [self.projection])
        except (NotADatabaseError, CorruptDatabaseError, SchemaError) as e:
            aside = self._move_aside(e)
            warnings.warn(
                f"projection {self.projection.name!r}: {e}; moved it aside to "
                f"{aside} and rebuilding it from the log",
                ProjectionRecoveredWarning,
                stacklevel=2,
            )
            return open_projection_db(self.path, [self.projection])

    def _move_aside(self, error: DatabaseError) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.unusable-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.unusable-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        return aside

    def _is_current(self) -> bool:
        conn = self._conn
        assert conn is not None
        cp = read_checkpoint(conn, self.projection.name)
        if cp is None or cp.version != self.projection.version:
            return False
        if not all(table_exists(conn, t) for t in self.projection.tables):
            return False
        self._position = self._stored = cp.position
        return True

    async def _follow(self) -> None:
        self._following = True
        try:
            await self._follow_log()
        finally:
            self._following = False

    async def _follow_log(self) -> None:
        while True:
            reader = self.log.subscribe(
                after=self._position, types=self.projection.types
            )
            self._restart = False
            while True:
                got = await reader.next_page()
                if got is None:
                    return  # the log closed
                events, scanned = got
                async with self._lock:
                    if self._restart:
                        break  # a rebuild moved the checkpoint: read from there
                    if events and not await trio.to_thread.run_sync(
                        self._fold, events, scanned
                    ):
                        # Re-read from the stored checkpoint; waiters must
                        # look again at the position, which moved.
                        self._progressed()
                        break
                    self._position = scanned
                self._progressed()

    def _progressed(self) -> None:
        event, self._progress = self._progress, trio.Event()
        event.set()

    def _fold(self, events: list[RecordedEvent], position: int) -> bool:
        """Fold a page; False if the stored checkpoint moved under us."""
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have rebuilt the projection since we read
            # its checkpoint: folding on top would apply events twice.
            cp = read_checkpoint(conn, self.projection.name)
            if cp is None or cp.position != self._stored:
                conn.execute("ROLLBACK")
                if cp is not None:
                    self._position = self._stored = cp.position
                return False
            self._events += fold(conn, self.projection, events, position, history=True)
            conn.execute("COMMIT")
            self._stored = position
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._batches += 1
        return True

    async def rebuild(self, *, progress: Progress | None = None) -> None:
        """Fold the whole history into a fresh database and swap it in.

        Appends continue meanwhile; readers of the projection see the old
        model until the swap commits.
        """
        async with self._lock:
            self._rebuilding = True
            try:
                with temporary_db(self.path.parent, self.projection.name) as fresh:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    done = await build(
                        self.log, {fresh: [self.projection]}, progress=progress
                    )
                    await trio.to_thread.run_sync(self._swap, fresh, done)
                self._position = self._stored = done
                self._restart = True
                self._rebuilds += 1
                self._progressed()
            finally:
                self._rebuilding = False

    def _swap(self, fresh: Path, position: int) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("ATTACH DATABASE ? AS fresh", (str(fresh),))
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                copy_in(conn, [self.projection], position)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.execute("DETACH DATABASE fresh")
