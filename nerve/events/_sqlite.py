"""SQLite through apsw: opening files safely, migrations, and error mapping.

Every database nerve owns (the log, sense databases, the knowledge index) is
opened here, so the checks that protect users' files live in one place: a file
that is not SQLite is refused before SQLite touches it, a database from a newer
nerve or with an edited migration is refused before anything is written, and
driver errors become nerve's own errors at this one boundary.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import apsw
import attrs

from ._errors import (
    CorruptDatabaseError,
    DatabaseError,
    MigrationChecksumError,
    NerveError,
    NewerSchemaError,
    NotADatabaseError,
    StorageFullError,
    StorageIOError,
)

SQLITE_HEADER: Final = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS: Final = 10_000


@attrs.frozen
class Migration:
    """One step of a database's schema, applied once, in order."""

    version: int
    description: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def map_error(path: object, e: BaseException) -> NerveError:
    """Translate an apsw error into nerve's own error for ``path``."""
    if isinstance(e, NerveError):
        return e
    if isinstance(e, apsw.FullError):
        return StorageFullError(f"{path}: the database or disk is full ({e})")
    if isinstance(e, apsw.NotADBError):
        return NotADatabaseError(path, f"not a SQLite database ({e})")
    if isinstance(e, apsw.CorruptError):
        return CorruptDatabaseError(
            path, f"the database is corrupt ({e}); restore it from a backup"
        )
    if isinstance(e, apsw.IOError):
        return StorageIOError(f"{path}: I/O error ({e})")
    if isinstance(e, apsw.BusyError):
        return DatabaseError(
            path, f"the database stayed locked by another connection ({e})"
        )
    if isinstance(e, apsw.CantOpenError):
        return DatabaseError(path, f"cannot open the database file ({e})")
    if isinstance(e, apsw.ReadOnlyError):
        return DatabaseError(path, f"the database is read-only ({e})")
    return DatabaseError(path, f"{e.__class__.__name__}: {e}")


@contextlib.contextmanager
def mapped_errors(path: object) -> Iterator[None]:
    """Re-raise apsw errors inside the block as nerve errors."""
    try:
        yield
    except apsw.Error as e:
        raise map_error(path, e) from e


def check_file(path: Path) -> bool:
    """Refuse a file that exists but is not SQLite. Returns True if it exists."""
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        raise NotADatabaseError(path, "is a directory, not a database file") from None
    except OSError as e:
        raise DatabaseError(path, f"cannot read the file ({e})") from e
    if head and head != SQLITE_HEADER:
        raise NotADatabaseError(
            path, "not a SQLite database (bad header); the file was left untouched"
        )
    return True


def create_private_file(path: Path) -> None:
    """Create an empty file readable by its owner only (0600).

    SQLite gives its -wal and -shm files the permissions of the main file, so
    creating the main file ourselves keeps all three private.
    """
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)


def open_connection(
    path: Path,
    *,
    synchronous: str = "FULL",
    readonly: bool = False,
    create: bool = True,
    application_id: int | None = None,
    what: str = "nerve",
) -> apsw.Connection:
    """Open a WAL-mode SQLite database with nerve's settings.

    With ``application_id``, an existing database of another application is
    refused before switching to WAL, which would rewrite its header.

    Raises:
        NotADatabaseError: the file exists and is not SQLite (or, with
            ``application_id``, not the ``what`` database).
        DatabaseError: it cannot be opened.
    """
    existed = check_file(path)
    if not existed:
        if readonly or not create:
            raise DatabaseError(path, "no such database file")
        path.parent.mkdir(parents=True, exist_ok=True)
        create_private_file(path)
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE
    flags |= apsw.SQLITE_OPEN_NOMUTEX
    with mapped_errors(path):
        conn = apsw.Connection(str(path), flags=flags)
    try:
        with mapped_errors(path):
            conn.set_busy_timeout(BUSY_TIMEOUT_MS)
            # Reading the schema is the first thing that touches the file's
            # contents; a corrupt or non-SQLite file fails here, unchanged.
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()
            if application_id is not None:
                check_application_id(conn, path, application_id, what)
            if not readonly:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
                if str(mode).lower() != "wal":
                    raise DatabaseError(path, f"cannot switch to WAL (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            # Statement journals (a multi-row statement inside a transaction
            # keeps one, to undo itself alone) in memory, not in temp files:
            # measured, they were half of the write syscalls of a busy kernel.
            conn.execute("PRAGMA temp_store=MEMORY")
    except BaseException:
        conn.close()
        raise
    return conn


def table_names(conn: apsw.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")
    return {r[0] for r in rows}


def check_application_id(
    conn: apsw.Connection, path: object, application_id: int, what: str
) -> None:
    """Refuse a database that belongs to another application (reads only)."""
    app_id = conn.execute("PRAGMA application_id").fetchall()[0][0]
    tables = table_names(conn)
    if app_id != application_id and (app_id != 0 or tables):
        raise NotADatabaseError(
            path,
            f"not a nerve {what} database (application_id {app_id:#x}, "
            f"tables {sorted(tables)[:5]}); the file was left untouched",
        )


def migrate(
    conn: apsw.Connection,
    path: object,
    migrations: Sequence[Migration],
    *,
    application_id: int,
    what: str,
) -> int:
    """Bring a database's schema up to date, one transaction per migration.

    The ``schema_version`` table records each applied migration with its
    checksum. A database with a version we do not know, or whose recorded
    checksum differs from the code's, is refused before anything is written.

    Returns:
        The schema version after migrating.
    """
    for i, m in enumerate(migrations, start=1):
        if m.version != i:
            raise ValueError(f"migrations of {what} must be numbered 1, 2, 3...")
    with mapped_errors(path):
        check_application_id(conn, path, application_id, what)
        tables = table_names(conn)
        applied: dict[int, str] = {}
        if "schema_version" in tables:
            applied = dict(conn.execute("SELECT version, checksum FROM schema_version"))
        known = len(migrations)
        newer = [v for v in applied if v > known]
        if newer:
            raise NewerSchemaError(
                path,
                f"the {what} database has schema version {max(newer)}, but this "
                f"nerve knows only up to {known}; upgrade nerve to open it "
                "(nothing was changed)",
            )
        for m in migrations:
            if m.version in applied and applied[m.version] != m.checksum:
                raise MigrationChecksumError(
                    path,
                    f"migration {m.version} ({m.description}) of the {what} database "
                    "was applied with different SQL than this nerve's; the "
                    "migration was edited after release (nothing was changed)",
                )
        for m in migrations:
            if m.version in applied:
                continue
            with _transaction(conn):
                # Re-check inside the write lock: another process may have
                # migrated between our read and our BEGIN IMMEDIATE.
                if "schema_version" in table_names(conn):
                    row = conn.execute(
                        "SELECT checksum FROM schema_version WHERE version=?",
                        (m.version,),
                    ).fetchall()
                    if row:
                        continue
                else:
                    conn.execute(
                        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                        "checksum TEXT NOT NULL, description TEXT NOT NULL, "
                        "applied_at INTEGER NOT NULL)"
                    )
                    conn.execute(f"PRAGMA application_id={application_id}")
                conn.execute(m.sql)
                conn.execute(
                    "INSERT INTO schema_version VALUES (?, ?, ?, "
                    "CAST(unixepoch('subsec') * 1000 AS INTEGER))",
                    (m.version, m.checksum, m.description),
                )
        return known


@contextlib.contextmanager
def _transaction(conn: apsw.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


transaction = _transaction


def pragma(conn: apsw.Connection, name: str) -> Any:
    return conn.execute(f"PRAGMA {name}").fetchall()[0][0]
