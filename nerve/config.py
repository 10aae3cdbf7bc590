"""``nerve.yaml``: the config file, structured into frozen attrs classes.

``load_config(path)`` reads the file, structures it with cattrs and checks the
cross-references (a reflex names a configured sense and workflow). Every
problem is reported at once, in one `ConfigFileError`, each naming the key
path and the bad value::

    nerve.yaml: 2 problems
      workflows.greet.concurrency: expected an integer >= 1, got 'two'
      workflows.greet.maxQeue: unknown key; did you mean 'maxQueue'?

Multi-word keys are accepted in both spellings, the seed's camelCase
(``maxQueue``) and snake_case (``max_queue``). Durations are a number of
seconds or a string such as ``500ms``, ``5s``, ``1m``, ``1h30m``, ``30d``.

`Config.build_app` imports the ``module:function`` entry points and returns
the `nerve.App` they describe. Relative paths in the file (``data_dir``,
knowledge roots) are relative to the file's directory, and that directory is
put on ``sys.path`` so entry modules next to ``nerve.yaml`` import.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Final, TypeVar

import attrs
import yaml
from cattrs.errors import (
    ClassValidationError,
    IterableValidationError,
)

from nerve.actors import App
from nerve.events import ConfigError

from ._config_hooks import (
    Problem,
    class_hook,
    converter,
    entry,
    every,
    format_problem,
    int_at_least,
    leaves,
    list_of,
    mapping_of,
    one_of,
    optional,
    optional_entry,
    optional_name,
    path_value,
    patterns,
    retention,
    signal,
    strict_bool,
    strict_str,
    structurer,
    unknown,
)
from ._config_hooks import parse_duration as parse_duration

T = TypeVar("T")

DEFAULT_CONFIG: Final = "nerve.yaml"
DEFAULT_DATA_DIR: Final = "data"
DEFAULT_RETENTION: Final = timedelta(days=30)


class ConfigFileError(ConfigError):
    """A config file that cannot be used, with every problem found in it.

    Attributes:
        path: the file.
        problems: one line per problem, each starting with its key path.
    """

    def __init__(self, path: object, problems: Iterable[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            message = f"{path}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            message = f"{path}: {len(self.problems)} problems\n{lines}"
        super().__init__(message)


# -- the config classes ------------------------------------------------------------


@attrs.frozen
class WorkflowConfig:
    """``workflows: NAME: {...}``: a workflow type and its admission limits.

    Attributes:
        entry: ``module:function``, an ``async def fn(run)``.
        concurrency: at most this many runs started at a time.
        overflow: ``queue`` or ``drop`` when every slot is busy.
        max_queue: (``maxQueue``) the most runs waiting with ``queue``.
        resume: restart a run its dead process left ``started``.
    """

    entry: str
    concurrency: int = 1
    overflow: str = "queue"
    max_queue: int = 10
    resume: bool = True


@attrs.frozen
class SenseConfig:
    """``senses: GROUP: SENSE: {...}``: a sense computed on a schedule.

    Attributes:
        entry: ``module:function``, an ``async def compute(sense)``.
        every: seconds between computations (``"5s"``, ``"1m"`` or a number).
        keep_last: (``keepLast``) signals kept in ``_signals`` (null: all).
    """

    entry: str
    every: float
    keep_last: int | None = 1000


@attrs.frozen
class ReflexConfig:
    """``reflexes: - {...}``: route a sense's signals to a workflow.

    Attributes:
        signal: ``group.sense``.
        workflow: the workflow to trigger.
        when: ``module:function``, a predicate on the signal's value
            (absent: every signal triggers).
    """

    signal: str
    workflow: str
    when: str | None = None


@attrs.frozen
class KnowledgeRoot:
    """``knowledge: roots: - {...}``: a directory indexed for search.

    Attributes:
        path: the directory (relative to the config file).
        repo: the repository name it is indexed under (default: the
            directory's name).
        include: glob patterns of files to index (empty: all).
        exclude: glob patterns of files to skip.
    """

    path: str
    repo: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@attrs.frozen
class KnowledgeConfig:
    """``knowledge: {...}``."""

    roots: tuple[KnowledgeRoot, ...] = ()


@attrs.frozen
class ArchiveConfig:
    """``archive: {...}``.

    Attributes:
        retention: whole UTC days older than this move to the archive files
            (``nerve archive``).
    """

    retention: timedelta = DEFAULT_RETENTION


@attrs.frozen
class Config:
    """A parsed ``nerve.yaml``. Obtain one with `load_config` or `parse_config`.

    Attributes:
        workflows: workflow name -> its config.
        senses: sense group -> sense name -> its config.
        reflexes: signal routes, in file order.
        knowledge: the knowledge roots.
        archive: the archive's retention.
        data_dir: (``dataDir``) the data directory as written (None: absent).
        source: the file it was read from (None: parsed from text).
    """

    workflows: Mapping[str, WorkflowConfig] = attrs.field(factory=dict)
    senses: Mapping[str, Mapping[str, SenseConfig]] = attrs.field(factory=dict)
    reflexes: tuple[ReflexConfig, ...] = ()
    knowledge: KnowledgeConfig = KnowledgeConfig()
    archive: ArchiveConfig = ArchiveConfig()
    data_dir: str | None = None
    source: Path | None = None

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the file are relative to."""
        return self.source.parent if self.source is not None else Path()

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """A path from the file, made relative to the file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def data_path(self) -> Path | None:
        """``data_dir`` resolved against the file's directory (None: absent)."""
        return self.resolve(self.data_dir) if self.data_dir is not None else None

    def entries(self) -> Iterator[tuple[str, str]]:
        """Every entry point, as (key path, ``module:function``)."""
        for name, w in self.workflows.items():
            yield f"workflows.{name}.entry", w.entry
        for group, senses in self.senses.items():
            for sense, s in senses.items():
                yield f"senses.{group}.{sense}.entry", s.entry
        for i, r in enumerate(self.reflexes):
            if r.when is not None:
                yield f"reflexes[{i}].when", r.when

    def entry_modules(self) -> list[str]:
        """The names of the modules the entry points live in (no duplicates)."""
        return list(dict.fromkeys(e.partition(":")[0] for _, e in self.entries()))

    def build_app(self, *, reload: bool = False) -> App:
        """Import the entry points and return the `App` this config describes.

        Args:
            reload: reload entry modules already imported (``importlib.reload``),
                so edited workflow code takes effect (``nerve run --reload``).

        Raises:
            ConfigFileError: an entry point cannot be imported or is not what
                its key needs; every such problem is listed, with its key path.
        """
        self._put_base_dir_on_path()
        loader = _EntryLoader(reload=reload)
        problems: list[str] = []
        app = App()

        def load(where: str, entry: str, check: Callable[[Any], str | None]) -> Any:
            try:
                obj = loader.load(entry)
            except _EntryProblem as e:
                problems.append(f"{where}: {e}")
                return None
            wrong = check(obj)
            if wrong is not None:
                problems.append(f"{where}: {entry!r} {wrong}")
                return None
            return obj

        for name, w in self.workflows.items():
            fn = load(f"workflows.{name}.entry", w.entry, _async_function)
            if fn is not None:
                _register(
                    problems,
                    f"workflows.{name}",
                    app.workflow(
                        name,
                        concurrency=w.concurrency,
                        overflow=w.overflow,
                        max_queue=w.max_queue,
                        resume=w.resume,
                    ),
                    fn,
                )
        for group, senses in self.senses.items():
            for sense, s in senses.items():
                where = f"senses.{group}.{sense}"
                fn = load(f"{where}.entry", s.entry, _async_function)
                if fn is not None:
                    _register(
                        problems,
                        where,
                        app.sense(
                            group, every=s.every, name=sense, keep_last=s.keep_last
                        ),
                        fn,
                    )
        for i, r in enumerate(self.reflexes):
            when = None
            if r.when is not None:
                when = load(f"reflexes[{i}].when", r.when, _callable)
                if when is None:
                    continue
            _register(
                problems,
                f"reflexes[{i}]",
                lambda _: app.reflex(r.signal, r.workflow, when=when),  # noqa: B023
                None,
            )
        if problems:
            raise ConfigFileError(self.source or "config", problems)
        return app

    def _put_base_dir_on_path(self) -> None:
        base = str(self.base_dir.resolve())
        if base not in sys.path:
            sys.path.insert(0, base)


def _register(
    problems: list[str], where: str, register: Callable[[Any], Any], fn: Any
) -> None:
    """Call an `App` registration, keeping its ConfigError as a problem."""
    try:
        register(fn)
    except ConfigError as e:
        problems.append(f"{where}: {e}")


def _async_function(obj: Any) -> str | None:
    if inspect.iscoroutinefunction(obj):
        return None
    return f"is not an async function (got {_describe(obj)})"


def _callable(obj: Any) -> str | None:
    return None if callable(obj) else f"is not callable (got {_describe(obj)})"


def _describe(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


# -- entry points -------------------------------------------------------------------


class _EntryProblem(Exception):
    pass


class _EntryLoader:
    """Imports ``module:function`` entries, reloading each module at most once."""

    def __init__(self, *, reload: bool) -> None:
        self.reload = reload
        self.modules: dict[str, ModuleType] = {}

    def module(self, name: str) -> ModuleType:
        if name in self.modules:
            return self.modules[name]
        try:
            module = sys.modules.get(name)
            if module is not None and self.reload:
                _forget_bytecode(module)
                module = importlib.reload(module)
            elif module is None:
                importlib.invalidate_caches()  # files created since start
                module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            missing = e.name or ""
            if name == missing or name.startswith(missing + "."):
                raise _EntryProblem(
                    f"cannot import module {name!r}: no module named {missing!r} "
                    "(entry modules are looked up next to the config file and on "
                    "sys.path)"
                ) from e
            raise _EntryProblem(
                f"importing module {name!r} failed: ModuleNotFoundError: {e}"
            ) from e
        except Exception as e:
            raise _EntryProblem(
                f"importing module {name!r} failed: {e.__class__.__name__}: {e}"
            ) from e
        self.modules[name] = module
        return module

    def load(self, entry: str) -> Any:
        module_name, _, attr = entry.partition(":")
        obj: Any = self.module(module_name)
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise _EntryProblem(
                    f"module {module_name!r} has no attribute {attr!r} "
                    f"(entry {entry!r})"
                ) from None
        return obj


def _forget_bytecode(module: ModuleType) -> None:
    """Delete a module's cached bytecode before reloading it.

    A ``.pyc`` is trusted when the source's mtime (whole seconds) and size
    match, so an edit within the same second that keeps the size would
    reload the old code.
    """
    cached = getattr(module, "__cached__", None)
    if isinstance(cached, str):
        with contextlib.suppress(OSError):
            os.unlink(cached)


# -- parsing ------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG) -> Config:
    """Read and check a ``nerve.yaml``.

    Raises:
        ConfigFileError: the file is not valid YAML, or has problems (all of
            them are listed, each with its key path and bad value).
        OSError: the file cannot be read.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(p, ["no such file"]) from None
    except IsADirectoryError:
        raise ConfigFileError(p, ["is a directory, not a config file"]) from None
    except UnicodeDecodeError as e:
        raise ConfigFileError(p, [f"not UTF-8 text ({e.reason})"]) from None
    return parse_config(text, source=p)


def parse_config(text: str, *, source: str | os.PathLike[str] | None = None) -> Config:
    """Parse the text of a ``nerve.yaml`` (see `load_config`)."""
    where: object = source if source is not None else "config"
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise ConfigFileError(where, [f"{at}invalid YAML: {what}"]) from None
    except yaml.YAMLError as e:
        raise ConfigFileError(where, [f"invalid YAML: {e}"]) from None
    if raw is None:
        raw = {}
    problems: list[str] = []
    config: Config | None = None
    try:
        config = converter.structure(raw, Config)
    except (ClassValidationError, IterableValidationError, Problem) as e:
        problems.extend(format_problem(raw, path, leaf) for path, leaf in leaves(e, ()))
    problems.extend(_cross_check(raw))
    if problems:
        raise ConfigFileError(where, problems)
    assert config is not None
    return attrs.evolve(config, source=Path(source) if source is not None else None)


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping
    (PyYAML would silently keep the last one)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            with contextlib.suppress(TypeError):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice (first on line "
                        f"{seen[key].line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


converter.register_structure_hook(str, strict_str)
converter.register_structure_hook(bool, strict_bool)
converter.register_structure_hook(
    WorkflowConfig,
    class_hook(
        WorkflowConfig,
        "a workflow: entry, concurrency, overflow, maxQueue, resume",
        {
            "entry": entry,
            "concurrency": int_at_least(1),
            "overflow": one_of("queue", "drop"),
            "max_queue": int_at_least(0),
            "resume": strict_bool,
        },
    ),
)
converter.register_structure_hook(
    SenseConfig,
    class_hook(
        SenseConfig,
        "a sense: entry, every, keepLast",
        {
            "entry": entry,
            "every": every,
            "keep_last": optional(int_at_least(1), "keep every signal"),
        },
    ),
)
converter.register_structure_hook(
    ReflexConfig,
    class_hook(
        ReflexConfig,
        "a reflex: signal, workflow, when",
        {"signal": signal, "workflow": strict_str, "when": optional_entry},
    ),
)
converter.register_structure_hook(
    KnowledgeRoot,
    class_hook(
        KnowledgeRoot,
        "a knowledge root: path, repo, include, exclude",
        {
            "path": path_value,
            "repo": optional_name,
            "include": patterns,
            "exclude": patterns,
        },
    ),
)
converter.register_structure_hook(
    KnowledgeConfig,
    class_hook(
        KnowledgeConfig,
        "knowledge: roots",
        {"roots": list_of(structurer(KnowledgeRoot), "knowledge roots")},
    ),
)
converter.register_structure_hook(
    ArchiveConfig,
    class_hook(ArchiveConfig, "archive: retention", {"retention": retention}),
)
converter.register_structure_hook(
    Config,
    class_hook(
        Config,
        "the top level: workflows, senses, reflexes, knowledge, archive, dataDir",
        {
            "workflows": mapping_of(
                structurer(WorkflowConfig), "workflow", "workflow name: {entry: ...}"
            ),
            "senses": mapping_of(
                mapping_of(
                    structurer(SenseConfig), "sense", "sense name: {entry, every}"
                ),
                "sense group",
                "group: {sense name: {entry, every}}",
            ),
            "reflexes": list_of(
                structurer(ReflexConfig), "reflexes ({signal, workflow})"
            ),
            "knowledge": structurer(KnowledgeConfig),
            "archive": structurer(ArchiveConfig),
            "data_dir": optional(path_value, "the default, ./data"),
        },
    ),
)


def _cross_check(raw: Any) -> list[str]:
    """Reflexes must name a configured sense and workflow (checked on the raw
    data, so these problems are reported along with structural ones)."""
    if not isinstance(raw, Mapping):
        return []
    workflows = raw.get("workflows")
    workflow_names = (
        [k for k in workflows if isinstance(k, str)]
        if isinstance(workflows, Mapping)
        else []
    )
    senses = raw.get("senses")
    signals: list[str] = []
    if isinstance(senses, Mapping):
        for group, members in senses.items():
            if isinstance(members, Mapping):
                signals.extend(f"{group}.{s}" for s in members)
    reflexes = raw.get("reflexes")
    if not isinstance(reflexes, list):
        return []
    problems = []
    for i, r in enumerate(reflexes):
        if not isinstance(r, Mapping):
            continue
        signal, workflow = r.get("signal"), r.get("workflow")
        if isinstance(signal, str) and "." in signal and signal not in signals:
            what = f"no sense {signal!r} is configured"
            problems.append(f"reflexes[{i}].signal: {unknown(what, signal, signals)}")
        if isinstance(workflow, str) and workflow not in workflow_names:
            what = f"no workflow {workflow!r} is configured"
            problems.append(
                f"reflexes[{i}].workflow: {unknown(what, workflow, workflow_names)}"
            )
    return problems


def find_config(path: str | os.PathLike[str] | None) -> Config | None:
    """The config at ``path``; with None, ``./nerve.yaml`` if it exists.

    Raises:
        ConfigFileError: the file (given, or found) has problems.
    """
    if path is None:
        if not Path(DEFAULT_CONFIG).is_file():
            return None
        path = DEFAULT_CONFIG
    return load_config(path)
