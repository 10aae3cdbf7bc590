"""Event classes and their JSON encoding.

An attrs class registered under a type name is encoded with cattrs (orjson
preconf converter) on append and comes back from `Log.read` as an instance.
Unregistered types travel as plain mappings. A registered class may declare a
schema version; events stored under an older version are brought up to date by
the class's upcasters when read, so old history never needs rewriting.
"""

from __future__ import annotations

import builtins
import math
import types
import typing
from collections.abc import Callable, KeysView, Mapping
from typing import Any, Final, TypeVar, overload

import attrs
import cattrs
import orjson
from cattrs.preconf.orjson import make_converter

from ._errors import (
    EventDecodingError,
    EventEncodingError,
    InvalidEventError,
    UnknownEventTypeError,
)

T = TypeVar("T")
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_dumps = orjson.dumps
_loads = orjson.loads


@attrs.frozen
class EventClass:
    """A registered event class: its type name, class, schema version, upcasters."""

    type: str
    cls: builtins.type[Any]
    version: int
    upcasters: Mapping[int, Upcaster]
    flat: bool = False
    """Every field holds plain JSON values: a stored payload (validated when it
    was appended) can be passed to the class as keywords, skipping cattrs."""
    names: tuple[str, ...] = ()
    """The field names, for encoding a flat class without cattrs."""


