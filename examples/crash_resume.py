"""Crash and resume: a kernel killed with SIGKILL mid-run, and the run resumed.

    python examples/crash_resume.py [DATA_DIR]

A child process runs a kernel with the workflow ``import``: it downloads
(a journaled step, counted in DATA_DIR/downloads.txt), says so in its
thread, then transforms slowly. The parent kills the child with SIGKILL in
the middle of the transform, then opens a kernel on the same data directory
itself. Recovery reads the log alone: the run left ``started`` becomes
``crashed`` and starts again (attempt 2) with its thread messages and step
journal, so the download is *not* done again; only the unfinished transform
runs again.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

import nerve

app = nerve.App()
state: dict[str, Any] = {"data_dir": "data", "slow": False}


def download(url: str) -> list[int]:
    """The side effect that must happen once: it is counted in a file."""
    with open(Path(state["data_dir"]) / "downloads.txt", "a") as f:
        f.write(url + "\n")
    return list(range(1, 11))


@app.workflow("import", resume=True)
async def import_rows(run: nerve.Run) -> int:
    rows: list[int] = await run.step("download", download, run.payload["url"])
    if not run.resumed:
        await run.say("assistant", f"downloaded {len(rows)} rows")
    else:
        await run.say("assistant", f"resumed (attempt {run.attempt}) with the journal")
    if state["slow"]:
        # In the child: tell the parent, then transform slowly; it is killed here.
        print(f"ready {run.id}", flush=True)
        await trio.sleep(60)
    total: int = await run.step("transform", sum, rows)
    return total


async def child(data_dir: str) -> None:
    """The process that dies: starts the run and works until killed."""
    state["slow"] = True
    async with nerve.open_kernel(app, data_dir) as kernel:
        await kernel.trigger("import", {"url": "https://example.com/rows.csv"})
        await trio.sleep_forever()


async def main(data_dir: str) -> None:
    state["data_dir"] = data_dir
    downloads = trio.Path(data_dir) / "downloads.txt"
    await downloads.parent.mkdir(parents=True, exist_ok=True)
    await downloads.unlink(missing_ok=True)

    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [sys.executable, __file__, "--child", data_dir], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        seen = b""
        while b"ready " not in seen:
            chunk = await proc.stdout.receive_some()
            if not chunk:
                raise RuntimeError("the child exited before its run started")
            seen += chunk
        run_id = seen.split(b"ready ", 1)[1].split()[0].decode()
        print(f"child {proc.pid} is in the middle of run {run_id}: SIGKILL")
        proc.kill()
        await proc.wait()
        await proc.stdout.aclose()

        async with nerve.open_kernel(app, data_dir) as kernel:
            outcome = await (await kernel.handle(run_id)).wait()
            record = await kernel.run(run_id)
            assert record is not None
            print(
                f"\nrun {run_id}: {outcome.status}, result {outcome.result}, "
                f"attempt {record.attempt}"
            )
            print("its events:")
            async for e in kernel.log.read(stream=f"run-{run_id}"):
                print(f"  {e.position:>5}  {e.type:<24} {e.data}")

    count = len((await downloads.read_text()).splitlines())
    print(
        f"\nthe download ran {count} time(s): the resumed run took it from the journal"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        state["data_dir"] = sys.argv[2]
        trio.run(child, sys.argv[2])
    else:
        trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "data")
