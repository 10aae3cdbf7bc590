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
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import apsw
import attrs
import orjson
from cattrs.preconf.orjson import make_converter

from nerve.events import Log, RecordedEvent, RefusedByProjection
from nerve.events._vocabulary import (
    ACTIVE_STATUSES,
    COMPLETED,
    CRASHED,
    DROPPED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUN_STATUS_OF_TYPE,
    STARTED,
    TERMINAL_STATUSES,
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

from ._base import Projection, archived_through

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

    def __init__(self) -> None:
        self._rows: dict[str, list[Any]] = {}
        """The rows of active runs as last written, on ``_rows_conn``: a
        run's next event needs no lookup (a run's three events go in three
        batches). Updated once a fold succeeds; the log's writer calls
        `forget` whenever a write may have been undone."""
        self._rows_conn: apsw.Connection | None = None
        self._flying: list[dict[str, list[Any]]] = []
        """Rows staged for flights being written (`stage`), oldest first."""
        self._staging: dict[str, list[Any]] = {}
        """Rows staged for the next flight."""

    def forget(self) -> None:
        self._rows.clear()
        self._staging.clear()
        self._flying.clear()

    # -- pipelined appends (see `InlineProjection.flight_sql`) ------------------------

    def flight_sql(self, each: str) -> str:
        return _FLIGHT_UPSERT.format(each=each)

    def stage(self, events: Sequence[RecordedEvent], reader: apsw.Connection) -> bool:
        """`apply`'s fold for a flight: from the rows this flight, the flight
        being written or earlier batches wrote, and the committed rows of
        other runs, read through ``reader``. False (staging nothing) for a
        refused transition: the classic way (`apply`) refuses it."""
        try:
            rows = _fold_runs(events, self._staged_row, reader)
        except (RefusedByProjection, apsw.Error):
            return False
        self._staging.update(rows)
        return True

    def _staged_row(self, run_id: str) -> list[Any] | None:
        """A run's row as the flights staged so far leave it."""
        row: list[Any] | None = self._staging.get(run_id)
        if row is not None:
            return row
        for layer in reversed(self._flying):
            row = layer.get(run_id)
            if row is not None:
                return row
        return self._rows.get(run_id)

    def discard(self) -> None:
        self._staging = {}

    def seal(self) -> list[Any]:
        sealed = self._staging
        self._flying.append(sealed)
        self._staging = {}
        return list(sealed.values())

    def landed(self, ok: bool) -> None:
        if not ok:
            self.forget()
            return
        if not self._flying:
            return  # forgotten meanwhile
        _remember(self._rows, self._flying.pop(0))

    def apply(self, conn: apsw.Connection, events: Sequence[RecordedEvent]) -> None:
        if conn is not self._rows_conn:
            self._rows.clear()
            self._rows_conn = conn
        rows = _fold_runs(events, self._rows.get, conn)
        conn.executemany(_UPSERT, rows.values())
        _remember(self._rows, rows)

    def bulk_fold(self, conn: apsw.Connection, source: str, upto: int) -> bool:
        """The whole history in one query: each run's row from its queued,
        last started, completed and last events, found by position.

        Only for histories the event-by-event fold would take as they are:
        nothing archived, every lifecycle event in a run stream, stored
        inline at the vocabulary's version with the fields the fold reads, and
        every run's transitions legal (else it is folded event by event, which
        skips refused events with a warning). Same row values as that fold,
        byte for byte: JSON values are cut out of the stored (orjson) text,
        which is what re-encoding the decoded values gives.
        """
        if archived_through(conn, source) > 0:
            return False
        conn.create_scalar_function("nerve_unfit", _unfit, 0)
        try:
            conn.execute(_BULK_INSERT.format(src=source), (upto,))
        except _Unfit:
            return False  # the failed statement wrote nothing
        except apsw.SQLError:  # "malformed JSON": the event-by-event fold names it
            return False
        return True


# -- the fold in SQL (fresh builds) ---------------------------------------------

_CODE_OF_STATUS: Final = {
    QUEUED: "Q",
    STARTED: "S",
    COMPLETED: "C",
    FAILED: "F",
    CRASHED: "X",
    INTERRUPTED: "I",
    DROPPED: "D",
}


def _legal_sql(codes: str) -> str:
    """SQL: whether a run's statuses, in order (one code of `_CODE_OF_STATUS`
    each, in the string ``codes``), are legal moves (`TRANSITIONS`).

    The legal strings are ``Q``, ``QD`` and ``QS (XS)* [CFIX]?``: after
    ``QS``, an even-length prefix that is nothing but ``XS`` pairs (removing
    every ``XS`` leaves nothing), then at most one ending. Tested against a
    walk of `TRANSITIONS` for every string of 1 to 7 codes.
    """
    rest = f"substr({codes}, 3)"
    pairs = f"substr({rest}, 1, length({rest}) / 2 * 2)"
    return (
        f"({codes} IN ('Q', 'QD') OR (substr({codes}, 1, 2) = 'QS' "
        f"AND replace({pairs}, 'XS', '') = '' "
        f"AND (length({rest}) % 2 = 0 OR substr({codes}, -1) IN ('C', 'F', 'I', 'X'))))"
    )


class _Unfit(Exception):
    """Raised inside the bulk insert by a run it cannot fold: see `_READABLE`."""


def _unfit() -> None:
    raise _Unfit


def _sql_case(column: str, mapping: dict[str, str]) -> str:
    whens = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in mapping.items())
    return f"CASE {column} {whens} END"


