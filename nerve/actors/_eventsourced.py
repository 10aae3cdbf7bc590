"""Event-sourced actors: state is the fold of the actor's own stream.

At every (re)start the actor folds its stream from the log; it persists new
events with ``expected_version`` set to the version it folded, so two writers
of one stream can never interleave: the second gets `WrongExpectedVersion`,
fails, and is restarted with a fresh fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from nerve.events import AppendResult, Log, NewEvent, RecordedEvent

from ._actor import Actor

M = TypeVar("M")
S = TypeVar("S")


class EventSourcedActor(Actor[M], Generic[M, S]):
    """An actor whose state is folded from its stream.

    Implement `initial_state`, `evolve` and `handle`; call `persist` from
    `handle` to record what happened.
    """

    def __init__(self, name: str, log: Log, stream: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.log = log
        self.stream = stream
        self.version = 0
        self.state: S = self.initial_state()

    def initial_state(self) -> S:
        raise NotImplementedError

    def evolve(self, state: S, event: RecordedEvent) -> S:
        """The state after ``event``."""
        raise NotImplementedError

    async def on_start(self) -> None:
        state = self.initial_state()
        version = 0
        async for event in self.log.read(stream=self.stream):
            state = self.evolve(state, event)
            version = event.version
        self.state = state
        self.version = version

    async def persist(self, events: NewEvent | Sequence[NewEvent]) -> AppendResult:
        """Append to the actor's stream at the version it folded, then fold them.

        Raises:
            WrongExpectedVersion: another writer appended to the stream.
        """
        result = await self.log.append(
            self.stream, events, expected_version=self.version
        )
        async for event in self.log.read(
            after=result.first_position - 1, stream=self.stream
        ):
            if event.position > result.last_position:
                break
            self.state = self.evolve(self.state, event)
        self.version = result.version
        return result
