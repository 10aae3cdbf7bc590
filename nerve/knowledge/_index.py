"""`index`: walk a tree and append what changed as knowledge events.

The plain-log form of indexing: it needs a `Log` only (no kernel, no
projection running). What the repository looked like at its last indexing is
read back from its own stream (``knowledge-<repo>``), so the comparison is
always against the log itself, never against a read model that may lag.

Appends are chained with ``expected_version``: if another indexer appended
to the same repository meanwhile, the next append fails with
`WrongExpectedVersion` instead of interleaving two views of the tree; index
again to pick up from what was written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import attrs
import trio

from nerve.events import NO_STREAM, Log, NewEvent

from ._events import (
    FILE_INDEXED,
    FILE_REMOVED,
    KNOWLEDGE_TYPES,
    FileIndexed,
    FileRemoved,
    as_indexed,
    as_removed,
    knowledge_stream,
)
from ._walk import DEFAULT_MAX_BYTES, FoundFile, Skipped, WalkOptions, walk

__all__ = ["DEFAULT_INLINE_LIMIT", "IndexResult", "index"]

DEFAULT_INLINE_LIMIT: Final = 16 * 1024
"""Files up to this many bytes travel in their event; larger ones as blobs."""
_BATCH_FILES = 256
_BATCH_BYTES = 4 << 20


@attrs.frozen
class IndexResult:
    """What one `index` call found and appended.

    Attributes:
        repo: the repository.
        added: paths indexed for the first time.
        changed: paths whose content changed.
        removed: paths indexed before and gone now.
        unchanged: how many files were already indexed with this content.
        skipped: files left out for their content (binary, too large...).
        position: the last position appended (None: nothing was appended).
    """

    repo: str
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: int
    skipped: tuple[Skipped, ...]
    position: int | None

    @property
    def appended(self) -> int:
        """How many events were appended."""
        return len(self.added) + len(self.changed) + len(self.removed)


async def indexed_state(log: Log, repo: str) -> tuple[dict[str, str], int]:
    """The repo's files as last indexed (path -> sha256), and its stream version."""
    state: dict[str, str] = {}
    version = 0
    async for e in log.read(stream=knowledge_stream(repo), types=KNOWLEDGE_TYPES):
        version = e.version
        if e.type == FILE_INDEXED:
            data = as_indexed(e.data)
            state[data.path] = data.sha256
        elif e.type == FILE_REMOVED:
            state.pop(as_removed(e.data).path, None)
    return state, version


def _check_repo(repo: object) -> str:
    if not isinstance(repo, str) or not repo or len(repo) > 200:
        raise ValueError(
            f"repo must be a non-empty name (at most 200 chars), got {repo!r}"
        )
    if any(c in repo for c in "\n\r\0"):
        raise ValueError(f"repo must not contain line breaks or NUL, got {repo!r}")
    return repo


def _take(
    files: Iterator[FoundFile | Skipped],
    known: dict[str, str],
    seen: set[str],
    skipped: list[Skipped],
) -> tuple[list[FoundFile], int, bool]:
    """Walk on until a batch of new or changed files is ready (in a thread).

    Returns (the batch, unchanged files passed, whether the walk is done).
    """
    batch: list[FoundFile] = []
    size = unchanged = 0
    for f in files:
        if isinstance(f, Skipped):
            skipped.append(f)
            continue
        seen.add(f.path)
        if known.get(f.path) == f.sha256:
            unchanged += 1
            continue
        batch.append(f)
        size += f.size
        if len(batch) >= _BATCH_FILES or size >= _BATCH_BYTES:
            return batch, unchanged, False
    return batch, unchanged, True


async def index(
    log: Log,
    root: str | os.PathLike[str],
    *,
    repo: str,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
    inline_limit: int = DEFAULT_INLINE_LIMIT,
) -> IndexResult:
    """Index the text files under ``root`` as ``repo``: append what changed.

    One ``knowledge.file.indexed`` per new or changed file (content inline up
    to ``inline_limit`` bytes, else in ``log.blobs``), one
    ``knowledge.file.removed`` per file indexed before and not selected now
    (deleted, ignored, excluded or binary). An unchanged file appends nothing.

    Args:
        log: the log to append to.
        root: the directory to walk.
        repo: the repository's name: `search` can be scoped to it.
        include: globs (gitignore syntax, relative to ``root``) a file must
            match, if any are given. Cards (``.knowledge/*.md``) always are.
        exclude: globs of files and directories to leave out.
        max_bytes: skip files larger than this.
        inline_limit: larger files go to the blob store.

    Returns:
        What was added, changed, removed, left unchanged or skipped.

    Raises:
        NotADirectoryError: ``root`` is not a directory.
        WrongExpectedVersion: another indexer appended to ``repo`` meanwhile.
    """
    repo = _check_repo(repo)
    options = WalkOptions(tuple(include), tuple(exclude), max_bytes)
    known, version = await indexed_state(log, repo)
    stream = knowledge_stream(repo)
    files = walk(Path(root), options)
    seen: set[str] = set()
    skipped: list[Skipped] = []
    added: list[str] = []
    changed: list[str] = []
    unchanged = 0
    position: int | None = None
    done = False
    while not done:
        batch, passed, done = await trio.to_thread.run_sync(
            _take, files, known, seen, skipped
        )
        unchanged += passed
        if not batch:
            continue
        events = []
        for f in batch:
            (changed if f.path in known else added).append(f.path)
            events.append(
                NewEvent(FILE_INDEXED, await _indexed(log, repo, f, inline_limit))
            )
        result = await log.append(stream, events, expected_version=version or NO_STREAM)
        version, position = result.version, result.positions[-1]
    gone = sorted(p for p in known if p not in seen)
    if gone:
        result = await log.append(
            stream,
            [NewEvent(FILE_REMOVED, attrs.asdict(FileRemoved(repo, p))) for p in gone],
            expected_version=version or NO_STREAM,
        )
        position = result.positions[-1]
    return IndexResult(
        repo,
        tuple(added),
        tuple(changed),
        tuple(gone),
        unchanged,
        tuple(skipped),
        position,
    )


async def _indexed(
    log: Log, repo: str, f: FoundFile, inline_limit: int
) -> dict[str, object]:
    # Mappings, not instances: a log opened with a registry of its own (which
    # may not know the knowledge classes) encodes them all the same.
    if f.size <= inline_limit:
        data = FileIndexed(repo, f.path, f.sha256, f.size, f.kind, content=f.text)
    else:
        digest = await log.blobs.put(f.text.encode("utf-8"))
        data = FileIndexed(repo, f.path, f.sha256, f.size, f.kind, blob=digest)
    return attrs.asdict(data)