def _json_value(row: str, key: str) -> str:
    """A JSON value of a stored payload as the fold stores it: its JSON text,
    or NULL for JSON null or a missing key."""
    return f"nullif({row}.payload -> '$.{key}', 'null')"


_Q, _S, _C = "workflow.run.queued", "workflow.run.started", "workflow.run.completed"
_F = "workflow.run.failed"
_REASONED = ("workflow.run.crashed", "workflow.run.interrupted", "workflow.run.dropped")
_IN_TYPES: Final = ", ".join(f"'{t}'" for t in RUN_STATUS_OF_TYPE)


def _stored(row: str) -> str:
    """SQL: event ``row`` is stored inline at the vocabulary's version (1)."""
    return f"{row}.payload IS NOT NULL AND {row}.type_version = 1"


# Whether every event the fold reads holds what it reads of it, of the right
# JSON type (a missing field would take its default, an older version an
# upcast, a blob its file): if not, the event-by-event fold does it all. A
# field test on a payload that is not an object is NULL, so false.
_READABLE: Final = f"""
    substr(runs.stream, 1, 4) = 'run-'
    AND q.position IS NOT NULL AND {_stored("q")}
    AND json_type(q.payload, '$.workflow') = 'text'
    AND (s.position IS NULL OR ({_stored("s")}
        AND json_type(s.payload, '$.attempt') = 'integer'))
    AND (c.position IS NULL OR ({_stored("c")}
        AND json_type(c.payload) = 'object'))
    AND (l.type IN ('{_Q}', '{_S}', '{_C}') OR ({_stored("l")} AND CASE l.type
        WHEN '{_F}' THEN json_type(l.payload, '$.error_type') = 'text'
            AND json_type(l.payload, '$.message') = 'text'
        ELSE json_type(l.payload, '$.reason') = 'text' END))
"""


