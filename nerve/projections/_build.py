"""Folding the history into fresh databases, and swapping them in atomically.

A rebuild never touches the live tables until the fresh ones are complete:
the history (archived days and the hot table) is folded into a new database
file, which is then copied over the live tables in one transaction. Readers see
the old model until that transaction commits and the new one after, never a
half-built model.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import apsw
import trio

from nerve.events import Log, RecordedEvent

from ._base import (
    Progress,
    Projection,
    drop_tables,
    fold,
    open_projection_db,
    write_checkpoint,
)

_SLICE = 0.2
"""Seconds a rebuild folds in a worker thread between checks for cancellation."""


def remove_db(path: Path) -> None:
    """Delete a (temporary) database file with its -wal and -shm files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def union_types(projections: Sequence[Projection]) -> frozenset[str] | None:
    types: set[str] = set()
    for p in projections:
        if p.types is None:
            return None
        types |= p.types
    return frozenset(types)


def open_fresh(
    path: Path, projections: Sequence[Projection]
) -> tuple[apsw.Connection, list[str]]:
    """A new projection database with the projections' empty tables, and the
    SQL of the indexes left to create once it is filled (`_defer_indexes`)."""
    conn = open_projection_db(path, projections)
    # A fresh build is thrown away if anything goes wrong, so it needs no
    # durability until it is swapped in (the swap commits in the live DB).
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for p in projections:
            p.setup(conn)
            write_checkpoint(conn, p, 0)
        deferred = _defer_indexes(
            conn, {t for p in projections if p.defer_indexes for t in p.tables}
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        conn.close()
        raise
    return conn, deferred


def _defer_indexes(conn: apsw.Connection, tables: set[str]) -> list[str]:
    """Drop the plain (non-unique) indexes of ``tables``; return their SQL, to
    run once the rows are in (for projections whose fold never reads through
    them: `Projection.defer_indexes`).

    Building an index from the finished table is one sort; keeping it while
    the rows go in costs a B-tree insert per row, in random order (measured:
    a fifth of a ``workflow_runs`` rebuild). Unique indexes stay: a fold may
    rely on their conflicts.
    """
    plain = [
        (name, sql)
        for name, tbl, sql in conn.execute(
            "SELECT name, tbl_name, sql FROM sqlite_schema "
            "WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall()
        if tbl in tables
        and not any(
            row[1] == name and row[2]
            for row in conn.execute(f'PRAGMA index_list("{tbl}")').fetchall()
        )
    ]
    for name, _ in plain:
        conn.execute(f'DROP INDEX "{name}"')
    return [sql for _, sql in plain]


def fold_page(
    conn: apsw.Connection,
    projections: Sequence[Projection],
    events: Sequence[RecordedEvent],
    position: int,
) -> int:
    """Fold one page into every projection of a database, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        n = sum(fold(conn, p, events, position, history=True) for p in projections)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n


async def build(
    log: Log,
    targets: Mapping[Path, Sequence[Projection]],
    *,
    upto: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Fold the history up to ``upto`` (default: the head now) into fresh DBs.

    ``targets`` maps each new database file (which must not exist) to the
    projections it holds. One pass over the log feeds them all.

    Returns:
        The position the fresh databases are complete up to.
    """
    target = log.head if upto is None else upto
    conns: dict[Path, apsw.Connection] = {}
    deferred: dict[Path, list[str]] = {}
    try:
        for path, projections in targets.items():
            if path.exists():
                raise FileExistsError(f"{path} exists; a fresh build needs a new file")
            conns[path], deferred[path] = await trio.to_thread.run_sync(
                open_fresh, path, projections
            )
        if progress is not None:
            progress(0, target)
        remaining = {
            path: await _fold_in_sql(conns[path], log, projections, target)
            for path, projections in targets.items()
        }
        every = [p for ps in remaining.values() for p in ps]
        reader = log.read(after=0, types=union_types(every))

        token = trio.lowlevel.current_trio_token()
        failed: list[BaseException] = []

        def report(done: int) -> None:  # on the event loop
            if progress is not None and not failed:
                try:
                    progress(done, target)
                except Exception as e:  # raised by `build`, not inside trio
                    failed.append(e)

        def fold_for_a_while() -> bool:
            """Read and fold pages in this worker thread for up to ~0.2 s;
            True once the history is folded up to the target.

            Many pages per thread hop: a hop per page (and the event loop
            taking the GIL between the read and the fold) cost a third of a
            rebuild. Returning now and then keeps the rebuild cancellable;
            progress goes to the event loop without waiting for it.
            """
            until = time.monotonic() + _SLICE
            while True:
                got = reader.next_page_blocking()
                if got is None:
                    return True
                events, scanned = got
                if events and events[-1].position > target:
                    events = [e for e in events if e.position <= target]
                done = min(scanned, target)
                if events:
                    for path, projections in remaining.items():
                        if projections:
                            fold_page(conns[path], projections, events, done)
                if progress is not None:
                    token.run_sync_soon(report, done)
                if scanned >= target or failed:
                    return True
                if time.monotonic() >= until:
                    return False

        while every and not await trio.to_thread.run_sync(fold_for_a_while):
            pass
        if failed:
            raise failed[0]

        def finish() -> None:
            for path, projections in targets.items():
                conn = conns[path]
                conn.execute("BEGIN IMMEDIATE")
                for sql in deferred[path]:
                    conn.execute(sql)
                for p in projections:
                    write_checkpoint(conn, p, target)
                conn.execute("COMMIT")
                # Leave a self-contained file (no -wal) for copying or keeping.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await trio.to_thread.run_sync(finish)
        if progress is not None:
            progress(target, target)
        return target
    finally:
        for conn in conns.values():
            conn.close()


async def _fold_in_sql(
    conn: apsw.Connection, log: Log, projections: Sequence[Projection], upto: int
) -> list[Projection]:
    """Let each projection fold the history in SQL (`Projection.bulk_fold`);
    return those left to fold event by event.

    One thread hop, with the log's database attached to the fresh one. A
    cancelled build interrupts the SQL (a progress handler asks trio whether
    the call was cancelled); the fresh build is then thrown away, as after
    any cancelled rebuild. Skipped when none of them folds in SQL.
    """
    if all(type(p).bulk_fold is Projection.bulk_fold for p in projections):
        return list(projections)

    def cancelled() -> bool:
        try:
            trio.from_thread.check_cancelled()
        except trio.Cancelled:
            return True
        return False

    def run() -> list[Projection]:
        conn.set_progress_handler(cancelled, 100_000)
        # Read only by convention (``?mode=ro`` needs URI filenames, which
        # would change how every other path given to SQLite is read).
        conn.execute("ATTACH DATABASE ? AS nerve_log", (str(log.path),))
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                left = [
                    p for p in projections if not p.bulk_fold(conn, "nerve_log", upto)
                ]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except apsw.InterruptError:
            trio.from_thread.check_cancelled()  # raises Cancelled, if that was it
            raise
        finally:
            conn.execute("DETACH DATABASE nerve_log")
            conn.set_progress_handler(None)
        return left

    return await trio.to_thread.run_sync(run)


def copy_in(
    conn: apsw.Connection,
    projections: Sequence[Projection],
    position: int,
    schema: str = "fresh",
) -> None:
    """Replace the live tables by the attached fresh ones (caller's transaction).

    The live tables are dropped and created again from the projection's
    current ``setup``, so a new version's schema takes effect with its rows.
    """
    for p in projections:
        drop_tables(conn, p)
        p.setup(conn)
        for table in p.tables:
            conn.execute(f'INSERT INTO main."{table}" SELECT * FROM {schema}."{table}"')
        write_checkpoint(conn, p, position)


_LEFTOVER = re.compile(r"\.rebuild-.+-(\d+)-[0-9a-f]{8}\.db(-wal|-shm|-journal)?")


def sweep_leftovers(folder: Path) -> list[Path]:
    """Delete the fresh databases of rebuilds whose process is gone.

    A rebuild killed mid-way (``kill -9``, power loss) leaves its
    ``.rebuild-<name>-<pid>-<token>.db`` behind; nothing reads it, and the
    next rebuild in the same folder removes it. A file whose process still
    runs is another rebuild at work and is left alone. Returns what was
    deleted.
    """
    removed: list[Path] = []
    try:
        candidates = list(folder.iterdir())
    except OSError:
        return removed
    for path in candidates:
        m = _LEFTOVER.fullmatch(path.name)
        if m is None or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists (another user's), or not a pid: leave it
    return True


@contextlib.contextmanager
def temporary_db(folder: Path, name: str) -> Iterator[Path]:
    """A path for a temporary database in ``folder``, removed afterwards.

    Unique per call, not only per process: two rebuilds of one projection
    running at once must not share (and delete) each other's fresh database.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    sweep_leftovers(folder)
    path = folder / f".rebuild-{safe}-{os.getpid()}-{secrets.token_hex(4)}.db"
    remove_db(path)
    try:
        yield path
    finally:
        remove_db(path)
