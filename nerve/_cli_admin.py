"""The work behind ``nerve runs``, ``run-show``, ``log``, ``replay``,
``projections``, ``verify``, ``archive`` and ``backup`` (the click commands
in `nerve.cli` parse arguments and print; these functions do the rest)."""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import apsw
import attrs
import click

from nerve import projections as proj
from nerve.config import Config
from nerve.events import (
    ArchiveDay,
    Log,
    NerveError,
    RecordedEvent,
    SearchHit,
    open_log,
)
from nerve.events._archive import DAY_MS, day_bounds
from nerve.events._sqlite import open_connection
from nerve.events._vocabulary import StepJournaled, ThreadMessage, run_stream
from nerve.projections import (
    Projection,
    RunQueries,
    RunRecord,
    Signals,
    WorkflowRuns,
)
from nerve.projections._base import read_checkpoint, table_exists
from nerve.projections._workflow_runs import _COLUMNS

from ._cli_output import Output

SIGNALS_SUFFIX = "-senses.db"


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def open_cli_log(data_dir: Path) -> contextlib.AbstractAsyncContextManager[Log]:
    """The log, opened by the CLI (its appends are marked ``source="cli"``)."""
    return open_log(data_dir, source="cli")


# -- projections of a data directory ----------------------------------------------


def sense_groups(config: Config | None, data_dir: Path) -> dict[str, int | None]:
    """Sense group -> ``keep_last`` of its ``_signals`` (as the kernel sets it).

    From the config when there is one, else the groups whose database exists.
    """
    if config is not None:
        groups: dict[str, int | None] = {}
        for group, senses in config.senses.items():
            keep = [s.keep_last for s in senses.values()]
            groups[group] = None if None in keep else max(k or 0 for k in keep)
        return groups
    found = sorted((data_dir / "senses").glob(f"*{SIGNALS_SUFFIX}"))
    return {p.name[: -len(SIGNALS_SUFFIX)]: 1000 for p in found}


def projections_of(config: Config | None, data_dir: Path) -> list[Projection]:
    """``workflow_runs`` and each sense group's ``_signals``."""
    out: list[Projection] = [WorkflowRuns()]
    for group, keep_last in sense_groups(config, data_dir).items():
        out.append(Signals(group, keep_last=keep_last))
    return out


def find_projection(projections: Sequence[Projection], name: str) -> Projection:
    names = {p.name: p for p in projections}
    for candidate in (name, f"signals:{name}"):
        if candidate in names:
            return names[candidate]
    known = sorted(names)
    groups = [n.split(":", 1)[1] for n in known if n.startswith("signals:")]
    raise click.ClickException(
        f"no projection {name!r}{did_you_mean(name, known + groups)} "
        f"(known: {', '.join(known)})"
    )


def built(data_dir: Path, projection: Projection) -> bool:
    """Whether the projection's database holds its checkpoint already."""
    path = data_dir / projection.database
    if not path.is_file():
        return False
    conn = open_connection(path, readonly=True, synchronous="NORMAL")
    try:
        return (
            table_exists(conn, "projections")
            and read_checkpoint(conn, projection.name) is not None
        )
    finally:
        conn.close()


# -- runs ---------------------------------------------------------------------------


async def list_runs(
    data_dir: Path, workflow: str | None, statuses: list[str], limit: int | None
) -> list[RunRecord]:
    """The newest ``limit`` runs (all with None), oldest first."""
    async with open_cli_log(data_dir) as log:
        if not await log._read(lambda conn: table_exists(conn, "workflow_runs")):
            return []
        return await RunQueries(log).list(
            workflow=workflow, status=statuses or None, limit=limit, newest=True
        )


@attrs.frozen
class ShownRun:
    record: RunRecord
    events: list[RecordedEvent]
    messages: list[ThreadMessage]
    steps: list[StepJournaled]


