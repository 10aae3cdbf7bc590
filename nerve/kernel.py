"""The kernel: the log, the projections and every actor in one nursery.

``async with nerve.open_kernel(app, data_dir) as kernel`` opens the log,
brings ``workflow_runs`` up to date (inline) and each sense group's
``_signals`` (async), recovers from the log alone — runs left ``started`` by
a dead process become ``crashed`` and, if their workflow resumes, start again
ahead of the queue; ``queued`` runs are re-admitted in their original order —
then starts one actor per workflow type and one per sense group.

Leaving the block (or being cancelled) stops admitting, gives running runs a
grace period, then cancels the rest and records them ``interrupted``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from nerve._gc import DEFAULT_GC_THRESHOLD
from nerve.actors import (
    App,
    Outcome,
    RunHandle,
    SenseGroupActor,
    Trigger,
    WorkflowActor,
    WorkflowStatistics,
    new_run_id,
)
from nerve.actors._actor import ActorStatistics
from nerve.actors._workflow import crashed_event
from nerve.events import (
    KernelClosedError,
    Log,
    LogStatistics,
    NewEvent,
    UnknownWorkflowError,
    open_log,
)
from nerve.events._log import check_stream
from nerve.events._trio_util import single_error
from nerve.events._vocabulary import (
    CRASHED,
    QUEUED,
    STARTED,
    TERMINAL_STATUSES,
    TRIGGERS_STREAM,
    RunQueued,
    TriggerRequested,
    run_stream,
)
from nerve.projections import (
    ProjectionRunner,
    ProjectionStatistics,
    RunQueries,
    RunRecord,
    SignalRecord,
    Signals,
    WorkflowRuns,
    attach_inline,
    read_signals,
)
from nerve.projections._inline import InlineProjection

if TYPE_CHECKING:  # imported when the kernel opens it: it needs numpy
    from nerve.knowledge import Embedder, Knowledge

DEFAULT_GRACE = 10.0
_REQUESTS = "kernel.trigger-requests"


@attrs.frozen
class KernelStatistics:
    """A snapshot of the whole kernel."""

    log: LogStatistics
    workflows: tuple[WorkflowStatistics, ...]
    senses: tuple[ActorStatistics, ...]
    projections: tuple[ProjectionStatistics, ...]


class Kernel:
    """A running nerve: trigger workflows, query runs and signals.

    Obtain one with `open_kernel`.
    """

    def __init__(self, app: App, log: Log, grace: float) -> None:
        self.app = app
        self.log = log
        self.grace = grace
        self.queries = RunQueries(log)
        self.workflows: dict[str, WorkflowActor] = {}
        self.senses: dict[str, SenseGroupActor] = {}
        self.projections: dict[str, ProjectionRunner] = {}
        self.closing = False
        self._inline: InlineProjection | None = None
        self.knowledge: Knowledge | None = None
        """The knowledge store (None when opened with ``knowledge=False``)."""

    @property
    def data_dir(self) -> os.PathLike[str]:
        return self.log.data_dir

    # -- workflows ---------------------------------------------------------------

    async def trigger(
        self,
        workflow: str,
        payload: Any = None,
        *,
        run_id: str | None = None,
        trigger: str = "api",
    ) -> RunHandle:
        """Start (or queue, or drop) a run of ``workflow``.

        Returns once the workflow's actor has decided: the run is started,
        queued or dropped (its events follow in that order). ``await
        handle.wait()`` gives the outcome.

        Raises:
            UnknownWorkflowError: no such workflow.
            EventEncodingError: the payload is not JSON-serializable.
            KernelClosedError: the kernel is shutting down.
        """
        if self.closing:
            raise KernelClosedError(
                f"the kernel is shutting down; {workflow!r} was not triggered"
            )
        actor = self.workflows.get(workflow)
        if actor is None:
            known = ", ".join(sorted(self.workflows)) or "none"
            raise UnknownWorkflowError(
                f"no workflow named {workflow!r} (defined: {known})"
            )
        handle = RunHandle(run_id or new_run_id(), workflow)
        # Encode here, and check the run's stream name, so a bad payload or
        # run id fails its caller, not the actor (which reuses the encoding).
        queued = self.log._encode(
            NewEvent("workflow.run.queued", RunQueued(workflow, payload, trigger))
        )
        check_stream(run_stream(handle.run_id))
        await actor.tell(Trigger(handle.run_id, payload, trigger, handle, queued))
        return handle

    async def handle(self, run_id: str) -> RunHandle:
        """A handle on an existing run (in flight, or ended: then resolved)."""
        for live_actor in self.workflows.values():
            live = live_actor.handles.get(run_id)
            if live is not None:
                return live
        record = await self.queries.get(run_id)
        if record is None:
            raise LookupError(f"no run {run_id!r}")
        actor = self.workflows.get(record.workflow)
        if actor is not None and run_id in actor.handles:
            return actor.handles[run_id]  # admitted while the record was read
        handle = RunHandle(run_id, record.workflow)
        # Not live: ended, or crashed and not resumed (resumed runs have a
        # handle from recovery on).
        if record.status in TERMINAL_STATUSES or record.status == CRASHED or not actor:
            handle._resolve(_outcome(record))
        else:
            self.workflows[record.workflow].handles.setdefault(run_id, handle)
            handle = self.workflows[record.workflow].handles[run_id]
        return handle

    async def runs(
        self,
        *,
        workflow: str | None = None,
        status: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Rows of ``workflow_runs``, oldest first."""
        return await self.queries.list(workflow=workflow, status=status, limit=limit)

    async def run(self, run_id: str) -> RunRecord | None:
        """One row of ``workflow_runs``."""
        return await self.queries.get(run_id)

    # -- senses --------------------------------------------------------------------

    async def signals(
        self, group: str, sense: str | None = None, n: int = 10
    ) -> list[SignalRecord]:
        """The newest signals of a sense group (from its ``_signals`` table)."""
        runner = self.projections.get(group)
        if runner is None:
            known = ", ".join(self.senses) or "none"
            raise LookupError(f"no sense group {group!r} (defined: {known})")
        return await runner.query(lambda conn: read_signals(conn, sense, n))

    # -- state -----------------------------------------------------------------------

    def statistics(self) -> KernelStatistics:
        return KernelStatistics(
            log=self.log.statistics(),
            workflows=tuple(a.statistics() for a in self.workflows.values()),
            senses=tuple(a.statistics() for a in self.senses.values()),
            projections=tuple(p.statistics() for p in self.projections.values())
            + ((self.knowledge.runner.statistics(),) if self.knowledge else ()),
        )

    # -- lifecycle --------------------------------------------------------------------

    async def _recover(self) -> None:
        """Crash recovery from the log alone (see the module docstring)."""
        left = await self.queries.list(status=[STARTED, CRASHED])
        marks = [
            self.log.submit(
                run_stream(r.run_id),
                crashed_event("the process running it stopped before it ended"),
            )
            for r in left
            if r.status == STARTED
        ]
        for pending in marks:
            await pending.wait()
        queued = await self.queries.list(status=QUEUED)
        for name, actor in self.workflows.items():
            resume = (
                [r for r in left if r.workflow == name] if actor.spec.resume else []
            )
            actor.recover(resume, [r for r in queued if r.workflow == name])

    async def _follow_requests(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Admit the trigger requests other processes append (`request_trigger`).

        The position handled last is checkpointed in ``logs.db``, so a request
        made while no kernel ran is admitted at the next start, and each is
        admitted once (a run id that already exists is skipped).
        """
        log = self.log

        def checkpoint(conn: Any) -> int:
            rows = conn.execute(
                "SELECT position FROM projections WHERE name = ?", (_REQUESTS,)
            ).fetchall()
            return int(rows[0][0]) if rows else 0

        reader = log.subscribe(
            after=await log._read(checkpoint), types=["workflow.trigger.requested"]
        )
        task_status.started()
        while (got := await reader.next_page()) is not None:
            events, scanned = got
            if not events:
                continue
            for e in events:
                request: TriggerRequested = e.data
                if request.workflow not in self.workflows:
                    continue  # `request_trigger` refuses unknown names up front
                if await self.queries.get(request.run_id) is not None:
                    continue
                if self.closing:
                    # Draining: `trigger` would refuse it. Leave the checkpoint
                    # before it so the next kernel admits it (the requests of
                    # this page admitted already are skipped then: they exist).
                    return
                await self.trigger(
                    request.workflow,
                    request.payload,
                    run_id=request.run_id,
                    trigger="request",
                )

            def save(conn: Any, position: int = scanned) -> None:
                conn.execute(
                    "INSERT OR REPLACE INTO projections VALUES (?, 1, ?)",
                    (_REQUESTS, position),
                )

            await log.write_job(save)

    async def _shutdown(self) -> None:
        self.closing = True
        for actor in self.workflows.values():
            # Stop admitting now, before any other task runs: a trigger still
            # in a mailbox must not start a run the drain then interrupts.
            actor.closing = True
        for senses in self.senses.values():
            senses.stop()
        async with trio.open_nursery() as nursery:
            for actor in self.workflows.values():
                nursery.start_soon(actor.drain, self.grace)
        for actor in self.workflows.values():
            actor.stop()


async def request_trigger(
    log: Log,
    workflow: str,
    payload: Any = None,
    *,
    run_id: str | None = None,
) -> str:
    """Ask a kernel, possibly running in another process, to trigger a run.

    Appends a ``workflow.trigger.requested`` event; the kernel following the
    log admits it (or the next kernel to start, if none runs now).

    Returns:
        The run's id (``run_id`` or a new one), to follow it in
        ``workflow_runs``.
    """
    run_id = run_id or new_run_id()
    await log.append(
        TRIGGERS_STREAM,
        NewEvent(
            "workflow.trigger.requested", TriggerRequested(workflow, run_id, payload)
        ),
        idempotency_key=f"trigger-request:{run_id}",
    )
    return run_id


def _outcome(record: RunRecord) -> Outcome:
    return Outcome(
        record.run_id,
        record.workflow,
        record.status,
        record.result,
        record.error_type,
        record.error,
    )


@contextlib.asynccontextmanager
async def open_kernel(
    app: App,
    data_dir: str | os.PathLike[str] = "data",
    *,
    grace: float = DEFAULT_GRACE,
    knowledge: bool = True,
    embedder: Embedder | None = None,
    gc_threshold: int | None = DEFAULT_GC_THRESHOLD,
    **log_options: Any,
) -> AsyncIterator[Kernel]:
    """Run ``app``'s workflows and senses on the log in ``data_dir``.

    Args:
        app: the workflows, senses and reflexes.
        data_dir: the data directory (created if missing).
        grace: seconds running runs get to finish at shutdown before they
            are cancelled and recorded ``interrupted``.
        knowledge: run the knowledge store (``kernel.knowledge``:
            ``knowledge.db``, folded from ``knowledge.file.*`` events).
        embedder: the knowledge store's embedder (default: the built-in
            dependency-free `HashingEmbedder`).
        gc_threshold: CPython's young-generation collection threshold while
            the kernel runs (`gc_tuned`; default 10,000 instead of 700: a
            fifth of the time of a busy kernel went to full collections);
            None leaves the garbage collector alone.
        log_options: passed to `open_log` (``fts``, ``clock``...).

    Raises:
        ConfigError: the app's definitions do not fit together.
        ActorFailed: an actor failed past its restart limit (the kernel shut
            down cleanly first).
    """
    app.validate()
    log_options.setdefault("source", "kernel")
    async with (
        open_log(data_dir, gc_threshold=gc_threshold, **log_options) as log,
        contextlib.AsyncExitStack() as stack,
    ):
        kernel = Kernel(app, log, grace)
        kernel._inline = await attach_inline(log, WorkflowRuns())
        if knowledge:
            from nerve.knowledge import open_knowledge

            # Opened before the actors and closed after them: runs may index.
            kernel.knowledge = await stack.enter_async_context(
                open_knowledge(log, embedder=embedder)
            )
        with single_error():
            async with trio.open_nursery() as nursery:
                try:
                    for group, specs in app.senses.items():
                        keep = [s.keep_last for s in specs.values()]
                        keep_last = None if None in keep else max(k or 0 for k in keep)
                        runner = ProjectionRunner(
                            log, Signals(group, keep_last=keep_last)
                        )
                        await nursery.start(runner.run)
                        kernel.projections[group] = runner
                    for spec in app.workflows.values():
                        actor = WorkflowActor(spec, log)
                        await nursery.start(actor.run)
                        kernel.workflows[spec.name] = actor
                    await kernel._recover()
                    await nursery.start(kernel._follow_requests)
                    for group, specs in app.senses.items():
                        senses = SenseGroupActor(
                            group,
                            list(specs.values()),
                            log,
                            app.reflexes,
                            lambda w, p, t: kernel.trigger(w, p, trigger=t),
                        )
                        await nursery.start(senses.run)
                        kernel.senses[group] = senses
                    yield kernel
                finally:
                    with trio.CancelScope(shield=True):
                        await kernel._shutdown()
                    nursery.cancel_scope.cancel()
