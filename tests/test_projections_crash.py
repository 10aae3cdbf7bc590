"""``kill -9`` during projection work: no event is missing or applied twice.

A child process (`projection_child.py`) catches up an async projection with a
large backlog, rebuilds a projection while appends continue, or appends with
``workflow_runs`` attached inline; the test SIGKILLs it at random moments
(after a random number of its progress lines, plus a random delay). After
each kill it checks, on what the child left on disk, that each projection's
rows are exactly the fold of the log up to its stored checkpoint, that the
inline model's checkpoint is the log's head, and finally that the live model
equals a fresh replay after restarting.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import trio
from _children import Lines, load_child, next_line, reaped

import nerve
from nerve import NewEvent
from nerve.projections import (
    ProjectionRunner,
    WorkflowRuns,
    attach_inline,
    rebuild,
    replay,
    verify,
)

ROUND_TIMEOUT = 30  # seconds: a safety net against hangs, not a timing assertion


child = load_child("projection_child")


async def run_and_kill(
    mode: str,
    data_dir: Path,
    seed: int,
    rng: random.Random,
    kill_after: int,
    counted: Callable[[str], bool],
    *,
    tmp: Path,
) -> list[str]:
    """Run the child until it printed ``kill_after`` lines that ``counted``
    accepts (or a line it cannot go past), wait a random moment, SIGKILL it.
    Returns every complete line it printed."""
    stderr_path = tmp / f"child-{mode}-{seed}.stderr"
    lines_seen: list[str] = []
    with stderr_path.open("wb") as err:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(child.__file__), mode, str(data_dir), str(seed)],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    async with reaped(proc):
        assert proc.stdout is not None
        lines = Lines(proc.stdout)
        with trio.fail_after(ROUND_TIMEOUT):
            n = 0
            while n < kill_after:
                line = await next_line(lines, proc, stderr_path)
                lines_seen.append(line)
                n += counted(line)
                if line.startswith("caught"):
                    break  # nothing more will come
            delay = rng.choice([0.0, rng.uniform(0, 0.005), rng.uniform(0, 0.03)])
            if delay:
                await trio.sleep(delay)
            proc.kill()
            while (line := await lines.next()) is not None:
                lines_seen.append(line)
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"child was not killed (status {proc.returncode}):\n" + stderr_path.read_text()
    )
    return lines_seen


def rebuild_moment(rng: random.Random, pages: int) -> tuple[int, Callable[[str], bool]]:
    """When to kill a rebuilding child: after a random page, or (to hit it
    around the swap) right after the last page of its first or second
    rebuild. Returns ``kill_after`` and the lines to count."""
    if rng.random() < 0.4:

        def last_page(line: str) -> bool:
            parts = line.split()
            return parts[0] == "progress" and parts[1] == parts[2]

        return rng.randint(1, 2), last_page
    return rng.randint(1, pages), lambda line: line.startswith("progress")


# -- what is on disk ------------------------------------------------------------


def db_query(path: Path, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(5000)
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def checkpoint(path: Path, name: str) -> tuple[int, int] | None:
    rows = db_query(
        path, "SELECT version, position FROM projections WHERE name = ?", (name,)
    )
    return rows[0] if rows else None


def log_head(data_dir: Path) -> int:
    return int(db_query(data_dir / "logs.db", "SELECT max(position) FROM logs")[0][0])


def group_signal_positions(data_dir: Path, group: str) -> list[int]:
    rows = db_query(
        data_dir / "logs.db",
        "SELECT position, payload FROM logs WHERE type = 'sense.signal' "
        "ORDER BY position",
    )
    return [p for p, payload in rows if f'"group":"{group}"' in payload]


def sense_db(data_dir: Path) -> Path:
    return data_dir / "senses" / f"{child.GROUP}-senses.db"


def check_signals_exactly_once(data_dir: Path) -> int:
    """The sense DB holds exactly the group's signals up to its checkpoint,
    each once (``keep_last=None``: every signal is a row). Returns the
    checkpoint position (0: no checkpoint yet)."""
    db = sense_db(data_dir)
    if not db.exists():
        return 0
    cp = checkpoint(db, f"signals:{child.GROUP}")
    if cp is None:
        return 0
    position = cp[1]
    rows = [r[0] for r in db_query(db, "SELECT position FROM _signals ORDER BY 1")]
    expected = [
        p for p in group_signal_positions(data_dir, child.GROUP) if p <= position
    ]
    assert len(rows) == len(set(rows))
    assert rows == expected, (
        f"checkpoint {position}: {len(rows)} rows, expected {len(expected)}; "
        f"missing {sorted(set(expected) - set(rows))[:5]}, "
        f"extra {sorted(set(rows) - set(expected))[:5]}"
    )
    return position


def check_runs_inline(data_dir: Path) -> None:
    """The inline model commits with the log: its checkpoint is the head."""
    cp = checkpoint(data_dir / "logs.db", "workflow_runs")
    assert cp == (1, log_head(data_dir)), (cp, log_head(data_dir))


def leftovers(data_dir: Path) -> list[Path]:
    return sorted(data_dir.rglob(".rebuild-*"))


async def final_check_runs(data_dir: Path, tmp: Path) -> None:
    async with nerve.open_log(data_dir) as log:
        check_runs_inline(data_dir)
        assert await verify(log, [WorkflowRuns()]) == []
        await attach_inline(log, WorkflowRuns())
        await log.append(
            "run-final", NewEvent("workflow.run.queued", {"workflow": "w"})
        )
        into = tmp / f"replay-{random.random()}"
        await replay(log, [WorkflowRuns()], into=into)
        live = db_query(data_dir / "logs.db", "SELECT * FROM workflow_runs ORDER BY 1")
        assert (
            db_query(into / "logs.db", "SELECT * FROM workflow_runs ORDER BY 1") == live
        )


async def final_check_signals(data_dir: Path, tmp: Path) -> None:
    async with nerve.open_log(data_dir) as log:
        runner = ProjectionRunner(log, child.sys_signals())
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            with trio.fail_after(ROUND_TIMEOUT):
                await runner.wait_for(log.head)
            nursery.cancel_scope.cancel()
        assert check_signals_exactly_once(data_dir) == log.head
        rows = db_query(sense_db(data_dir), "SELECT count(*) FROM _signals")[0][0]
        assert rows == len(group_signal_positions(data_dir, child.GROUP))
        assert await verify(log, [child.sys_signals()]) == []
        into = tmp / f"replay-{random.random()}"
        await replay(log, [child.sys_signals()], into=into)
        sql = "SELECT * FROM _signals ORDER BY position"
        assert db_query(into / f"senses/{child.GROUP}-senses.db", sql) == db_query(
            sense_db(data_dir), sql
        )


# -- building a backlog ------------------------------------------------------------


async def append_signals(log: nerve.Log, n: int, rng: random.Random) -> None:
    """``n`` signals, half of them of the projected group, in big appends."""
    per_append = 250
    for start in range(0, n, per_append):
        group = rng.choice([child.GROUP, child.OTHER_GROUP])
        events = [
            child.signal(group, f"s{i % 7}", i)
            for i in range(start, min(n, start + per_append))
        ]
        await log.append(nerve_stream(group), events)


def nerve_stream(group: str) -> str:
    return f"sense-{group}.backlog"


async def append_lifecycle(log: nerve.Log, runs: int, seed: int) -> None:
    """``runs`` runs, each written in one append (several transitions), some
    left queued, started or crashed for the children to move on."""
    rng = random.Random(seed)
    shapes = [
        ["queued"],
        ["queued", "started"],
        ["queued", "started", "completed"],
        ["queued", "started", "crashed"],
        ["queued", "started", "crashed", "started", "failed"],
        ["queued", "started", "interrupted"],
        ["queued", "dropped"],
    ]
    data = {
        "queued": child.RunQueued("wf", {"k": 1}),
        "completed": child.RunCompleted([1, 2]),
        "failed": child.RunFailed("E", "x"),
        "crashed": child.RunCrashed(),
        "interrupted": child.RunInterrupted(),
        "dropped": child.RunDropped(),
    }
    appends = []
    for i in range(runs):
        events = []
        attempt = 0
        for status in rng.choice(shapes):
            if status == "started":
                attempt += 1
                events.append(
                    NewEvent("workflow.run.started", child.RunStarted(attempt))
                )
            else:
                events.append(NewEvent(f"workflow.run.{status}", data[status]))
            if rng.random() < 0.2:
                events.append(child.message("user", i))
        appends.append((f"run-pre{i}", events))
    for start in range(0, len(appends), 500):
        async with trio.open_nursery() as nursery:
            for stream, events in appends[start : start + 500]:
                nursery.start_soon(log.append, stream, events)


# -- the tests -----------------------------------------------------------------------


async def test_kill_9_during_async_catch_up(tmp_path: Path) -> None:
    rng = random.Random(1)
    data_dir = tmp_path / "data"
    async with nerve.open_log(data_dir) as log:
        await append_signals(log, 500, rng)
        # The projection exists and is current: the child will catch up by
        # following the log, not by a first rebuild.
        runner = ProjectionRunner(log, child.sys_signals())
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await runner.wait_for(log.head)
            nursery.cancel_scope.cancel()
        await append_signals(log, 20_000, rng)
        total = log.head
    positions: list[int] = [check_signals_exactly_once(data_dir)]
    for round_ in range(6):
        lines = await run_and_kill(
            "catch-up",
            data_dir,
            round_,
            rng,
            kill_after=rng.randint(1, 4),
            counted=lambda line: line.startswith("pos"),
            tmp=tmp_path,
        )
        reported = [int(x.split()[1]) for x in lines if x.startswith("pos")]
        position = check_signals_exactly_once(data_dir)
        # What the child reported folded was committed.
        assert position >= max(reported, default=0)
        positions.append(position)
    assert positions == sorted(positions)
    assert positions[-1] > positions[0]
    assert positions[-1] <= total
    await final_check_signals(data_dir, tmp_path)


async def test_kill_9_during_a_workflow_runs_rebuild(tmp_path: Path) -> None:
    rng = random.Random(2)
    data_dir = tmp_path / "data"
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        await append_lifecycle(log, 4000, 2)
    left: list[Path] = []
    for round_ in range(4):
        await run_and_kill(
            "rebuild-runs",
            data_dir,
            100 + round_,
            rng,
            *rebuild_moment(rng, 20),
            tmp=tmp_path,
        )
        check_runs_inline(data_dir)
        # Killed mid-rebuild, a child leaves its fresh database behind (one
        # killed just after a swap may not)...
        left += leftovers(data_dir)
        async with nerve.open_log(data_dir) as log:
            assert await verify(log, [WorkflowRuns()]) == []
    assert left
    await final_check_runs(data_dir, tmp_path)
    # ...which the next rebuild sweeps.
    async with nerve.open_log(data_dir) as log:
        await rebuild(log, WorkflowRuns())
        assert await verify(log, [WorkflowRuns()]) == []
    assert leftovers(data_dir) == []


async def test_kill_9_during_a_signals_rebuild(tmp_path: Path) -> None:
    rng = random.Random(3)
    data_dir = tmp_path / "data"
    async with nerve.open_log(data_dir) as log:
        await append_signals(log, 12_000, rng)
    left: list[Path] = []
    for round_ in range(3):
        await run_and_kill(
            "rebuild-signals",
            data_dir,
            200 + round_,
            rng,
            *rebuild_moment(rng, 20),
            tmp=tmp_path,
        )
        check_signals_exactly_once(data_dir)
        # A kill that lands mid-rebuild leaves the fresh database behind (the
        # next child's rebuild sweeps it); one that lands just after a swap
        # may not.
        left += leftovers(data_dir)
    assert left
    await final_check_signals(data_dir, tmp_path)


async def test_kill_9_while_appending_with_workflow_runs_inline(
    tmp_path: Path,
) -> None:
    rng = random.Random(4)
    data_dir = tmp_path / "data"
    async with nerve.open_log(data_dir) as log:
        await attach_inline(log, WorkflowRuns())
        await append_lifecycle(log, 100, 4)
    for round_ in range(3):
        lines = await run_and_kill(
            "append-runs",
            data_dir,
            300 + round_,
            rng,
            kill_after=rng.randint(1, 300),
            counted=lambda line: line.startswith("ack"),
            tmp=tmp_path,
        )
        acked = [int(x.split()[1]) for x in lines if x.startswith("ack")]
        assert acked
        # Every acknowledged append is in the log, and folded with it.
        assert log_head(data_dir) >= max(acked)
        check_runs_inline(data_dir)
        async with nerve.open_log(data_dir) as log:
            assert await verify(log, [WorkflowRuns()]) == []
    await final_check_runs(data_dir, tmp_path)