async def show_run(data_dir: Path, run_id: str) -> ShownRun:
    """A run by id, or a unique prefix or suffix of its id, with its events,
    thread and steps (run ids start with their time, so the random end is
    the handy part to quote)."""

    def find(conn: apsw.Connection) -> list[RunRecord]:
        if not table_exists(conn, "workflow_runs"):
            return []
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM workflow_runs WHERE run_id = ?", (run_id,)
        ).fetchall()
        if not rows:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM workflow_runs "
                "WHERE substr(run_id, 1, ?1) = ?2 OR substr(run_id, -?1) = ?2 LIMIT 5",
                (len(run_id), run_id),
            ).fetchall()
        return [RunRecord.from_row(r) for r in rows]

    async with open_cli_log(data_dir) as log:
        found = await log._read(find)
        if not found:
            raise click.ClickException(f"no run {run_id!r} (see `nerve runs`)")
        if len(found) > 1:
            ids = ", ".join(r.run_id for r in found)
            raise click.ClickException(
                f"{run_id!r} starts or ends several run ids: {ids}"
            )
        record = found[0]
        events = [e async for e in log.read(stream=run_stream(record.run_id))]
    return ShownRun(
        record,
        events,
        [e.data for e in events if isinstance(e.data, ThreadMessage)],
        [e.data for e in events if isinstance(e.data, StepJournaled)],
    )


# -- the log ---------------------------------------------------------------------------


async def last_events(
    log: Log, n: int, *, stream: str | None, types: list[str] | None
) -> list[RecordedEvent]:
    """The last ``n`` events of a stream and/or of some types, oldest first."""
    if n == 0:
        return []
    if stream is not None:
        return await log.tail(stream, n, types=types)
    assert types is not None
    wanted = list(types)

    def nth_last(conn: apsw.Connection) -> int:
        rows = conn.execute(
            f"SELECT position FROM logs WHERE type IN ({','.join('?' * len(wanted))}) "
            "ORDER BY position DESC LIMIT 1 OFFSET ?",
            [*wanted, n - 1],
        ).fetchall()
        return int(rows[0][0]) if rows else 1

    start = await log._read(nth_last)
    return [e async for e in log.read(after=start - 1, types=wanted)]


async def search_log(
    data_dir: Path, query: str, limit: int, literal: bool
) -> list[SearchHit]:
    async with open_cli_log(data_dir) as log:
        return await log.search(query, limit, literal=literal)


# -- replay, rebuild, verify -----------------------------------------------------------


async def replay(
    data_dir: Path, config: Config | None, into: Path, out: Output
) -> dict[str, Any]:
    projections = projections_of(config, data_dir)
    databases: dict[str, list[str]] = {}
    for p in projections:
        databases.setdefault(p.database, []).append(p.name)
    async with open_cli_log(data_dir) as log:
        with out.progress("replaying") as progress:
            position = await proj.replay(log, projections, into, progress=progress)
    return {"position": position, "into": str(into), "databases": databases}


async def rebuild(
    data_dir: Path, config: Config | None, name: str, out: Output
) -> tuple[str, int]:
    """Rebuild a projection; returns its name and the position it reached."""
    projection = find_projection(projections_of(config, data_dir), name)
    async with open_cli_log(data_dir) as log:
        with out.progress(f"rebuilding {projection.name}") as progress:
            await proj.rebuild(log, projection, progress=progress)
        return projection.name, log.head


