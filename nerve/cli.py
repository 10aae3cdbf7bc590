"""The ``nerve`` command.

Every command takes ``--data DIR`` (default: the config's ``data_dir``, else
``./data``) and, where a config matters, ``--config PATH`` (default:
``./nerve.yaml`` when it exists). Errors are one line on stderr and a
non-zero exit status, never a traceback; ``--json`` prints what scripts want.
See ``nerve --help`` and README.md for the reference.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import orjson
import trio

from nerve.config import (
    DEFAULT_RETENTION,
    parse_duration,
)
from nerve.events import Log, SearchQueryError
from nerve.events._vocabulary import (
    RUN_STATUS_OF_TYPE,
    TERMINAL_STATUSES,
    TRANSITIONS,
    run_stream,
)
from nerve.kernel import DEFAULT_GRACE, request_trigger
from nerve.projections import RunQueries, RunRecord

from . import _cli_admin as admin
from ._cli_admin import open_cli_log
from ._cli_common import (
    NerveGroup,
    Target,
    config_option,
    data_option,
    error_message,
    json_option,
    run_trio,
)
from ._cli_output import (
    Output,
    compact,
    event_json,
    event_line,
    format_duration,
    run_json,
    runs_table,
    status_text,
    when,
)

STATUSES = sorted(s for s in TRANSITIONS if s is not None)


# -- the group --------------------------------------------------------------------


@click.group(cls=NerveGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nerve", prog_name="nerve")
def cli() -> None:
    """nerve: an event-sourced actor runtime on trio.

    Run workflows and senses from nerve.yaml (`nerve run`), trigger runs from
    another shell (`nerve trigger`), and inspect, search, replay, verify,
    archive and back up the event log.
    """


def main() -> None:
    """The console script's entry point."""
    cli(prog_name="nerve")


# -- run ------------------------------------------------------------------------------


@cli.command("run")
@click.argument(
    "config_path",
    metavar="[CONFIG]",
    required=False,
    type=click.Path(dir_okay=False, path_type=Path),
)
@data_option
@click.option(
    "--reload",
    is_flag=True,
    help="Reload when the config or an entry module changes (polled every second).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE,
    show_default=True,
    help="Seconds running runs get to finish at stop or reload.",
)
@click.option("--quiet", "-q", is_flag=True, help="Do not print run transitions.")
def run_command(
    config_path: Path | None, data: Path | None, reload: bool, grace: float, quiet: bool
) -> None:
    """Run the kernel of CONFIG (default nerve.yaml) until Ctrl-C or SIGTERM.

    Stopping drains running runs for the grace period; runs still going are
    recorded interrupted. SIGHUP (or --reload on a file change) drains the
    same way and restarts with the new definitions.
    """
    from ._cli_serve import Server

    path = config_path or Path("nerve.yaml")
    target = Target(path, data)  # a bad file fails here, before anything starts
    server = Server(
        path, target.data_dir, grace=grace, reload=reload, quiet=quiet, out=Output()
    )
    run_trio(server.run)


# -- trigger ---------------------------------------------------------------------------


def _payload(text: str | None) -> Any:
    if text is None:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as e:
            raise click.BadParameter(error_message(e), param_hint="--payload") from None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise click.BadParameter(
            f"not valid JSON: {e}", param_hint="--payload"
        ) from None


