"""`App`: the definitions a kernel runs — workflows, senses and reflexes."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import attrs

from nerve.events import ConfigError

if TYPE_CHECKING:
    from ._run import Run
    from ._sense import Sense

F = TypeVar("F", bound=Callable[..., Any])

OVERFLOWS: Final = ("queue", "drop")


@attrs.frozen
class WorkflowSpec:
    """A workflow type: its function and its admission limits.

    Attributes:
        name: the workflow's name.
        fn: ``async def fn(run) -> result``.
        concurrency: at most this many runs started at a time.
        overflow: ``queue`` (wait, FIFO) or ``drop`` (reject) when all slots
            are busy.
        max_queue: with ``queue``, the most runs waiting; a new trigger then
            evicts the oldest queued run (``dropped``).
        resume: restart a run that was ``started`` when its process died,
            with its thread and step journal (otherwise it stays ``crashed``).
    """

    name: str
    fn: Callable[[Run], Awaitable[Any]]
    concurrency: int = 1
    overflow: Literal["queue", "drop"] = "queue"
    max_queue: int = 10
    resume: bool = True


@attrs.frozen
class SenseSpec:
    """A sense: computed every ``every`` seconds in its group's actor."""

    group: str
    name: str
    fn: Callable[[Sense], Awaitable[Any]]
    every: float
    keep_last: int | None = 1000


@attrs.frozen
class ReflexSpec:
    """Route signals of ``group.sense`` to triggers of ``workflow``."""

    signal: str
    workflow: str
    when: Callable[[Any], bool] | None = None

    @property
    def group(self) -> str:
        return self.signal.split(".", 1)[0]

    @property
    def sense(self) -> str:
        return self.signal.split(".", 1)[1]


def _check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ConfigError(f"{what} name must be a non-empty string, got {name!r}")
    if any(c in name for c in "/\\\0"):
        raise ConfigError(f"{what} name {name!r} must not contain '/', '\\' or NUL")
    return name


def _seconds(what: str, every: float | timedelta) -> float:
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not seconds > 0
    ):
        raise ConfigError(
            f"{what}: every must be a positive number of seconds, got {every!r}"
        )
    return float(seconds)


class App:
    """The workflows, senses and reflexes of a program.

    Example:
        >>> app = nerve.App()
        >>> @app.workflow("greet", concurrency=2, overflow="queue", max_queue=10)
        ... async def greet(run):
        ...     await run.say("assistant", f"hello {run.payload['name']}")
        ...     return "greeted"
    """

    def __init__(self) -> None:
        self.workflows: dict[str, WorkflowSpec] = {}
        self.senses: dict[str, dict[str, SenseSpec]] = {}
        self.reflexes: list[ReflexSpec] = []

    def workflow(
        self,
        name: str,
        *,
        concurrency: int = 1,
        overflow: str = "queue",
        max_queue: int = 10,
        resume: bool = True,
    ) -> Callable[[F], F]:
        """Register ``async def fn(run)`` as the workflow ``name``.

        Raises:
            ConfigError: a bad limit or a name already taken.
        """
        _check_name("workflow", name)
        where = f"workflow {name!r}"
        if (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or (concurrency < 1)
        ):
            raise ConfigError(
                f"{where}: concurrency must be an integer >= 1, got {concurrency!r}"
            )
        if overflow not in OVERFLOWS:
            raise ConfigError(
                f"{where}: overflow must be 'queue' or 'drop', got {overflow!r}"
            )
        if (
            isinstance(max_queue, bool)
            or not isinstance(max_queue, int)
            or (max_queue < 0)
        ):
            raise ConfigError(
                f"{where}: max_queue must be an integer >= 0, got {max_queue!r}"
            )
        if name in self.workflows:
            raise ConfigError(f"{where} is defined twice")

        def register(fn: F) -> F:
            if not inspect.iscoroutinefunction(fn):
                raise ConfigError(f"{where}: {fn!r} must be an async function")
            self.workflows[name] = WorkflowSpec(
                name,
                fn,
                concurrency,
                "drop" if overflow == "drop" else "queue",
                max_queue,
                resume,
            )
            return fn

        return register

    def sense(
        self,
        group: str,
        *,
        every: float | timedelta,
        name: str | None = None,
        keep_last: int | None = 1000,
    ) -> Callable[[F], F]:
        """Register ``async def compute(sense)`` in a sense group.

        A non-None result is appended as a ``sense.signal``; the group's
        ``_signals`` table keeps the last ``keep_last`` of each sense.
        """
        _check_name("sense group", group)
        if "." in group:
            raise ConfigError(f"sense group {group!r} must not contain '.'")
        seconds = _seconds(f"sense group {group!r}", every)

        def register(fn: F) -> F:
            sense = _check_name("sense", name or fn.__name__)
            where = f"sense {group}.{sense}"
            if not inspect.iscoroutinefunction(fn):
                raise ConfigError(f"{where}: {fn!r} must be an async function")
            senses = self.senses.setdefault(group, {})
            if sense in senses:
                raise ConfigError(f"{where} is defined twice")
            senses[sense] = SenseSpec(group, sense, fn, seconds, keep_last)
            return fn

        return register

    def reflex(
        self,
        signal: str,
        workflow: str,
        *,
        when: Callable[[Any], bool] | None = None,
    ) -> None:
        """Trigger ``workflow`` with each signal of ``signal`` ("group.sense")
        for which ``when(value)`` holds (every signal when ``when`` is None).
        The run's payload is ``{"group", "sense", "value", "position"}``."""
        if not isinstance(signal, str) or signal.count(".") < 1:
            raise ConfigError(f"reflex signal must be 'group.sense', got {signal!r}")
        if when is not None and not callable(when):
            raise ConfigError(f"reflex {signal} -> {workflow}: when must be callable")
        self.reflexes.append(ReflexSpec(signal, workflow, when))

    def validate(self) -> None:
        """Check cross-references (reflexes name known senses and workflows).

        Raises:
            ConfigError: listing every problem found.
        """
        problems = []
        for r in self.reflexes:
            if r.group not in self.senses or r.sense not in self.senses[r.group]:
                known = sorted(f"{g}.{s}" for g, ss in self.senses.items() for s in ss)
                problems.append(
                    f"reflex {r.signal} -> {r.workflow}: no sense {r.signal!r} "
                    f"(known: {', '.join(known) or 'none'})"
                )
            if r.workflow not in self.workflows:
                problems.append(
                    f"reflex {r.signal} -> {r.workflow}: no workflow {r.workflow!r} "
                    f"(known: {', '.join(sorted(self.workflows)) or 'none'})"
                )
        if problems:
            raise ConfigError("; ".join(problems))
