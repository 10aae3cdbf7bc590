"""An actor's mailbox: a bounded FIFO with a choice of overflow policy.

trio's memory channels block a sender when full; an actor may instead want to
drop the new message, drop the oldest one, or fail. This mailbox offers all
four on a deque and two parking lots, with the same cost per message as a
memory channel (one schedule point per send). The consumer yields to the
scheduler once per `YIELD_EVERY` messages while its mailbox has more (and
whenever it must wait): an actor working through a backlog costs one
scheduler pass per batch of messages instead of one per message.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Generic, TypeVar

import trio

from nerve.events import ActorStoppedError, MailboxFull

T = TypeVar("T")

YIELD_EVERY = 32
"""Messages `Mailbox.get` may return in a row without a schedule point."""


class Overflow(enum.Enum):
    """What `Mailbox.put` does when the mailbox is full."""

    BLOCK = "block"
    """Wait for room (back-pressure)."""
    DROP_NEW = "drop_new"
    """Discard the new message."""
    DROP_OLDEST = "drop_oldest"
    """Discard the oldest queued message to make room."""
    FAIL = "fail"
    """Raise `MailboxFull`."""


class MailboxClosed(Exception):
    """Raised by `Mailbox.get` once the mailbox is closed and empty."""


class Mailbox(Generic[T]):
    """A bounded FIFO of messages for one consumer."""

    def __init__(
        self, capacity: int = 1000, overflow: Overflow | str = Overflow.BLOCK
    ) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be >= 1, got {capacity!r}")
        self.capacity = capacity
        self.overflow = Overflow(overflow)
        self.dropped = 0
        self._items: deque[T] = deque()
        self._receivers = trio.lowlevel.ParkingLot()
        self._senders = trio.lowlevel.ParkingLot()
        self._closed = False
        self._unyielded = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put_nowait(self, item: T) -> bool:
        """Put without waiting. Returns False if the message was dropped.

        Raises:
            MailboxFull: full, and the policy is ``fail`` or ``block``.
            ActorStoppedError: the mailbox is closed.
        """
        if self._closed:
            raise ActorStoppedError("the actor has stopped; its mailbox is closed")
        if len(self._items) >= self.capacity:
            if self.overflow is Overflow.DROP_NEW:
                self.dropped += 1
                return False
            if self.overflow is Overflow.DROP_OLDEST:
                self._items.popleft()
                self.dropped += 1
            else:
                raise MailboxFull(
                    f"mailbox full ({self.capacity} messages, overflow "
                    f"{self.overflow.value!r})"
                )
        self._items.append(item)
        if self._receivers:
            self._receivers.unpark()
        return True

    async def put(self, item: T) -> bool:
        """Put, waiting for room if the policy is ``block``."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.overflow is Overflow.BLOCK:
            while len(self._items) >= self.capacity and not self._closed:
                await self._senders.park()
        ok = self.put_nowait(item)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return ok

    async def get(self) -> T:
        """The next message, waiting for one.

        Raises:
            MailboxClosed: the mailbox was closed and is empty.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        parked = False
        while not self._items:
            if self._closed:
                raise MailboxClosed
            await self._receivers.park()
            parked = True
        item = self._items.popleft()
        if self._senders:
            self._senders.unpark()
        if parked:
            self._unyielded = 0  # it just waited: that was its schedule point
        elif self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            self._unyielded += 1
        return item

    def close(self) -> None:
        """Take no more messages; the consumer gets those already queued."""
        self._closed = True
        self._receivers.unpark_all()
        self._senders.unpark_all()