@cli.command()
@click.argument("workflow")
@click.option("--payload", "-p", help="The run's payload: JSON text, or @FILE.")
@click.option("--run-id", help="The run's id (default: a new one).")
@click.option("--wait", "-w", is_flag=True, help="Wait for the run to end.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    help="With --wait: give up waiting after this many seconds.",
)
@json_option
@config_option
@data_option
def trigger(
    workflow: str,
    payload: str | None,
    run_id: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    config_path: Path | None,
    data: Path | None,
) -> None:
    """Ask the kernel to run WORKFLOW (it may run in another process).

    Appends a trigger request to the log; the running kernel admits it (or
    the next one to start). Prints the run id. With --wait, waits for the run
    to end and exits 0 if it completed, 1 otherwise.
    """
    target = Target(config_path, data)
    value = _payload(payload)
    if target.config is not None and workflow not in target.config.workflows:
        known = sorted(target.config.workflows)
        raise click.ClickException(
            f"no workflow {workflow!r} in {target.config.source}"
            + admin.did_you_mean(workflow, known)
            + f" (defined: {', '.join(known) or 'none'})"
        )
    out = Output()
    if not (target.data_dir / "logs.db").exists():
        out.note(
            f"note: no log in {target.data_dir} yet; creating one. The request "
            "waits there for a kernel started with this data directory."
        )
    record = run_trio(
        _trigger, target.data_dir, workflow, value, run_id, wait, timeout, out, as_json
    )
    if record is not None and record.status != "completed":
        sys.exit(1)


async def _trigger(
    data_dir: Path,
    workflow: str,
    payload: Any,
    run_id: str | None,
    wait: bool,
    limit: float | None,
    out: Output,
    as_json: bool,
) -> RunRecord | None:
    async with open_cli_log(data_dir) as log:
        run_id = await request_trigger(log, workflow, payload, run_id=run_id)
        if not wait:
            if as_json:
                out.json({"run_id": run_id, "workflow": workflow})
            else:
                out.line(run_id)
            return None
        if not as_json:
            out.note(f"triggered {workflow} as run {run_id}; waiting for it to end")
        with trio.move_on_after(limit if limit is not None else float("inf")):
            record = await wait_for_run(log, run_id)
            if as_json:
                out.json(run_json(record))
            else:
                out.print(runs_table([record]))
            return record
        raise click.ClickException(
            f"run {run_id} had not ended after {limit:g} s (it goes on; "
            f"see `nerve run-show {run_id}`)"
        )


async def wait_for_run(log: Log, run_id: str) -> RunRecord:
    """Follow the run's stream until it ends, then read its row."""
    queries = RunQueries(log)
    async for e in log.subscribe(stream=run_stream(run_id), types=RUN_STATUS_OF_TYPE):
        if RUN_STATUS_OF_TYPE[e.type] in TERMINAL_STATUSES:
            record = await queries.get(run_id)
            if record is not None:
                return record
    raise click.ClickException("the log closed while waiting")  # pragma: no cover


# -- runs, run-show --------------------------------------------------------------------


def _statuses(values: Iterable[str]) -> list[str]:
    out = []
    for value in values:
        for s in value.split(","):
            s = s.strip()
            if s not in STATUSES:
                raise click.BadParameter(
                    f"unknown status {s!r}{admin.did_you_mean(s, STATUSES)} "
                    f"(statuses: {', '.join(STATUSES)})",
                    param_hint="--status",
                )
            out.append(s)
    return out


@cli.command()
@click.option("--workflow", "-w", help="Only runs of this workflow.")
@click.option(
    "--status",
    "-s",
    "status",
    multiple=True,
    help="Only runs in this status (repeat, or separate with commas).",
)
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Show the newest N runs (0: all).",
)
@json_option
@config_option
@data_option
def runs(
    workflow: str | None,
    status: tuple[str, ...],
    limit: int,
    as_json: bool,
    config_path: Path | None,
    data: Path | None,
) -> None:
    """List workflow runs (the workflow_runs table), oldest first."""
    statuses = _statuses(status)
    data_dir = Target(config_path, data).existing()
    records = run_trio(admin.list_runs, data_dir, workflow, statuses, limit or None)
    out = Output()
    if as_json:
        out.json([run_json(r) for r in records])
    elif not records:
        out.note("no runs")
    else:
        out.print(runs_table(records))


