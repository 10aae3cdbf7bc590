"""Crash recovery of workflow runs: ``kill -9`` a child kernel mid-runs, restart.

A child process (`kernel_child.py`) runs workflow ``w`` (concurrency 2) whose
runs say hello, do a side effect inside a journaled step (a line appended to
a counter file), then block; some runs are quick and end. It triggers more
runs than there are slots (the rest wait queued) and a run of ``once``
(``resume=False``), and prints when every started run is blocked; the test
then SIGKILLs it, sometimes runs a second child on the same directory (which
resumes the crashed runs, and is killed too), and finally opens a kernel
in-process whose workflow returns after the step. Then:

- the runs left ``started`` are recorded ``crashed``, then resume with
  attempt + 1, ``resumed=True`` and their message history;
- the journaled step is not executed again: one counter line per run, ever;
- queued runs start after the resumed ones, in their original order;
- never more than 2 runs started at once, at any position of the log;
- the ``once`` run stays ``crashed``.
"""

from __future__ import annotations

import collections
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from _children import Lines, load_child, next_line, reaped

import nerve
from nerve.events._vocabulary import (
    RUN_STATUS_OF_TYPE,
    ThreadMessage,
    run_id_of,
    run_stream,
)

ROUND_TIMEOUT = 30  # seconds of real time: a net against hangs, not a timing check


child = load_child("kernel_child")


@dataclass
class History:
    """What the children reported, over all rounds."""

    triggered: list[tuple[str, int, str]] = field(default_factory=list)
    blocked: dict[str, int] = field(default_factory=dict)  # last round: attempt
    done: set[str] = field(default_factory=set)
    crashes: collections.Counter[str] = field(default_factory=collections.Counter)


async def run_and_kill(
    tmp: Path, seed: int, n: int, once: bool, history: History
) -> None:
    """Run a child until it has settled, then SIGKILL it."""
    stderr_path = tmp / f"child-{seed}-{len(history.triggered)}.err"
    with stderr_path.open("wb") as err:
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                str(child.__file__),
                str(tmp / "data"),
                str(tmp / "counter"),
                str(seed),
                str(n),
                "1" if once else "0",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    blocked: dict[str, int] = {}
    async with reaped(proc):
        assert proc.stdout is not None
        lines = Lines(proc.stdout)
        with trio.fail_after(ROUND_TIMEOUT):
            while (line := await next_line(lines, proc, stderr_path)) != "settled":
                kind, *rest = line.split()
                if kind == "triggered":
                    history.triggered.append((rest[0], int(rest[1]), rest[2]))
                elif kind == "blocked":
                    blocked[rest[0]] = int(rest[1])
                elif kind == "done":
                    assert rest[1] == "completed", line
                    history.done.add(rest[0])
                else:
                    raise AssertionError(f"unexpected line from the child: {line!r}")
            proc.kill()
            await proc.wait()
        assert proc.returncode == -signal.SIGKILL
    # Runs blocked in this round were started when it died: crashed.
    history.crashes.update(blocked.keys())
    for run_id, attempt in blocked.items():
        assert attempt == history.crashes[run_id]
    history.blocked = blocked


@dataclass
class Entry:
    run_id: str
    attempt: int
    resumed: bool
    messages: list[ThreadMessage]


