"""``workflow_runs``: one row per workflow run, kept inline in ``logs.db``.

Folded inside the append transaction, so a run's row and the event that moved
it always agree. Only the seed's transitions are legal; an event that would
make any other refuses its append (nothing of it is written)::

    queued  -> started | dropped
    started -> completed | failed | crashed | interrupted
    crashed -> started            (resumed)
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from typing import Any, Final

import apsw
import attrs
import orjson
from cattrs.preconf.orjson import make_converter

from nerve.events import Log, RecordedEvent, RefusedByProjection
from nerve.events._vocabulary import (
    ACTIVE_STATUSES,
    RUN_STATUS_OF_TYPE,
    TRANSITIONS,
    RunCrashed,
    RunDropped,
    RunFailed,
    RunInterrupted,
    RunQueued,
    RunStarted,
    StepJournaled,
    ThreadMessage,
    run_id_of,
    run_stream,
)

from ._base import Projection

_COLUMNS: Final = (
    "run_id, workflow, status, attempt, payload, result, error_type, error, "
    "queued_at, started_at, ended_at, seq, position"
)


@attrs.frozen
class RunRecord:
    """A row of ``workflow_runs``.

    Attributes:
        run_id: the run's id (its stream is ``run-<run_id>``).
        workflow: the workflow's name.
        status: queued, started, completed, failed, crashed, interrupted or
            dropped.
        attempt: how many times it started (0 while first queued).
        payload: the trigger's payload.
        result: what the run returned (completed runs).
        error_type: the exception's type (failed runs).
        error: the exception's message, or why it crashed, was interrupted or
            dropped.
        queued_at, started_at, ended_at: event timestamps (ms, UTC).
        seq: the position of its ``queued`` event: FIFO order.
        position: the position of its last lifecycle event.
    """

    run_id: str
    workflow: str
    status: str
    attempt: int
    payload: Any
    result: Any
    error_type: str | None
    error: str | None
    queued_at: int
    started_at: int | None
    ended_at: int | None
    seq: int
    position: int

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> RunRecord:
        r = list(row)
        r[4] = orjson.loads(r[4]) if r[4] is not None else None
        r[5] = orjson.loads(r[5]) if r[5] is not None else None
        return cls(*r)


class WorkflowRuns(Projection):
    """The ``workflow_runs`` read model (inline, in ``logs.db``)."""

    name = "workflow_runs"
    version = 1
    types = frozenset(RUN_STATUS_OF_TYPE)
    database = "logs.db"
    tables = {"workflow_runs": ("run_id",)}
    defer_indexes = True  # the fold reads rows by run_id (the primary key) only

    def setup(self, conn: apsw.Connection) -> None:
        conn.execute(
            """
            CREATE TABLE workflow_runs (
                run_id     TEXT PRIMARY KEY,
                workflow   TEXT    NOT NULL,
                status     TEXT    NOT NULL,
                attempt    INTEGER NOT NULL,
                payload    TEXT,
                result     TEXT,
                error_type TEXT,
                error      TEXT,
                queued_at  INTEGER NOT NULL,
                started_at INTEGER,
                ended_at   INTEGER,
                seq        INTEGER NOT NULL,
                position   INTEGER NOT NULL
            ) WITHOUT ROWID;
            -- "runs of workflow W in status S", oldest first
            CREATE INDEX workflow_runs_by_status
                ON workflow_runs (workflow, status, seq);
            -- active runs across workflows (crash recovery at start)
            CREATE INDEX workflow_runs_by_status_only ON workflow_runs (status, seq);
            """
        )

    def apply(self, conn: apsw.Connection, events: Sequence[RecordedEvent]) -> None:
        run_ids = []
        for e in events:
            run_id = run_id_of(e.stream)
            if run_id is None:
                raise RefusedByProjection(
                    f"{e.type} at position {e.position}: lifecycle events belong in "
                    f"a run stream ('run-<id>'), not {e.stream!r}"
                )
            run_ids.append(run_id)
        # A run whose first event here is its stream's first has no row yet:
        # only the others are looked up (in a kernel, most runs start in the
        # batch that queues them).
        seen: set[str] = set()
        known = []
        for run_id, e in zip(run_ids, events, strict=True):
            if run_id not in seen:
                seen.add(run_id)
                if e.version != 1:
                    known.append(run_id)
        rows = _load(conn, known) if known else {}
        for run_id, e in zip(run_ids, events, strict=True):
            rows[run_id] = _transition(rows.get(run_id), run_id, e)
        conn.executemany(_UPSERT, rows.values())


# An upsert, not INSERT OR REPLACE: a changed row is updated in place (its
# unchanged index entries stay) instead of deleted and inserted again.
_UPSERT: Final = (
    f"INSERT INTO workflow_runs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (run_id) DO UPDATE SET "
    + ", ".join(
        f"{c} = excluded.{c}"
        for c in (c.strip() for c in _COLUMNS.split(","))
        if c != "run_id"
    )
)


def _load(conn: apsw.Connection, run_ids: Sequence[str]) -> dict[str, Any]:
    """The current rows of these runs, one query per 500 (not one per event)."""
    unique = list(dict.fromkeys(run_ids))
    rows: dict[str, Any] = {}
    for i in range(0, len(unique), 500):
        chunk = unique[i : i + 500]
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM workflow_runs WHERE run_id IN "
            f"({','.join('?' * len(chunk))})",
            chunk,
        ):
            rows[row[0]] = list(row)
    return rows


# The codec's unstructuring (cattrs, orjson preset): an inline fold sees the
# event's data as appended (a tuple, a dict with int keys, bytes...), a replay
# sees it decoded from the stored JSON; both must give the same row.
_converter = make_converter()


def _dumps(value: Any) -> str | None:
    if value is None:
        return None
    if _plain(value):  # as decoded from JSON (every replay): no cattrs needed
        return orjson.dumps(value).decode()
    return orjson.dumps(_converter.unstructure(value)).decode()


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of JSON's own types only (str keys)."""
    cls = value.__class__
    if cls in _SCALARS:
        return True
    if cls is dict:
        return all(k.__class__ is str and _plain(v) for k, v in value.items())
    if cls is list:
        return all(_plain(v) for v in value)
    return False