@cli.command("run-show")
@click.argument("run_id")
@json_option
@config_option
@data_option
def run_show(
    run_id: str, as_json: bool, config_path: Path | None, data: Path | None
) -> None:
    """Show one run: its row, its events, its thread messages and steps.

    RUN_ID may be abbreviated to a unique prefix.
    """
    data_dir = Target(config_path, data).existing()
    shown = run_trio(admin.show_run, data_dir, run_id)
    out = Output()
    if as_json:
        out.json(
            {
                "run": run_json(shown.record),
                "events": [event_json(e) for e in shown.events],
                "messages": shown.messages,
                "steps": shown.steps,
            }
        )
        return
    r = shown.record
    out.print(
        f"[bold]run {r.run_id}[/]  {r.workflow}  {status_text(r.status)}  "
        f"attempt {r.attempt}"
    )
    out.line(f"  payload: {compact(r.payload, 200)}")
    if r.status == "completed":
        out.line(f"  result:  {compact(r.result, 200)}")
    elif r.error is not None:
        kind = f"{r.error_type}: " if r.error_type else ""
        out.line(f"  error:   {kind}{r.error}")
    out.line(
        f"  queued {when(r.queued_at)}"
        + (f", started {when(r.started_at)}" if r.started_at else "")
        + (f", ended {when(r.ended_at)}" if r.ended_at else "")
    )
    out.line(f"\nevents ({len(shown.events)}):")
    width = out.out.width
    for e in shown.events:
        out.line("  " + event_line(e, width - 2))
    out.line(f"\nthread ({len(shown.messages)} messages):")
    for m in shown.messages:
        out.line(f"  {m.role}: {compact(m.content, width - len(m.role) - 4)}")
    out.line(f"\nsteps ({len(shown.steps)}):")
    for s in shown.steps:
        out.line(f"  #{s.seq} {s.name} -> {compact(s.result, width - 20)}")


# -- log -------------------------------------------------------------------------------


@cli.group(cls=NerveGroup)
def log() -> None:
    """Read and search the event log."""


