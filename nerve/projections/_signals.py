"""``_signals``: the recent signals of one sense group, in its own database.

Each sense group has ``senses/<group>-senses.db`` (the seed's
``system-senses.db``). The projection keeps, per sense, the last ``keep_last``
signals and/or those younger than ``max_age``. Age is measured against the
newest signal's timestamp, never the wall clock, so a replay of the same
history ends with the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import apsw
import attrs
import orjson

from nerve.events import RecordedEvent
from nerve.events._vocabulary import SenseSignal

from ._base import Projection


@attrs.frozen
class SignalRecord:
    """A row of ``_signals``."""

    position: int
    sense: str
    value: Any
    ts: int


def signals_database(group: str) -> str:
    """The database file (relative to the data dir) of a sense group."""
    return f"senses/{group}-senses.db"


class Signals(Projection):
    """The ``_signals`` table of one sense group.

    Args:
        group: the sense group.
        keep_last: keep at most this many signals per sense (None: no limit).
        max_age: drop signals older than this, relative to the group's newest
            signal (None: no limit).
    """

    version = 1
    types = frozenset({"sense.signal"})
    tables = {"_signals": ("position",)}

    def __init__(
        self,
        group: str,
        *,
        keep_last: int | None = 1000,
        max_age: timedelta | None = None,
    ) -> None:
        if not group or "/" in group or group.startswith("."):
            raise ValueError(f"invalid sense group name {group!r}")
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last!r}")
        self.group = group
        self.name = f"signals:{group}"
        self.database = signals_database(group)
        self.keep_last = keep_last
        self.max_age_ms = int(max_age.total_seconds() * 1000) if max_age else None

    def setup(self, conn: apsw.Connection) -> None:
        conn.execute(
            """
            CREATE TABLE _signals (
                position INTEGER PRIMARY KEY,
                sense    TEXT    NOT NULL,
                value    TEXT    NOT NULL,
                ts       INTEGER NOT NULL
            );
            CREATE INDEX _signals_by_sense ON _signals (sense, position);
            """
        )

    def apply(self, conn: apsw.Connection, events: Sequence[RecordedEvent]) -> None:
        rows = [
            (e.position, e.data.sense, orjson.dumps(e.data.value).decode(), e.ts)
            for e in events
            if isinstance(e.data, SenseSignal) and e.data.group == self.group
        ]
        if not rows:
            return
        conn.executemany("INSERT INTO _signals VALUES (?, ?, ?, ?)", rows)
        if self.keep_last is not None:
            for sense in {r[1] for r in rows}:
                conn.execute(
                    "DELETE FROM _signals WHERE sense = ?1 AND position <= ("
                    "SELECT position FROM _signals WHERE sense = ?1 "
                    "ORDER BY position DESC LIMIT 1 OFFSET ?2)",
                    (sense, self.keep_last),
                )
        if self.max_age_ms is not None:
            newest = max(r[3] for r in rows)
            conn.execute(
                "DELETE FROM _signals WHERE ts < ?", (newest - self.max_age_ms,)
            )


def read_signals(
    conn: apsw.Connection, sense: str | None = None, n: int = 10
) -> list[SignalRecord]:
    """The newest ``n`` signals (of one sense, or all), oldest first."""
    if sense is None:
        rows = conn.execute(
            "SELECT position, sense, value, ts FROM _signals "
            "ORDER BY position DESC LIMIT ?",
            (n,),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT position, sense, value, ts FROM _signals WHERE sense = ? "
            "ORDER BY position DESC LIMIT ?",
            (sense, n),
        ).fetchall()
    return [SignalRecord(p, s, orjson.loads(v), t) for p, s, v, t in reversed(rows)]