async def verify(data_dir: Path, config: Config | None, out: Output) -> dict[str, Any]:
    lines: list[str] = []
    problems: list[str] = []
    results: dict[str, Any] = {}
    async with open_cli_log(data_dir) as log:
        broken = await log.verify()
        days = await log.archived_days()
        if broken is None:
            lines.append(
                f"hash chain: intact (positions 1-{log.head}, "
                f"{len(days)} archived days)"
            )
        else:
            problems.append(f"hash chain: broken at position {broken}")
        results["chain"] = {"intact": broken is None, "broken_at": broken}
        if broken is not None:
            # A replay would fold altered events: compare nothing with it.
            lines.append("projections: not compared (the log itself is altered)")
            return {
                "ok": False,
                "lines": problems + lines,
                "problems": problems,
                "results": results,
            }
        for p in projections_of(config, data_dir):
            if not built(data_dir, p):
                lines.append(f"{p.name}: not built yet in {p.database} (skipped)")
                results[p.name] = {"built": False, "differences": []}
                continue
            try:
                with out.progress(f"verifying {p.name}"):
                    differences = await proj.verify(log, [p])
            except NerveError as e:
                problems.append(f"{p.name}: could not be compared: {e}")
                results[p.name] = {"built": True, "error": str(e)}
                continue
            results[p.name] = {
                "built": True,
                "differences": [str(d) for d in differences],
            }
            if differences:
                problems.append(
                    f"{p.name}: {len(differences)} rows differ from a replay of the "
                    f"history; `nerve projections rebuild {p.name}` rebuilds it"
                )
                problems.extend(f"  {d}" for d in differences[:20])
            else:
                lines.append(f"{p.name}: matches a replay of the history")
    return {
        "ok": not problems,
        "lines": lines + problems,
        "problems": problems,
        "results": results,
    }


async def projection_status(
    data_dir: Path, config: Config | None
) -> list[dict[str, Any]]:
    async with open_cli_log(data_dir) as log:
        head = log.head
    rows = []
    for p in projections_of(config, data_dir):
        checkpoint = None
        path = data_dir / p.database
        if path.is_file():
            conn = open_connection(path, readonly=True, synchronous="NORMAL")
            try:
                if table_exists(conn, "projections"):
                    checkpoint = read_checkpoint(conn, p.name)
            finally:
                conn.close()
        rows.append(
            {
                "name": p.name,
                "database": p.database,
                "version": checkpoint.version if checkpoint else None,
                "position": checkpoint.position if checkpoint else None,
                "lag": head - checkpoint.position if checkpoint else None,
            }
        )
    return rows


# -- archive, backup -------------------------------------------------------------------


async def archive(
    data_dir: Path, older_than: timedelta, out: Output
) -> list[ArchiveDay]:
    """`Log.archive`, one UTC day at a time so that the bar can move."""
    older_ms = int(older_than.total_seconds() * 1000)
    async with open_cli_log(data_dir) as log:
        now_ms = int(log._writer.clock() * 1000)
        cutoff = day_bounds(now_ms - older_ms)[0]

        def candidates(conn: apsw.Connection) -> list[int]:
            return [
                int(r[0])
                for r in conn.execute(
                    "SELECT DISTINCT ts / ? FROM logs WHERE ts < ? ORDER BY 1",
                    (DAY_MS, cutoff),
                )
            ]

        days = await log._read(candidates)
        done: list[ArchiveDay] = []
        with out.progress("archiving") as progress:
            progress(0, len(days))
            for i, day in enumerate(days):
                # ``now`` such that the cutoff falls at the end of this day.
                end = (day + 1) * DAY_MS
                done += await log.archive(older_than, now=(end + older_ms + 1) / 1000)
                progress(i + 1, len(days))
            done += await log.archive(older_than)
        return done


async def prune_blobs(data_dir: Path, older_than: timedelta) -> list[str]:
    async with open_cli_log(data_dir) as log:
        return await log.prune_blobs(older_than=older_than)


async def backup(data_dir: Path, dest: Path) -> dict[str, Any]:
    async with open_cli_log(data_dir) as log:
        head = log.head
        path = await log.backup(dest)
        days = await log.archived_days()
    blobs = sum(len(files) for _, _, files in os.walk(dest / "blobs"))
    return {
        "path": str(path),
        "head": head,
        "blobs": blobs,
        "archive_days": len(days),
    }
