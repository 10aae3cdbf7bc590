"""What a projection is, and where its checkpoint lives.

A projection is a read model folded from the log. It declares a name, a
version, the event types it handles, the database file it lives in (relative
to the data directory) and its tables; it knows how to create those tables
and how to fold a *batch* of events into them inside a transaction that the
caller owns. The caller commits the projection's checkpoint (last position and
version) in that same transaction, so every event takes effect exactly once,
whatever instant the process dies at.

Projections must be deterministic functions of the events (no wall clock, no
randomness): that is what makes a rebuild or a replay equal the live model.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

import apsw
import attrs

from nerve.events import Migration, RecordedEvent, RefusedByProjection
from nerve.events._sqlite import migrate, open_connection

Progress = Callable[[int, int], None]
"""A progress callback: ``progress(position_done, head)``."""

#: ``PRAGMA application_id`` of a projection database ("nrvp").
PROJECTION_APPLICATION_ID: Final = 0x6E727670

PROJECTION_DB_MIGRATIONS: Final = (
    Migration(
        1,
        "projection checkpoints",
        """
        CREATE TABLE projections (
            name     TEXT PRIMARY KEY,
            version  INTEGER NOT NULL,
            position INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
)


class Projection(abc.ABC):
    """A read model folded from the log.

    Attributes:
        name: unique among the projections of a kernel; names the checkpoint.
        version: bump it when the tables or the folding change: the projection
            is rebuilt from the whole history the next time it opens.
        types: the event types it folds (None: all of them).
        database: its database file, relative to the data directory
            (``logs.db`` for inline projections).
        tables: each table it owns, with the columns that order and identify
            its rows (used by `verify` to compare row by row).
        defer_indexes: its plain (non-unique) indexes serve readers only
            (its fold never looks rows up through them): a fresh build then
            creates them once, at the end, instead of row by row.
    """

    name: str
    version: int = 1
    types: frozenset[str] | None = None
    database: str = "logs.db"
    tables: Mapping[str, Sequence[str]] = {}
    defer_indexes: bool = False

    @abc.abstractmethod
    def setup(self, conn: apsw.Connection) -> None:
        """Create the projection's (empty) tables and indexes in ``main``."""

    @abc.abstractmethod
    def apply(self, conn: apsw.Connection, events: Sequence[RecordedEvent]) -> None:
        """Fold a batch of events, in position order, inside the caller's
        transaction. Raise to refuse the batch (inline projections: the
        append that carried the events fails and nothing is written)."""

    def prepare(self, conn: apsw.Connection) -> None:  # noqa: B027 (optional hook)
        """Make ``conn`` ready for this projection's tables (default: nothing).

        Called on every connection opened on the projection's own database:
        the runner's, read connections (`ProjectionRunner.query`), fresh
        builds (rebuild, replay, verify) and swaps. A projection whose tables
        need a loadable extension (sqlite-vec for the knowledge index) loads
        it here; SQLite extensions are per connection. Inline projections
        share the log's connections and get no call.
        """

    def forget(self) -> None:  # noqa: B027 (optional hook)
        """Drop whatever the projection caches between folds (default:
        nothing). Called when the database may no longer hold what its last
        folds wrote: the transaction or savepoint around them rolled back,
        or another connection wrote (inline projections: the log's writer
        calls it)."""

    def bulk_fold(self, conn: apsw.Connection, source: str, upto: int) -> bool:
        """Fold the whole history up to ``upto`` in SQL, if this projection can.

        Called by fresh builds (rebuild, replay, verify) before folding event
        by event, inside the build's transaction, with this projection's
        tables empty and the log's database attached to ``conn`` as schema
        ``source`` (read it, never write it). Return True once the tables
        hold exactly what folding every event up to ``upto`` in order would
        give; return False, having written nothing, to be folded event by
        event instead (default). The history may include archived days the
        ``logs`` table no longer holds: ``archived_through(conn, source)``.
        """
        return False

    def handles(self, event_type: str) -> bool:
        return self.types is None or event_type in self.types

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} {self.name!r} v{self.version}>"


@attrs.frozen
class Checkpoint:
    """Where a projection stands: its version and the last position folded."""

    version: int
    position: int


@attrs.frozen
class ProjectionStatistics:
    """A projection's state.

    Attributes:
        name: the projection's name.
        version: its version.
        position: the last position folded (or scanned past).
        head: the log's head as known to this process.
        lag: ``head - position``: how far behind the log it is.
        events: events folded since it was opened.
        batches: transactions since it was opened.
        rebuilds: rebuilds since it was opened.
        rebuilding: whether a rebuild is running now.
    """

    name: str
    version: int
    position: int
    head: int
    lag: int
    events: int
    batches: int
    rebuilds: int
    rebuilding: bool


def read_checkpoint(conn: apsw.Connection, name: str) -> Checkpoint | None:
    rows = conn.execute(
        "SELECT version, position FROM main.projections WHERE name = ?", (name,)
    ).fetchall()
    return Checkpoint(rows[0][0], rows[0][1]) if rows else None


