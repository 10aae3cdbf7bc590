"""Senses and reflexes: the schedule, signals and their ``_signals`` table,
``sense.error``, history across restarts, one computation at a time per group,
reflex routing, and the App's validation of workflows, senses and reflexes.

All on the autojump clock. The log writes in a worker thread, and virtual time
jumps to the next deadline meanwhile, so exact timings are only asserted for
computations that write nothing; ``watch_interval=None`` keeps the log's watch
for other processes' appends (a 50 ms deadline) out of the way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import nerve
from nerve import ConfigError
from nerve.events._vocabulary import SenseError, SenseSignal, run_stream, sense_stream

QUIET: dict[str, Any] = {"watch_interval": None}


class Boom(Exception):
    pass


async def sense_events(log: nerve.Log, group: str, sense: str) -> list[Any]:
    return [e async for e in log.read(stream=sense_stream(group, sense))]


async def caught_up(kernel: nerve.Kernel, group: str) -> None:
    await kernel.projections[group].wait_for(kernel.log.head)


def emitter(values: list[Any], done: trio.Event | None = None) -> Callable[..., Any]:
    """A compute returning ``values`` one per call, then None (setting ``done``)."""
    left = list(values)

    async def compute(sense: nerve.Sense) -> Any:
        if left:
            return left.pop(0)
        if done is not None:
            done.set()
        return None

    return compute


# -- the schedule ----------------------------------------------------------------------


async def test_a_sense_runs_every_n_seconds(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    times: list[float] = []

    @app.sense("clock", every=2)
    async def tick(sense: nerve.Sense) -> None:
        times.append(trio.current_time())

    async with nerve.open_kernel(app, tmp_path, **QUIET) as kernel:
        await trio.sleep(11)
        assert kernel.senses["clock"].senses["tick"].computed == len(times)
    # The first computation at once, then one every 2 s of virtual time.
    assert len(times) == 6
    assert [round(t - times[0], 6) for t in times] == [0, 2, 4, 6, 8, 10]
    async with nerve.open_log(tmp_path) as log:
        # None emits nothing.
        assert await sense_events(log, "clock", "tick") == []


async def test_a_slow_sense_skips_beats_instead_of_queueing_them(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    times: list[float] = []

    @app.sense("slow", every=1)
    async def slow(sense: nerve.Sense) -> None:
        times.append(trio.current_time())
        await trio.sleep(3.5)

    async with nerve.open_kernel(app, tmp_path, **QUIET):
        await trio.sleep(18)
    # The beats at 1, 2 and 3 s arrive mid-computation: skipped, not queued;
    # the next computation is on the next beat, not right after this one.
    assert [round(t - times[0], 6) for t in times] == [0, 4, 8, 12, 16]


async def test_a_signal_is_appended_and_lands_in_the_groups_signals(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    done = trio.Event()
    app.sense("weather", every=1, name="temp")(
        emitter([{"c": 20}, None, {"c": 21}, 22.5], done)
    )

    async with nerve.open_kernel(app, tmp_path, **QUIET) as kernel:
        await done.wait()
        events = await sense_events(kernel.log, "weather", "temp")
        assert [e.type for e in events] == ["sense.signal"] * 3
        assert [e.data for e in events] == [
            SenseSignal("weather", "temp", {"c": 20}),
            SenseSignal("weather", "temp", {"c": 21}),
            SenseSignal("weather", "temp", 22.5),
        ]
        await caught_up(kernel, "weather")
        signals = await kernel.signals("weather")
        assert [(s.sense, s.value) for s in signals] == [
            ("temp", {"c": 20}),
            ("temp", {"c": 21}),
            ("temp", 22.5),
        ]
        assert [s.position for s in signals] == [e.position for e in events]
        last = await kernel.signals("weather", "temp", n=1)
        assert [s.value for s in last] == [22.5]
        assert await kernel.signals("weather", "other") == []
        sense = kernel.senses["weather"].senses["temp"]
        assert sense.history(2) == [{"c": 21}, 22.5]
        assert sense.last == 22.5
        with pytest.raises(LookupError, match="weather"):
            await kernel.signals("nope")


async def test_a_raising_compute_appends_sense_error_and_keeps_its_schedule(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    calls: list[float] = []
    done = trio.Event()

    @app.sense("g", every=5)
    async def flaky(sense: nerve.Sense) -> Any:
        calls.append(trio.current_time())
        if len(calls) in (1, 2):
            raise Boom(f"failure {len(calls)}")
        if len(calls) == 3:
            return "recovered"
        done.set()
        return None

    async with nerve.open_kernel(app, tmp_path, **QUIET) as kernel:
        await done.wait()
        events = await sense_events(kernel.log, "g", "flaky")
        assert [e.type for e in events] == [
            "sense.error",
            "sense.error",
            "sense.signal",
        ]
        assert events[0].data == SenseError("g", "flaky", "Boom", "failure 1")
        assert events[2].data.value == "recovered"
        actor = kernel.senses["g"]
        assert actor.statistics().restarts == 0
        assert actor.senses["flaky"].errors == 2
        await caught_up(kernel, "g")
        assert [s.value for s in await kernel.signals("g")] == ["recovered"]
    # It kept its fixed-rate schedule (virtual time may skip beats while the
    # log writes, but every computation is on a beat).
    assert len(calls) >= 4
    assert all(round(t - calls[0], 6) % 5 == 0 for t in calls)


async def test_a_value_that_is_not_json_appends_sense_error(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    done = trio.Event()
    app.sense("g", every=1, name="odd")(emitter([object(), "fine"], done))
    async with nerve.open_kernel(app, tmp_path, **QUIET) as kernel:
        await done.wait()
        events = await sense_events(kernel.log, "g", "odd")
        assert [e.type for e in events] == ["sense.error", "sense.signal"]
        assert events[0].data.error_type == "EventEncodingError"
        assert kernel.senses["g"].senses["odd"].history() == ["fine"]


async def test_sense_history_is_recovered_at_the_next_start(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    done = trio.Event()
    app.sense("g", every=1, name="s")(emitter([1, 2, 3], done))
    async with nerve.open_kernel(app, tmp_path, **QUIET):
        await done.wait()

    seen: list[Any] = []
    again = nerve.App()
    done2 = trio.Event()

    @again.sense("g", every=1)
    async def s(sense: nerve.Sense) -> int | None:
        seen.append((sense.history(2), sense.history(), sense.last))
        if len(seen) == 1:
            return 4
        done2.set()
        return None

    async with nerve.open_kernel(again, tmp_path, **QUIET) as kernel:
        await done2.wait()
        assert kernel.senses["g"].senses["s"].history(0) == []
    assert seen[0] == ([2, 3], [1, 2, 3], 3)
    assert seen[1] == ([3, 4], [1, 2, 3, 4], 4)


async def test_the_senses_of_a_group_are_computed_one_at_a_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    active: dict[str, int] = {"g": 0, "h": 0}
    most: dict[str, int] = {"g": 0, "h": 0}
    calls: list[str] = []

    def slow(group: str, name: str) -> Callable[..., Any]:
        async def compute(sense: nerve.Sense) -> None:
            calls.append(name)
            active[group] += 1
            most[group] = max(most[group], active[group])
            try:
                await trio.sleep(0.7)
            finally:
                active[group] -= 1

        return compute

    app.sense("g", every=1, name="a")(slow("g", "a"))
    app.sense("g", every=1, name="b")(slow("g", "b"))
    app.sense("h", every=1, name="c")(slow("h", "c"))
    async with nerve.open_kernel(app, tmp_path, **QUIET):
        await trio.sleep(10)
    assert most["g"] == 1
    assert {"a", "b", "c"} <= set(calls)
    # Another group is another actor: it runs alongside.
    assert calls.count("c") >= 9


# -- reflexes -------------------------------------------------------------------


async def test_a_reflex_triggers_its_workflow_when_the_predicate_holds(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    done = trio.Event()
    app.sense("meter", every=1, name="load")(emitter([1, 2, 3, 4, 5, 6], done))
    payloads: list[Any] = []

    @app.workflow("alert", concurrency=1, max_queue=10)
    async def alert(run: nerve.Run) -> Any:
        payloads.append(run.payload)
        return run.payload["value"]

    app.reflex("meter.load", "alert", when=lambda v: v % 2 == 0)
    async with nerve.open_kernel(app, tmp_path, **QUIET) as kernel:
        await done.wait()
        signals = {
            e.data.value: e.position
            for e in await sense_events(kernel.log, "meter", "load")
        }
    assert payloads == [
        {"group": "meter", "sense": "load", "value": v, "position": signals[v]}
        for v in (2, 4, 6)
    ]
    async with nerve.open_log(tmp_path) as log:
        runs = await nerve.projections.RunQueries(log).list(workflow="alert")
        assert [(r.status, r.result) for r in runs] == [
            ("completed", 2),
            ("completed", 4),
            ("completed", 6),
        ]
        queued = [
            e
            async for e in log.read(
                stream=run_stream(runs[0].run_id), types=["workflow.run.queued"]
            )
        ]
        assert queued[0].data.trigger == "reflex:meter.load"


async def test_a_reflex_without_a_predicate_fires_on_every_signal(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    done = trio.Event()
    app.sense("g", every=1, name="s")(emitter(["a", None, "b"], done))
    values: list[Any] = []

    @app.workflow("w", concurrency=1, max_queue=10)
    async def w(run: nerve.Run) -> None:
        values.append(run.payload["value"])

    app.reflex("g.s", "w")
    async with nerve.open_kernel(app, tmp_path, **QUIET):
        await done.wait()
    assert values == ["a", "b"]


async def test_a_raising_predicate_appends_sense_error_and_does_not_crash(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    app = nerve.App()
    done = trio.Event()
    app.sense("g", every=1, name="s")(emitter([1, 2, 3], done))
    values: list[Any] = []

    @app.workflow("w", concurrency=1, max_queue=10)
    async def w(run: nerve.Run) -> None:
        values.append(run.payload["value"])

    def when(value: int) -> bool:
        if value == 2:
            raise Boom("bad predicate")
        return True

    app.reflex("g.s", "w", when=when)
    async with nerve.open_kernel(app, tmp_path, **QUIET) as kernel:
        await done.wait()
        events = await sense_events(kernel.log, "g", "s")
        assert kernel.senses["g"].statistics().restarts == 0
    assert [e.type for e in events] == [
        "sense.signal",
        "sense.signal",
        "sense.error",
        "sense.signal",
    ]
    error = events[2].data
    assert error.error_type == "Boom"
    assert "when() raised: bad predicate" in error.message
    assert "'w'" in error.message
    assert values == [1, 3]


# -- validation -----------------------------------------------------------------


async def noop(x: Any) -> None:
    return None


async def test_reflexes_to_unknown_senses_or_workflows_fail_open_kernel(
    tmp_path: Path,
) -> None:
    app = nerve.App()
    app.sense("g", every=1, name="s")(noop)
    app.workflow("w")(noop)
    app.reflex("g.nope", "w")
    app.reflex("g.s", "missing")
    with pytest.raises(ConfigError) as caught:
        async with nerve.open_kernel(app, tmp_path):
            pytest.fail("the kernel must not start")
    message = str(caught.value)
    assert "no sense 'g.nope' (known: g.s)" in message
    assert "no workflow 'missing' (known: w)" in message
    assert not (tmp_path / "logs.db").exists()


@pytest.mark.parametrize(
    ("options", "wrong"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"concurrency": 1.5}, "concurrency"),
        ({"overflow": "block"}, "overflow"),
        ({"max_queue": -1}, "max_queue"),
        ({"max_queue": "3"}, "max_queue"),
    ],
)
def test_bad_workflow_limits_are_refused_naming_the_workflow(
    options: dict[str, Any], wrong: str
) -> None:
    app = nerve.App()
    with pytest.raises(ConfigError, match=rf"workflow 'triage'.*{wrong}"):
        app.workflow("triage", **options)


@pytest.mark.parametrize("every", [0, -1, timedelta(0), "5", True, float("nan")])
def test_a_bad_sense_period_is_refused_naming_the_group(every: Any) -> None:
    app = nerve.App()
    with pytest.raises(ConfigError, match=r"sense group 'g'.*every"):
        app.sense("g", every=every)


def test_other_definition_mistakes_are_refused() -> None:
    app = nerve.App()
    app.workflow("w")(noop)
    with pytest.raises(ConfigError, match="defined twice"):
        app.workflow("w")
    with pytest.raises(ConfigError, match="async function"):
        app.workflow("sync")(lambda run: None)
    with pytest.raises(ConfigError, match="name"):
        app.workflow("a/b")
    app.sense("g", every=timedelta(seconds=2), name="s")(noop)
    assert app.senses["g"]["s"].every == 2.0
    with pytest.raises(ConfigError, match="defined twice"):
        app.sense("g", every=1, name="s")(noop)
    with pytest.raises(ConfigError, match=r"must not contain '\.'"):
        app.sense("g.h", every=1)
    with pytest.raises(ConfigError, match=r"'group\.sense'"):
        app.reflex("nodot", "w")
    with pytest.raises(ConfigError, match="callable"):
        app.reflex("g.s", "w", when=3)  # type: ignore[arg-type]