def _transition(row: list[Any] | None, run_id: str, e: RecordedEvent) -> list[Any]:
    status = RUN_STATUS_OF_TYPE[e.type]
    current = row[2] if row is not None else None
    if status not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (it has ended)"
        what = f"is {current}" if current else "does not exist"
        raise RefusedByProjection(
            f"run {run_id!r} {what}: it cannot become {status} (position {e.position}, "
            f"{e.type}); from there it may become: {allowed}. Nothing was written."
        )
    data = e.data
    if row is None:
        assert isinstance(data, RunQueued)
        return [
            run_id, data.workflow, status, 0, _dumps(data.payload), None, None,
            None, e.ts, None, None, e.position, e.position,
        ]  # fmt: skip
    row[2] = status
    row[12] = e.position
    if isinstance(data, RunStarted):
        row[3] = data.attempt
        row[9] = e.ts
        row[6] = row[7] = row[10] = None
    else:
        row[10] = e.ts
        if isinstance(data, RunFailed):
            row[6], row[7] = data.error_type, data.message
        elif isinstance(data, RunCrashed | RunInterrupted | RunDropped):
            row[6], row[7] = None, data.reason
        else:
            row[5] = _dumps(getattr(data, "result", None))
    return row


class RunQueries:
    """Read the ``workflow_runs`` model and the threads of runs.

    Example:
        >>> runs = RunQueries(log)
        >>> await runs.list(workflow="greet", status="queued")
    """

    def __init__(self, log: Log) -> None:
        self.log = log

    async def list(
        self,
        *,
        workflow: str | None = None,
        status: str | Iterable[str] | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> builtins.list[RunRecord]:
        """Runs, oldest first, by workflow and/or status(es).

        ``limit`` keeps the oldest that many, or with ``newest`` the newest
        (still returned oldest first).
        """
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        if status is not None:
            statuses = [status] if isinstance(status, str) else [*status]
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            params.extend(statuses)
        sql = f"SELECT {_COLUMNS} FROM workflow_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC" if newest else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)

        def q(conn: apsw.Connection) -> builtins.list[RunRecord]:
            rows = [RunRecord.from_row(r) for r in conn.execute(sql, params)]
            return rows[::-1] if newest else rows

        return await self.log._read(q)

    async def active(self, workflow: str | None = None) -> builtins.list[RunRecord]:
        """Runs queued or started, oldest first."""
        return await self.list(workflow=workflow, status=sorted(ACTIVE_STATUSES))

    async def get(self, run_id: str) -> RunRecord | None:
        """One run, or None."""

        def q(conn: apsw.Connection) -> RunRecord | None:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM workflow_runs WHERE run_id = ?", (run_id,)
            ).fetchall()
            return RunRecord.from_row(rows[0]) if rows else None

        return await self.log._read(q)

    async def messages(self, run_id: str) -> builtins.list[ThreadMessage]:
        """The run's thread messages, in order."""
        return [
            e.data
            async for e in self.log.read(
                stream=run_stream(run_id), types=["workflow.message"]
            )
        ]

    async def steps(self, run_id: str) -> builtins.list[StepJournaled]:
        """The run's journaled steps, in order."""
        return [
            e.data
            async for e in self.log.read(
                stream=run_stream(run_id), types=["workflow.step"]
            )
        ]