# Each run's row from four of its events, found by position: its queued, last
# started, completed and last event. A run the fold would not take as it is
# (`_READABLE`, `_legal_sql`) aborts the statement through ``nerve_unfit()``.
_BULK_INSERT: Final = f"""
INSERT INTO main.workflow_runs ({_COLUMNS})
WITH runs AS (
    SELECT stream,
        group_concat({_sql_case("type", {t: _CODE_OF_STATUS[s] for t, s in RUN_STATUS_OF_TYPE.items()})}, '' ORDER BY version) AS codes,
        max(position) AS last_pos,
        min(CASE WHEN type = '{_Q}' THEN position END) AS q_pos,
        max(CASE WHEN type = '{_S}' THEN position END) AS s_pos,
        max(CASE WHEN type = '{_C}' THEN position END) AS c_pos
    FROM {{src}}.logs
    WHERE type IN ({_IN_TYPES}) AND position <= ?
    GROUP BY stream
)
SELECT substr(runs.stream, 5),
    q.payload ->> '$.workflow',
    CASE WHEN {_READABLE} AND {_legal_sql("runs.codes")}
        THEN {_sql_case("l.type", dict(RUN_STATUS_OF_TYPE))}
        ELSE nerve_unfit() END,
    coalesce(s.payload ->> '$.attempt', 0),
    {_json_value("q", "payload")},
    {_json_value("c", "result")},
    CASE l.type WHEN '{_F}' THEN l.payload ->> '$.error_type' END,
    CASE WHEN l.type = '{_F}' THEN l.payload ->> '$.message'
         WHEN l.type IN {_REASONED} THEN l.payload ->> '$.reason' END,
    q.ts,
    s.ts,
    CASE WHEN l.type NOT IN ('{_Q}', '{_S}') THEN l.ts END,
    q.position,
    l.position
FROM runs
JOIN {{src}}.logs AS l ON l.position = runs.last_pos
LEFT JOIN {{src}}.logs AS q ON q.position = runs.q_pos
LEFT JOIN {{src}}.logs AS s ON s.position = runs.s_pos
LEFT JOIN {{src}}.logs AS c ON c.position = runs.c_pos
"""  # noqa: E501


_MAX_CACHED_ROWS: Final = 50_000
"""Rows of active runs `WorkflowRuns` keeps between batches (~10 MB at most)."""


# An upsert, not INSERT OR REPLACE: a changed row is updated in place (its
# unchanged index entries stay) instead of deleted and inserted again.
_ON_CONFLICT: Final = "ON CONFLICT (run_id) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}"
    for c in (c.strip() for c in _COLUMNS.split(","))
    if c != "run_id"
)
_UPSERT: Final = (
    f"INSERT INTO workflow_runs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
    + _ON_CONFLICT
)
# A flight's rows (`WorkflowRuns.seal`), read through {each}.
_FLIGHT_UPSERT: Final = (
    f"INSERT INTO main.workflow_runs ({_COLUMNS}) SELECT "
    + ", ".join(f"value->>{i}" for i in range(13))
    + " FROM {each} WHERE true "
    + _ON_CONFLICT
    + ";"
)


def _fold_runs(
    events: Sequence[RecordedEvent],
    row_of: Callable[[str], list[Any] | None],
    conn: apsw.Connection,
) -> dict[str, list[Any]]:
    """The rows of the runs ``events`` move, each event's transition applied
    in order, from a copy of each run's row as ``row_of`` gives it, or as
    read through ``conn``. A run whose first event here is its stream's
    first has no row yet: only the others are read (in a kernel, most runs
    start in the batch that queues them).

    Raises:
        RefusedByProjection: an event outside a run stream, or an illegal
            transition.
    """
    rows: dict[str, Any] = {}
    run_ids = []
    missing = []
    for e in events:
        run_id = run_id_of(e.stream)
        if run_id is None:
            raise RefusedByProjection(
                f"{e.type} at position {e.position}: lifecycle events belong in "
                f"a run stream ('run-<id>'), not {e.stream!r}"
            )
        run_ids.append(run_id)
        if run_id not in rows:
            row = row_of(run_id)  # copied: the caches change on success only
            rows[run_id] = None if row is None else row.copy()
            if row is None and e.version != 1:
                missing.append(run_id)
    if missing:
        rows.update(_load(conn, missing))
    for run_id, e in zip(run_ids, events, strict=True):
        rows[run_id] = _transition(rows[run_id], run_id, e)
    return rows


def _remember(cache: dict[str, list[Any]], rows: dict[str, list[Any]]) -> None:
    """Cache the rows of active runs as written; ended runs leave.

    Full (a backlog of queued runs), the cache takes no new run: queues
    start their oldest runs first, so the rows already cached are the ones
    needed next (the others are read when needed).
    """
    for run_id, row in rows.items():
        if row[2] in TERMINAL_STATUSES:
            cache.pop(run_id, None)
        elif run_id in cache or len(cache) < _MAX_CACHED_ROWS:
            cache[run_id] = row


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
