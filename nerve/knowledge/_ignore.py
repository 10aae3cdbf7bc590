"""``.gitignore`` patterns, and the same globs for include/exclude lists.

Implements the pattern language of gitignore(5) without a dependency:

* blank lines and ``#`` comments are skipped (``\\#`` is a literal ``#``);
  trailing spaces are dropped unless escaped with a backslash;
* ``!`` negates (re-includes) a pattern (``\\!`` is a literal ``!``);
* a trailing ``/`` matches directories only;
* a ``/`` at the start or in the middle anchors the pattern to the directory
  of its ``.gitignore``; without one it matches a name at any depth;
* ``*`` and ``?`` never match ``/``; ``[a-z]``, ``[!a-z]`` are classes;
* ``**/`` at the start matches in every directory, ``/**`` at the end
  matches everything inside, ``/**/`` matches zero or more directories.

As in git, the last matching pattern wins, a deeper ``.gitignore`` overrides a
shallower one, and a file inside an ignored directory cannot be re-included
(the walk never enters the directory).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs

__all__ = ["GitIgnore", "IgnorePattern", "IgnoreRules", "glob_matcher"]


def _translate(pattern: str) -> str:
    """The regular expression of a gitignore glob (no anchoring slash)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            starts = i == 0 or pattern[i - 1] == "/"
            ends = j == n or pattern[j] == "/"
            if j - i == 2 and starts and ends:
                if j == n:
                    out.append(".*")  # "a/**": everything inside
                    i = j
                else:
                    out.append("(?:.*/)?")  # "**/": zero or more directories
                    i = j + 1
                continue
            # Any other run of asterisks is a plain "*" (gitignore(5)).
            out.append("[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = _class_end(pattern, i)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : end]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = _class_body(body)
            # A class never matches "/", even negated.
            out.append(f"[^/{body}]" if negate else f"(?!/)[{body}]")
            i = end + 1
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _class_body(body: str) -> str:
    """A glob class's members as the body of a regex class."""
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(re.escape(body[i + 1]))
            i += 2
            continue
        # Characters special inside a Python regex class (or warned about as
        # future set operations) are escaped; "-" keeps its range meaning.
        out.append("\\" + ch if ch in "^[]&~|\\" else ch)
        i += 1
    return "".join(out)


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the class opened at ``start``, or -1."""
    i = start + 1
    if i < len(pattern) and pattern[i] in "!^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1  # a leading "]" is a member, not the end
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "]":
            return i
        i += 1
    return -1


def _strip_trailing_spaces(line: str) -> str:
    end = len(line)
    while end > 0 and line[end - 1] == " ":
        # An escaped space ("\ ") is kept; count the backslashes before it.
        k = end - 1
        slashes = 0
        while k > 0 and line[k - 1] == "\\":
            slashes += 1
            k -= 1
        if slashes % 2 == 1:
            break
        end -= 1
    return line[:end]


@attrs.frozen
class IgnorePattern:
    """One parsed gitignore line.

    Attributes:
        source: the line as written.
        negated: a ``!`` pattern (re-includes what it matches).
        dir_only: ends with ``/``: matches directories only.
        anchored: relative to the ``.gitignore``'s directory.
        regex: the compiled pattern, matched against a relative POSIX path.
    """

    source: str
    negated: bool
    dir_only: bool
    anchored: bool
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, line: str) -> IgnorePattern | None:
        """Parse one line of a ``.gitignore``; None for blanks and comments."""
        text = line.rstrip("\r\n")
        if not text or text.startswith("#"):
            return None
        text = _strip_trailing_spaces(text)
        negated = False
        if text.startswith("!"):
            negated, text = True, text[1:]
        elif text.startswith(("\\!", "\\#")):
            text = text[1:]
        dir_only = text.endswith("/") and not text.endswith("\\/")
        text = text.rstrip("/") if dir_only else text
        if not text:
            return None
        anchored = "/" in text
        text = text.removeprefix("/")
        body = _translate(text)
        regex = body if anchored else f"(?:.*/)?{body}"
        return cls(line, negated, dir_only, anchored, re.compile(regex, re.DOTALL))

    def matches(self, path: str, is_dir: bool) -> bool:
        """Whether the pattern matches ``path`` (relative to its base)."""
        if self.dir_only and not is_dir:
            return False
        return self.regex.fullmatch(path) is not None


@attrs.frozen
class GitIgnore:
    """The patterns of one ``.gitignore`` file, in order.

    Attributes:
        base: the directory holding it, relative to the walk's root (POSIX,
            ``""`` for the root itself).
        patterns: its patterns, in file order.
    """

    base: str
    patterns: tuple[IgnorePattern, ...]

    @classmethod
    def parse(cls, text: str, base: str = "") -> GitIgnore:
        """Parse the text of a ``.gitignore`` located in ``base``."""
        patterns = (IgnorePattern.parse(line) for line in text.splitlines())
        return cls(base.strip("/"), tuple(p for p in patterns if p is not None))

    def match(self, path: str, is_dir: bool) -> bool | None:
        """True: ignored, False: re-included, None: no pattern matched.

        Args:
            path: POSIX path relative to the walk's root.
            is_dir: whether it is a directory.
        """
        if self.base:
            prefix = self.base + "/"
            if not path.startswith(prefix):
                return None
            path = path[len(prefix) :]
        result: bool | None = None
        for p in self.patterns:
            if p.matches(path, is_dir):
                result = not p.negated
        return result


@attrs.frozen
class IgnoreRules:
    """The ``.gitignore`` files in force at one directory, shallowest first."""

    files: tuple[GitIgnore, ...] = ()

    def add(self, ignore: GitIgnore) -> IgnoreRules:
        """These rules plus a deeper ``.gitignore`` (which takes precedence)."""
        if not ignore.patterns:
            return self
        return IgnoreRules((*self.files, ignore))

    def ignored(self, path: str, is_dir: bool) -> bool:
        """Whether ``path`` (relative to the root) is ignored."""
        result = False
        for f in self.files:
            verdict = f.match(path, is_dir)
            if verdict is not None:
                result = verdict
        return result


def glob_matcher(patterns: Iterable[str]) -> GitIgnore:
    """Include/exclude globs, with gitignore syntax, relative to the root.

    ``*.py`` matches at any depth, ``src/*.py`` only under ``src``, ``docs/``
    a directory and everything in it; ``!`` re-includes.
    """
    if isinstance(patterns, str):
        raise TypeError("pass a list of glob patterns, not one string")
    return GitIgnore.parse("\n".join(_check_globs(list(patterns))))


def _check_globs(patterns: Sequence[str]) -> Sequence[str]:
    for p in patterns:
        if not isinstance(p, str) or "\n" in p:
            raise ValueError(f"invalid glob pattern {p!r}")
    return patterns
