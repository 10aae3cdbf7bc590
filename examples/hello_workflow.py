"""Hello workflow: two slots, a queue of ten, and a flood of triggers.

    python examples/hello_workflow.py [DATA_DIR]      (what `make demo` runs)

The workflow ``greet`` is declared in examples/nerve.yaml (``concurrency: 2``,
``overflow: queue``, ``maxQueue: 10``), the same file `nerve run` reads. This
script builds the App from it, triggers 16 runs at once and prints the
``workflow_runs`` table as it changes: two runs start, ten wait in the queue,
and each trigger past that evicts the oldest queued run (``dropped``). Every
transition is an event in DATA_DIR/logs.db and a row of ``workflow_runs``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

import nerve
from nerve.config import load_config
from nerve.projections import RunRecord

HERE = Path(__file__).resolve().parent
TRIGGERS = 16
WORK_SECONDS = 0.3


COLORS = {"queued": "cyan", "started": "yellow", "completed": "green", "dropped": "dim"}


def runs_table(runs: list[RunRecord], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    # Run ids start with their time: keep them whole (the end tells them apart).
    table.add_column("run", no_wrap=True, min_width=28)
    for column in ("payload", "status", "result / error"):
        table.add_column(column)
    for r in runs:
        color = COLORS.get(r.status, "red")
        outcome = r.result if r.status == "completed" else (r.error or "")
        table.add_row(
            r.run_id, r.payload["name"], f"[{color}]{r.status}[/]", str(outcome)
        )
    return table


def compose(name: str) -> str:
    return f"Hello, {name}!"


async def greet(run: nerve.Run) -> str:
    """The workflow: a thread of messages and one journaled step."""
    name = run.payload["name"]
    await run.say("user", f"please greet {name}")
    # A step's result is journaled: a resumed run gets it back without redoing it.
    greeting: str = await run.step("compose", compose, name)
    await trio.sleep(WORK_SECONDS)  # the slow part of the work: it holds a slot
    await run.say("assistant", greeting)
    return greeting


async def main(data_dir: str) -> None:
    app = load_config(HERE / "nerve.yaml").build_app()
    console = Console()
    async with nerve.open_kernel(app, data_dir) as kernel:
        # All at once: the actor decides each trigger's fate in arrival order.
        handles = [
            await kernel.trigger("greet", {"name": f"guest {i + 1}"})
            for i in range(TRIGGERS)
        ]
        ids = {h.run_id for h in handles}

        async def table() -> Table:
            runs = [r for r in await kernel.runs(workflow="greet") if r.run_id in ids]
            counts: dict[str, int] = {}
            for r in runs:
                counts[r.status] = counts.get(r.status, 0) + 1
            title = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            return runs_table(runs, title=f"workflow_runs: {title}")

        async def wait_all() -> list[nerve.Outcome]:
            return [await h.wait() for h in handles]

        if console.is_terminal:
            with Live(await table(), console=console, refresh_per_second=10) as live:
                async with trio.open_nursery() as nursery:

                    async def refresh() -> None:
                        while True:
                            await trio.sleep(0.1)
                            live.update(await table())

                    nursery.start_soon(refresh)
                    outcomes = await wait_all()
                    nursery.cancel_scope.cancel()
                live.update(await table())
        else:
            console.print(await table())  # just after the flood
            outcomes = await wait_all()
            console.print(await table())

    done = sum(o.status == "completed" for o in outcomes)
    dropped = sum(o.status == "dropped" for o in outcomes)
    print(
        f"\n{done} completed, {dropped} dropped (evicted from the full queue). "
        f"Try: nerve runs --data {data_dir}; nerve run-show "
        f"{next(o.run_id for o in outcomes if o.ok)} --data {data_dir}"
    )


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "data")