@log.command()
@click.option(
    "--lines", "-n", type=click.IntRange(min=0), default=20, show_default=True
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--stream", help="Only this stream's events.")
@click.option("--type", "types", multiple=True, help="Only events of this type.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@config_option
@data_option
def tail(
    lines: int,
    follow: bool,
    stream: str | None,
    types: tuple[str, ...],
    as_json: bool,
    config_path: Path | None,
    data: Path | None,
) -> None:
    """Print the last events of the log (-f: and follow new ones)."""
    data_dir = Target(config_path, data).existing()
    out = Output()
    run_trio(_tail, data_dir, lines, follow, stream, list(types) or None, as_json, out)


async def _tail(
    data_dir: Path,
    n: int,
    follow: bool,
    stream: str | None,
    types: list[str] | None,
    as_json: bool,
    out: Output,
) -> None:
    width = out.out.width

    def show(e: Any) -> None:
        if as_json:
            out.json_line(event_json(e))
        else:
            out.line(event_line(e, width))

    async with open_cli_log(data_dir) as log:
        head = log.head
        if stream is not None or types is not None:
            last = await admin.last_events(log, n, stream=stream, types=types)
        else:
            last = [e async for e in log.read(after=max(0, head - n))] if n else []
        for e in last:
            show(e)
        if follow:
            after = max([head, *(e.position for e in last)])
            async for e in log.subscribe(after=after, stream=stream, types=types):
                show(e)


@log.command()
@click.argument("query")
@click.option("--literal", is_flag=True, help="Search these words, not FTS5 syntax.")
@click.option(
    "--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True
)
@json_option
@config_option
@data_option
def search(
    query: str,
    literal: bool,
    limit: int,
    as_json: bool,
    config_path: Path | None,
    data: Path | None,
) -> None:
    """Full-text search over the log's events (FTS5 syntax unless --literal)."""
    data_dir = Target(config_path, data).existing()
    try:
        hits = run_trio(admin.search_log, data_dir, query, limit, literal)
    except SearchQueryError as e:
        raise click.ClickException(
            str(e).replace("pass literal=True", "pass --literal")
        ) from None
    out = Output()
    if as_json:
        out.json(
            [
                {"rank": h.rank, "snippet": h.snippet, "event": event_json(h.event)}
                for h in hits
            ]
        )
        return
    if not hits:
        out.note("no match")
        return
    width = out.out.width
    for hit in hits:
        ev = hit.event
        head = f"{ev.position:>8}  {when(ev.ts)}  {ev.stream}  {ev.type}  "
        out.line(head + compact(hit.snippet, max(20, width - len(head))))


# -- replay, projections, verify -------------------------------------------------------


@cli.command()
@click.option(
    "--into",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A directory for the fresh databases (must not hold them yet).",
)
@json_option
@config_option
@data_option
def replay(
    into: Path, as_json: bool, config_path: Path | None, data: Path | None
) -> None:
    """Replay the whole history into fresh projection databases.

    Builds INTO/logs.db (workflow_runs) and INTO/senses/<group>-senses.db for
    each sense group of the config (else each one found in the data dir).
    """
    target = Target(config_path, data)
    out = Output()
    result = run_trio(admin.replay, target.existing(), target.config, into, out)
    if as_json:
        out.json(result)
    else:
        out.line(
            f"replayed positions 1-{result['position']} into {into}: "
            + ", ".join(
                f"{db} ({', '.join(ps)})" for db, ps in result["databases"].items()
            )
        )


@cli.group(cls=NerveGroup)
def projections() -> None:
    """Inspect and rebuild projections (read models)."""


@projections.command("list")
@json_option
@config_option
@data_option
def projections_list(
    as_json: bool, config_path: Path | None, data: Path | None
) -> None:
    """Each projection's database, checkpoint and lag behind the log."""
    target = Target(config_path, data)
    rows = run_trio(admin.projection_status, target.existing(), target.config)
    out = Output()
    if as_json:
        out.json(rows)
        return
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for col in ("projection", "database", "version", "position", "lag"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["database"],
            str(r["version"] if r["version"] is not None else "-"),
            str(r["position"] if r["position"] is not None else "-"),
            str(r["lag"] if r["lag"] is not None else "not built"),
        )
    out.print(table)


@projections.command("rebuild")
@click.argument("name")
@config_option
@data_option
def projections_rebuild(name: str, config_path: Path | None, data: Path | None) -> None:
    """Rebuild projection NAME from the whole history, then swap it in.

    NAME is workflow_runs, or a sense group (signals:GROUP or GROUP).
    """
    target = Target(config_path, data)
    out = Output()
    rebuilt, position = run_trio(
        admin.rebuild, target.existing(), target.config, name, out
    )
    out.line(f"rebuilt {rebuilt} up to position {position}")


@cli.command()
@json_option
@config_option
@data_option
def verify(as_json: bool, config_path: Path | None, data: Path | None) -> None:
    """Check the log's hash chain and compare projections with a replay.

    Exits 1 if the chain is broken or a projection differs from the history.
    """
    target = Target(config_path, data)
    out = Output()
    report = run_trio(admin.verify, target.existing(), target.config, out)
    if as_json:
        out.json(report)
    else:
        for line in report["lines"]:
            out.line(line)
    if not report["ok"]:
        sys.exit(1)


# -- archive, backup -------------------------------------------------------------------


def _duration(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is None:
        return None
    try:
        return timedelta(seconds=parse_duration(value, allow_zero=True))
    except ValueError as e:
        raise click.BadParameter(f"{e}, got {value!r}") from None


@cli.command()
@click.option(
    "--older-than",
    callback=_duration,
    help="Archive whole UTC days older than this (default: the config's "
    "archive.retention, else 30d).",
)
@json_option
@config_option
@data_option
def archive(
    older_than: timedelta | None,
    as_json: bool,
    config_path: Path | None,
    data: Path | None,
) -> None:
    """Move old days of the log to archive/logs/YYYY-MM-DD.jsonl files.

    Reading and replaying still include them: the archive is the log's cold
    tier, not a deletion.
    """
    target = Target(config_path, data)
    if older_than is None:
        older_than = (
            target.config.archive.retention if target.config else DEFAULT_RETENTION
        )
    out = Output()
    days = run_trio(admin.archive, target.existing(), older_than, out)
    if as_json:
        out.json(days)
    elif not days:
        out.note(
            "nothing to archive (no whole UTC day older than "
            f"{format_duration(older_than)})"
        )
    else:
        for d in days:
            out.line(
                f"archived {d.day}: {d.count} events (positions {d.first}-{d.last})"
            )


@cli.command("prune-blobs")
@click.option(
    "--older-than",
    callback=_duration,
    default="1h",
    show_default=True,
    help="Keep blobs put more recently than this (an event may be on its way).",
)
@json_option
@config_option
@data_option
def prune_blobs(
    older_than: timedelta, as_json: bool, config_path: Path | None, data: Path | None
) -> None:
    """Delete stored blobs that no event names (left by refused appends).

    A blob is kept when any event, hot or archived, refers to it by its
    digest, or when it was put within --older-than.
    """
    data_dir = Target(config_path, data).existing()
    out = Output()
    removed = run_trio(admin.prune_blobs, data_dir, older_than)
    if as_json:
        out.json(removed)
    elif not removed:
        out.note("no blob to prune")
    else:
        for digest in removed:
            out.line(f"pruned {digest}")
        out.line(f"{len(removed)} blobs pruned")


@cli.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@json_option
@config_option
@data_option
def backup(
    dest: Path, as_json: bool, config_path: Path | None, data: Path | None
) -> None:
    """Copy the log, its blobs and archive files into the new directory DEST.

    The copy is one consistent snapshot, taken while the kernel may run.
    Projection databases are not copied: they are rebuilt from the log.
    """
    data_dir = Target(config_path, data).existing()
    out = Output()
    result = run_trio(admin.backup, data_dir, dest)
    if as_json:
        out.json(result)
    else:
        out.line(
            f"backed up positions 1-{result['head']} to {result['path']} "
            f"({result['blobs']} blobs, {result['archive_days']} archived days)"
        )


# -- doctor, stats --------------------------------------------------------------------


@cli.command()
@json_option
@config_option
@data_option
def doctor(as_json: bool, config_path: Path | None, data: Path | None) -> None:
    """Check the data directory's health; exits 1 on a problem.

    Integrity checks, WAL and synchronous settings, schema versions,
    projection lag, blob digests and archive checksums. It only reads.
    """
    target = Target(config_path, data)
    from . import _cli_doctor

    checks = _cli_doctor.doctor(target.existing())
    out = Output()
    if as_json:
        out.json(
            {"ok": _cli_doctor.healthy(checks), "checks": [c.as_dict() for c in checks]}
        )
    else:
        _cli_doctor.print_checks(out, checks)
    if not _cli_doctor.healthy(checks):
        sys.exit(1)


@cli.command()
@json_option
@config_option
@data_option
def stats(as_json: bool, config_path: Path | None, data: Path | None) -> None:
    """Counts: events by type, runs by workflow and status, storage, lag."""
    target = Target(config_path, data)
    from . import _cli_doctor

    report = _cli_doctor.stats(target.existing())
    out = Output()
    if as_json:
        out.json(report)
    else:
        _cli_doctor.print_stats(out, report)


def _add_knowledge_commands() -> None:
    """`nerve knowledge ...`, when nerve.knowledge is there."""
    try:
        module = importlib.import_module("nerve._cli_knowledge")
    except ImportError:  # pragma: no cover - nerve.knowledge not there
        return
    cli.add_command(module.knowledge)


_add_knowledge_commands()

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
