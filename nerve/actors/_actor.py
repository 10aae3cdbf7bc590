"""Actors: a mailbox, one message at a time, and supervision by restart.

An actor handles its messages one at a time in its own task, so its state
needs no locks. ``tell`` sends without waiting for an answer; ``ask`` waits
for the handler's return value (with a timeout). If the handler raises, the
actor is restarted (``on_start`` runs again, the mailbox is kept) after an
exponential backoff; past ``max_restarts`` failures within ``within``
seconds the failure escalates as `ActorFailed` to whoever runs the actor —
the kernel, which then shuts down cleanly with that error.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

import attrs
import trio

from nerve.events import ActorFailed, AskTimeout

from ._mailbox import Mailbox, MailboxClosed, Overflow

M = TypeVar("M")


@attrs.frozen
class ActorStatistics:
    """An actor's counters.

    Attributes:
        name: the actor's name.
        mailbox: messages waiting.
        handled: messages handled.
        dropped: messages dropped by the mailbox's overflow policy.
        restarts: restarts after a failure.
    """

    name: str
    mailbox: int
    handled: int
    dropped: int
    restarts: int


@attrs.define(eq=False)
class _Ask:
    message: Any
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


class Actor(Generic[M]):
    """Subclass and implement `handle`; run with ``await nursery.start(a.run)``.

    Args:
        name: for statistics and error messages.
        mailbox_size: the mailbox's capacity.
        overflow: ``block`` (back-pressure), ``drop_new``, ``drop_oldest`` or
            ``fail`` when the mailbox is full.
        max_restarts: failures tolerated within ``within`` seconds.
        within: the window of ``max_restarts``.
        backoff: the first restart's delay (seconds); it doubles each time,
            up to ``max_backoff``.
    """

    def __init__(
        self,
        name: str,
        *,
        mailbox_size: int = 1000,
        overflow: Overflow | str = Overflow.BLOCK,
        max_restarts: int = 5,
        within: float = 60.0,
        backoff: float = 0.1,
        max_backoff: float = 10.0,
    ) -> None:
        self.name = name
        self.mailbox: Mailbox[M | _Ask] = Mailbox(mailbox_size, overflow)
        self.max_restarts = max_restarts
        self.within = within
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._handled = 0
        self._restarts = 0
        self._failures: deque[float] = deque()

    # -- to override ------------------------------------------------------------------

    async def on_start(self) -> None:
        """(Re)build the actor's state; runs at start and after each restart."""

    async def handle(self, message: M) -> Any:
        """Handle one message; the return value answers an ``ask``."""
        raise NotImplementedError

    # -- sending ------------------------------------------------------------

    # A plain function returning the mailbox's coroutine: ``await a.tell(m)``
    # runs one coroutine frame per message, not two.
    def tell(self, message: M) -> Coroutine[Any, Any, bool]:
        """Send without waiting for an answer (waits for room if ``block``).

        Await the result: ``await actor.tell(message)``.

        Returns:
            False if the mailbox's overflow policy dropped the message.
        """
        return self.mailbox.put(message)

    def tell_nowait(self, message: M) -> bool:
        """Send without waiting at all; see `Mailbox.put_nowait`."""
        return self.mailbox.put_nowait(message)

    # A timeout parameter, not a cancel scope: an unanswered ask is an error of
    # the actor (AskTimeout), distinct from the caller's own cancellation.
    async def ask(self, message: M, *, timeout: float = math.inf) -> Any:  # noqa: ASYNC109
        """Send and wait for the handler's return value.

        Raises:
            AskTimeout: no answer within ``timeout`` seconds.
            Exception: whatever the handler raised for this message.
        """
        ask = _Ask(message)
        with trio.move_on_after(timeout) as scope:
            await self.mailbox.put(ask)
            await ask.done.wait()
        if scope.cancelled_caught:
            raise AskTimeout(f"actor {self.name!r} did not answer within {timeout} s")
        if ask.error is not None:
            raise ask.error
        return ask.result

    def stop(self) -> None:
        """Take no more messages; `run` returns once the queued ones are handled."""
        self.mailbox.close()

    def statistics(self) -> ActorStatistics:
        return ActorStatistics(
            name=self.name,
            mailbox=len(self.mailbox),
            handled=self._handled,
            dropped=self.mailbox.dropped,
            restarts=self._restarts,
        )

    # -- running ------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Handle messages until stopped, restarting after failures."""
        started = False
        while True:
            try:
                await self.on_start()
                if not started:
                    started = True
                    task_status.started()
                await self._loop()
                return
            except Exception as e:
                await self._restart_or_escalate(e)

    async def _loop(self) -> None:
        mailbox = self.mailbox
        handle = self.handle
        while True:
            try:
                message = await mailbox.get()
            except MailboxClosed:
                return
            if isinstance(message, _Ask):
                try:
                    message.result = await handle(message.message)
                except Exception as e:
                    message.error = e
                    message.done.set()
                    raise
                message.done.set()
            else:
                await handle(message)
            self._handled += 1

    async def _restart_or_escalate(self, error: Exception) -> None:
        now = trio.current_time()
        failures = self._failures
        failures.append(now)
        while failures and failures[0] < now - self.within:
            failures.popleft()
        if len(failures) > self.max_restarts:
            raise ActorFailed(
                f"actor {self.name!r} failed {len(failures)} times within "
                f"{self.within} s (limit {self.max_restarts}); last error: "
                f"{error.__class__.__name__}: {error}"
            ) from error
        self._restarts += 1
        delay = min(self.max_backoff, self.backoff * 2 ** (len(failures) - 1))
        await trio.sleep(delay)
