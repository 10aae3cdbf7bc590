"""`replay` history into fresh projection databases; `verify` live ones.

``replay(log, projections, into=DIR)`` folds the whole history (archived days
included) into new databases under DIR, with the same file names as in the
data directory. ``verify`` builds such a replay up to each live projection's
checkpoint and compares the two row by row.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw
import attrs
import trio

from nerve.events import Log
from nerve.events._sqlite import open_connection

from ._base import Checkpoint, Progress, Projection, read_checkpoint
from ._build import build


def _by_database(projections: Sequence[Projection]) -> dict[str, list[Projection]]:
    names = [p.name for p in projections]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"projection names must be unique, repeated: {sorted(dupes)}")
    groups: dict[str, list[Projection]] = defaultdict(list)
    for p in projections:
        groups[p.database].append(p)
    return groups


async def replay(
    log: Log,
    projections: Sequence[Projection],
    into: str | os.PathLike[str],
    *,
    upto: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Fold the history into fresh projection databases under ``into``.

    Args:
        log: the log to replay.
        projections: the read models to build.
        into: a directory; each projection's database is created at the same
            relative path as in the data directory (it must not exist yet).
        upto: the last position to fold (default: the head now).
        progress: called with (position done, target position) as it goes.

    Returns:
        The position the new databases are complete up to.
    """
    root = Path(into)
    targets = {root / db: ps for db, ps in _by_database(projections).items()}
    for path in targets:
        if path.exists():
            raise FileExistsError(f"{path} exists: replay builds new databases only")
        path.parent.mkdir(parents=True, exist_ok=True)
    return await build(log, targets, upto=upto, progress=progress)


@attrs.frozen
class Difference:
    """One row where a live read model and a fresh replay disagree.

    Attributes:
        projection: the projection's name.
        table: the table (or "checkpoint").
        key: the row's key columns.
        live: the live row (None: missing from the live model).
        replayed: the replayed row (None: the live model has an extra row).
    """

    projection: str
    table: str
    key: tuple[Any, ...]
    live: tuple[Any, ...] | None
    replayed: tuple[Any, ...] | None

    def __str__(self) -> str:
        if self.live is None:
            what = f"missing from the live model (replay has {self.replayed})"
        elif self.replayed is None:
            what = f"not in the replay (live has {self.live})"
        else:
            what = f"live {self.live} != replayed {self.replayed}"
        return f"{self.projection}.{self.table} {self.key}: {what}"


async def verify(
    log: Log,
    projections: Sequence[Projection],
    *,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[Difference]:
    """Compare each live projection with a fresh replay up to its checkpoint.

    The live model is read in one snapshot, so appends may continue meanwhile.

    Returns:
        Every difference found (empty: the live models are exactly what the
        history says they should be).
    """
    root = Path(data_dir) if data_dir is not None else log.data_dir
    differences: list[Difference] = []
    for p in projections:
        differences.extend(await _verify_one(log, p, root / p.database))
    return differences


async def _verify_one(log: Log, p: Projection, live_path: Path) -> list[Difference]:
    conn = await trio.to_thread.run_sync(
        lambda: open_connection(live_path, synchronous="NORMAL", create=False)
    )
    try:
        await trio.to_thread.run_sync(p.prepare, conn)

        def snapshot() -> Checkpoint | None:
            conn.execute("BEGIN")
            return read_checkpoint(conn, p.name)

        checkpoint = await trio.to_thread.run_sync(snapshot)
        if checkpoint is None:
            return [Difference(p.name, "checkpoint", (), None, ("absent",))]
        if checkpoint.version != p.version:
            return [
                Difference(
                    p.name, "checkpoint", ("version",),
                    (checkpoint.version,), (p.version,),
                )
            ]  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="nerve-verify-") as tmp:
            fresh_path = Path(tmp) / "fresh.db"
            await build(log, {fresh_path: [p]}, upto=checkpoint.position)

            def compare() -> list[Difference]:
                fresh = open_connection(fresh_path, synchronous="OFF", create=False)
                try:
                    p.prepare(fresh)
                    out: list[Difference] = []
                    for table, keys in p.tables.items():
                        out.extend(_diff_table(p.name, table, keys, conn, fresh))
                    return out
                finally:
                    fresh.close()

            return await trio.to_thread.run_sync(compare)
    finally:

        def close() -> None:
            try:
                conn.execute("COMMIT")
            except apsw.Error:
                pass
            conn.close()

        await trio.to_thread.run_sync(close)


def _rows(
    conn: apsw.Connection, table: str, keys: Sequence[str]
) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    order = ", ".join(f'"{k}"' for k in keys)
    # Not the cursor's description: apsw has none for a query that returned
    # no rows (an empty table).
    columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
    cursor = conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}')
    return columns, (tuple(r) for r in cursor)


def _diff_table(
    name: str,
    table: str,
    keys: Sequence[str],
    live: apsw.Connection,
    fresh: apsw.Connection,
) -> Iterator[Difference]:
    """Merge-join both tables on their key columns and yield the differences."""
    columns, live_rows = _rows(live, table, keys)
    _, fresh_rows = _rows(fresh, table, keys)
    index = [columns.index(k) for k in keys]

    def key(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(row[i] for i in index)

    a = next(live_rows, None)
    b = next(fresh_rows, None)
    while a is not None or b is not None:
        if b is None or (a is not None and key(a) < key(b)):
            assert a is not None
            yield Difference(name, table, key(a), a, None)
            a = next(live_rows, None)
        elif a is None or key(b) < key(a):
            yield Difference(name, table, key(b), None, b)
            b = next(fresh_rows, None)
        else:
            if a != b:
                yield Difference(name, table, key(a), a, b)
            a = next(live_rows, None)
            b = next(fresh_rows, None)
