"""How ``nerve.yaml`` is structured and checked: cattrs hooks that keep every
problem with its key path, strict scalars, durations, and the messages.

`nerve.config` declares the config classes and registers a `class_hook` for
each on `converter`; a failed structuring raises cattrs' nested validation
errors, which `leaves` flattens into (key path, error) pairs and
`format_problem` turns into ``workflows.greet.concurrency: expected an
integer >= 1, got 'two'``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Final, TypeVar, cast

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

T = TypeVar("T")

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
ENTRY_RE: Final = re.compile(
    rf"{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}(\.{_IDENTIFIER})*"
)


# -- problems -------------------------------------------------------------


class Problem(ValueError):
    """A bad value, or (with ``key``) a bad key of the mapping being structured."""

    _NO_VALUE: Final = object()

    def __init__(self, message: str, value: Any = _NO_VALUE, *, key: Any = None):
        super().__init__(message)
        self.message = message
        self.value = value
        self.key = key


KeyPath = tuple[Any, ...]


def leaves(
    exc: BaseException, path: KeyPath
) -> Iterator[tuple[KeyPath, BaseException]]:
    """Flatten cattrs' nested validation errors into (key path, error)."""
    if isinstance(exc, ClassValidationError):
        with_notes, others = exc.group_exceptions()
        for sub, note in with_notes:
            yield from leaves(sub, (*path, note.name))
        for sub in others:
            yield from leaves(sub, path)
    elif isinstance(exc, IterableValidationError):
        with_index, others_ = exc.group_exceptions()
        for sub, inote in with_index:
            yield from leaves(sub, (*path, Index(inote.index)))
        for sub in others_:
            yield from leaves(sub, path)
    elif isinstance(exc, Problem) and exc.key is not None:
        yield (*path, exc.key), exc
    else:
        yield path, exc


@attrs.frozen
class Index:
    """A position in a list (shown as ``[i]``) or a mapping key (``.key``)."""

    value: Any


def format_problem(raw: Any, path: KeyPath, error: BaseException) -> str:
    shown = _show_path(raw, path)
    if isinstance(error, Problem):
        text = error.message
        if error.value is not Problem._NO_VALUE:
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