def write_checkpoint(
    conn: apsw.Connection, projection: Projection, position: int
) -> None:
    conn.execute(
        CHECKPOINT_SQL.format(name="?", version="?", position="?"),
        (projection.name, projection.version, position),
    )


CHECKPOINT_SQL: Final = (
    "INSERT INTO main.projections (name, version, position) "
    "VALUES ({name}, {version}, {position}) "
    "ON CONFLICT (name) DO UPDATE SET version = excluded.version, "
    "position = excluded.position"
)
"""`write_checkpoint`'s statement; an inline projection's flight SQL fills
it with literals (`InlineProjection.flight_sql`)."""


class SkippedEventWarning(UserWarning):
    """A projection refused an event already in the log while folding history
    (catching up, rebuilding): the event was skipped, the rest folded."""


def fold(
    conn: apsw.Connection,
    projection: Projection,
    events: Sequence[RecordedEvent],
    position: int,
    *,
    history: bool = False,
) -> int:
    """Apply the events this projection handles and move its checkpoint.

    Runs inside the caller's transaction. Returns how many events it folded.

    With ``history`` (the events are already in the log: catching up,
    rebuilding, replaying), an event the projection refuses
    (`RefusedByProjection`, e.g. an illegal run transition another process
    appended without the projection attached) is skipped with a
    `SkippedEventWarning`, the same way every time, instead of leaving the
    model unable to move past it. Without it (an append being written), a
    refusal fails the append.
    """
    mine = [e for e in events if projection.handles(e.type)]
    if mine:
        if history:
            mine = _apply_skipping_refused(conn, projection, mine)
        else:
            projection.apply(conn, mine)
    write_checkpoint(conn, projection, position)
    return len(mine)


def _apply_skipping_refused(
    conn: apsw.Connection, projection: Projection, events: list[RecordedEvent]
) -> list[RecordedEvent]:
    """`Projection.apply`, the refused events left out; returns those folded.

    The whole batch first; only if it is refused, one event at a time (a
    refusing projection must leave no state behind but its rolled-back rows).
    """
    conn.execute("SAVEPOINT fold_batch")
    try:
        projection.apply(conn, events)
    except RefusedByProjection:
        conn.execute("ROLLBACK TO fold_batch")
    else:
        conn.execute("RELEASE fold_batch")
        return events
    folded = []
    for e in events:
        conn.execute("SAVEPOINT fold_one")
        try:
            projection.apply(conn, [e])
        except RefusedByProjection as refusal:
            conn.execute("ROLLBACK TO fold_one")
            warnings.warn(
                SkippedEventWarning(
                    f"{projection.name}: skipped position {e.position} "
                    f"({e.type} in {e.stream!r}), which it refuses; the event "
                    "stays in the log: "
                    + str(refusal).removesuffix(" Nothing was written.")
                ),
                stacklevel=2,
            )
        else:
            folded.append(e)
        conn.execute("RELEASE fold_one")
    conn.execute("RELEASE fold_batch")
    return folded


def archived_through(conn: apsw.Connection, source: str) -> int:
    """The last position the log ``source`` (an attached schema) has archived
    (0: none): the events up to there live in archive files, not in ``logs``."""
    rows = conn.execute(
        f"SELECT value FROM {source}.meta WHERE key = 'archive.position'"
    ).fetchall()
    return int(rows[0][0]) if rows else 0


def open_projection_db(
    path: Path, projections: Sequence[Projection] = ()
) -> apsw.Connection:
    """Open (creating) a projection database: WAL, synchronous=NORMAL.

    Derived data may lose its last transactions on power loss; it catches up
    from the log, so it does not pay an fsync per commit. Each of
    ``projections`` (those living in it) `prepares <Projection.prepare>` the
    connection.
    """
    # With the application id, another application's database is refused
    # before the switch to WAL, which would rewrite its header.
    conn = open_connection(
        path,
        synchronous="NORMAL",
        application_id=PROJECTION_APPLICATION_ID,
        what="projection",
    )
    try:
        migrate(
            conn,
            path,
            PROJECTION_DB_MIGRATIONS,
            application_id=PROJECTION_APPLICATION_ID,
            what="projection",
        )
        for p in projections:
            p.prepare(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def drop_tables(
    conn: apsw.Connection, projection: Projection, schema: str = "main"
) -> None:
    """Drop the projection's tables (their indexes and triggers go with them)."""
    for table in projection.tables:
        conn.execute(f'DROP TABLE IF EXISTS {schema}."{table}"')


def table_exists(conn: apsw.Connection, table: str, schema: str = "main") -> bool:
    rows = conn.execute(
        f"SELECT 1 FROM {schema}.sqlite_schema WHERE name = ? AND type = 'table'",
        (table,),
    ).fetchall()
    return bool(rows)