class EventRegistry:
    """Maps event type names to attrs classes, both ways.

    Most programs use the module-level `registry` through `nerve.event`; a
    separate registry can be given to `open_log` to keep sets of classes apart
    (tests do this).
    """

    def __init__(self) -> None:
        self._by_type: dict[str, EventClass] = {}
        self._by_cls: dict[builtins.type[Any], EventClass] = {}
        self._flat: dict[str, tuple[int, builtins.type[Any]]] = {}
        self.converter = make_converter()
        from ._vocabulary import register_vocabulary

        register_vocabulary(self)

    # -- registration ---------------------------------------------------------

    @overload
    def register(
        self,
        type: str,
        cls: None = None,
        *,
        version: int = 1,
        upcasters: Mapping[int, Upcaster] | None = None,
    ) -> Callable[[builtins.type[T]], builtins.type[T]]: ...

    @overload
    def register(
        self,
        type: str,
        cls: builtins.type[T],
        *,
        version: int = 1,
        upcasters: Mapping[int, Upcaster] | None = None,
    ) -> builtins.type[T]: ...

    def register(
        self,
        type: str,
        cls: builtins.type[Any] | None = None,
        *,
        version: int = 1,
        upcasters: Mapping[int, Upcaster] | None = None,
    ) -> Any:
        """Register an attrs class under an event type name.

        Usable as a decorator (``@registry.register("order.placed")``) or a
        call. ``upcasters[n]`` turns the payload dict of schema version ``n``
        into version ``n + 1``; every version below ``version`` needs one.

        Raises:
            InvalidEventError: the name is taken, the class is not an attrs
                class, or an upcaster is missing.
        """
        if cls is None:
            return lambda c: self.register(
                type, c, version=version, upcasters=upcasters
            )
        _check_type_name(type)
        if not attrs.has(cls):
            raise InvalidEventError(
                f"event class {cls.__qualname__} for {type!r} is not an attrs class; "
                "decorate it with @attrs.frozen"
            )
        if not isinstance(version, int) or version < 1:
            raise InvalidEventError(
                f"event type {type!r}: version must be an int >= 1, got {version!r}"
            )
        ups = dict(upcasters or {})
        missing = [v for v in range(1, version) if v not in ups]
        if missing:
            raise InvalidEventError(
                f"event type {type!r} is at version {version} but has no upcaster "
                f"from version(s) {missing}"
            )
        existing = self._by_type.get(type)
        if existing is not None and existing.cls is not cls:
            raise InvalidEventError(
                f"event type {type!r} is already registered to "
                f"{existing.cls.__qualname__}"
            )
        if cls in self._by_cls and self._by_cls[cls].type != type:
            raise InvalidEventError(
                f"{cls.__qualname__} is already registered as "
                f"{self._by_cls[cls].type!r}"
            )
        flat = _is_flat(cls)
        names = tuple(f.name for f in attrs.fields(cls)) if flat else ()
        entry = EventClass(type, cls, version, ups, flat, names)
        self._by_type[type] = entry
        if flat:
            self._flat[type] = (version, cls)
        else:
            self._flat.pop(type, None)
        self._by_cls[cls] = entry
        return cls

    def lookup(self, type: str) -> EventClass | None:
        """The registration for a type name, or None."""
        return self._by_type.get(type)

    @property
    def flat_classes(self) -> Mapping[str, tuple[int, builtins.type[Any]]]:
        """Type name -> (schema version, class) of the registered classes whose
        payloads decode as ``cls(**payload)`` (fields of JSON types only)."""
        return self._flat

    @property
    def registered_types(self) -> KeysView[str]:
        """The registered type names (a live view)."""
        return self._by_type.keys()

    def type_of(self, cls_or_instance: Any) -> str:
        """The type name a class (or instance) is registered under.

        Raises:
            UnknownEventTypeError: the class is not registered.
        """
        cls = (
            cls_or_instance
            if isinstance(cls_or_instance, builtins.type)
            else type(cls_or_instance)
        )
        entry = self._by_cls.get(cls)
        if entry is None:
            raise UnknownEventTypeError(
                f"{cls.__qualname__} is not a registered event class; "
                "decorate it with @nerve.event('type.name')"
            )
        return entry.type

    def __contains__(self, type: object) -> bool:
        return type in self._by_type

    # -- encoding -------------------------------------------------------------

    def encode(self, type: str, data: Any) -> tuple[str, int, Any]:
        """Encode one event's data.

        Returns:
            (the JSON text, the schema version, the canonical data): the
            canonical data is the instance for registered types, the mapping
            otherwise; inline projections fold it without decoding again.

        Raises:
            EventEncodingError: the data cannot be encoded, or does not fit the
                class registered for ``type``.
        """
        entry = self._by_type.get(type)
        if entry is None and data.__class__ is dict:  # the common case, first
            return _encode_json(type, "data", data), 1, data
        if entry is None:
            if attrs.has(data.__class__):
                other = self._by_cls.get(data.__class__)
                if other is not None:
                    raise EventEncodingError(
                        f"event {type!r}: data is a {data.__class__.__qualname__}, "
                        f"which is registered as {other.type!r}, not {type!r}"
                    )
                raise EventEncodingError(
                    f"event {type!r}: data is an unregistered attrs class "
                    f"{data.__class__.__qualname__}; register it with "
                    f"@nerve.event({type!r}) or pass a mapping"
                )
            if not isinstance(data, Mapping):
                raise EventEncodingError(
                    f"event {type!r}: data must be a mapping of JSON values or a "
                    f"registered event class, not {data.__class__.__qualname__}"
                )
            return _encode_json(type, "data", data), 1, data
        if isinstance(data, entry.cls):
            obj = data
        elif isinstance(data, Mapping):
            # Validate now, so a payload that read could never decode is refused
            # before it is written instead of failing every reader later.
            try:
                obj = self.converter.structure(dict(data), entry.cls)
            except Exception as e:
                raise EventEncodingError(
                    f"event {type!r}: data does not fit {entry.cls.__qualname__}: "
                    f"{_describe(e)}"
                ) from e
        else:
            raise EventEncodingError(
                f"event {type!r}: data must be a {entry.cls.__qualname__} or a "
                f"mapping, not {data.__class__.__qualname__}"
            )
        if entry.flat:
            # orjson takes the field values as they are; anything it does not
            # take as is (a set, bytes, int keys...) goes through cattrs, which
            # normalises it the same way for every event of the class.
            try:
                raw = {name: getattr(obj, name) for name in entry.names}
                return _encode_json(type, "data", raw), entry.version, obj
            except TypeError:
                pass
        try:
            raw = self.converter.unstructure(obj, entry.cls)
        except Exception as e:
            raise EventEncodingError(
                f"event {type!r}: cannot unstructure {entry.cls.__qualname__}: "
                f"{_describe(e)}"
            ) from e
        return _encode_json(type, "data", raw), entry.version, obj

    def decode(self, type: str, type_version: int, payload: str | bytes) -> Any:
        """Decode a stored payload (upcasting old schema versions).

        Raises:
            EventDecodingError: the payload does not fit the registered class.
        """
        raw = _loads(payload)
        entry = self._by_type.get(type)
        if entry is None:
            return raw
        return self.structure(entry, type_version, raw)

    def structure(self, entry: EventClass, type_version: int, raw: Any) -> Any:
        """Turn a payload dict of ``type_version`` into ``entry``'s class."""
        if type_version != entry.version:
            raw = self.upcast(entry, type_version, raw)
        if entry.flat and raw.__class__ is dict:
            try:
                return entry.cls(**raw)
            except TypeError:
                pass  # an unknown or missing key: let cattrs say what is wrong
        try:
            return self.converter.structure(raw, entry.cls)
        except Exception as e:
            raise EventDecodingError(
                f"stored event {entry.type!r} (schema v{type_version}) does not fit "
                f"{entry.cls.__qualname__}: {_describe(e)}"
            ) from e

    def upcast(self, entry: EventClass, type_version: int, raw: Any) -> Any:
        """Bring a payload dict from ``type_version`` up to the current version."""
        if type_version > entry.version:
            raise EventDecodingError(
                f"stored event {entry.type!r} has schema v{type_version}, newer "
                f"than this program's v{entry.version}; upgrade the program"
            )
        for v in range(type_version, entry.version):
            try:
                raw = entry.upcasters[v](raw)
            except Exception as e:
                raise EventDecodingError(
                    f"upcaster of {entry.type!r} from v{v} to v{v + 1} failed: "
                    f"{_describe(e)}"
                ) from e
        return raw


