"""The small trio helpers under nerve's resources."""

from __future__ import annotations

from typing import Any

import outcome
import pytest
import trio
import trio.testing

from nerve.events import _trio_util
from nerve.events._trio_util import parked

WAYS = [
    pytest.param(_trio_util._parked_trap, id="trap"),
    pytest.param(_trio_util._parked_public, id="public"),
]


class Spot:
    """A `Parkable` that records its aborts."""

    def __init__(self, abort: trio.lowlevel.Abort) -> None:
        self.waiter: trio.lowlevel.Task | None = None
        self.answer = abort
        self.aborts = 0

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        self.aborts += 1
        if self.answer is trio.lowlevel.Abort.SUCCEEDED:
            self.waiter = None
        return self.answer


def test_parked_yields_trios_own_trap_with_the_installed_trio() -> None:
    # The inlined way is the one in use; if trio moves its trap, this says so
    # (appends still work, the public way, a little slower).
    assert parked is _trio_util._parked_trap


@pytest.mark.parametrize("park", WAYS)
async def test_parked_returns_what_the_task_is_rescheduled_with(park: Any) -> None:
    spot = Spot(trio.lowlevel.Abort.FAILED)
    got: list[object] = []

    async def waiter() -> None:
        got.append(await park(spot))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert spot.waiter is not None
        assert not got
        trio.lowlevel.reschedule(spot.waiter, outcome.Value("written"))
    assert got == ["written"]


@pytest.mark.parametrize("park", WAYS)
async def test_parked_raises_the_error_it_is_rescheduled_with(park: Any) -> None:
    spot = Spot(trio.lowlevel.Abort.FAILED)
    got: list[BaseException] = []

    async def waiter() -> None:
        with pytest.raises(KeyError, match="refused") as caught:
            await park(spot)
        got.append(caught.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert spot.waiter is not None
        trio.lowlevel.reschedule(spot.waiter, outcome.Error(KeyError("refused")))
    assert len(got) == 1


@pytest.mark.parametrize("park", WAYS)
async def test_cancelling_a_parked_task_asks_its_abort(
    park: Any, autojump_clock: trio.testing.MockClock
) -> None:
    spot = Spot(trio.lowlevel.Abort.SUCCEEDED)
    with trio.move_on_after(1) as scope:
        await park(spot)
    assert scope.cancelled_caught
    assert spot.aborts == 1
    assert spot.waiter is None


@pytest.mark.parametrize("park", WAYS)
async def test_an_abort_that_fails_keeps_the_task_parked_until_rescheduled(
    park: Any,
) -> None:
    spot = Spot(trio.lowlevel.Abort.FAILED)
    got: list[object] = []

    async def waiter(scope: trio.CancelScope) -> None:
        with scope:
            got.append(await park(spot))

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, scope)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert spot.aborts == 1
        assert not got
        assert spot.waiter is not None
        trio.lowlevel.reschedule(spot.waiter, outcome.Value(7))
    assert got == [7]
