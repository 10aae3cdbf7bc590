"""Walking a source tree: which files to index, and their content hashes.

The walk honours every ``.gitignore`` on the way down (and the root's
``.git/info/exclude``), the caller's include and exclude globs, and skips
what is not text: symbolic links, files over a size limit, files with a NUL
byte near the start or that are not UTF-8. ``.git`` directories are never
entered.

``.knowledge/*.md`` files at the root are *cards*: curated notes that are
indexed even when a ``.gitignore`` or the include globs leave them out (a
private notes folder is often ignored by git); the exclude globs still apply.

Everything here blocks on the file system: run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import attrs

from ._events import CARD, FILE
from ._ignore import GitIgnore, IgnoreRules, glob_matcher

__all__ = ["DEFAULT_MAX_BYTES", "FoundFile", "Skipped", "WalkOptions", "walk"]

DEFAULT_MAX_BYTES: Final = 1 << 20
"""Files larger than this (1 MiB) are skipped: generated or minified, mostly."""

CARDS_DIR: Final = ".knowledge"
_SNIFF = 8192
_NEVER = frozenset({".git"})


@attrs.frozen
class FoundFile:
    """A text file the walk selected.

    Attributes:
        path: POSIX path relative to the root.
        kind: ``"card"`` or ``"file"``.
        sha256: hex digest of its bytes.
        size: its size in bytes.
        text: its content.
    """

    path: str
    kind: str
    sha256: str
    size: int
    text: str = attrs.field(repr=False)


@attrs.frozen
class Skipped:
    """A file the walk left out, and why (``binary``, ``too large``, ...)."""

    path: str
    reason: str


@attrs.frozen
class WalkOptions:
    """What to select.

    Attributes:
        include: globs (gitignore syntax) a file must match, if any are given.
        exclude: globs of files and directories to leave out.
        max_bytes: skip files larger than this.
    """

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    max_bytes: int = DEFAULT_MAX_BYTES

    def __attrs_post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes!r}")


def is_card(path: str) -> bool:
    """Whether a root-relative path names a ``.knowledge/`` card."""
    return path.startswith(CARDS_DIR + "/") and path.lower().endswith(".md")


def _read_ignore(path: Path, base: str) -> GitIgnore | None:
    try:
        if path.is_symlink() or not path.is_file():
            return None
        return GitIgnore.parse(path.read_text("utf-8", errors="replace"), base)
    except OSError:
        return None


class _Selector:
    def __init__(self, options: WalkOptions) -> None:
        self.include = glob_matcher(options.include) if options.include else None
        self.exclude = glob_matcher(options.exclude)

    def excluded(self, path: str, is_dir: bool) -> bool:
        return self.exclude.match(path, is_dir) is True

    def included(self, path: str) -> bool:
        if self.include is None:
            return True
        if self.include.match(path, False):
            return True
        # "docs/" includes every file under docs: test the parents as directories.
        parts = path.split("/")[:-1]
        return any(
            self.include.match("/".join(parts[: i + 1]), True)
            for i in range(len(parts))
        )


def walk(
    root: Path, options: WalkOptions | None = None
) -> Iterator[FoundFile | Skipped]:
    """Yield the selected text files under ``root`` (sorted by path), and the
    files left out for what they contain (binary, too large, unreadable).

    Files left out by ``.gitignore`` or the globs are not reported at all.

    Raises:
        NotADirectoryError: ``root`` is not a directory.
    """
    options = options or WalkOptions()
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"cannot index {root}: not a directory")
    selector = _Selector(options)
    rules = IgnoreRules()
    exclude_file = _read_ignore(root / ".git" / "info" / "exclude", "")
    if exclude_file is not None:
        rules = rules.add(exclude_file)
    yield from _walk_dir(root, "", rules, selector, options)


def _walk_dir(
    directory: Path,
    rel: str,
    rules: IgnoreRules,
    selector: _Selector,
    options: WalkOptions,
) -> Iterator[FoundFile | Skipped]:
    local = _read_ignore(directory / ".gitignore", rel)
    if local is not None:
        rules = rules.add(local)
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_symlink():
            continue  # could point outside the root, or loop
        if entry.is_dir():
            if entry.name in _NEVER or selector.excluded(path, True):
                continue
            # The cards folder is walked even when git ignores it.
            if path != CARDS_DIR and rules.ignored(path, True):
                continue
            yield from _walk_dir(Path(entry.path), path, rules, selector, options)
        elif entry.is_file():
            if selector.excluded(path, False):
                continue
            card = is_card(path)
            if not card and (rules.ignored(path, False) or not selector.included(path)):
                continue
            yield _load(Path(entry.path), path, CARD if card else FILE, options)


def _load(path: Path, rel: str, kind: str, options: WalkOptions) -> FoundFile | Skipped:
    try:
        size = path.stat().st_size
        if size > options.max_bytes:
            return Skipped(rel, f"too large ({size} bytes > {options.max_bytes})")
        data = path.read_bytes()
    except OSError as e:
        return Skipped(rel, f"unreadable ({e.strerror or e})")
    if len(data) > options.max_bytes:
        return Skipped(rel, f"too large ({len(data)} bytes > {options.max_bytes})")
    if b"\0" in data[:_SNIFF]:
        return Skipped(rel, "binary")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return Skipped(rel, "binary (not UTF-8 text)")
    return FoundFile(rel, kind, hashlib.sha256(data).hexdigest(), len(data), text)
