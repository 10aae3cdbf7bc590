"""``nerve doctor`` and ``nerve stats``: read-only looks at a data directory.

Both open every database read-only with SQLite directly, never through
`open_log` (which would migrate an old schema: a doctor must not change what
it examines).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import apsw
import attrs
from rich.markup import escape
from rich.table import Table

from nerve.events import BlobStore, Migration, NerveError
from nerve.events import _archive as arch
from nerve.events._schema import LOG_APPLICATION_ID, MIGRATIONS
from nerve.events._sqlite import open_connection
from nerve.projections._base import (
    PROJECTION_APPLICATION_ID,
    PROJECTION_DB_MIGRATIONS,
    table_exists,
)

from ._cli_output import Output

Level = Literal["ok", "warning", "problem"]
_SYNC_NAMES: Final = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
_STYLES: Final = {"ok": "green", "warning": "yellow", "problem": "bold red"}


@attrs.frozen
class Check:
    """One finding: what was checked, how it went, and the details."""

    subject: str
    name: str
    level: Level
    detail: str

    def as_dict(self) -> dict[str, str]:
        return attrs.asdict(self)


def healthy(checks: Sequence[Check]) -> bool:
    return all(c.level != "problem" for c in checks)


def _readonly(path: Path, synchronous: str = "NORMAL") -> apsw.Connection:
    return open_connection(path, readonly=True, synchronous=synchronous)


def head_of(conn: apsw.Connection) -> int:
    """The log's last position (the archive's watermark if the table is empty)."""
    row = conn.execute("SELECT max(position) FROM logs").fetchall()[0][0]
    if row is not None:
        return int(row)
    meta = conn.execute(
        "SELECT value FROM meta WHERE key = 'archive.position'"
    ).fetchall()
    return int(meta[0][0]) if meta else 0


# -- doctor ------------------------------------------------------------------------


def doctor(data_dir: Path) -> list[Check]:
    """Every check of the data directory, in a stable order."""
    checks: list[Check] = []
    checks.extend(_permissions(data_dir))
    log_path = data_dir / "logs.db"
    try:
        conn = _readonly(log_path, "FULL")
    except NerveError as e:
        return [*checks, Check("logs.db", "open", "problem", str(e))]
    try:
        checks.extend(
            _database(conn, "logs.db", "FULL", MIGRATIONS, LOG_APPLICATION_ID, "log")
        )
        head = head_of(conn)
        checks.extend(_log_projections(conn, head))
        checks.extend(_archive(conn, data_dir))
        checks.extend(_blobs(conn, data_dir))
    except apsw.Error as e:
        checks.append(
            Check("logs.db", "read", "problem", f"{e.__class__.__name__}: {e}")
        )
        return checks
    finally:
        conn.close()
    for path in _projection_dbs(data_dir):
        checks.extend(_projection_db(data_dir, path, head))
    return checks


def _permissions(data_dir: Path) -> Iterator[Check]:
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o077:
        yield Check(
            str(data_dir),
            "permissions",
            "warning",
            f"mode {mode:o}: others can read the data (nerve creates it 700; "
            f"`chmod 700 {data_dir}`)",
        )
    else:
        yield Check(str(data_dir), "permissions", "ok", f"mode {mode:o}")


def _database(
    conn: apsw.Connection,
    name: str,
    synchronous: str,
    migrations: Sequence[Migration] | None,
    application_id: int | None,
    what: str,
) -> Iterator[Check]:
    result = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
    if result == ["ok"]:
        yield Check(name, "integrity", "ok", "integrity_check: ok")
    else:
        yield Check(
            name, "integrity", "problem", "integrity_check: " + "; ".join(result)
        )
    mode = str(conn.execute("PRAGMA journal_mode").fetchall()[0][0]).lower()
    yield Check(
        name,
        "journal_mode",
        "ok" if mode == "wal" else "problem",
        f"journal_mode={mode}" + ("" if mode == "wal" else " (nerve needs WAL)"),
    )
    sync = int(conn.execute("PRAGMA synchronous").fetchall()[0][0])
    sync_name = _SYNC_NAMES.get(sync, str(sync))
    yield Check(
        name,
        "synchronous",
        "ok" if sync_name == synchronous else "problem",
        f"synchronous={sync_name} as nerve opens it"
        + ("" if sync_name == synchronous else f" (expected {synchronous})"),
    )
    if application_id is not None:
        app_id = int(conn.execute("PRAGMA application_id").fetchall()[0][0])
        if app_id != application_id:
            yield Check(
                name,
                "application_id",
                "problem",
                f"application_id {app_id:#x}: not a nerve {what} database",
            )
    yield from _schema(conn, name, migrations)


def _schema(
    conn: apsw.Connection, name: str, migrations: Sequence[Migration] | None
) -> Iterator[Check]:
    if not table_exists(conn, "schema_version"):
        yield Check(name, "schema", "problem", "no schema_version table")
        return
    applied = dict(conn.execute("SELECT version, checksum FROM schema_version"))
    version = max(applied, default=0)
    if migrations is None:
        yield Check(name, "schema", "ok", f"schema version {version}")
        return
    known = len(migrations)
    edited = [
        m.version
        for m in migrations
        if m.version in applied and applied[m.version] != m.checksum
    ]
    if version > known:
        yield Check(
            name,
            "schema",
            "problem",
            f"schema version {version} is newer than this nerve's {known}: "
            "upgrade nerve",
        )
    elif edited:
        yield Check(
            name,
            "schema",
            "problem",
            f"migrations {edited} were applied with SQL that differs from this nerve's",
        )
    elif version < known:
        yield Check(
            name,
            "schema",
            "warning",
            f"schema version {version} of {known}: migrated when the kernel next "
            "opens it",
        )
    else:
        yield Check(name, "schema", "ok", f"schema version {version} (current)")


def _log_projections(conn: apsw.Connection, head: int) -> Iterator[Check]:
    rows = (
        conn.execute("SELECT name, version, position FROM projections").fetchall()
        if table_exists(conn, "projections")
        else []
    )
    checkpoints = {name: (version, position) for name, version, position in rows}
    if "workflow_runs" not in checkpoints:
        yield Check(
            "logs.db",
            "workflow_runs",
            "ok",
            "not built yet (the first kernel start builds it)",
        )
    else:
        _, position = checkpoints["workflow_runs"]
        lag = head - position
        yield Check(
            "logs.db",
            "workflow_runs",
            "ok",
            f"checkpoint {position}, lag {lag} (inline: it catches up in the "
            "append transaction)",
        )
    if "kernel.trigger-requests" in checkpoints:
        _, position = checkpoints["kernel.trigger-requests"]
        waiting = conn.execute(
            "SELECT count(*) FROM logs WHERE position > ? "
            "AND type = 'workflow.trigger.requested'",
            (position,),
        ).fetchall()[0][0]
        if waiting:
            yield Check(
                "logs.db",
                "trigger requests",
                "warning",
                f"{waiting} trigger requests not admitted yet (a running kernel "
                "admits them; else the next one to start)",
            )


def _archive(conn: apsw.Connection, data_dir: Path) -> Iterator[Check]:
    days = arch.list_days(conn)
    bad = []
    for day in days:
        try:
            if arch.file_checksum(data_dir, day) != day.sha256:
                bad.append(f"{day.day}: does not match its checksum (altered)")
        except NerveError as e:
            bad.append(str(e))
    listed = {f"{d.day}.jsonl" for d in days}
    folder = arch.archive_dir(data_dir)
    strays = (
        sorted(p.name for p in folder.glob("*.jsonl") if p.name not in listed)
        if folder.is_dir()
        else []
    )
    if bad:
        yield Check("archive", "checksums", "problem", "; ".join(bad))
    else:
        events = sum(d.count for d in days)
        yield Check(
            "archive",
            "checksums",
            "ok",
            f"{len(days)} days ({events} events) match their checksums",
        )
    if strays:
        yield Check(
            "archive",
            "stray files",
            "warning",
            f"files the log does not list: {', '.join(strays[:10])}",
        )


def _blobs(conn: apsw.Connection, data_dir: Path) -> Iterator[Check]:
    store = BlobStore(data_dir / "blobs")
    damaged = store.verify_sync() if store.root.is_dir() else []
    referenced = [
        r[0]
        for r in conn.execute("SELECT DISTINCT blob FROM logs WHERE blob IS NOT NULL")
    ]
    missing = [d for d in referenced if not store.exists_sync(d)]
    if damaged:
        yield Check(
            "blobs",
            "digests",
            "problem",
            f"{len(damaged)} blobs no longer match their sha256: "
            + ", ".join(damaged[:5]),
        )
    else:
        count = sum(1 for _ in store.iter_digests_sync()) if store.root.is_dir() else 0
        yield Check("blobs", "digests", "ok", f"{count} blobs match their sha256")
    if missing:
        yield Check(
            "blobs",
            "references",
            "problem",
            f"{len(missing)} blobs the log refers to are missing: "
            f"{', '.join(missing[:5])}",
        )


def _projection_dbs(data_dir: Path) -> list[Path]:
    found = sorted((data_dir / "senses").glob("*-senses.db"))
    knowledge = data_dir / "knowledge.db"
    if knowledge.is_file():
        found.append(knowledge)
    return found


def _projection_db(data_dir: Path, path: Path, head: int) -> Iterator[Check]:
    name = str(path.relative_to(data_dir))
    try:
        conn = _readonly(path, "NORMAL")
    except NerveError as e:
        yield Check(name, "open", "problem", str(e))
        return
    try:
        yield from _database(
            conn,
            name,
            "NORMAL",
            PROJECTION_DB_MIGRATIONS,
            PROJECTION_APPLICATION_ID,
            "projection",
        )
        if table_exists(conn, "projections"):
            for pname, _version, position in conn.execute(
                "SELECT name, version, position FROM projections"
            ):
                lag = head - position
                yield Check(
                    name,
                    f"lag of {pname}",
                    "ok" if lag >= 0 else "problem",
                    f"checkpoint {position}, lag {lag}"
                    + (
                        " (follows the log while a kernel runs)"
                        if lag > 0
                        else " (ahead of the log: it was restored from elsewhere)"
                        if lag < 0
                        else ""
                    ),
                )
    except apsw.Error as e:
        yield Check(name, "read", "problem", f"{e.__class__.__name__}: {e}")
    finally:
        conn.close()


def print_checks(out: Output, checks: Sequence[Check]) -> None:
    table = Table(show_edge=False, header_style="bold")
    for col in ("", "subject", "check", "detail"):
        table.add_column(col)
    marks = {"ok": "✓", "warning": "!", "problem": "✗"}
    for c in checks:
        style = _STYLES[c.level]
        table.add_row(
            f"[{style}]{marks[c.level]}[/]",
            escape(c.subject),
            escape(c.name),
            f"[{style}]{escape(c.detail)}[/]" if c.level != "ok" else escape(c.detail),
        )
    out.print(table)
    problems = sum(c.level == "problem" for c in checks)
    warnings = sum(c.level == "warning" for c in checks)
    summary = (
        f"{problems} problem{'s' if problems != 1 else ''}, "
        f"{warnings} warning{'s' if warnings != 1 else ''}"
    )
    out.print(
        f"[bold red]{summary}[/]" if problems else f"[green]healthy[/] ({summary})"
    )


# -- stats ----------------------------------------------------------------------------


def _size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(str(path) + suffix).st_size
        except OSError:
            pass
    return total


def _dir_size(path: Path) -> tuple[int, int]:
    count = size = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                size += os.stat(os.path.join(root, f)).st_size
                count += 1
            except OSError:
                pass
    return count, size


def stats(data_dir: Path) -> dict[str, Any]:
    """Counts and sizes of a data directory (read-only)."""
    conn = _readonly(data_dir / "logs.db")
    try:
        q: Callable[..., list[Any]] = lambda sql, *a: conn.execute(sql, a).fetchall()  # noqa: E731
        head = head_of(conn)
        hot, first_ts, last_ts = q("SELECT count(*), min(ts), max(ts) FROM logs")[0]
        by_type = dict(
            q("SELECT type, count(*) FROM logs GROUP BY type ORDER BY 2 DESC")
        )
        streams = q("SELECT count(DISTINCT stream) FROM logs")[0][0]
        days = arch.list_days(conn)
        runs: dict[str, dict[str, int]] = {}
        if table_exists(conn, "workflow_runs"):
            for workflow, status, n in q(
                "SELECT workflow, status, count(*) FROM workflow_runs "
                "GROUP BY workflow, status ORDER BY workflow, status"
            ):
                runs.setdefault(workflow, {})[status] = n
        checkpoints = (
            {n: p for n, _, p in q("SELECT name, version, position FROM projections")}
            if table_exists(conn, "projections")
            else {}
        )
    finally:
        conn.close()
    projections = {
        name: {"position": p, "lag": head - p} for name, p in checkpoints.items()
    }
    for path in _projection_dbs(data_dir):
        pconn = _readonly(path)
        try:
            if table_exists(pconn, "projections"):
                for name, _, p in pconn.execute(
                    "SELECT name, version, position FROM projections"
                ):
                    projections[name] = {"position": p, "lag": head - p}
        finally:
            pconn.close()
    blob_count, blob_bytes = _dir_size(data_dir / "blobs")
    archive_files, archive_bytes = _dir_size(arch.archive_dir(data_dir))
    files = {"logs.db": _size(data_dir / "logs.db")}
    for path in _projection_dbs(data_dir):
        files[str(path.relative_to(data_dir))] = _size(path)
    return {
        "data_dir": str(data_dir),
        "head": head,
        "hot_events": hot,
        "archived_events": sum(d.count for d in days),
        "archived_days": len(days),
        "first_ts": first_ts,
        "last_ts": last_ts,
        "streams": streams,
        "events_by_type": by_type,
        "runs": runs,
        "projections": projections,
        "blobs": {"count": blob_count, "bytes": blob_bytes},
        "archive": {"files": archive_files, "bytes": archive_bytes},
        "files": files,
    }


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def print_stats(out: Output, s: dict[str, Any]) -> None:
    from ._cli_output import when

    out.print(
        f"[bold]{escape(s['data_dir'])}[/]: head {s['head']}, "
        f"{s['hot_events']} events in logs.db, {s['archived_events']} in "
        f"{s['archived_days']} archived days, {s['streams']} streams"
    )
    if s["first_ts"] is not None:
        out.print(f"hot events from {when(s['first_ts'])} to {when(s['last_ts'])}")
    if s["events_by_type"]:
        table = Table(title="events by type", show_edge=False, header_style="bold")
        table.add_column("type")
        table.add_column("events", justify="right")
        for t, n in list(s["events_by_type"].items())[:20]:
            table.add_row(escape(t), str(n))
        out.print(table)
    if s["runs"]:
        statuses = sorted({st for counts in s["runs"].values() for st in counts})
        table = Table(title="runs", show_edge=False, header_style="bold")
        table.add_column("workflow")
        for st in statuses:
            table.add_column(st, justify="right")
        for workflow, counts in s["runs"].items():
            table.add_row(
                escape(workflow), *(str(counts.get(st, 0)) for st in statuses)
            )
        out.print(table)
    if s["projections"]:
        table = Table(title="projections", show_edge=False, header_style="bold")
        for col in ("projection", "position", "lag"):
            table.add_column(col, justify="left" if col == "projection" else "right")
        for name, p in s["projections"].items():
            table.add_row(escape(name), str(p["position"]), str(p["lag"]))
        out.print(table)
    storage = ", ".join(f"{name} {_bytes(n)}" for name, n in s["files"].items())
    out.print(
        f"storage: {storage}; blobs {s['blobs']['count']} "
        f"({_bytes(s['blobs']['bytes'])}); archive {s['archive']['files']} "
        f"files ({_bytes(s['archive']['bytes'])})"
    )
