"""What the `nerve` command prints: rich tables on a terminal, plain text in
pipes, JSON for scripts, and progress bars that only a terminal sees."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs
import orjson
from cattrs.preconf.orjson import make_converter
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from nerve.events import RecordedEvent
from nerve.projections import RunRecord

STATUS_STYLES: Final = {
    "queued": "cyan",
    "started": "yellow",
    "completed": "green",
    "failed": "red",
    "crashed": "magenta",
    "interrupted": "bright_red",
    "dropped": "bright_black",
}

_converter = make_converter()


def _console(*, stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    # In a pipe rich assumes 80 columns and folds tables; be wider there
    # (COLUMNS, when set, still wins).
    width = None if terminal or os.environ.get("COLUMNS") else 160
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


class Output:
    """The consoles of one command (stdout for results, stderr for the rest)."""

    def __init__(self) -> None:
        self.out = _console(stderr=False)
        self.err = _console(stderr=True)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.out.print(*objects, **kwargs)

    def line(self, text: str) -> None:
        """Print text as is (no markup, never folded), on stdout."""
        self.out.print(text, markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        """A remark on stderr (plain text)."""
        self.err.print(text, markup=False, highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(text)}")

    def json(self, value: Any) -> None:
        """Print ``value`` as indented JSON on stdout (bypassing rich)."""
        data = orjson.dumps(
            jsonable(value), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
        )
        sys.stdout.write(data.decode() + "\n")
        sys.stdout.flush()

    def json_line(self, value: Any) -> None:
        """Print ``value`` as one line of JSON (JSON Lines) on stdout."""
        data = orjson.dumps(jsonable(value), option=orjson.OPT_NON_STR_KEYS)
        sys.stdout.write(data.decode() + "\n")
        sys.stdout.flush()

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[ProgressCallback]:
        """A progress bar on stderr if it is a terminal; silent otherwise.

        Yields a ``progress(done, total)`` callback, the shape nerve's long
        operations (`replay`, `rebuild`...) report with.
        """
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.err,
            transient=True,
            disable=not self.err.is_terminal,
        )
        with bar:
            task = bar.add_task(description, total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=max(total, 1))

            yield update


ProgressCallback = Any  # Callable[[int, int], None]; Any keeps rich's types local


def jsonable(value: Any) -> Any:
    """Plain JSON-able data from events' attrs classes, records, paths..."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if attrs.has(type(value)):
        return {k: jsonable(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return _converter.unstructure(value)


def compact(value: Any, limit: int = 120) -> str:
    """One line of JSON for a table cell, cut at ``limit`` characters."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dumps(value: Any) -> str:
    return orjson.dumps(jsonable(value), option=orjson.OPT_NON_STR_KEYS).decode()


def when(ts_ms: int | None, *, date: bool = True) -> str:
    """A timestamp (ms since the epoch) in local time."""
    if ts_ms is None:
        return ""
    t = dt.datetime.fromtimestamp(ts_ms / 1000).astimezone()
    return t.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S.%f")[
        : None if date else -3
    ]


def iso(ts_ms: int | None) -> str | None:
    if ts_ms is None:
        return None
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC).isoformat(
        timespec="milliseconds"
    )


def duration(start_ms: int | None, end_ms: int | None) -> str:
    if start_ms is None or end_ms is None:
        return ""
    seconds = (end_ms - start_ms) / 1000
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def format_duration(value: dt.timedelta) -> str:
    """``30d``, ``1h30m``, ``0s``: the config's own duration syntax."""
    ms = round(value.total_seconds() * 1000)
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    if ms:
        parts.append(f"{ms}ms")
    return "".join(parts) or "0s"


def status_text(status: str) -> str:
    return f"[{STATUS_STYLES.get(status, 'default')}]{status}[/]"


def runs_table(runs: list[RunRecord], title: str | None = None) -> Table:
    table = Table(title=title, show_edge=False, header_style="bold")
    # Run ids start with their time: keep them whole (the end tells them apart).
    table.add_column("run", no_wrap=True, min_width=28)
    for name in ("workflow", "status", "attempt", "queued", "took"):
        table.add_column(name, no_wrap=True)
    table.add_column("result / error", overflow="ellipsis", no_wrap=True)
    for r in runs:
        if r.status == "completed":
            outcome = escape(compact(r.result, 60))
        elif r.error_type:
            outcome = f"[red]{escape(r.error_type)}[/]: {escape(compact(r.error, 60))}"
        else:
            outcome = escape(compact(r.error, 60))
        table.add_row(
            r.run_id,
            escape(r.workflow),
            status_text(r.status),
            str(r.attempt),
            when(r.queued_at),
            duration(r.started_at, r.ended_at),
            outcome,
        )
    return table


def run_json(r: RunRecord) -> dict[str, Any]:
    data = jsonable(r)
    for key in ("queued_at", "started_at", "ended_at"):
        data[key] = iso(getattr(r, key))
    return data  # type: ignore[no-any-return]


def event_json(e: RecordedEvent) -> dict[str, Any]:
    return {
        "position": e.position,
        "stream": e.stream,
        "version": e.version,
        "type": e.type,
        "ts": iso(e.ts),
        "data": jsonable(e.data),
        "meta": jsonable(e.meta),
    }


def event_line(e: RecordedEvent, width: int) -> str:
    head = f"{e.position:>8}  {when(e.ts, date=False)}  {e.stream}  {e.type}  "
    return head + compact(e.data, max(20, width - len(head)))
