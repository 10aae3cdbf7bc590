"""The knowledge store's events: a file was indexed, a file went away.

Indexing a tree appends one ``knowledge.file.indexed`` per new or changed file
and one ``knowledge.file.removed`` per vanished file, to the stream
``knowledge-<repo>``. The knowledge projection folds them into
``knowledge.db``; everything it holds (chunks, full-text index, vectors) is
derived from these events and can be rebuilt from them.

A file's text travels in the event when it is small; a larger one is put in
the log's blob store (content-addressed: its digest is the file's sha256) and
the event carries only the digest, so the log stays small.

The classes are registered in nerve's default registry (`nerve.event`) when
this package is imported. A log opened with another registry reads them back
as plain mappings, which the projection accepts as well (`as_indexed`,
`as_removed`); `register_knowledge_events` registers them in such a registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
import cattrs

from nerve.events import EventRegistry, registry

__all__ = [
    "FILE_INDEXED",
    "FILE_REMOVED",
    "FileIndexed",
    "FileRemoved",
    "knowledge_stream",
    "register_knowledge_events",
]

FILE_INDEXED: Final = "knowledge.file.indexed"
FILE_REMOVED: Final = "knowledge.file.removed"
KNOWLEDGE_TYPES: Final = frozenset({FILE_INDEXED, FILE_REMOVED})
STREAM_PREFIX: Final = "knowledge-"

CARD: Final = "card"
FILE: Final = "file"


def knowledge_stream(repo: str) -> str:
    """The stream that holds the indexing history of ``repo``."""
    return STREAM_PREFIX + repo


@attrs.frozen
class FileIndexed:
    """A file (or a ``.knowledge/`` card) was indexed with this content.

    Attributes:
        repo: the repository (the scope of `search`'s ``repo=``).
        path: POSIX path relative to the indexed root.
        sha256: hex digest of the file's bytes.
        size: the file's size in bytes.
        kind: ``"card"`` for ``.knowledge/*.md`` cards, ``"file"`` otherwise.
        content: the file's text (UTF-8), when it is small enough to travel in
            the event; None when it lives in the blob store.
        blob: the blob store digest holding the bytes when ``content`` is None
            (equal to ``sha256``).
    """

    repo: str
    path: str
    sha256: str
    size: int
    kind: str = FILE
    content: str | None = None
    blob: str | None = None


@attrs.frozen
class FileRemoved:
    """A file indexed before is gone (deleted, now ignored, or now binary)."""

    repo: str
    path: str


_converter = cattrs.Converter()


def as_indexed(data: Any) -> FileIndexed:
    """The event's data as a `FileIndexed` (from an instance or a mapping)."""
    if isinstance(data, FileIndexed):
        return data
    if isinstance(data, Mapping):
        return _converter.structure(dict(data), FileIndexed)
    raise TypeError(f"not knowledge.file.indexed data: {data!r}")


def as_removed(data: Any) -> FileRemoved:
    """The event's data as a `FileRemoved` (from an instance or a mapping)."""
    if isinstance(data, FileRemoved):
        return data
    if isinstance(data, Mapping):
        return _converter.structure(dict(data), FileRemoved)
    raise TypeError(f"not knowledge.file.removed data: {data!r}")


def register_knowledge_events(target: EventRegistry) -> None:
    """Register the knowledge event classes in ``target`` (idempotent).

    nerve's default registry gets them when `nerve.knowledge` is imported;
    call this for a registry of your own given to `open_log`.
    """
    for name, cls in ((FILE_INDEXED, FileIndexed), (FILE_REMOVED, FileRemoved)):
        entry = target.lookup(name)
        if entry is None:
            target.register(name, cls)
        elif entry.cls is not cls:
            raise ValueError(
                f"event type {name!r} is already registered to "
                f"{entry.cls.__qualname__}; the knowledge store needs it for "
                f"{cls.__qualname__}"
            )


register_knowledge_events(registry)
