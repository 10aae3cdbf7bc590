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
import difflib
import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Final, TypeVar, cast

import attrs
import cattrs
import yaml
from cattrs.errors import (
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from nerve.actors import App
from nerve.events import ConfigError

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

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_ENTRY_RE: Final = re.compile(
    rf"{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}(\.{_IDENTIFIER})*"
)


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
        config = _converter.structure(raw, Config)
    except (ClassValidationError, IterableValidationError, _Problem) as e:
        problems.extend(_format(raw, path, leaf) for path, leaf in _leaves(e, ()))
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


# -- validation problems -------------------------------------------------------------


class _Problem(ValueError):
    """A bad value, or (with ``key``) a bad key of the mapping being structured."""

    _NO_VALUE: Final = object()

    def __init__(self, message: str, value: Any = _NO_VALUE, *, key: Any = None):
        super().__init__(message)
        self.message = message
        self.value = value
        self.key = key


Path_ = tuple[Any, ...]


def _leaves(exc: BaseException, path: Path_) -> Iterator[tuple[Path_, BaseException]]:
    """Flatten cattrs' nested validation errors into (key path, error)."""
    if isinstance(exc, ClassValidationError):
        with_notes, others = exc.group_exceptions()
        for sub, note in with_notes:
            yield from _leaves(sub, (*path, note.name))
        for sub in others:
            yield from _leaves(sub, path)
    elif isinstance(exc, IterableValidationError):
        with_index, others_ = exc.group_exceptions()
        for sub, inote in with_index:
            yield from _leaves(sub, (*path, _Index(inote.index)))
        for sub in others_:
            yield from _leaves(sub, path)
    elif isinstance(exc, _Problem) and exc.key is not None:
        yield (*path, exc.key), exc
    else:
        yield path, exc


@attrs.frozen
class _Index:
    """A position in a list (shown as ``[i]``) or a mapping key (``.key``)."""

    value: Any


def _format(raw: Any, path: Path_, error: BaseException) -> str:
    shown = _show_path(raw, path)
    if isinstance(error, _Problem):
        text = error.message
        if error.value is not _Problem._NO_VALUE:
            text += f", got {_show_value(error.value)}"
    elif isinstance(error, KeyError):
        text = "required key is missing"
    else:
        text = str(error)
    return f"{shown}: {text}" if shown else text


def _show_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _show_path(raw: Any, path: Path_) -> str:
    """``workflows.greet.maxQueue``, ``reflexes[0].signal``: as the user wrote
    them (an attribute given in camelCase is shown in camelCase)."""
    out = ""
    node = raw
    for step in path:
        if isinstance(step, _Index):
            key = step.value
            if isinstance(key, int) and isinstance(node, list):
                out += f"[{key}]"
                node = node[key] if 0 <= key < len(node) else None
                continue
            out += f".{key}" if out else str(key)
            node = node.get(key) if isinstance(node, Mapping) else None
            continue
        name = step
        if isinstance(node, Mapping) and name not in node:
            camel = _camel(str(name))
            if camel in node:
                name = camel
        out += f".{name}" if out else str(name)
        node = node.get(name) if isinstance(node, Mapping) else None
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _closest(key: str, candidates: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    if not found:
        lowered = {c.lower(): c for c in candidates}
        return lowered.get(key.lower().replace("-", "_"))
    return found[0]


def _unknown(what: str, key: Any, candidates: list[str]) -> str:
    close = _closest(key, candidates) if isinstance(key, str) else None
    if close is not None:
        return f"{what}; did you mean {close!r}?"
    return f"{what} (known: {', '.join(candidates) or 'none'})"


# -- structuring hooks ------------------------------------------------------------

_converter = cattrs.Converter(detailed_validation=True)


def _strict_str(value: Any, _: Any = None) -> str:
    if not isinstance(value, str):
        raise _Problem("expected a string", value)
    return value


def _strict_bool(value: Any, _: Any = None) -> bool:
    if not isinstance(value, bool):
        raise _Problem("expected true or false", value)
    return value


def _int_at_least(low: int) -> Callable[[Any, Any], int]:
    def hook(value: Any, _: Any = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _Problem(f"expected an integer >= {low}", value)
        return value

    return hook


def _optional(
    hook: Callable[[Any, Any], T], null_means: str
) -> Callable[[Any, Any], T | None]:
    def optional(value: Any, t: Any = None) -> T | None:
        if value is None:
            return None
        try:
            return hook(value, t)
        except _Problem as e:
            raise _Problem(f"{e.message} or null ({null_means})", value) from None

    return optional


def _one_of(*choices: str) -> Callable[[Any, Any], str]:
    def hook(value: Any, _: Any = None) -> str:
        if value not in choices or not isinstance(value, str):
            raise _Problem(f"expected one of {', '.join(map(repr, choices))}", value)
        return value

    return hook


def _entry(value: Any, _: Any = None) -> str:
    if not isinstance(value, str) or not _ENTRY_RE.fullmatch(value):
        raise _Problem("expected 'module:function' (like 'flows:greet')", value)
    return value


def _optional_entry(value: Any, _: Any = None) -> str | None:
    return None if value is None else _entry(value)


def _signal(value: Any, _: Any = None) -> str:
    if not isinstance(value, str) or value.count(".") < 1 or "" in value.split(".", 1):
        raise _Problem("expected 'group.sense' (like 'system.disk')", value)
    return value


_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_RE: Final = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_UNIT_SECONDS: Final = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}


def parse_duration(value: Any, *, allow_zero: bool = False) -> float:
    """Seconds from a number or a string like ``500ms``, ``5s``, ``1h30m``.

    Units: ``ms``, ``s``, ``m`` (minutes), ``h``, ``d``, ``w``. No spaces,
    no sign; a bare number string (``"5"``) is refused: say ``5s``.

    Raises:
        ValueError: the value is not such a duration (the message says what
            is expected).
    """
    expected = (
        "expected a duration like '5s', '1m', '1h30m', '30d' or a number of seconds"
    )
    if isinstance(value, bool):
        raise _Problem(expected, value)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_RE.fullmatch(value):
        seconds = sum(
            float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value)
        )
    else:
        hint = ""
        if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
            hint = f" (add a unit: '{value.strip()}s')"
        raise _Problem(expected + hint, value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise _Problem(
            "expected a duration >= 0" if allow_zero else "expected a duration > 0",
            value,
        )
    return seconds


def _every(value: Any, _: Any = None) -> float:
    return parse_duration(value)


def _retention(value: Any, _: Any = None) -> timedelta:
    return timedelta(seconds=parse_duration(value, allow_zero=True))


def _patterns(value: Any, _: Any = None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Problem("expected a glob pattern or a list of them", value)
    return tuple(value)


def _path(value: Any, _: Any = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Problem("expected a path", value)
    return value


def _optional_name(value: Any, _: Any = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Problem("expected a name", value)
    return value


def _name_problem(kind: str, name: Any) -> str | None:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        return f"a {kind} name must be a non-empty string without surrounding spaces"
    if any(c in name for c in "/\\\0"):
        return f"a {kind} name must not contain '/', '\\' or NUL"
    if kind == "sense group" and ("." in name or name.startswith(".")):
        return "a sense group name must not contain '.'"
    return None


def _mapping_of(
    item: Callable[..., T], kind: str, what: str
) -> Callable[[Any, Any], dict[str, T]]:
    """A hook for ``NAME: {...}`` mappings: names checked, every item structured,
    every problem kept."""

    def hook(value: Any, _: Any = None) -> dict[str, T]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise _Problem(f"expected a mapping of {what}", value)
        out: dict[str, T] = {}
        errors: list[Exception] = []
        for key, v in value.items():
            bad = _name_problem(kind, key)
            if bad is not None:
                errors.append(_Problem(bad, key, key=_Index(key)))
                continue
            try:
                out[key] = item(v)
            except Exception as e:
                e.add_note(IterableValidationNote(f"@ key {key!r}", key, object))
                errors.append(e)
        if errors:
            raise IterableValidationError(f"While structuring {what}", errors, dict)
        return out

    return hook


def _list_of(
    item: Callable[[Any], T], what: str
) -> Callable[[Any, Any], tuple[T, ...]]:
    def hook(value: Any, _: Any = None) -> tuple[T, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise _Problem(f"expected a list of {what}", value)
        out: list[T] = []
        errors: list[Exception] = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except Exception as e:
                e.add_note(IterableValidationNote(f"@ index {i}", i, object))
                errors.append(e)
        if errors:
            raise IterableValidationError(f"While structuring {what}", errors, list)
        return tuple(out)

    return hook


def _class_hook(
    cls: type[T], what: str, overrides: Mapping[str, Callable[[Any, Any], Any]]
) -> Callable[[Any, Any], T]:
    """Structure ``cls`` from a mapping: both key spellings, unknown keys
    refused with the closest valid one, every problem kept."""
    fields = [f for f in attrs.fields(cast(Any, cls)) if f.name != "source"]
    names = [f.name for f in fields]
    aliases = {_camel(n): n for n in names if "_" in n}
    # Suggest the seed's camelCase spelling first for multi-word keys.
    spellings = [_camel(n) if "_" in n else n for n in names] + list(aliases.values())
    field_overrides: dict[str, Any] = {
        name: override(struct_hook=hook) for name, hook in overrides.items()
    }
    if "source" in attrs.fields_dict(cast(Any, cls)):
        field_overrides["source"] = override(omit=True)
    generated = make_dict_structure_fn(cls, _converter, **field_overrides)
    required = all(f.default is attrs.NOTHING for f in fields)

    def hook(value: Any, _: Any = None) -> T:
        if value is None and not required:
            value = {}
        if not isinstance(value, Mapping):
            raise _Problem(f"expected a mapping ({what})", value)
        data: dict[str, Any] = {}
        given: dict[str, Any] = {}
        errors: list[Exception] = []
        for key, v in value.items():
            name = key if key in names else aliases.get(key)
            if name is None:
                errors.append(
                    _Problem(_unknown("unknown key", key, spellings), key=key)
                )
            elif name in data:
                errors.append(
                    _Problem(
                        f"given twice, as {given[name]!r} and {key!r}; keep one",
                        key=key,
                    )
                )
            else:
                data[name] = v
                given[name] = key
        try:
            result = generated(data, cls)
        except ClassValidationError as e:
            errors.extend(e.exceptions)
        if errors:
            raise ClassValidationError(f"While structuring {what}", errors, cls)
        return result

    return hook


def _structurer(cls: type[T]) -> Callable[..., T]:
    def structure(value: Any, _: Any = None) -> T:
        return _converter.structure(value, cls)

    return structure


_converter.register_structure_hook(str, _strict_str)
_converter.register_structure_hook(bool, _strict_bool)
_converter.register_structure_hook(
    WorkflowConfig,
    _class_hook(
        WorkflowConfig,
        "a workflow: entry, concurrency, overflow, maxQueue, resume",
        {
            "entry": _entry,
            "concurrency": _int_at_least(1),
            "overflow": _one_of("queue", "drop"),
            "max_queue": _int_at_least(0),
            "resume": _strict_bool,
        },
    ),
)
_converter.register_structure_hook(
    SenseConfig,
    _class_hook(
        SenseConfig,
        "a sense: entry, every, keepLast",
        {
            "entry": _entry,
            "every": _every,
            "keep_last": _optional(_int_at_least(1), "keep every signal"),
        },
    ),
)
_converter.register_structure_hook(
    ReflexConfig,
    _class_hook(
        ReflexConfig,
        "a reflex: signal, workflow, when",
        {"signal": _signal, "workflow": _strict_str, "when": _optional_entry},
    ),
)
_converter.register_structure_hook(
    KnowledgeRoot,
    _class_hook(
        KnowledgeRoot,
        "a knowledge root: path, repo, include, exclude",
        {
            "path": _path,
            "repo": _optional_name,
            "include": _patterns,
            "exclude": _patterns,
        },
    ),
)
_converter.register_structure_hook(
    KnowledgeConfig,
    _class_hook(
        KnowledgeConfig,
        "knowledge: roots",
        {"roots": _list_of(_structurer(KnowledgeRoot), "knowledge roots")},
    ),
)
_converter.register_structure_hook(
    ArchiveConfig,
    _class_hook(ArchiveConfig, "archive: retention", {"retention": _retention}),
)
_converter.register_structure_hook(
    Config,
    _class_hook(
        Config,
        "the top level: workflows, senses, reflexes, knowledge, archive, dataDir",
        {
            "workflows": _mapping_of(
                _structurer(WorkflowConfig), "workflow", "workflow name: {entry: ...}"
            ),
            "senses": _mapping_of(
                _mapping_of(
                    _structurer(SenseConfig), "sense", "sense name: {entry, every}"
                ),
                "sense group",
                "group: {sense name: {entry, every}}",
            ),
            "reflexes": _list_of(
                _structurer(ReflexConfig), "reflexes ({signal, workflow})"
            ),
            "knowledge": _structurer(KnowledgeConfig),
            "archive": _structurer(ArchiveConfig),
            "data_dir": _optional(_path, "the default, ./data"),
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
            problems.append(f"reflexes[{i}].signal: {_unknown(what, signal, signals)}")
        if isinstance(workflow, str) and workflow not in workflow_names:
            what = f"no workflow {workflow!r} is configured"
            problems.append(
                f"reflexes[{i}].workflow: {_unknown(what, workflow, workflow_names)}"
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
