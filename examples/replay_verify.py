"""Replay the history into fresh projections, and verify the live ones.

    python examples/replay_verify.py [DATA_DIR]

A kernel makes some history: workflow runs and sense signals. On a new data
directory, a first session runs with its clock two days back, so that
`Log.archive` has a whole old day to move to DATA_DIR/archive/logs/. Then
the script replays the whole history (archived days included) into fresh
databases in a temporary directory, compares them with the live
``workflow_runs`` and ``_signals`` tables, and checks the log's hash chain:
the read models are exactly what the history says. `nerve replay --into DIR`
and `nerve verify` do the same from the command line.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import apsw
import trio

import nerve
from nerve.projections import Signals, WorkflowRuns, replay, verify

app = nerve.App()
DAY = 86_400.0


@app.workflow("tally", concurrency=4)
async def tally(run: nerve.Run) -> int:
    numbers: list[int] = run.payload["numbers"]
    total: int = await run.step("sum", sum, numbers)
    await run.say("assistant", f"the total is {total}")
    return total


@app.sense("demo", every=0.05)
async def ticks(sense: nerve.Sense) -> int:
    return sense.computed  # 0, 1, 2...: how many times it has computed


async def session(data_dir: str, clock_offset: float) -> None:
    """One kernel session: five runs, and a few signals."""
    async with nerve.open_kernel(
        app, data_dir, clock=lambda: time.time() + clock_offset
    ) as kernel:
        start = kernel.log.head
        handles = [
            await kernel.trigger("tally", {"numbers": list(range(i + 2))})
            for i in range(5)
        ]
        for h in handles:
            await h.wait()
        signals = 0
        async for e in kernel.log.subscribe(after=start, types=["sense.signal"]):
            signals += 1
            if signals == 3:
                # Until the async _signals projection has folded them too.
                await kernel.projections["demo"].wait_for(e.position)
                break


def count(path: Path, table: str) -> int:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
    finally:
        conn.close()


async def main(data_dir: str) -> None:
    new = not await (trio.Path(data_dir) / "logs.db").exists()
    if new:
        await session(data_dir, clock_offset=-2 * DAY)  # two days ago
    await session(data_dir, clock_offset=0.0)

    # The kernel keeps each group's _signals with the keep_last of its senses.
    projections = [WorkflowRuns(), Signals("demo", keep_last=1000)]
    async with nerve.open_log(data_dir) as log:
        moved = await log.archive(timedelta(days=1))
        for day in moved:
            positions = f"positions {day.first}-{day.last}"
            print(f"archived {day.day}: {day.count} events, {positions}")
        archived = await log.archived_days()
        print(f"the log: positions 1-{log.head}, {len(archived)} archived days")

        with tempfile.TemporaryDirectory(prefix="nerve-replay-") as tmp:
            upto = await replay(log, projections, into=tmp)
            fresh, live = Path(tmp), Path(data_dir)
            print(f"replayed positions 1-{upto} into {tmp}:")
            for db, table in (
                ("logs.db", "workflow_runs"),
                ("senses/demo-senses.db", "_signals"),
            ):
                print(
                    f"  {table}: {count(fresh / db, table)} rows replayed, "
                    f"{count(live / db, table)} live"
                )

        differences = await verify(log, projections)
        print(
            "verify: the live projections match a replay"
            if not differences
            else f"verify: {len(differences)} differences: {differences[:3]}"
        )
        broken = await log.verify()
        print(
            "hash chain: intact"
            if broken is None
            else f"hash chain: broken at {broken}"
        )
        if differences or broken is not None:
            sys.exit(1)


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "data")
