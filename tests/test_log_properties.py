"""Property tests of the log: the codec round trip, read(after=k) as a suffix
(archive included), and idempotent re-appends.

Each example gets a fresh data directory and runs its trio code with
`trio.run`: pytest-trio's async tests and hypothesis's @given do not mix.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nerve
from nerve import NewEvent

DAY = 86_400.0
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LOG_PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@attrs.frozen
class Inner:
    label: str
    weight: float


@attrs.frozen
class Rich:
    text: str
    count: int
    ratio: float
    flag: bool
    tags: list[str]
    numbers: list[int]
    maybe: int | None
    maybe_text: str | None
    inner: Inner
    maybe_inner: Inner | None
    children: list[Inner]
    scores: dict[str, float]


inners = st.builds(Inner, label=st.text(), weight=FLOATS)
richs = st.builds(
    Rich,
    text=st.text(),
    count=INT64,
    ratio=FLOATS,
    flag=st.booleans(),
    tags=st.lists(st.text(max_size=20), max_size=5),
    numbers=st.lists(INT64, max_size=5),
    maybe=st.none() | INT64,
    maybe_text=st.none() | st.text(max_size=20),
    inner=inners,
    maybe_inner=st.none() | inners,
    children=st.lists(inners, max_size=3),
    scores=st.dictionaries(st.text(max_size=10), FLOATS, max_size=4),
)


def make_registry() -> nerve.EventRegistry:
    reg = nerve.EventRegistry()
    reg.register("prop.rich", Rich)
    return reg


REGISTRY = make_registry()


@PROPERTY
@given(richs)
def test_codec_round_trip(value: Rich) -> None:
    text, version, canonical = REGISTRY.encode("prop.rich", value)
    assert version == 1
    assert canonical == value
    assert REGISTRY.decode("prop.rich", version, text) == value
    # The mapping form of the same event encodes to the same stored text.
    mapping = REGISTRY.converter.unstructure(value)
    text2, _, canonical2 = REGISTRY.encode("prop.rich", mapping)
    assert text2 == text
    assert canonical2 == value


def run_with_log(fn: Any, **open_kwargs: Any) -> Any:
    """Run ``fn(log, data_dir)`` against a log in a fresh temporary directory."""

    async def main(data_dir: Path) -> Any:
        async with nerve.open_log(data_dir, **open_kwargs) as log:
            return await fn(log, data_dir)

    with tempfile.TemporaryDirectory() as tmp:
        return trio.run(main, Path(tmp) / "data")


@LOG_PROPERTY
@given(
    st.lists(richs, min_size=1, max_size=6),
    st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_registered_events_round_trip_through_the_log(
    values: list[Rich], as_mapping: list[bool]
) -> None:
    reg = make_registry()
    events = [
        NewEvent("prop.rich", reg.converter.unstructure(v) if m else v)
        for v, m in zip(values, as_mapping, strict=False)
    ]

    async def body(log: nerve.Log, data_dir: Path) -> None:
        cut = max(1, len(events) // 2)
        await log.append("s", events[:cut])
        if events[cut:]:
            await log.append("s", events[cut:])
        got = [ev.data async for ev in log.read()]
        assert got == values
        assert all(type(g) is Rich for g in got)
        # And through a fresh open, with a fresh registry.
        async with nerve.open_log(data_dir, registry=make_registry()) as again:
            assert [ev.data async for ev in again.read()] == values

    # A small threshold sends some payloads through the blob store.
    run_with_log(body, registry=reg, blob_threshold=400)


appends = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),  # stream
        st.integers(min_value=1, max_value=4),  # events in the append
        st.integers(min_value=0, max_value=3),  # days later than the previous
    ),
    max_size=12,
)


@LOG_PROPERTY
@given(
    appends,
    st.none() | st.integers(min_value=0, max_value=11),
    st.lists(st.integers(0, 60), max_size=6),
)
def test_read_after_is_the_suffix(
    plan: list[tuple[str, int, int]], archive_at: int | None, extra_ks: list[int]
) -> None:
    """read(after=k) is read()[k:], and the filtered reads are the filtered
    suffixes, whether or not old days moved to the archive (``archive_at``:
    every day before that append's day is archived)."""
    t = time.time() - 60 * DAY
    clock_now = [t - t % DAY + 3600]

    async def body(log: nerve.Log, data_dir: Path) -> None:
        n = 0
        times = []
        for stream, count, days_later in plan:
            clock_now[0] += days_later * DAY
            times.append(clock_now[0])
            await log.append(
                stream,
                [NewEvent(f"t.{(n + i) % 2}", {"n": n + i}) for i in range(count)],
            )
            n += count
        if archive_at is not None and plan:
            clock_now[0] = time.time()  # every old day is over
            cut = times[min(archive_at, len(plan) - 1)]
            await log.archive(older_than=timedelta(0), now=cut)
        everything = [ev async for ev in log.read()]
        assert [ev.position for ev in everything] == list(range(1, n + 1))
        assert [ev.data["n"] for ev in everything] == list(range(n))
        for k in sorted({*range(n + 2), *extra_ks}):
            assert [ev async for ev in log.read(after=k)] == everything[k:]
        for k in sorted({0, 1, n // 3, n // 2, max(n - 1, 0), n, *extra_ks}):
            for stream in ["a", "b", "c"]:
                want = [e for e in everything if e.stream == stream and e.position > k]
                got = [ev async for ev in log.read(after=k, stream=stream)]
                assert got == want
            want = [e for e in everything if e.type == "t.1" and e.position > k]
            assert [ev async for ev in log.read(after=k, types=["t.1"])] == want
        assert await log.verify() is None

    run_with_log(body, clock=lambda: clock_now[0])


@LOG_PROPERTY
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=5),  # the idempotency key
            st.integers(min_value=1, max_value=3),  # events in the append
            st.booleans(),  # reopen the log before this append
        ),
        min_size=1,
        max_size=15,
    )
)
def test_idempotent_re_append(plan: list[tuple[int, int, bool]]) -> None:
    async def main(data_dir: Path) -> None:
        first: dict[int, nerve.AppendResult] = {}
        written = 0
        async with contextlib.AsyncExitStack() as stack:
            log = await stack.enter_async_context(nerve.open_log(data_dir))
            for key, count, reopen in plan:
                if reopen:
                    await stack.aclose()
                    log = await stack.enter_async_context(nerve.open_log(data_dir))
                result = await log.append(
                    f"s{key % 3}",
                    [NewEvent("t.e", {"key": key, "j": j}) for j in range(count)],
                    idempotency_key=f"k{key}",
                )
                if key in first:
                    assert result == first[key]._replace(duplicate=True)
                else:
                    assert result.duplicate is False
                    assert result.first_position == written + 1
                    first[key] = result
                    written += count
        async with nerve.open_log(data_dir) as log:
            events = [ev async for ev in log.read()]
            assert log.head == written
            assert await log.verify() is None
        assert len(events) == written
        assert len(events) == sum(
            next(c for k, c, _ in plan if k == key) for key in first
        )
        for key, result in first.items():
            got = [e for e in events if e.position in result.positions]
            assert {e.data["key"] for e in got} == {key}
            assert [e.data["j"] for e in got] == list(range(len(got)))

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp) / "data")
