"""The kernel `test_kernel_crash.py` kills with SIGKILL in the middle of runs.

    python tests/kernel_child.py DATA_DIR COUNTER_FILE SEED TRIGGERS ONCE

Runs `app()`: workflow ``w`` (concurrency 2, queue) whose runs say hello, do
their side effect in a journaled step (a line appended to COUNTER_FILE), say
what it returned, then block forever, except "quick" runs, which return; and
workflow ``once`` (resume=False), which blocks the same way. Triggers
TRIGGERS runs of ``w`` (quick or not, from SEED) and, if ONCE is 1, one run of
``once``. Runs left by an earlier child are recovered by the kernel as usual.

Output, one line per fact, flushed at once; each is printed after the fact is
durable:

    triggered <workflow> <index> <run id>   the trigger was decided
    blocked <run id> <attempt>              the run's step is journaled
    done <run id> <status>                  a quick run ended
    settled                                 every started run is blocked or
                                            done, and queued runs can only
                                            wait: the moment to kill
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import trio
import trio.testing

import nerve

CONCURRENCY = 2


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def effect(counter: str, run_id: str) -> int:
    """The side effect: one line per execution. Returns the lines so far."""
    with open(counter, "a") as f:
        f.write(run_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    return len(Path(counter).read_text().splitlines())


class Progress:
    """Counts runs that reached their blocking point; wakes the watcher."""

    def __init__(self) -> None:
        self.blocked = 0
        self.quick = 0  # quick runs that entered their function
        self.done = 0  # quick runs whose end is durable
        self.changed = trio.Event()

    def bump(self) -> None:
        self.changed.set()

    async def wait(self) -> None:
        self.changed = trio.Event()
        await self.changed.wait()


def app(counter: str, progress: Progress | None = None) -> nerve.App:
    """The child's app (the test builds its own with the same semantics)."""
    app = nerve.App()

    async def body(run: nerve.Run) -> Any:
        if progress is not None and run.payload.get("quick"):
            progress.quick += 1
        if not run.messages:
            await run.say("user", f"hello {run.payload['i']}")
        lines = await run.step("effect", effect, counter, run.id)
        if len(run.messages) < 2:
            await run.say("assistant", f"effect {lines}")
        if run.payload.get("quick"):
            return lines
        emit(f"blocked {run.id} {run.attempt}")
        if progress is not None:
            progress.blocked += 1
            progress.bump()
        await trio.sleep_forever()
        return None  # (never reached)

    app.workflow("w", concurrency=CONCURRENCY, overflow="queue", max_queue=100)(body)
    app.workflow("once", resume=False)(body)
    return app


async def main(data_dir: str, counter: str, seed: int, n: int, once: bool) -> None:
    rng = random.Random(seed)
    progress = Progress()
    async with (
        nerve.open_kernel(app(counter, progress), data_dir) as kernel,
        trio.open_nursery() as nursery,
    ):

        async def finish(run_id: str) -> None:
            outcome = await (await kernel.handle(run_id)).wait()
            emit(f"done {run_id} {outcome.status}")
            progress.done += 1
            progress.bump()

        def transition(run_id: str, status: str) -> None:
            if status in ("completed", "failed"):
                nursery.start_soon(finish, run_id)

        kernel.workflows["w"].on_transition = transition
        if once:
            handle = await kernel.trigger("once", {"i": -1})
            emit(f"triggered once -1 {handle.run_id}")
        for i in range(n):
            payload = {"i": i, "seed": seed, "quick": rng.random() < 0.3}
            handle = await kernel.trigger("w", payload)
            emit(f"triggered w {i} {handle.run_id}")
        while True:
            running = sum(a.statistics().running for a in kernel.workflows.values())
            w = kernel.workflows["w"].statistics()
            if (
                progress.done == progress.quick
                and running == progress.blocked
                and (w.queued == 0 or w.running == CONCURRENCY)
            ):
                break
            await progress.wait()
        # "triggered" means accepted, not yet written: before "settled" (the
        # parent kills then), let the actors take every trigger, then append
        # an event of our own. The log writes in submission order, so once
        # that is durable, so is every run's first event.
        await trio.testing.wait_all_tasks_blocked()
        await kernel.log.append("child-settled", nerve.NewEvent("child.settled", {}))
        emit("settled")
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(
        main,
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        sys.argv[5] == "1",
    )
