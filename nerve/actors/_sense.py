"""Sense groups: one actor per group computes its senses on their schedules.

Each sense runs every ``every`` seconds (fixed rate; a tick that arrives
while the previous computation still runs is skipped, not queued). A non-None
value is appended as ``sense.signal`` to the sense's stream; a compute that
raises appends ``sense.error`` and emits nothing, and the sense keeps its
schedule. After a signal is durable, the reflexes listening to it trigger
their workflows. A sense's private state is what it emitted: `Sense.history`
is recovered from its stream at start.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from nerve.events import Log, NerveError, NewEvent
from nerve.events._vocabulary import SenseError, SenseSignal, sense_stream

from ._actor import Actor
from ._app import ReflexSpec, SenseSpec
from ._mailbox import Overflow

HISTORY = 100
"""Signals a sense keeps in memory for `Sense.history`."""

TriggerFn = Callable[[str, Any, str], Awaitable[Any]]


class Sense:
    """What a sense's compute function receives.

    Attributes:
        group: the sense group.
        name: the sense's name.
        log: the log (to read other streams, for instance).
    """

    def __init__(self, group: str, name: str, log: Log) -> None:
        self.group = group
        self.name = name
        self.log = log
        self._history: deque[Any] = deque(maxlen=HISTORY)
        self.computed = 0
        self.errors = 0

    def __repr__(self) -> str:
        return f"<Sense {self.group}.{self.name}>"

    def history(self, n: int = 10) -> list[Any]:
        """The values of the last ``n`` signals, oldest first."""
        if n <= 0:
            return []
        return list(self._history)[-n:]

    @property
    def last(self) -> Any:
        """The last signal's value (None before the first)."""
        return self._history[-1] if self._history else None


@attrs.frozen
class Tick:
    sense: str


class SenseGroupActor(Actor[Tick]):
    """Computes the senses of one group, one at a time."""

    def __init__(
        self,
        group: str,
        specs: Sequence[SenseSpec],
        log: Log,
        reflexes: Sequence[ReflexSpec],
        trigger: TriggerFn,
    ) -> None:
        # Ticks that find the mailbox full are dropped: a slow sense skips
        # beats instead of building a backlog of stale computations.
        super().__init__(
            f"senses:{group}",
            mailbox_size=max(1, len(specs)),
            overflow=Overflow.DROP_NEW,
        )
        self.group = group
        self.specs = {s.name: s for s in specs}
        self.log = log
        self.reflexes = [r for r in reflexes if r.group == group]
        self.trigger = trigger
        self.senses = {s.name: Sense(group, s.name, log) for s in specs}
        self._recovered = False
        self._due: set[str] = set()
        """Senses with a tick waiting in the mailbox or being computed."""

    async def on_start(self) -> None:
        if self._recovered:
            return
        for name, sense in self.senses.items():
            events = await self.log.tail(
                sense_stream(self.group, name), HISTORY, types=["sense.signal"]
            )
            sense._history.extend(e.data.value for e in events)
        self._recovered = True

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(super().run)
            for spec in self.specs.values():
                nursery.start_soon(self._schedule, spec)
            task_status.started()

    async def _schedule(self, spec: SenseSpec) -> None:
        """Tick at a fixed rate, from now on (the first tick is immediate)."""
        start = trio.current_time()
        n = 0
        while not self.mailbox.closed:
            # A beat while this sense's last tick is still waiting or being
            # computed is skipped: a slow sense neither runs back to back
            # nor fills the mailbox its group's other senses need.
            if spec.name not in self._due and self.tell_nowait(Tick(spec.name)):
                self._due.add(spec.name)
            n += 1
            # Skip beats that already passed rather than firing them in a burst.
            now = trio.current_time()
            n = max(n, int((now - start) / spec.every) + 1)
            await trio.sleep_until(start + n * spec.every)

    async def handle(self, message: Tick) -> None:
        try:
            await self._compute(message)
        finally:
            self._due.discard(message.sense)

    async def _compute(self, message: Tick) -> None:
        spec = self.specs[message.sense]
        sense = self.senses[spec.name]
        stream = sense_stream(self.group, spec.name)
        try:
            value = await spec.fn(sense)
        except Exception as e:
            sense.errors += 1
            await self._error(spec.name, e)
            return
        sense.computed += 1
        if value is None:
            return
        try:
            result = await self.log.append(
                stream,
                NewEvent("sense.signal", SenseSignal(self.group, spec.name, value)),
            )
        except NerveError as e:  # e.g. a value that is not JSON
            sense.errors += 1
            await self._error(spec.name, e)
            return
        sense._history.append(value)
        await self._route(spec.name, value, result.last_position)

    async def _error(
        self, sense: str, error: Exception, message: str | None = None
    ) -> None:
        """Record ``sense.error`` on the sense's stream; it emits nothing."""
        await self.log.append(
            sense_stream(self.group, sense),
            NewEvent(
                "sense.error",
                SenseError(
                    self.group, sense, error.__class__.__name__, message or str(error)
                ),
            ),
        )

    async def _route(self, sense: str, value: Any, position: int) -> None:
        for reflex in self.reflexes:
            if reflex.sense != sense:
                continue
            try:
                fire = reflex.when is None or bool(reflex.when(value))
            except Exception as e:
                await self._error(
                    sense, e, f"reflex to {reflex.workflow!r}: when() raised: {e}"
                )
                continue
            if fire:
                payload = {
                    "group": self.group,
                    "sense": sense,
                    "value": value,
                    "position": position,
                }
                await self.trigger(reflex.workflow, payload, f"reflex:{reflex.signal}")
