"""Inline projections: folded inside the append transaction itself.

The log's writer calls `InlineProjection.apply` with every batch it writes,
in the same ``BEGIN IMMEDIATE ... COMMIT`` as the events, so the read model
and the log can never disagree (the seed's "upsertWorkflowRun() atomically
writes log entry + workflow state"). A projection that raises refuses the
events: the append that carried them fails and nothing of it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apsw
import trio

from nerve.events import Log, RecordedEvent

from ._base import (
    CHECKPOINT_SQL,
    Progress,
    Projection,
    fold,
    read_checkpoint,
    table_exists,
)
from ._build import build, copy_in, fold_page, temporary_db


class InlineProjection:
    """The writer hook that keeps one projection in ``logs.db`` current."""

    def __init__(self, projection: Projection, log: Log | None = None) -> None:
        self.projection = projection
        self.log = log
        self.events = 0
        self.batches = 0
        self._staged_events = 0
        self._flying: list[int] = []

    def forget(self) -> None:
        """The writer's signal that the database may differ from what the
        projection folded: see `Projection.forget`."""
        self.projection.forget()
        self._staged_events = 0
        self._flying.clear()

    def apply(self, conn: apsw.Connection, events: Sequence[RecordedEvent]) -> None:
        first = events[0].position
        if self.log is not None:
            # Another process may have appended without this projection
            # attached: fold its events first, or they would be skipped (the
            # checkpoint would jump over them).
            cp = read_checkpoint(conn, self.projection.name)
            if cp is not None and cp.position < first - 1:
                _fold_tail(
                    self.log, conn, conn, self.projection, cp.position, first - 1
                )
        self.events += fold(conn, self.projection, events, events[-1].position)
        self.batches += 1

    # -- pipelined appends (`nerve.events._writer.FlightHook`) ------------------------

    def flight_sql(self, each: str) -> str | None:
        """The projection's own flight SQL, then its checkpoint at the
        flight's last position; None if the projection cannot stage."""
        projection = self.projection
        own = getattr(projection, "flight_sql", None)
        sql = None if own is None else own(each)
        if sql is None:
            return None
        checkpoint = CHECKPOINT_SQL.format(
            name="'" + projection.name.replace("'", "''") + "'",
            version=int(projection.version),
            position="NEW.last",
        )
        return f"{sql}\n    {checkpoint};"

    def stage(self, events: Sequence[RecordedEvent], reader: apsw.Connection) -> bool:
        projection = self.projection
        mine = [e for e in events if projection.handles(e.type)]
        if not mine:
            return True
        if not projection.stage(mine, reader):  # type: ignore[attr-defined]
            return False
        self._staged_events += len(mine)
        return True

    def discard(self) -> None:
        self.projection.discard()  # type: ignore[attr-defined]
        self._staged_events = 0

    def seal(self) -> list[Any]:
        self._flying.append(self._staged_events)
        self._staged_events = 0
        sealed: list[Any] = self.projection.seal()  # type: ignore[attr-defined]
        return sealed

    def landed(self, ok: bool) -> None:
        self.projection.landed(ok)  # type: ignore[attr-defined]
        if not self._flying:
            return
        events = self._flying.pop(0)
        if ok:
            self.events += events
            self.batches += 1
        else:
            self._flying.clear()


def _hook_of(log: Log, projection: Projection) -> InlineProjection | None:
    for hook in log._writer.hooks:
        if (
            isinstance(hook, InlineProjection)
            and hook.projection.name == projection.name
        ):
            return hook
    return None


async def attach_inline(
    log: Log, projection: Projection, *, progress: Progress | None = None
) -> InlineProjection:
    """Bring an inline projection up to the head and fold every append from now.

    A projection seen for the first time, or whose version changed, is
    rebuilt from the whole history first; one that is merely behind (it was
    not attached while events were appended) catches up.
    """
    if projection.database != "logs.db":
        raise ValueError(
            f"{projection!r} lives in {projection.database!r}; inline projections "
            "live in logs.db (run the others with ProjectionRunner)"
        )
    existing = _hook_of(log, projection)
    if existing is not None:
        return existing

    def current(conn: apsw.Connection) -> bool:
        """Whether the stored model can simply catch up from its checkpoint."""
        cp = read_checkpoint(conn, projection.name)
        if cp is None or cp.version != projection.version:
            return False
        if not all(table_exists(conn, t) for t in projection.tables):
            return False
        rows = conn.execute(
            "SELECT value FROM meta WHERE key = 'archive.position'"
        ).fetchall()
        archived = int(rows[0][0]) if rows else 0
        return archived <= cp.position <= log.head

    hook = InlineProjection(projection, log)
    if not await log._read(current):
        await rebuild_inline(log, projection, progress=progress, hook=hook)
        return hook

    def catch_up(conn: apsw.Connection) -> None:
        current = read_checkpoint(conn, projection.name)
        assert current is not None
        _fold_tail(log, conn, conn, projection, current.position)
        log._writer.hooks.append(hook)

    await log.write_job(catch_up)
    return hook


async def rebuild_inline(
    log: Log,
    projection: Projection,
    *,
    progress: Progress | None = None,
    hook: InlineProjection | None = None,
) -> None:
    """Rebuild an inline projection while appends continue, then swap it in.

    The history up to now is folded into a fresh database; then, inside one
    write transaction of the log (appends wait for it), the few events
    appended meanwhile are folded into it too and its tables replace the live
    ones. ``hook``, if given, starts folding appends in that same transaction.
    """
    with temporary_db(log.data_dir, projection.name) as fresh:
        done = await build(log, {fresh: [projection]}, progress=progress)

        def swap(conn: apsw.Connection) -> None:
            tail = apsw_connection(fresh)
            try:
                _fold_tail(log, conn, tail, projection, done)
            finally:
                tail.close()
            copy_in(conn, [projection], log._writer.head)
            if hook is not None and hook not in log._writer.hooks:
                log._writer.hooks.append(hook)

        await log.write_job(swap, attach={"fresh": fresh})
    await trio.lowlevel.checkpoint()


def apsw_connection(path: object) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(10_000)
    return conn


def _fold_tail(
    log: Log,
    source: apsw.Connection,
    target: apsw.Connection,
    projection: Projection,
    after: int,
    upto: int | None = None,
) -> None:
    """Fold the events after ``after`` up to ``upto`` (default: the head; read
    through ``source``, the log's write connection, inside its transaction)
    into ``target``."""
    head = log._writer.head if upto is None else upto
    while after < head:
        rows = source.execute(
            "SELECT position, stream, version, type, type_version, source, ts, "
            "payload, blob, meta FROM main.logs WHERE position > ? AND position <= ? "
            "ORDER BY position LIMIT 5000",
            (after, head),
        ).fetchall()
        if not rows:
            break
        if rows[0][0] != after + 1:
            raise RuntimeError(
                f"events after position {after} moved to the archive while "
                f"{projection!r} was catching up; run the rebuild again"
            )
        events = [log.decode_row(r) for r in rows]
        last = events[-1].position
        if source is target:
            fold(target, projection, events, last, history=True)
        else:
            fold_page(target, [projection], events, last)
        after = last
