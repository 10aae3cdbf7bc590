"""The workflow actor: admission control for one workflow type.

One actor per workflow type owns a nursery for its runs and enforces the
seed's rules:

- at most ``concurrency`` runs are ``started`` at a time;
- ``overflow="drop"``: a trigger arriving while every slot is busy is
  recorded ``dropped`` and never runs;
- ``overflow="queue"``: it is ``queued`` (FIFO); when the queue already holds
  ``max_queue`` runs, the **oldest** queued run is evicted (``dropped``) to
  make room (with ``max_queue=0`` the new run is dropped).

Queued runs are data (a deque), not parked tasks. Decisions are made in
memory, one message at a time, and their events are submitted to the log in
decision order without waiting for each fsync; the log writes them in that
order, so the log (and ``workflow_runs``) never shows more than
``concurrency`` runs started. A run's function starts only once its
``started`` event is durable. A freed slot starts the next queued run at once.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import trio

from nerve.events import (
    NO_STREAM,
    EventEncodingError,
    Log,
    NerveError,
    NewEvent,
    PendingAppend,
    WrongExpectedVersion,
)
from nerve.events._vocabulary import (
    RunCompleted,
    RunCrashed,
    RunDropped,
    RunFailed,
    RunInterrupted,
    RunQueued,
    RunStarted,
    StepJournaled,
    ThreadMessage,
    run_stream,
)
from nerve.events._writer import EncodedEvent

from ._actor import Actor
from ._app import WorkflowSpec
from ._run import Outcome, Run, RunHandle, closed_error

# Seeded once from the OS: os.urandom per id costs ~100 µs on some VMs, and
# ids need uniqueness (checked by the log: a run's stream must be new), not
# secrecy.
_ids = random.Random(secrets.token_bytes(32))


def new_run_id() -> str:
    """A fresh run id: the time in ms (12 hex digits), then 64 random bits.

    Time-ordered, so new runs' streams and ``workflow_runs`` rows land at the
    end of their B-tree indexes instead of at random places: measured, random
    ids dirtied a page per run per index and made each commit write ~4x as
    many pages.
    """
    return f"{time.time_ns() // 1_000_000:012x}{_ids.getrandbits(64):016x}"


@attrs.frozen
class Trigger:
    """Ask the workflow actor to admit a new run."""

    run_id: str
    payload: Any
    trigger: str
    handle: RunHandle
    queued: EncodedEvent | None = None
    """Its ``workflow.run.queued`` event, encoded (and so checked) already."""


@attrs.define(eq=False)
class _Entry:
    """A run waiting for a slot, or holding one."""

    run_id: str
    payload: Any
    attempt: int
    resumed: bool
    pending: list[PendingAppend] = attrs.field(factory=list)
    """Appends that must be durable before the run's function starts (a
    queued run lets go of its ``queued`` append once it is written)."""

    def settle(self) -> None:
        """Forget the appends already written: a backlog of queued runs holds
        no finished append requests (nor their events and results)."""
        self.pending = [p for p in self.pending if not p.ok]


@attrs.frozen
class WorkflowStatistics:
    """A workflow actor's view of its runs.

    Attributes:
        name: the workflow.
        running: runs holding a slot now.
        queued: runs waiting in the queue now.
        started, completed, failed, dropped, interrupted: counts since start.
    """

    name: str
    running: int
    queued: int
    started: int
    completed: int
    failed: int
    dropped: int
    interrupted: int


class WorkflowActor(Actor[Trigger]):
    """Admits, queues, drops, runs and records the runs of one workflow."""

    def __init__(self, spec: WorkflowSpec, log: Log) -> None:
        super().__init__(f"workflow:{spec.name}", mailbox_size=10_000)
        self.spec = spec
        self.log = log
        self.queue: deque[_Entry] = deque()
        self.running: set[str] = set()
        """The ids of the runs holding a slot."""
        self.handles: dict[str, RunHandle] = {}
        self.closing = False
        self._runs: trio.Nursery | None = None
        self._runs_closing = trio.Event()
        self._alive = 0
        self._all_done = trio.Event()
        self._all_done.set()
        self._interrupt_reason = "shutdown"
        self._resuming = 0
        """Crashed runs waiting in ``queue`` to resume (always at its front)."""
        self.counts = dict.fromkeys(
            ("started", "completed", "failed", "dropped", "interrupted"), 0
        )
        self._constant_events: dict[str, EncodedEvent] = {}
        self.on_transition: Callable[[str, str], None] | None = None
        """Called with (run id, status) at every decision (tests observe it)."""

    def statistics(self) -> WorkflowStatistics:  # type: ignore[override]
        return WorkflowStatistics(
            name=self.spec.name,
            running=len(self.running),
            queued=len(self.queue),
            **self.counts,
        )

    # -- running -----------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._host_runs)
            try:
                await super().run(task_status=task_status)
            except trio.Cancelled:
                raise  # runs are shielded: the kernel drains them with a grace period
            except BaseException:
                # Escalation: this actor is done for; do not leave its runs
                # holding the nursery open.
                self.interrupt_all("the workflow actor failed")
                raise
            finally:
                self._runs_closing.set()

    async def _host_runs(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The runs' nursery: shielded from the actor's cancellation (the
        kernel drains runs with a grace period, then `interrupt_all` cancels
        the nursery's scope: every run at once, one scope for them all).
        Open until the actor has stopped and its last run has ended."""
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as runs:
                self._runs = runs
                task_status.started()
                # Shielded from ``runs.cancel_scope`` too: interrupted runs
                # that were still to start must find the nursery open.
                with trio.CancelScope(shield=True):
                    await self._runs_closing.wait()

    def recover(self, resume: Sequence[Any], queued: Sequence[Any]) -> None:
        """Take up runs found in the log at start (before any trigger).

        ``resume``: crashed runs to start again, ahead of the queue;
        ``queued``: queued runs, in their original order.
        """
        for r in resume:
            self.queue.append(_Entry(r.run_id, r.payload, r.attempt + 1, True))
        self._resuming += len(resume)
        for r in queued:
            self.queue.append(_Entry(r.run_id, r.payload, max(r.attempt, 0) + 1, False))
        # Handles for them now, so `Kernel.handle` finds a live one at once
        # instead of racing the run's end with a read of its record.
        for e in self.queue:
            self.handles.setdefault(e.run_id, RunHandle(e.run_id, self.spec.name))
        limit = self.spec.max_queue
        queued_entries = [e for e in self.queue if not e.resumed]
        if self.spec.overflow == "queue" and len(queued_entries) > limit:
            for e in queued_entries[: len(queued_entries) - limit]:
                self.queue.remove(e)
                self._drop(e.run_id, "evicted: more queued runs than max_queue")
        self._admit_queued()

    async def handle(self, message: Trigger) -> None:
        try:
            self.admit(message)
        except Exception as e:
            # Its caller waits on the handle: tell it (the actor restarts).
            if self.handles.get(message.run_id) is message.handle:
                del self.handles[message.run_id]
            message.handle._fail(e)
            raise

    def admit(self, t: Trigger) -> None:
        """Decide a new trigger's fate (no awaits: decisions stay in order)."""
        spec = self.spec
        if t.run_id in self.handles or t.run_id in self.running:
            # A run of this id is live: a second one would share its slot
            # and handle. (One that ended is refused by the log: NO_STREAM.)
            t.handle._fail(WrongExpectedVersion(run_stream(t.run_id), NO_STREAM, 1))
            return
        self.handles[t.run_id] = t.handle
        stream = run_stream(t.run_id)
        queued = t.queued or self.log._encode(
            NewEvent("workflow.run.queued", RunQueued(spec.name, t.payload, t.trigger))
        )
        if (
            len(self.running) < spec.concurrency
            and not self.queue
            and not self.closing  # a trigger still in the mailbox at shutdown
        ):
            pending = self.log._submit_encoded(
                stream, [queued, self._first_start()], NO_STREAM
            )
            self._start(_Entry(t.run_id, t.payload, 1, False, [pending]))
        elif spec.overflow == "drop" or spec.max_queue == 0:
            reason = (
                "the kernel is shutting down"
                if self.closing
                else f"overflow: all {spec.concurrency} slots busy"
                if spec.overflow == "drop"
                else "overflow: the queue holds at most 0 runs"
            )
            dropped = self.log._encode(
                NewEvent("workflow.run.dropped", RunDropped(reason))
            )
            pending = self.log._submit_encoded(stream, [queued, dropped], NO_STREAM)
            self._dropped(t.run_id, reason, pending)
        else:
            if len(self.queue) - self._resuming >= spec.max_queue:
                self._evict_oldest()
            pending = self.log._submit_encoded(stream, [queued], NO_STREAM)
            entry = _Entry(t.run_id, t.payload, 1, False, [pending])
            pending.on_done(entry.settle)
            self.queue.append(entry)
            self._transition(t.run_id, "queued")
            if self.closing:  # it stays queued: the next start admits it
                del self.handles[t.run_id]
                t.handle._fail(closed_error(t.run_id))

    def _first_start(self) -> EncodedEvent:
        """The ``started`` event of a first attempt."""
        return self._constant(_FIRST_START)

    def _constant(self, event: NewEvent) -> EncodedEvent:
        """An event that is the same for every run (a first start, a
        completion with no result): encoded once per actor."""
        encoded = self._constant_events.get(event.type)
        if encoded is None:
            encoded = self._constant_events[event.type] = self.log._encode(event)
        return encoded

    def _evict_oldest(self) -> None:
        for entry in self.queue:
            if not entry.resumed:  # a crashed run waiting to resume is not queued
                self.queue.remove(entry)
                reason = f"evicted: the queue was full ({self.spec.max_queue} runs)"
                self._drop(entry.run_id, reason)
                return

    def _drop(self, run_id: str, reason: str) -> None:
        pending = self.log.submit(
            run_stream(run_id), NewEvent("workflow.run.dropped", RunDropped(reason))
        )
        self._dropped(run_id, reason, pending)

    def _dropped(self, run_id: str, reason: str, pending: PendingAppend) -> None:
        self.counts["dropped"] += 1
        self._transition(run_id, "dropped")
        handle = self.handles.pop(run_id, None)
        if handle is not None:
            handle._resolve(
                Outcome(run_id, self.spec.name, "dropped", error=reason), pending
            )

    def _admit_queued(self) -> None:
        while (
            self.queue
            and len(self.running) < self.spec.concurrency
            and not (self.closing)
        ):
            entry = self.queue.popleft()
            if entry.resumed:
                self._resuming -= 1
            started = (
                self._first_start()
                if entry.attempt == 1 and not entry.resumed
                else self.log._encode(
                    NewEvent(
                        "workflow.run.started", RunStarted(entry.attempt, entry.resumed)
                    )
                )
            )
            entry.pending.append(
                self.log._submit_encoded(
                    run_stream(entry.run_id),
                    [started],
                    # A queued run's stream holds its queued event only; if
                    # that was refused (a duplicate id), so is this.
                    None if entry.resumed else 1,
                )
            )
            self._start(entry)

    def _transition(self, run_id: str, status: str) -> None:
        if self.on_transition is not None:
            self.on_transition(run_id, status)

    def _start(self, entry: _Entry) -> None:
        assert self._runs is not None
        self.running.add(entry.run_id)
        self.counts["started"] += 1
        self._transition(entry.run_id, "started")
        self._alive += 1
        if self._all_done.is_set():  # a new Event only when it was idle
            self._all_done = trio.Event()
        # The run's task starts once its events are durable: it would only
        # wait for them (a park and a wake-up per run).
        last = entry.pending[-1] if entry.pending else None
        if last is None or last.done:
            self._spawn(entry)
        else:
            last.on_done(lambda: self._spawn(entry))

    def _spawn(self, entry: _Entry) -> None:
        assert self._runs is not None
        try:
            self._runs.start_soon(self._run, entry, name=f"run {entry.run_id}")
        except RuntimeError:
            # The actor stopped or failed meanwhile and its runs nursery is
            # closed: the run stays started in the log and is recovered as
            # crashed at the next start.
            self._run_ended()

    def _run_ended(self) -> None:
        self._alive -= 1
        if not self._alive:
            self._all_done.set()

    async def _run(self, entry: _Entry) -> None:
        spec = self.spec
        outcome: tuple[str, Any] | None = None
        handle = self.handles.get(entry.run_id)
        try:
            try:
                # The task starts once the last of them is written, and
                # the writer takes appends in order: all are done.
                for pending in entry.pending:
                    pending.result()
            except NerveError as e:
                outcome = ("unrecorded", e)
            else:
                try:
                    run = (
                        await self._resumed_run(entry)
                        if entry.resumed
                        else self._new_run(entry, [], [])
                    )
                    outcome = ("completed", await spec.fn(run))
                except Exception as e:
                    outcome = ("failed", e)
                except BaseException as e:
                    # Only `interrupt_all` cancels the runs' nursery: the run
                    # is interrupted (outcome None), recorded by `_finish`.
                    if not _only_cancelled(e):
                        raise
            self._finish(entry.run_id, outcome, handle)
        finally:
            self._run_ended()

    async def _resumed_run(self, entry: _Entry) -> Run:
        """A resumed run, with its thread and step journal read back."""
        messages: list[ThreadMessage] = []
        journal: list[StepJournaled] = []
        async for e in self.log.read(
            stream=run_stream(entry.run_id),
            types=["workflow.message", "workflow.step"],
        ):
            if isinstance(e.data, ThreadMessage):
                messages.append(e.data)
            else:
                journal.append(e.data)
        return self._new_run(entry, messages, journal)

    def _new_run(
        self,
        entry: _Entry,
        messages: list[ThreadMessage],
        journal: list[StepJournaled],
    ) -> Run:
        return Run(
            self.log,
            entry.run_id,
            self.spec.name,
            entry.payload,
            attempt=entry.attempt,
            resumed=entry.resumed,
            messages=messages,
            journal=journal,
        )

    def _finish(
        self, run_id: str, outcome: tuple[str, Any] | None, handle: RunHandle | None
    ) -> None:
        """Record the outcome, free the slot, start the next queued run."""
        name = self.spec.name
        stream = run_stream(run_id)
        pending: PendingAppend | None = None
        result: Outcome | None = None
        error: BaseException | None = None
        if outcome is None:  # cancelled by the drain
            reason = self._interrupt_reason
            pending = self.log.submit(
                stream, NewEvent("workflow.run.interrupted", RunInterrupted(reason))
            )
            result = Outcome(run_id, name, "interrupted", error=reason)
            self.counts["interrupted"] += 1
        elif outcome[0] == "unrecorded":
            error = outcome[1]  # its queued/started append failed: nothing to record
        elif outcome[0] == "completed":
            try:
                if outcome[1] is None:
                    pending = self.log._submit_encoded(
                        stream, [self._constant(_COMPLETED_NONE)]
                    )
                else:
                    pending = self.log.submit(
                        stream,
                        NewEvent("workflow.run.completed", RunCompleted(outcome[1])),
                    )
                result = Outcome(run_id, name, "completed", result=outcome[1])
                self.counts["completed"] += 1
            except EventEncodingError as e:
                outcome = ("failed", e)
        if outcome is not None and outcome[0] == "failed":
            exc = outcome[1]
            failed = RunFailed(exc.__class__.__name__, str(exc))
            pending = self.log.submit(stream, NewEvent("workflow.run.failed", failed))
            result = Outcome(
                run_id, name, "failed", None, failed.error_type, failed.message
            )
            self.counts["failed"] += 1
        self.running.remove(run_id)
        if result is not None:
            self._transition(run_id, result.status)
        self._admit_queued()
        # A handle asked for after the run started (`Kernel.handle`, e.g. on
        # a run resumed at start) is only in ``handles``.
        handle = self.handles.get(run_id) or handle
        if handle is not None:
            if error is not None:
                handle._fail(error)
            elif result is not None:
                handle._resolve(result, pending)
        # Forgotten once the outcome is durable: `Kernel.handle` meanwhile
        # finds this handle, not a record that does not show the outcome yet.
        if pending is None:
            self.handles.pop(run_id, None)
        else:
            pending.on_done(lambda: self._forget(run_id, handle))

    def _forget(self, run_id: str, handle: RunHandle | None) -> None:
        if handle is None or self.handles.get(run_id) is handle:
            self.handles.pop(run_id, None)

    # -- shutdown -------------------------------------------------------------------

    def interrupt_all(self, reason: str) -> None:
        """Cancel every running run; each is recorded ``interrupted``.

        Runs started afterwards (their ``started`` event was being written)
        are cancelled at once too: the runs' nursery stays cancelled.
        """
        self._interrupt_reason = reason
        if self._runs is not None:
            self._runs.cancel_scope.cancel()

    async def drain(self, grace: float, reason: str = "shutdown") -> None:
        """Stop admitting; give running runs ``grace`` seconds, then interrupt.

        Returns when every run task has ended and recorded its outcome.
        Queued runs stay queued in the log and are admitted at the next start.
        """
        self.closing = True
        with trio.move_on_after(grace):
            await self._all_done.wait()
        self.interrupt_all(reason)
        await self._all_done.wait()
        for run_id, handle in list(self.handles.items()):
            handle._fail(closed_error(run_id))
        self.handles.clear()


_FIRST_START: Final = NewEvent("workflow.run.started", RunStarted(1, False))
_COMPLETED_NONE: Final = NewEvent("workflow.run.completed", RunCompleted(None))


def _only_cancelled(e: BaseException) -> bool:
    """Whether ``e`` is a cancellation (or a group of nothing else)."""
    if isinstance(e, trio.Cancelled):
        return True
    if isinstance(e, BaseExceptionGroup):
        return e.split(trio.Cancelled)[1] is None
    return False


def crashed_event(reason: str) -> NewEvent:
    return NewEvent("workflow.run.crashed", RunCrashed(reason))
