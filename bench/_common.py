"""Shared helpers for the scripts in bench/: arguments, timing, reporting.

Every script measures its baseline in the same run as the figure it compares
(machines are noisy; ratios travel, absolute numbers do not), repeats each
measurement ``--runs`` times, interleaving baseline and subject, and reports
the median. ``--quick`` shrinks every size for a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

perf_counter = time.perf_counter


# -- arguments ---------------------------------------------------------------------


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    runs: int = 3,
) -> argparse.Namespace:
    """The arguments every bench script takes (plus ``extra``'s); ``runs``
    is the default number of runs per figure."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and one run: a smoke test, not a measurement",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=None,
        help=f"runs per figure, the median is reported (default {runs}; 1 with "
        "--quick)",
    )
    p.add_argument(
        "--dir",
        default=os.environ.get("NERVE_BENCH_DIR"),
        help="parent of the temporary databases; must be a real disk for the "
        "fsync figures to mean anything (default: $NERVE_BENCH_DIR or the "
        "system temp dir)",
    )
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else runs
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def sized(args: argparse.Namespace, full: int, quick: int) -> int:
    """``quick`` with --quick, else ``full``."""
    return quick if args.quick else full


@contextlib.contextmanager
def temp_dir(args: argparse.Namespace, name: str = "run") -> Iterator[Path]:
    """A fresh directory for one run, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"nerve-bench-{name}-", dir=args.dir) as d:
        yield Path(d)


def header(title: str, args: argparse.Namespace, **settings: Any) -> None:
    """Print what is measured, where, and with which sizes."""
    where = args.dir or tempfile.gettempdir()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"== {title}")
    print(
        f"   python {platform.python_version()}, SQLite {apsw.sqlite_lib_version()}, "
        f"apsw {apsw.apsw_version()}, {os.cpu_count()} CPUs (load {load}), "
        f"temp dir {where}"
    )
    mode = "quick (smoke run)" if args.quick else "full"
    extra = ", ".join(
        f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in settings.items()
    )
    print(
        f"   mode {mode}, {args.runs} run(s) per figure"
        + (f", {extra}" if extra else "")
    )
    sys.stdout.flush()


def progress(msg: str) -> None:
    """One line of progress on stderr, so the table on stdout stays clean."""
    print(f"   .. {msg}", file=sys.stderr, flush=True)


# -- statistics --------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Series:
    """The values of one figure over the runs."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return median(self.values)

    def __bool__(self) -> bool:
        return bool(self.values)


def median_of(runs: int, fn: Callable[[], float]) -> Series:
    """Call ``fn`` ``runs`` times; its return values (figures) as a `Series`."""
    s = Series()
    for _ in range(runs):
        s.add(fn())
    return s


# -- reporting ---------------------------------------------------------------------


@dataclass
class Check:
    """One target: a description and whether the figure meets it."""

    text: str
    ok: bool


def at_least(value: float, target: float, text: str) -> Check:
    return Check(f">= {text}", value >= target)


def at_most(value: float, target: float, text: str) -> Check:
    return Check(f"<= {text}", value <= target)


def fmt(value: float, unit: str) -> str:
    """A figure in a compact form for its unit."""
    if unit.endswith("/s"):
        if value >= 1e6:
            return f"{value / 1e6:.2f}M"
        if value >= 1e3:
            return f"{value / 1e3:.1f}k"
        return f"{value:.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:.3g}"


@dataclass
class _Row:
    name: str
    value: float | None
    unit: str
    runs: list[float]
    ratio: float | None
    checks: list[Check]
    note: str


class Report:
    """Figures with their ratio to the baseline, their targets and PASS/MISS."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[_Row] = []
        self.notes: list[str] = []

    def add(
        self,
        name: str,
        series: Series | float | None,
        unit: str,
        *,
        baseline: float | None = None,
        ratio: float | None = None,
        checks: Sequence[Check] = (),
        note: str = "",
    ) -> None:
        """One row. The ratio is ``series / baseline`` unless given."""
        if series is None:
            self.rows.append(_Row(name, None, unit, [], None, [], note))
            return
        if isinstance(series, Series):
            value, runs = series.median, list(series.values)
        else:
            value, runs = float(series), [float(series)]
        if ratio is None and baseline:
            ratio = value / baseline
        self.rows.append(_Row(name, value, unit, runs, ratio, list(checks), note))

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def misses(self) -> int:
        return sum(1 for r in self.rows if any(not c.ok for c in r.checks))

    @property
    def passes(self) -> int:
        return sum(1 for r in self.rows if r.checks and all(c.ok for c in r.checks))

    def print(self) -> None:
        table = [("what", "median", "unit", "runs", "x base", "target", "status")]
        for r in self.rows:
            if r.value is None:
                table.append((r.name, "-", r.unit, "", "", "", "SKIP"))
                continue
            status = ""
            if r.checks:
                status = "PASS" if all(c.ok for c in r.checks) else "MISS"
            table.append(
                (
                    r.name,
                    fmt(r.value, r.unit),
                    r.unit,
                    " ".join(fmt(v, r.unit) for v in r.runs) if len(r.runs) > 1 else "",
                    f"{r.ratio:.2f}x" if r.ratio is not None else "",
                    ", ".join(c.text for c in r.checks),
                    status,
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        right = {1, 4}
        print()
        print(f"-- {self.title}")
        for n, row in enumerate(table):
            cells = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            print("  " + "  ".join(cells).rstrip())
            if n == 0:
                print("  " + "  ".join("-" * w for w in widths))
        for r in self.rows:
            if r.note:
                print(f"  * {r.name}: {r.note}")
        for text in self.notes:
            print(f"  * {text}")
        print(f"  => {self.passes} PASS, {self.misses} MISS")
        sys.stdout.flush()