def _show_path(raw: Any, path: KeyPath) -> str:
    """``workflows.greet.maxQueue``, ``reflexes[0].signal``: as the user wrote
    them (an attribute given in camelCase is shown in camelCase)."""
    out = ""
    node = raw
    for step in path:
        if isinstance(step, Index):
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
            spelled = camel(str(name))
            if spelled in node:
                name = spelled
        out += f".{name}" if out else str(name)
        node = node.get(name) if isinstance(node, Mapping) else None
    return out


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def closest(key: str, candidates: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    if not found:
        lowered = {c.lower(): c for c in candidates}
        return lowered.get(key.lower().replace("-", "_"))
    return found[0]


def unknown(what: str, key: Any, candidates: list[str]) -> str:
    close = closest(key, candidates) if isinstance(key, str) else None
    if close is not None:
        return f"{what}; did you mean {close!r}?"
    return f"{what} (known: {', '.join(candidates) or 'none'})"


# -- structuring hooks ------------------------------------------------------------

converter = cattrs.Converter(detailed_validation=True)


def strict_str(value: Any, _: Any = None) -> str:
    if not isinstance(value, str):
        raise Problem("expected a string", value)
    return value


def strict_bool(value: Any, _: Any = None) -> bool:
    if not isinstance(value, bool):
        raise Problem("expected true or false", value)
    return value


def int_at_least(low: int) -> Callable[[Any, Any], int]:
    def hook(value: Any, _: Any = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise Problem(f"expected an integer >= {low}", value)
        return value

    return hook


def optional(
    hook: Callable[[Any, Any], T], null_means: str
) -> Callable[[Any, Any], T | None]:
    def optional(value: Any, t: Any = None) -> T | None:
        if value is None:
            return None
        try:
            return hook(value, t)
        except Problem as e:
            raise Problem(f"{e.message} or null ({null_means})", value) from None

    return optional


def one_of(*choices: str) -> Callable[[Any, Any], str]:
    def hook(value: Any, _: Any = None) -> str:
        if value not in choices or not isinstance(value, str):
            raise Problem(f"expected one of {', '.join(map(repr, choices))}", value)
        return value

    return hook


def entry(value: Any, _: Any = None) -> str:
    if not isinstance(value, str) or not ENTRY_RE.fullmatch(value):
        raise Problem("expected 'module:function' (like 'flows:greet')", value)
    return value


def optional_entry(value: Any, _: Any = None) -> str | None:
    return None if value is None else entry(value)


def signal(value: Any, _: Any = None) -> str:
    if not isinstance(value, str) or value.count(".") < 1 or "" in value.split(".", 1):
        raise Problem("expected 'group.sense' (like 'system.disk')", value)
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
        raise Problem(expected, value)
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
        raise Problem(expected + hint, value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise Problem(
            "expected a duration >= 0" if allow_zero else "expected a duration > 0",
            value,
        )
    return seconds


def every(value: Any, _: Any = None) -> float:
    return parse_duration(value)


def retention(value: Any, _: Any = None) -> timedelta:
    return timedelta(seconds=parse_duration(value, allow_zero=True))


def patterns(value: Any, _: Any = None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Problem("expected a glob pattern or a list of them", value)
    return tuple(value)


def path_value(value: Any, _: Any = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Problem("expected a path", value)
    return value


def optional_name(value: Any, _: Any = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise Problem("expected a name", value)
    return value


def name_problem(kind: str, name: Any) -> str | None:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        return f"a {kind} name must be a non-empty string without surrounding spaces"
    if any(c in name for c in "/\\\0"):
        return f"a {kind} name must not contain '/', '\\' or NUL"
    if kind == "sense group" and ("." in name or name.startswith(".")):
        return "a sense group name must not contain '.'"
    return None


def mapping_of(
    item: Callable[..., T], kind: str, what: str
) -> Callable[[Any, Any], dict[str, T]]:
    """A hook for ``NAME: {...}`` mappings: names checked, every item structured,
    every problem kept."""

    def hook(value: Any, _: Any = None) -> dict[str, T]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise Problem(f"expected a mapping of {what}", value)
        out: dict[str, T] = {}
        errors: list[Exception] = []
        for key, v in value.items():
            bad = name_problem(kind, key)
            if bad is not None:
                errors.append(Problem(bad, key, key=Index(key)))
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


def list_of(item: Callable[[Any], T], what: str) -> Callable[[Any, Any], tuple[T, ...]]:
    def hook(value: Any, _: Any = None) -> tuple[T, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise Problem(f"expected a list of {what}", value)
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


def class_hook(
    cls: type[T], what: str, overrides: Mapping[str, Callable[[Any, Any], Any]]
) -> Callable[[Any, Any], T]:
    """Structure ``cls`` from a mapping: both key spellings, unknown keys
    refused with the closest valid one, every problem kept."""
    fields = [f for f in attrs.fields(cast(Any, cls)) if f.name != "source"]
    names = [f.name for f in fields]
    aliases = {camel(n): n for n in names if "_" in n}
    # Suggest the seed's camelCase spelling first for multi-word keys.
    spellings = [camel(n) if "_" in n else n for n in names] + list(aliases.values())
    field_overrides: dict[str, Any] = {
        name: override(struct_hook=hook) for name, hook in overrides.items()
    }
    if "source" in attrs.fields_dict(cast(Any, cls)):
        field_overrides["source"] = override(omit=True)
    generated = make_dict_structure_fn(cls, converter, **field_overrides)
    required = all(f.default is attrs.NOTHING for f in fields)

    def hook(value: Any, _: Any = None) -> T:
        if value is None and not required:
            value = {}
        if not isinstance(value, Mapping):
            raise Problem(f"expected a mapping ({what})", value)
        data: dict[str, Any] = {}
        given: dict[str, Any] = {}
        errors: list[Exception] = []
        for key, v in value.items():
            name = key if key in names else aliases.get(key)
            if name is None:
                errors.append(Problem(unknown("unknown key", key, spellings), key=key))
            elif name in data:
                errors.append(
                    Problem(
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


def structurer(cls: type[T]) -> Callable[..., T]:
    def structure(value: Any, _: Any = None) -> T:
        return converter.structure(value, cls)

    return structure
