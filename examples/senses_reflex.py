"""Senses and a reflex: a disk-usage sense that triggers a workflow.

    python examples/senses_reflex.py [DATA_DIR] [ALERT_PERCENT]

The sense ``system.disk`` measures the disk holding DATA_DIR five times a
second; each value is a ``sense.signal`` event, kept in the ``_signals`` table
of DATA_DIR/senses/system-senses.db. The reflex routes the signals whose value
passes ``nearly_full`` to the workflow ``disk-report``. ALERT_PERCENT defaults
to just under the disk's current usage, so that the demo fires; the workflow
uses ``overflow: drop``, so signals arriving while a report runs are dropped
rather than piling up. The script stops after three reports.

The same setup in nerve.yaml::

    workflows:
      disk-report: {entry: senses_reflex:disk_report, overflow: drop}
    senses:
      system:
        disk: {entry: senses_reflex:disk, every: 200ms}
    reflexes:
      - {signal: system.disk, workflow: disk-report, when: senses_reflex:nearly_full}
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

import trio

import nerve

REPORTS = 3
app = nerve.App()
settings: dict[str, Any] = {"path": ".", "alert_percent": 90.0}


@app.sense("system", every=0.2)
async def disk(sense: nerve.Sense) -> dict[str, Any]:
    """How full the disk is (a non-None value is recorded as a signal)."""
    usage = shutil.disk_usage(settings["path"])
    return {
        "path": str(settings["path"]),
        "used_percent": round(100 * usage.used / usage.total, 2),
        "free_gib": round(usage.free / 2**30, 2),
    }


def nearly_full(value: dict[str, Any]) -> bool:
    """The reflex's predicate: only these signals trigger the workflow."""
    return bool(value["used_percent"] >= settings["alert_percent"])


@app.workflow("disk-report", overflow="drop")
async def disk_report(run: nerve.Run) -> str:
    value = run.payload["value"]  # the reflex's payload: group, sense, value, position
    report = (
        f"{value['path']} is {value['used_percent']}% full "
        f"({value['free_gib']} GiB free), signal #{run.payload['position']}"
    )
    await run.say("assistant", report)
    await trio.sleep(0.5)  # writing the report takes a while: signals meanwhile drop
    return report


app.reflex("system.disk", "disk-report", when=nearly_full)


async def main(data_dir: str, alert_percent: float | None) -> None:
    await trio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    settings["path"] = data_dir
    usage = shutil.disk_usage(data_dir)
    now = round(100 * usage.used / usage.total, 2)
    # By default a point under the current usage, so that the demo fires even
    # if other programs free some space meanwhile.
    default = max(0.0, round(now - 1.0, 2))
    settings["alert_percent"] = default if alert_percent is None else alert_percent
    print(f"disk at {now}% used; reporting at {settings['alert_percent']}% and above")

    async with nerve.open_kernel(app, data_dir) as kernel:
        # Watch the log for the reports the reflex starts.
        reports = 0
        with trio.fail_after(30):
            async for e in kernel.log.subscribe(
                after=kernel.log.head, types=["workflow.run.completed"]
            ):
                reports += 1
                print(f"report {reports}: {e.data.result}")
                if reports == REPORTS:
                    break

        print("\nthe last signals (from the _signals table):")
        for s in await kernel.signals("system", "disk", n=5):
            print(f"  #{s.position}  {s.value}")
        print("\nthe disk-report runs:")
        for r in (await kernel.runs(workflow="disk-report"))[-6:]:
            print(f"  {r.run_id}  {r.status:<10} {r.error or r.result}")


if __name__ == "__main__":
    trio.run(
        main,
        sys.argv[1] if len(sys.argv) > 1 else "data",
        float(sys.argv[2]) if len(sys.argv) > 2 else None,
    )
