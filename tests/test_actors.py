"""The actor runtime: tell/ask, one message at a time, mailbox overflow policies,
supervision (restart with exponential backoff, escalation), event-sourced
actors, and an escalating actor inside `open_kernel`.

Every test that involves time runs on the `autojump_clock` (virtual time).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import nerve
from nerve import ActorFailed, AskTimeout, MailboxFull, NewEvent, WrongExpectedVersion
from nerve.actors import Actor, EventSourcedActor, Mailbox, Overflow, WorkflowActor
from nerve.events import ActorStoppedError
from nerve.events._vocabulary import run_stream
from nerve.projections import RunQueries

# -- helpers -------------------------------------------------------------------


class Boom(Exception):
    pass


class Recorder(Actor[Any]):
    """Records what it handles; a message may be a callable to run instead."""

    def __init__(self, name: str = "recorder", **options: Any) -> None:
        super().__init__(name, **options)
        self.seen: list[Any] = []
        self.starts: list[float] = []
        self.active = 0
        self.max_active = 0

    async def on_start(self) -> None:
        self.starts.append(trio.current_time())

    async def handle(self, message: Any) -> Any:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if callable(message):
                return await message()
            if message == "boom":
                raise Boom("boom")
            self.seen.append(message)
            await trio.lowlevel.checkpoint()
            return ("ok", message)
        finally:
            self.active -= 1


class Gated(Recorder):
    """Blocks on ``gate`` before handling each message."""

    def __init__(self, **options: Any) -> None:
        super().__init__("gated", **options)
        self.gate = trio.Event()
        self.waiting = trio.Event()

    async def handle(self, message: Any) -> Any:
        self.waiting.set()
        await self.gate.wait()
        return await super().handle(message)


# -- tell / ask ----------------------------------------------------------------


async def test_tell_and_ask_return_the_handlers_value() -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert await actor.tell("a") is True
        assert await actor.ask("b") == ("ok", "b")
        assert actor.seen == ["a", "b"]
        stats = actor.statistics()
        assert (stats.name, stats.mailbox, stats.handled) == ("recorder", 0, 2)
        assert (stats.dropped, stats.restarts) == (0, 0)
        actor.stop()
    # stop(): run returned (the nursery closed), and the mailbox takes no more.
    with pytest.raises(ActorStoppedError):
        await actor.tell("late")


async def test_stop_handles_the_queued_messages_first() -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        for i in range(5):
            actor.tell_nowait(i)
        actor.stop()
    assert actor.seen == [0, 1, 2, 3, 4]


async def test_ask_times_out_with_ask_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        start = trio.current_time()
        with pytest.raises(AskTimeout, match="'recorder' did not answer within 2"):
            await actor.ask(trio.sleep_forever, timeout=2)
        assert trio.current_time() - start == pytest.approx(2)
        nursery.cancel_scope.cancel()


async def test_ask_timeout_also_covers_waiting_for_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Gated(mailbox_size=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await actor.tell("taken")  # the actor holds it, waiting on the gate
        await actor.waiting.wait()
        await actor.tell("queued")  # fills the mailbox
        with pytest.raises(AskTimeout):
            await actor.ask("no room", timeout=1)
        assert len(actor.mailbox) == 1
        actor.gate.set()
        actor.stop()
    assert actor.seen == ["taken", "queued"]


async def test_a_handler_exception_reaches_the_asker_and_restarts_the_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        with pytest.raises(Boom):
            await actor.ask("boom")
        # The actor restarted (on_start ran again) and answers again.
        assert await actor.ask("after") == ("ok", "after")
        assert len(actor.starts) == 2
        assert actor.statistics().restarts == 1
        actor.stop()


async def test_messages_are_handled_one_at_a_time_in_order() -> None:
    actor = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        async with trio.open_nursery() as senders:
            for s in range(4):

                async def send(s: int = s) -> None:
                    for i in range(50):
                        await actor.tell((s, i))

                senders.start_soon(send)
        actor.stop()
    assert actor.max_active == 1
    assert len(actor.seen) == 200
    for s in range(4):  # each sender's messages in the order it sent them
        assert [i for t, i in actor.seen if t == s] == list(range(50))


# -- mailbox overflow ---------------------------------------------------------------


async def test_mailbox_block_applies_back_pressure() -> None:
    actor = Gated(mailbox_size=2, overflow="block")
    sent: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await actor.tell(0)
        await actor.waiting.wait()  # 0 is being handled; the mailbox is empty

        async def sender() -> None:
            for i in range(1, 6):
                await actor.tell(i)
                sent.append(i)

        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        # Two fit in the mailbox; the third send waits for room.
        assert sent == [1, 2]
        assert len(actor.mailbox) == 2
        with pytest.raises(MailboxFull):
            actor.tell_nowait(99)  # no waiting allowed: block cannot apply
        actor.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [1, 2, 3, 4, 5]
        actor.stop()
    assert actor.seen == [0, 1, 2, 3, 4, 5]
    assert actor.statistics().dropped == 0


async def test_mailbox_drop_new_discards_the_new_message() -> None:
    actor = Gated(mailbox_size=2, overflow="drop_new")
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await actor.tell(0)
        await actor.waiting.wait()
        assert [await actor.tell(i) for i in range(1, 6)] == [
            True,
            True,
            False,
            False,
            False,
        ]
        assert actor.statistics().dropped == 3
        assert actor.statistics().mailbox == 2
        actor.gate.set()
        actor.stop()
    assert actor.seen == [0, 1, 2]


async def test_mailbox_drop_oldest_discards_the_oldest_queued_message() -> None:
    actor = Gated(mailbox_size=2, overflow=Overflow.DROP_OLDEST)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await actor.tell(0)
        await actor.waiting.wait()
        assert all([await actor.tell(i) for i in range(1, 6)])
        assert actor.statistics().dropped == 3
        actor.gate.set()
        actor.stop()
    assert actor.seen == [0, 4, 5]
    assert actor.statistics().handled == 3


async def test_mailbox_fail_raises_mailbox_full() -> None:
    actor = Gated(mailbox_size=2, overflow="fail")
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await actor.tell(0)
        await actor.waiting.wait()
        await actor.tell(1)
        await actor.tell(2)
        with pytest.raises(MailboxFull, match="mailbox full"):
            await actor.tell(3)
        with pytest.raises(MailboxFull):
            actor.tell_nowait(4)
        actor.gate.set()
        actor.stop()
    assert actor.seen == [0, 1, 2]
    # Refused is not dropped: the sender knows.
    assert actor.statistics().dropped == 0


async def test_a_backlog_is_consumed_in_batches_with_schedule_points() -> None:
    from nerve.actors._mailbox import YIELD_EVERY

    box: Mailbox[int] = Mailbox(capacity=1000)
    for i in range(200):
        box.put_nowait(i)
    got: list[int] = []
    seen: list[int] = []

    async def consumer() -> None:
        for _ in range(200):
            got.append(await box.get())  # noqa: PERF401 (an await per item)

    async def watcher() -> None:
        while len(got) < 200:
            seen.append(len(got))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        nursery.start_soon(watcher)
    assert got == list(range(200))  # FIFO
    # Other tasks ran while it worked through the backlog...
    assert any(0 < n < 200 for n in seen)
    # ...the consumer yielding once per YIELD_EVERY + 1 messages, not once per
    # message (the watcher may run after two of its turns: trio orders each
    # pass's runnable tasks at random).
    steps = [b - a for a, b in itertools.pairwise(seen) if b > a]
    assert len(steps) >= 200 // (2 * (YIELD_EVERY + 1))
    assert max(steps) <= 2 * (YIELD_EVERY + 1)
    assert min(steps) > 1


def test_mailbox_rejects_a_bad_capacity_or_policy() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Mailbox(0)
    with pytest.raises(ValueError):
        Mailbox(1, "sometimes")


async def test_a_blocked_sender_is_released_when_the_mailbox_closes() -> None:
    actor = Gated(mailbox_size=1)
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await actor.tell(0)
        await actor.waiting.wait()
        await actor.tell(1)

        async def sender() -> None:
            try:
                await actor.tell(2)
            except ActorStoppedError as e:
                errors.append(e)

        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        actor.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert len(errors) == 1
        actor.gate.set()
    assert actor.seen == [0, 1]


# -- supervision ------------------------------------------------------------------


async def test_a_failing_actor_restarts_with_exponential_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder(max_restarts=10, within=1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        for _ in range(5):
            actor.tell_nowait("boom")
        # The mailbox is kept across restarts: these are handled after them.
        actor.tell_nowait("a")
        actor.tell_nowait("b")
        actor.stop()
    gaps = [
        round(b - a, 6) for a, b in zip(actor.starts, actor.starts[1:], strict=False)
    ]
    assert gaps == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert actor.seen == ["a", "b"]
    assert actor.statistics().restarts == 5


async def test_the_backoff_is_capped_at_max_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder(max_restarts=10, within=1000, backoff=1, max_backoff=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        for _ in range(4):
            actor.tell_nowait("boom")
        actor.stop()
    gaps = [
        round(b - a, 6) for a, b in zip(actor.starts, actor.starts[1:], strict=False)
    ]
    assert gaps == [1, 2, 3, 3]


async def test_failures_past_max_restarts_within_the_window_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder(max_restarts=3, within=60)
    with pytest.RaisesGroup(
        pytest.RaisesExc(ActorFailed, match=r"failed 4 times within 60"),
    ) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            for _ in range(10):
                actor.tell_nowait("boom")
            await trio.sleep_forever()
    failed = caught.value.exceptions[0]
    assert isinstance(failed.__cause__, Boom)
    assert "last error: Boom: boom" in str(failed)
    assert actor.statistics().restarts == 3
    assert len(actor.starts) == 4


async def test_failures_outside_the_window_are_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Recorder(max_restarts=1, within=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        for _ in range(4):
            with pytest.raises(Boom):
                await actor.ask("boom")
            await trio.sleep(10)  # the last failure leaves the window
        assert await actor.ask("alive") == ("ok", "alive")
        actor.stop()
    assert actor.statistics().restarts == 4
    # The backoff restarts from its first step once the failures are forgotten.
    gaps = [
        round(b - a, 6) for a, b in zip(actor.starts, actor.starts[1:], strict=False)
    ]
    assert gaps == [0.1, 10.0, 10.0, 10.0]


async def test_on_start_failing_is_supervised_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class FlakyStart(Recorder):
        async def on_start(self) -> None:
            await super().on_start()
            if len(self.starts) < 3:
                raise Boom("not yet")

    actor = FlakyStart()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)  # returns once on_start succeeded
        assert len(actor.starts) == 3
        assert await actor.ask("x") == ("ok", "x")
        actor.stop()


# -- event-sourced actors ---------------------------------------------------------


class Counter(EventSourcedActor[Any, int]):
    def initial_state(self) -> int:
        return 0

    def evolve(self, state: int, event: nerve.RecordedEvent) -> int:
        return state + event.data["n"]

    async def handle(self, message: Any) -> int:
        if message == "state":
            return self.state
        await self.persist(NewEvent("counter.added", {"n": message}))
        return self.state


async def test_an_event_sourced_actor_recovers_its_state_by_folding(
    log: nerve.Log,
) -> None:
    async with trio.open_nursery() as nursery:
        first = Counter("counter", log, "counter-1")
        await nursery.start(first.run)
        assert await first.ask(2) == 2
        assert await first.ask(3) == 5
        first.stop()
    await log.append("counter-2", NewEvent("counter.added", {"n": 100}))
    async with trio.open_nursery() as nursery:
        again = Counter("counter", log, "counter-1")
        await nursery.start(again.run)
        assert (again.state, again.version) == (5, 2)
        assert await again.ask(1) == 6
        again.stop()
    assert await log.stream_version("counter-1") == 3


async def test_two_event_sourced_writers_of_one_stream_never_interleave(
    log: nerve.Log, autojump_clock: trio.testing.MockClock
) -> None:
    a = Counter("a", log, "shared")
    b = Counter("b", log, "shared")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)  # both folded version 0
        assert await a.ask(1) == 1
        with pytest.raises(WrongExpectedVersion):
            await b.ask(10)  # b's version is stale: its append is refused
        # b restarted with a fresh fold, then handles the next message.
        assert await b.ask("state") == 1
        assert b.statistics().restarts == 1
        assert await b.ask(10) == 11
        with pytest.raises(WrongExpectedVersion):
            await a.ask(100)
        assert await a.ask("state") == 11
        a.stop()
        b.stop()
    values = [e.data["n"] async for e in log.read(stream="shared")]
    assert values == [1, 10]


# -- escalation inside the kernel ---------------------------------------------------


async def test_an_escalating_actor_shuts_the_kernel_down_cleanly(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = nerve.App()
    entered = trio.Event()

    @app.workflow("w", concurrency=2)
    async def w(run: nerve.Run) -> None:
        entered.set()
        await trio.sleep_forever()

    original: Callable[..., Any] = WorkflowActor.admit

    def admit(self: WorkflowActor, message: Any) -> None:
        if message.payload == "boom":
            raise Boom("the actor broke")
        original(self, message)

    monkeypatch.setattr(WorkflowActor, "admit", admit)
    broken: list[nerve.RunHandle] = []
    handles: list[nerve.RunHandle] = []

    async def body() -> None:
        async with nerve.open_kernel(app, tmp_path, grace=5) as kernel:
            handles.append(await kernel.trigger("w"))
            await entered.wait()
            for _ in range(6):  # the default limit is 5 restarts
                broken.append(await kernel.trigger("w", "boom"))  # noqa: PERF401
            # (Not a long sleep: virtual time races ahead while the log writes.)
            await trio.sleep_forever()

    with pytest.raises(ActorFailed, match=r"workflow:w.*Boom: the actor broke"):
        await body()
    (running,) = handles
    # The triggers whose handling failed know it.
    for handle in broken:
        with pytest.raises(Boom):
            await handle.wait()
    # The run still running was interrupted and recorded so.
    interrupted = await running.wait()
    assert interrupted.status == "interrupted"
    assert interrupted.error == "the workflow actor failed"
    async with nerve.open_log(tmp_path) as log:
        record = await RunQueries(log).get(running.run_id)
        events = [e.type async for e in log.read(stream=run_stream(running.run_id))]
    assert record is not None
    assert record.status == "interrupted"
    assert events[-1] == "workflow.run.interrupted"
