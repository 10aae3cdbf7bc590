"""`rebuild`: refold one projection from the whole history and swap it in."""

from __future__ import annotations

from pathlib import Path

import trio

from nerve.events import Log

from ._base import Progress, Projection, open_projection_db
from ._build import build, copy_in, temporary_db
from ._inline import rebuild_inline
from ._runner import ProjectionRunner


async def rebuild(
    log: Log,
    projection: Projection,
    *,
    runner: ProjectionRunner | None = None,
    progress: Progress | None = None,
    data_dir: Path | None = None,
) -> None:
    """Rebuild ``projection`` from position 0 while appends continue.

    Fresh tables are filled from the whole history (archived days included),
    then swapped in, in one transaction: readers never see a half-built model.

    Args:
        log: the log.
        projection: the read model to rebuild.
        runner: the runner keeping it, if one runs in this process (it pauses
            while the swap happens, then follows on from the new checkpoint).
        progress: called with (position done, target position).
        data_dir: where its database lives (default: the log's data dir).
    """
    if projection.database == "logs.db":
        await rebuild_inline(log, projection, progress=progress)
    elif runner is not None:
        await runner.rebuild(progress=progress)
    else:
        path = (data_dir or log.data_dir) / projection.database
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary_db(path.parent, projection.name) as fresh:
            done = await build(log, {fresh: [projection]}, progress=progress)
            await trio.to_thread.run_sync(_swap_file, path, fresh, projection, done)


def _swap_file(path: Path, fresh: Path, projection: Projection, position: int) -> None:
    conn = open_projection_db(path, [projection])
    try:
        conn.execute("ATTACH DATABASE ? AS fresh", (str(fresh),))
        conn.execute("BEGIN IMMEDIATE")
        try:
            copy_in(conn, [projection], position)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            pass
        conn.execute("DETACH DATABASE fresh")
    finally:
        conn.close()
