"""A workflow run as its function sees it (a thread), and its handle and outcome."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from nerve.events import (
    KernelClosedError,
    Log,
    NewEvent,
    PendingAppend,
    StepMismatchError,
)
from nerve.events._vocabulary import StepJournaled, ThreadMessage, run_stream


@attrs.frozen
class Outcome:
    """How a run ended.

    Attributes:
        run_id: the run.
        workflow: its workflow.
        status: completed, failed, interrupted or dropped (or crashed).
        result: what the workflow function returned (completed).
        error_type: the exception's type (failed).
        error: its message, or why the run was dropped or interrupted.
    """

    run_id: str
    workflow: str
    status: str
    result: Any = None
    error_type: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"


class RunHandle:
    """A triggered run; ``await handle.wait()`` for its `Outcome`."""

    # One per queued run (a backlog may hold many): slots, and a trio.Event
    # only once someone waits before the run has ended.
    __slots__ = (
        "_done",
        "_error",
        "_event",
        "_outcome",
        "_pending",
        "run_id",
        "workflow",
    )

    def __init__(self, run_id: str, workflow: str) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self._done = False
        self._event: trio.Event | None = None
        self._outcome: Outcome | None = None
        self._pending: PendingAppend | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<RunHandle {self.workflow}/{self.run_id}>"

    @property
    def done(self) -> bool:
        return self._done

    def _set_done(self) -> None:
        self._done = True
        if self._event is not None:
            self._event.set()

    def _resolve(self, outcome: Outcome, pending: PendingAppend | None = None) -> None:
        if not self._done:
            self._outcome = outcome
            self._pending = pending
            self._set_done()

    def _fail(self, error: BaseException) -> None:
        if not self._done:
            self._error = error
            self._set_done()

    async def wait(self) -> Outcome:
        """Wait until the run ends and its last event is durable.

        Raises:
            KernelClosedError: the kernel stopped first (the run is still
                queued, or was started and will resume at the next start).
            NerveError: the run's events could not be written.
        """
        # The run's last append is the actor's: waiting here only observes it
        # (a cancelled wait must not withdraw it).
        if not self._done:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
            if self._pending is not None:
                await self._pending.wait(withdraw=False)
        elif self._pending is not None:
            await self._pending.wait(withdraw=False)  # one schedule point
        else:
            await trio.lowlevel.checkpoint()
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        return self._outcome


def closed_error(run_id: str) -> KernelClosedError:
    return KernelClosedError(
        f"run {run_id!r} had not ended when the kernel stopped; it is still "
        "recorded and is taken up again at the next start"
    )


class Run:
    """The thread of one workflow run, passed to the workflow function.

    Attributes:
        id: the run's id.
        workflow: the workflow's name.
        payload: the trigger's payload.
        attempt: 1 for the first start, +1 for each resume after a crash.
        resumed: whether this start resumes a crashed run.
        messages: the thread so far (from earlier attempts, then this one).
    """

    def __init__(
        self,
        log: Log,
        run_id: str,
        workflow: str,
        payload: Any,
        *,
        attempt: int = 1,
        resumed: bool = False,
        messages: list[ThreadMessage] | None = None,
        journal: list[StepJournaled] | None = None,
    ) -> None:
        self.id = run_id
        self.workflow = workflow
        self.payload = payload
        self.attempt = attempt
        self.resumed = resumed
        self.messages: list[ThreadMessage] = list(messages or ())
        self._journal = list(journal or ())
        self._log = log
        self._stream = run_stream(run_id)
        self._seq = 0

    def __repr__(self) -> str:
        return f"<Run {self.workflow}/{self.id} attempt {self.attempt}>"

    async def say(self, role: str, content: Any) -> None:
        """Append a message to the run's thread (durable when this returns)."""
        message = ThreadMessage(role, content)
        await self._log.append(self._stream, NewEvent("workflow.message", message))
        self.messages.append(message)

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` once per run, journaling its result.

        A resumed run gets the journaled result back instead of running the
        step again, so a side effect inside a completed step happens once.
        Results travel as JSON: a tuple comes back as a list.

        Raises:
            StepMismatchError: on resume, the steps come in another order
                than they were journaled (the workflow is not deterministic).
        """
        seq = self._seq
        self._seq += 1
        if seq < len(self._journal):
            entry = self._journal[seq]
            if entry.name != name:
                raise StepMismatchError(
                    f"run {self.id!r}: step #{seq} is {name!r}, but the journal "
                    f"recorded {entry.name!r}; a resumed workflow must call its "
                    "steps in the same order"
                )
            return entry.result
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
        await self._log.append(
            self._stream, NewEvent("workflow.step", StepJournaled(name, result, seq))
        )
        return result

    async def emit(
        self, type: str, data: Any, *, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Append an event of your own to the run's stream."""
        await self._log.append(self._stream, NewEvent(type, data, meta or {}))
