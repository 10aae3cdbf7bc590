"""The garbage-collector setting of logs and kernels (`nerve.gc_tuned`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

import nerve


@pytest.fixture(autouse=True)
def default_threshold() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, *saved[1:])
    yield
    gc.set_threshold(*saved)


def test_gc_tuned_raises_the_young_threshold_for_the_block() -> None:
    old = gc.get_threshold()
    with nerve.gc_tuned(5000):
        assert gc.get_threshold() == (5000, *old[1:])
    assert gc.get_threshold() == old


def test_gc_tuned_leaves_a_higher_threshold_and_none_alone() -> None:
    gc.set_threshold(20_000)
    with nerve.gc_tuned(5000):
        assert gc.get_threshold()[0] == 20_000
    assert gc.get_threshold()[0] == 20_000
    gc.set_threshold(700)
    with nerve.gc_tuned(None):
        assert gc.get_threshold()[0] == 700


def test_gc_tuned_keeps_a_setting_changed_inside_the_block() -> None:
    with nerve.gc_tuned(5000):
        gc.set_threshold(3000)
    assert gc.get_threshold()[0] == 3000


def test_gc_tuned_refuses_a_threshold_below_one() -> None:
    with (
        pytest.raises(ValueError, match="gc threshold must be >= 1"),
        nerve.gc_tuned(0),
    ):
        pass
    assert gc.get_threshold()[0] == 700


async def test_a_kernel_runs_with_the_tuned_threshold(tmp_path: Path) -> None:
    app = nerve.App()

    @app.workflow("w")
    async def w(run: nerve.Run) -> int:
        return gc.get_threshold()[0]

    async with nerve.open_kernel(app, tmp_path / "a") as kernel:
        outcome = await (await kernel.trigger("w")).wait()
        assert outcome.result == 10_000
    assert gc.get_threshold()[0] == 700
    async with nerve.open_kernel(app, tmp_path / "b", gc_threshold=None) as kernel:
        outcome = await (await kernel.trigger("w")).wait()
        assert outcome.result == 700


async def test_a_log_runs_with_the_tuned_threshold(tmp_path: Path) -> None:
    async with nerve.open_log(tmp_path / "a") as log:
        assert gc.get_threshold()[0] == 10_000
        await log.append("s", nerve.NewEvent("t.happened", {}))
    assert gc.get_threshold()[0] == 700
    async with nerve.open_log(tmp_path / "b", gc_threshold=2000):
        assert gc.get_threshold()[0] == 2000
    async with nerve.open_log(tmp_path / "c", gc_threshold=None):
        assert gc.get_threshold()[0] == 700
    assert gc.get_threshold()[0] == 700