def parent_app(counter: Path, entries: list[Entry], active: list[int]) -> nerve.App:
    """The child's app, except that runs return after their step."""
    app = nerve.App()

    async def body(run: nerve.Run) -> Any:
        entries.append(Entry(run.id, run.attempt, run.resumed, list(run.messages)))
        active[0] += 1
        active[1] = max(active[1], active[0])
        try:
            if not run.messages:
                await run.say("user", f"hello {run.payload['i']}")
            lines = await run.step("effect", child.effect, str(counter), run.id)
            if len(run.messages) < 2:
                await run.say("assistant", f"effect {lines}")
            await trio.lowlevel.checkpoint()
            return {"lines": lines, "attempt": run.attempt, "resumed": run.resumed}
        finally:
            active[0] -= 1

    app.workflow("w", concurrency=child.CONCURRENCY, overflow="queue", max_queue=100)(
        body
    )
    app.workflow("once", resume=False)(body)
    return app


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_crashed_runs_resume_and_journaled_steps_run_once(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    history = History()
    await run_and_kill(tmp_path, seed, rng.randint(3, 7), True, history)
    if rng.random() < 0.6:  # a second crash, with the first one's runs resumed
        await run_and_kill(tmp_path, seed + 1000, rng.randint(0, 2), False, history)

    order = {run_id: k for k, (_, _, run_id) in enumerate(history.triggered)}
    index = {run_id: i for _, i, run_id in history.triggered}
    once = [run_id for wf, _, run_id in history.triggered if wf == "once"]
    w_runs = [run_id for wf, _, run_id in history.triggered if wf == "w"]
    assert len(once) == 1
    crashed = sorted(
        (r for r in history.blocked if r not in once), key=order.__getitem__
    )
    queued = [r for r in w_runs if r not in history.blocked and r not in history.done]
    counter = tmp_path / "counter"
    before = collections.Counter(counter.read_text().splitlines())
    assert set(before) == set(history.crashes) | history.done
    assert set(before.values()) == {1}

    async with nerve.open_log(tmp_path / "data") as log:
        head = log.head

    entries: list[Entry] = []
    active = [0, 0]
    app = parent_app(counter, entries, active)
    async with nerve.open_kernel(app, tmp_path / "data") as kernel:
        with trio.fail_after(ROUND_TIMEOUT):
            outcomes = {
                run_id: await (await kernel.handle(run_id)).wait() for run_id in order
            }
        records = {r.run_id: r for r in await kernel.runs()}
        steps = {r: await kernel.queries.steps(r) for r in order}
        messages = {r: await kernel.queries.messages(r) for r in order}

    # The side effect happened exactly once per run, over every process.
    after = collections.Counter(counter.read_text().splitlines())
    assert after == dict.fromkeys([*w_runs, *once], 1)

    # The `once` workflow does not resume: its run stays crashed.
    (once_id,) = once
    assert outcomes[once_id].status == "crashed"
    assert records[once_id].status == "crashed"
    assert all(e.run_id != once_id for e in entries)

    for run_id in w_runs:
        outcome = outcomes[run_id]
        assert outcome.status == "completed", outcome
        journaled = [(s.name, s.result) for s in steps[run_id]]
        assert len(journaled) == 1
        assert journaled[0][0] == "effect"
        # (Quick runs ended in the child, returning the step's result.)
        result = outcome.result if run_id in history.done else outcome.result["lines"]
        assert result == journaled[0][1]
        assert messages[run_id] == [
            ThreadMessage("user", f"hello {index[run_id]}"),
            ThreadMessage("assistant", f"effect {journaled[0][1]}"),
        ]
    for run_id in crashed:
        attempt = history.crashes[run_id] + 1
        assert records[run_id].attempt == attempt
        assert outcomes[run_id].result["attempt"] == attempt
        assert outcomes[run_id].result["resumed"] is True
    for run_id in queued:
        assert records[run_id].attempt == 1
        assert outcomes[run_id].result["resumed"] is False

    # Each run of `w` started once in the parent (the order is checked on the
    # log below: runs started together enter their functions in any order),
    # and saw its thread so far.
    assert sorted(e.run_id for e in entries) == sorted(crashed + queued)
    for e in entries:
        if e.run_id in crashed:
            assert e.resumed
            assert e.attempt == history.crashes[e.run_id] + 1
            assert e.messages == messages[e.run_id]
        else:
            assert (e.resumed, e.attempt, e.messages) == (False, 1, [])
    assert active[1] <= child.CONCURRENCY

    async with nerve.open_log(tmp_path / "data") as log:
        status: dict[str, str] = {}
        starts: list[str] = []
        lifecycles: dict[str, list[str]] = collections.defaultdict(list)
        async for e in log.read():
            new = RUN_STATUS_OF_TYPE.get(e.type)
            if new is None:
                continue
            run_id = run_id_of(e.stream)
            assert run_id is not None
            status[run_id] = new
            lifecycles[run_id].append(new)
            if e.position > head and new == "started":
                starts.append(run_id)
            running = sum(
                1 for r, s in status.items() if s == "started" and r not in once
            )
            assert running <= child.CONCURRENCY, f"at position {e.position}"
        # The parent's starts, as the log has them.
        assert starts == crashed + queued
        for run_id in crashed:
            assert lifecycles[run_id] == (
                ["queued"]
                + ["started", "crashed"] * history.crashes[run_id]
                + ["started", "completed"]
            )
        assert lifecycles[once_id] == ["queued", "started", "crashed"]
        first = [
            e.type
            async for e in log.read(stream=run_stream(once_id))
            if e.type.startswith("workflow.")
        ]
        assert first[:3] == [
            "workflow.run.queued",
            "workflow.run.started",
            "workflow.message",
        ]