_JSON_SCALARS: frozenset[Any] = frozenset({Any, str, int, float, bool, type(None)})


def _is_json_type(tp: Any) -> bool:
    """Whether values of ``tp`` come back from JSON as they went in."""
    if tp in _JSON_SCALARS:
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return all(_is_json_type(a) for a in args)
    if origin is list:
        return all(_is_json_type(a) for a in args)
    if origin is dict:
        return len(args) == 2 and args[0] is str and _is_json_type(args[1])
    return False


def _is_flat(cls: builtins.type[Any]) -> bool:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        return False  # unresolvable annotations: always go through cattrs
    return all(
        f.init and f.alias == f.name and _is_json_type(hints.get(f.name, object))
        for f in attrs.fields(cls)
    )


def _describe(e: BaseException) -> str:
    if isinstance(e, cattrs.ClassValidationError):
        return "; ".join(cattrs.transform_error(e))
    return f"{e.__class__.__name__}: {e}"


def _encode_json(type: str, what: str, value: Any) -> str:
    try:
        out = _dumps(value)
    except (TypeError, orjson.JSONEncodeError) as e:
        raise EventEncodingError(
            f"event {type!r}: {what} is not JSON-serializable: {e}"
        ) from e
    text = out.decode()
    # orjson writes NaN and infinities as null: refuse them instead of storing
    # another value (scanned only when the output holds a null at all; the
    # str is searched, `in` on bytes costs several times more).
    if "null" in text and _has_non_finite(value):
        where = _non_finite(value, what)
        if where is not None:
            raise EventEncodingError(
                f"event {type!r}: {where} is a NaN or infinite float, which JSON "
                "cannot represent"
            )
    return text


_ATOMS: Final = frozenset({str, int, bool, type(None)})


def _has_non_finite(value: Any) -> bool:
    """Whether ``value`` holds a NaN or infinite float (fast: builds no paths;
    exact classes first, the ABC checks only for other containers)."""
    cls = value.__class__
    if cls is float:
        return not math.isfinite(value)
    if cls in _ATOMS:
        return False
    if cls is dict:
        values: Any = value.values()
    elif cls is list or cls is tuple:
        values = value
    elif isinstance(value, Mapping):
        values = value.values()
    elif isinstance(value, list | tuple):
        values = value
    else:
        return isinstance(value, float) and not math.isfinite(value)
    for v in values:  # noqa: SIM110 (a loop: no generator per container)
        if _has_non_finite(v):
            return True
    return False


def _non_finite(value: Any, path: str) -> str | None:
    """The path of the first NaN or infinite float in ``value``, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, Mapping):
        items: Any = ((f"{path}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for p, v in items:
        where = _non_finite(v, p)
        if where is not None:
            return where
    return None


def encode_meta(type: str, meta: Mapping[str, Any]) -> str | None:
    """Encode an event's meta mapping; None for an empty one (stored as NULL)."""
    if not meta:
        return None
    if not isinstance(meta, Mapping):
        raise EventEncodingError(
            f"event {type!r}: meta must be a mapping, not {meta.__class__.__qualname__}"
        )
    return _encode_json(type, "meta", meta)


def _check_type_name(type: str) -> None:
    if (
        not isinstance(type, str)
        or not type
        or len(type) > 200
        or type != type.strip()
        or not is_utf8(type)
    ):
        raise InvalidEventError(
            f"event type must be a non-empty string of at most 200 characters "
            f"without surrounding spaces or lone surrogates, got {type!r}"
        )


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be stored (encoded as UTF-8: no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


check_type_name = _check_type_name

registry = EventRegistry()
"""The default registry, used by `nerve.event` and `open_log`."""


@overload
def event(
    type: str,
    cls: None = None,
    *,
    version: int = 1,
    upcasters: Mapping[int, Upcaster] | None = None,
) -> Callable[[builtins.type[T]], builtins.type[T]]: ...


@overload
def event(
    type: str,
    cls: builtins.type[T],
    *,
    version: int = 1,
    upcasters: Mapping[int, Upcaster] | None = None,
) -> builtins.type[T]: ...


def event(
    type: str,
    cls: builtins.type[Any] | None = None,
    *,
    version: int = 1,
    upcasters: Mapping[int, Upcaster] | None = None,
) -> Any:
    """Register an attrs class as an event type in the default registry.

    Example:
        >>> @nerve.event("order.placed", version=2, upcasters={1: add_currency})
        ... @attrs.frozen
        ... class OrderPlaced:
        ...     order_id: str
        ...     amount: int
        ...     currency: str
    """
    return registry.register(type, cls, version=version, upcasters=upcasters)
