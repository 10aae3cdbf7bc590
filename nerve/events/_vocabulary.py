"""nerve's own event types: the lifecycle of workflow runs and sense signals.

The actors write these; the projections fold them. Each workflow run is its
own stream (``run-<run id>``); each sense writes to ``sense-<group>.<sense>``.

Run statuses and their legal transitions (from the seed)::

    queued  -> started | dropped
    started -> completed | failed | crashed | interrupted
    crashed -> started            (a resumed run)
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from ._codec import EventRegistry

RUN_STREAM_PREFIX: Final = "run-"
SENSE_STREAM_PREFIX: Final = "sense-"

QUEUED: Final = "queued"
STARTED: Final = "started"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CRASHED: Final = "crashed"
INTERRUPTED: Final = "interrupted"
DROPPED: Final = "dropped"

TERMINAL_STATUSES: Final = frozenset({COMPLETED, FAILED, INTERRUPTED, DROPPED})
ACTIVE_STATUSES: Final = frozenset({QUEUED, STARTED})

TRANSITIONS: Final[dict[str | None, frozenset[str]]] = {
    None: frozenset({QUEUED}),
    QUEUED: frozenset({STARTED, DROPPED}),
    STARTED: frozenset({COMPLETED, FAILED, CRASHED, INTERRUPTED}),
    CRASHED: frozenset({STARTED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    INTERRUPTED: frozenset(),
    DROPPED: frozenset(),
}
"""For each status (None: the run does not exist yet), the statuses it may move to."""


def run_stream(run_id: str) -> str:
    """The stream of a workflow run."""
    return RUN_STREAM_PREFIX + run_id


def run_id_of(stream: str) -> str | None:
    """The run id of a run stream, or None for another stream."""
    if stream.startswith(RUN_STREAM_PREFIX):
        return stream[len(RUN_STREAM_PREFIX) :]
    return None


def sense_stream(group: str, sense: str) -> str:
    """The stream a sense appends its signals and errors to."""
    return f"{SENSE_STREAM_PREFIX}{group}.{sense}"


@attrs.frozen
class RunQueued:
    """A trigger was accepted: the run exists and waits for a slot."""

    workflow: str
    payload: Any = None
    trigger: str = "api"


@attrs.frozen
class RunStarted:
    """The run took a slot. ``attempt`` counts from 1; a resumed run adds one."""

    attempt: int = 1
    resumed: bool = False


@attrs.frozen
class RunCompleted:
    """The run's function returned ``result``."""

    result: Any = None


@attrs.frozen
class RunFailed:
    """The run's function raised."""

    error_type: str
    message: str


@attrs.frozen
class RunCrashed:
    """The process running it died (found at the next start)."""

    reason: str = "the process running it stopped without recording an outcome"


@attrs.frozen
class RunInterrupted:
    """Shutdown or reload cancelled the run after its grace period."""

    reason: str = "shutdown"


@attrs.frozen
class RunDropped:
    """The run was rejected by ``overflow: drop`` or evicted from a full queue."""

    reason: str = "overflow"


@attrs.frozen
class ThreadMessage:
    """A message of the run's thread (its conversation history)."""

    role: str
    content: Any


@attrs.frozen
class StepJournaled:
    """The result of ``run.step(name, ...)``; a resumed run reuses it."""

    name: str
    result: Any = None
    seq: int = 0


@attrs.frozen
class TriggerRequested:
    """Another process (the CLI, a script) asks the running kernel for a run."""

    workflow: str
    run_id: str
    payload: Any = None


TRIGGERS_STREAM: Final = "triggers"
"""Where trigger requests from other processes are appended."""


@attrs.frozen
class SenseSignal:
    """A sense computed a value."""

    group: str
    sense: str
    value: Any


@attrs.frozen
class SenseError:
    """A sense's compute raised; it emitted nothing this time."""

    group: str
    sense: str
    error_type: str
    message: str


VOCABULARY: Final[dict[str, type[Any]]] = {
    "workflow.run.queued": RunQueued,
    "workflow.run.started": RunStarted,
    "workflow.run.completed": RunCompleted,
    "workflow.run.failed": RunFailed,
    "workflow.run.crashed": RunCrashed,
    "workflow.run.interrupted": RunInterrupted,
    "workflow.run.dropped": RunDropped,
    "workflow.message": ThreadMessage,
    "workflow.step": StepJournaled,
    "workflow.trigger.requested": TriggerRequested,
    "sense.signal": SenseSignal,
    "sense.error": SenseError,
}

RUN_STATUS_OF_TYPE: Final = {
    "workflow.run.queued": QUEUED,
    "workflow.run.started": STARTED,
    "workflow.run.completed": COMPLETED,
    "workflow.run.failed": FAILED,
    "workflow.run.crashed": CRASHED,
    "workflow.run.interrupted": INTERRUPTED,
    "workflow.run.dropped": DROPPED,
}


def register_vocabulary(registry: EventRegistry) -> None:
    """Register nerve's own event types in ``registry``."""
    for name, cls in VOCABULARY.items():
        registry.register(name, cls)
