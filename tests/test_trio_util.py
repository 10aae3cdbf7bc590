"""The small trio helpers under nerve's resources."""

from __future__ import annotations

from typing import Any

import outcome
import pytest
import trio
import trio.testing

from nerve.events._trio_util import Parking


def trap_way() -> Any:
    return Parking().wait


def public_way() -> Any:
    parking = Parking()
    return parking._wait_public


WAYS = [pytest.param(trap_way, id="trap"), pytest.param(public_way, id="public")]


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


def test_parking_yields_trios_own_trap_with_the_installed_trio() -> None:
    # The inlined way is the one in use; if trio moves its trap, this says so
    # (appends still work, the public way, a little slower).
    parking = Parking()
    assert parking.wait == parking._wait_trap


async def test_one_parking_serves_many_tasks_each_with_its_own_abort() -> None:
    """The trap is reused: each task still gets its own abort function."""
    parking = Parking()
    spots = [
        Spot(trio.lowlevel.Abort.SUCCEEDED if i % 2 else trio.lowlevel.Abort.FAILED)
        for i in range(6)
    ]
    got: dict[int, object] = {}
    scopes = [trio.CancelScope() for _ in spots]

    async def waiter(i: int) -> None:
        with scopes[i]:
            got[i] = await parking.wait(spots[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(spots)):
            nursery.start_soon(waiter, i)
        await trio.testing.wait_all_tasks_blocked()
        for scope in scopes:
            scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        # Each task asked its own spot: the odd ones left, the even ones wait.
        assert [s.aborts for s in spots] == [1] * 6
        assert got == {}  # none woken yet
        for i in (0, 2, 4):
            waiter_task = spots[i].waiter
            assert waiter_task is not None
            trio.lowlevel.reschedule(waiter_task, outcome.Value(i))
    assert got == {0: 0, 2: 2, 4: 4}
    assert [s.waiter is None for s in spots] == [False, True] * 3


@pytest.mark.parametrize("way", WAYS)
async def test_a_parked_task_returns_what_it_is_rescheduled_with(way: Any) -> None:
    spot = Spot(trio.lowlevel.Abort.FAILED)
    got: list[object] = []

    async def waiter() -> None:
        got.append(await way()(spot))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert spot.waiter is not None
        assert not got
        trio.lowlevel.reschedule(spot.waiter, outcome.Value("written"))
    assert got == ["written"]


@pytest.mark.parametrize("way", WAYS)
async def test_a_parked_task_raises_the_error_it_is_rescheduled_with(way: Any) -> None:
    spot = Spot(trio.lowlevel.Abort.FAILED)
    got: list[BaseException] = []

    async def waiter() -> None:
        with pytest.raises(KeyError, match="refused") as caught:
            await way()(spot)
        got.append(caught.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert spot.waiter is not None
        trio.lowlevel.reschedule(spot.waiter, outcome.Error(KeyError("refused")))
    assert len(got) == 1


@pytest.mark.parametrize("way", WAYS)
async def test_cancelling_a_parked_task_asks_its_abort(
    way: Any, autojump_clock: trio.testing.MockClock
) -> None:
    spot = Spot(trio.lowlevel.Abort.SUCCEEDED)
    with trio.move_on_after(1) as scope:
        await way()(spot)
    assert scope.cancelled_caught
    assert spot.aborts == 1
    assert spot.waiter is None


@pytest.mark.parametrize("way", WAYS)
async def test_an_abort_that_fails_keeps_the_task_parked_until_rescheduled(
    way: Any,
) -> None:
    spot = Spot(trio.lowlevel.Abort.FAILED)
    got: list[object] = []

    async def waiter(scope: trio.CancelScope) -> None:
        with scope:
            got.append(await way()(spot))

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
