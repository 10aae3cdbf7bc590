"""Run every benchmark in bench/, one after the other, each in its own process.

The scripts are every ``bench/*.py`` but this one and the ``_``-prefixed
helpers: ``append.py`` and ``read.py`` first, then the rest by name.

Arguments (``--quick``, ``--runs N``, ``--dir D``) are passed through to each
script. ``make bench`` runs ``.venv/bin/python bench/run_all.py``. The exit
status is non-zero when a script failed (crashed), not when a figure missed
its target: misses are reported, not enforced.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST = ("append.py", "read.py")


def scripts() -> list[str]:
    found = {
        p.name
        for p in HERE.glob("*.py")
        if not p.name.startswith("_") and p.name != Path(__file__).name
    }
    return [n for n in FIRST if n in found] + sorted(found - set(FIRST))


def main() -> int:
    passthrough = sys.argv[1:]
    if any(a in ("-h", "--help") for a in passthrough):
        print(__doc__)
        print("scripts:", ", ".join(scripts()))
        return 0
    failed = []
    t0 = time.perf_counter()
    names = scripts()
    for name in names:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, str(HERE / name), *passthrough], check=False
        )
        took = time.perf_counter() - started
        print(f"   ({name}: exit {result.returncode}, {took:.1f} s)\n", flush=True)
        if result.returncode != 0:
            failed.append(name)
    total = time.perf_counter() - t0
    if failed:
        print(f"== bench: FAILED: {', '.join(failed)} ({total:.1f} s)")
        return 1
    print(f"== bench: {len(names)} scripts ran ({total:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
