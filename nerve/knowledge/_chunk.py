"""Cutting files into chunks: the units that are embedded and searched.

Code (and plain text) is cut along blank-line separated blocks. A block that
starts at the left margin opens a *unit* (a definition with the comments and
decorators above it); indented blocks and closing brackets that follow belong
to the same unit, so a function or class stays whole. Units are packed into
chunks of at most ``max_chars``; a unit larger than that is cut into windows
of at most ``max_chars`` that overlap by ``overlap_lines`` lines (preferring
to end at a blank line), so no text loses its context at a cut.

Markdown is cut along headings (ATX ``#`` headings outside fenced code); each
chunk carries its heading trail ("Guide > Install > Linux") as its title. A
section larger than ``max_chars`` is cut like code, along paragraphs.

Cards (``.knowledge/*.md``) are Markdown with optional front matter between
``---`` lines: ``title:`` and ``tags:`` (``[a, b]``, ``a, b`` or a ``- a`` list).

Chunking is a pure function of the text and the options: the projection's
determinism (rebuild == live) depends on it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Final

import attrs

__all__ = [
    "Card",
    "Chunk",
    "ChunkOptions",
    "chunk_code",
    "chunk_document",
    "chunk_markdown",
    "kind_of",
    "parse_card",
]

CODE_EXTENSIONS: Final = frozenset(
    [
        ".py",
        ".pyi",
        ".pyx",
        ".js",
        ".jsx",
        ".mjs",
        ".cjs",
        ".ts",
        ".tsx",
        ".go",
        ".rs",
        ".c",
        ".h",
        ".cc",
        ".cpp",
        ".cxx",
        ".hpp",
        ".hh",
        ".java",
        ".kt",
        ".kts",
        ".scala",
        ".swift",
        ".m",
        ".mm",
        ".rb",
        ".php",
        ".pl",
        ".pm",
        ".lua",
        ".r",
        ".jl",
        ".hs",
        ".ml",
        ".mli",
        ".ex",
        ".exs",
        ".erl",
        ".clj",
        ".cljs",
        ".fs",
        ".fsx",
        ".cs",
        ".vb",
        ".dart",
        ".zig",
        ".nim",
        ".sh",
        ".bash",
        ".zsh",
        ".fish",
        ".ps1",
        ".sql",
        ".proto",
        ".graphql",
        ".tf",
        ".hcl",
        ".toml",
        ".yaml",
        ".yml",
        ".json",
        ".ini",
        ".cfg",
        ".cmake",
        ".make",
        ".mk",
        ".gradle",
        ".vue",
        ".svelte",
        ".css",
        ".scss",
        ".sass",
        ".less",
        ".html",
        ".xml",
    ]
)
MARKDOWN_EXTENSIONS: Final = frozenset({".md", ".markdown", ".mdx"})

_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# A block starting with one of these at the margin closes the previous unit
# (C-family braces, Ruby/Lua "end", closing parentheses of a call).
_CLOSER = re.compile(r"^(?:[}\])]|end\b|fi\b|done\b|esac\b)")


@attrs.frozen
class ChunkOptions:
    """How big chunks get.

    Attributes:
        max_chars: the most characters in a chunk (a single longer line is
            kept whole).
        overlap_lines: lines repeated at the start of a window cut from a
            unit (or section) too large for one chunk.
    """

    max_chars: int = 1500
    overlap_lines: int = 2

    def __attrs_post_init__(self) -> None:
        if self.max_chars < 80:
            raise ValueError(f"max_chars must be >= 80, got {self.max_chars!r}")
        if self.overlap_lines < 0:
            raise ValueError(f"overlap_lines must be >= 0, got {self.overlap_lines!r}")


@attrs.frozen
class Chunk:
    """A piece of a file.

    Attributes:
        number: its place in the file, from 0.
        start_line: its first line, from 1.
        end_line: its last line (inclusive).
        text: the lines ``start_line..end_line``.
        title: the heading trail (Markdown) or the card's title; "" for code.
    """

    number: int
    start_line: int
    end_line: int
    text: str
    title: str = ""


@attrs.frozen
class Card:
    """A card's front matter, and where its body starts (0-based line index)."""

    title: str
    tags: tuple[str, ...]
    body_start: int


def kind_of(path: str, event_kind: str = "file") -> str:
    """``card``, ``markdown``, ``code`` or ``text``, from the path."""
    if event_kind == "card":
        return "card"
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in MARKDOWN_EXTENSIONS:
        return "markdown"
    if suffix in CODE_EXTENSIONS:
        return "code"
    return "text"


class _Lines:
    """Lines with O(1) character counts of any span."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = lines
        self.offsets = [0]
        for line in lines:
            self.offsets.append(self.offsets[-1] + len(line) + 1)

    def size(self, start: int, end: int) -> int:
        """Characters of lines ``start..end`` (inclusive) joined by newlines."""
        return self.offsets[end + 1] - self.offsets[start] - 1

    def blank(self, i: int) -> bool:
        return not self.lines[i].strip()

    def text(self, start: int, end: int) -> str:
        return "\n".join(self.lines[start : end + 1])


def _blocks(lines: _Lines, start: int, end: int) -> list[tuple[int, int]]:
    """Maximal runs of non-blank lines within ``start..end``."""
    blocks: list[tuple[int, int]] = []
    i = start
    while i <= end:
        if lines.blank(i):
            i += 1
            continue
        j = i
        while j + 1 <= end and not lines.blank(j + 1):
            j += 1
        blocks.append((i, j))
        i = j + 1
    return blocks


def _units(lines: _Lines, blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Group blocks into units: a margin block opens one, the rest join it."""
    units: list[tuple[int, int]] = []
    for start, end in blocks:
        first = lines.lines[start]
        opens = first[:1] not in (" ", "\t") and not _CLOSER.match(first)
        if units and not opens:
            units[-1] = (units[-1][0], end)
        else:
            units.append((start, end))
    return units


def _windows(
    lines: _Lines, start: int, end: int, options: ChunkOptions
) -> list[tuple[int, int]]:
    """Cut ``start..end`` into overlapping windows of at most ``max_chars``."""
    out: list[tuple[int, int]] = []
    s = start
    while True:
        e = s
        while e + 1 <= end and lines.size(s, e + 1) <= options.max_chars:
            e += 1
        if e < end:
            # End at a blank line when one is near the end of the window, so
            # cuts fall between paragraphs or statements rather than inside.
            floor = s + (e - s) * 3 // 5
            for cut in range(e, floor, -1):
                if lines.blank(cut + 1) or lines.blank(cut):
                    e = cut
                    break
        while e > s and lines.blank(e):
            e -= 1
        out.append((s, e))
        if e >= end:
            return out
        nxt = max(e + 1 - options.overlap_lines, s + 1)
        while nxt <= end and lines.blank(nxt):
            nxt += 1
        if nxt > end:
            return out
        s = nxt


def _pack(
    lines: _Lines, start: int, end: int, options: ChunkOptions
) -> list[tuple[int, int]]:
    """Spans of ``start..end``: whole units packed up to ``max_chars``."""
    spans: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for u_start, u_end in _units(lines, _blocks(lines, start, end)):
        if lines.size(u_start, u_end) > options.max_chars:
            if current is not None:
                spans.append(current)
                current = None
            spans.extend(_windows(lines, u_start, u_end, options))
        elif current is None:
            current = (u_start, u_end)
        elif lines.size(current[0], u_end) <= options.max_chars:
            current = (current[0], u_end)
        else:
            spans.append(current)
            current = (u_start, u_end)
    if current is not None:
        spans.append(current)
    return spans


def _make(lines: _Lines, spans: list[tuple[int, str, int]]) -> list[Chunk]:
    return [
        Chunk(n, s + 1, e + 1, lines.text(s, e), title)
        for n, (s, title, e) in enumerate(spans)
    ]


def chunk_code(text: str, options: ChunkOptions | None = None) -> list[Chunk]:
    """Cut code or plain text along blank-line blocks, keeping units whole."""
    options = options or ChunkOptions()
    lines = _Lines(text.splitlines())
    if not lines.lines:
        return []
    spans = _pack(lines, 0, len(lines.lines) - 1, options)
    return _make(lines, [(s, "", e) for s, e in spans])


def _sections(lines: _Lines, start: int) -> list[tuple[int, int, str]]:
    """(first line, last line, heading trail) of each heading section."""
    sections: list[tuple[int, int, str]] = []
    stack: list[tuple[int, str]] = []
    fence: str | None = None
    current, trail = start, ""
    for i in range(start, len(lines.lines)):
        line = lines.lines[i]
        fenced = _FENCE.match(line)
        if fence is not None:
            if (
                fenced
                and fenced.group(1)[0] == fence[0]
                and len(fenced.group(1)) >= len(fence)
            ):
                fence = None
            continue
        if fenced:
            fence = fenced.group(1)
            continue
        heading = _HEADING.match(line)
        if heading is None:
            continue
        if i > current:
            sections.append((current, i - 1, trail))
        level = len(heading.group(1))
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, (heading.group(2) or "").strip()))
        trail = " > ".join(t for _, t in stack if t)
        current = i
    if current < len(lines.lines):
        sections.append((current, len(lines.lines) - 1, trail))
    return sections


def chunk_markdown(
    text: str,
    options: ChunkOptions | None = None,
    *,
    start_line: int = 0,
    title: str = "",
) -> list[Chunk]:
    """Cut Markdown along headings; big sections along paragraphs.

    Args:
        text: the document.
        options: size limits.
        start_line: 0-based index of the first line to chunk (after front
            matter); line numbers stay those of the whole text.
        title: prefixed to each chunk's heading trail (a card's title).
    """
    options = options or ChunkOptions()
    lines = _Lines(text.splitlines())
    spans: list[tuple[int, str, int]] = []
    pending: int | None = None  # a heading with no body joins the next section
    for s, e, trail in _sections(lines, start_line):
        blocks = _blocks(lines, s, e)
        if not blocks:
            continue
        first = blocks[0][0] if pending is None else pending
        heading_only = (
            len(blocks) == 1
            and blocks[0][0] == blocks[0][1]
            and _HEADING.match(lines.lines[blocks[0][0]]) is not None
        )
        if heading_only:
            pending = first
            continue
        pending = None
        full = _title(title, trail)
        last = blocks[-1][1]
        if lines.size(first, last) <= options.max_chars:
            spans.append((first, full, last))
        else:
            spans.extend((a, full, b) for a, b in _pack(lines, first, last, options))
    if pending is not None:
        last = len(lines.lines) - 1
        while last > pending and lines.blank(last):
            last -= 1
        spans.append((pending, title, last))
    return _make(lines, spans)


def _title(card_title: str, trail: str) -> str:
    if not card_title:
        return trail
    if not trail or trail == card_title or trail.startswith(card_title + " > "):
        return trail or card_title
    return f"{card_title} > {trail}"


def _front_matter(lines: list[str]) -> tuple[dict[str, str | list[str]], int]:
    """Parse ``---`` front matter: (fields, index of the first body line)."""
    if not lines or lines[0].strip() != "---":
        return {}, 0
    fields: dict[str, str | list[str]] = {}
    key: str | None = None
    for i in range(1, min(len(lines), 200)):
        line = lines[i]
        if line.strip() in ("---", "..."):
            return fields, i + 1
        item = re.match(r"^\s+-\s+(.*)$", line)
        if item and key is not None:
            value = fields.get(key)
            items = value if isinstance(value, list) else []
            items.append(_unquote(item.group(1)))
            fields[key] = items
            continue
        pair = re.match(r"^([A-Za-z_][\w-]*)\s*:\s*(.*)$", line)
        if pair:
            key = pair.group(1).lower()
            fields[key] = pair.group(2).strip()
    return {}, 0  # no closing line: not front matter after all


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _tags(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.strip().removeprefix("[").removesuffix("]")
        value = list(value.split(","))
    tags = (_unquote(v).lstrip("#") for v in value)
    return tuple(dict.fromkeys(t for t in tags if t))


def parse_card(text: str, path: str) -> Card:
    """A card's title and tags: front matter, else its first ``#`` heading,
    else its file name."""
    lines = text.splitlines()
    fields, body = _front_matter(lines)
    raw_title = fields.get("title")
    title = _unquote(raw_title) if isinstance(raw_title, str) else ""
    if not title:
        for line in lines[body:]:
            heading = _HEADING.match(line)
            if heading and len(heading.group(1)) == 1 and heading.group(2):
                title = heading.group(2).strip()
                break
    if not title:
        title = PurePosixPath(path).stem.replace("-", " ").replace("_", " ")
    return Card(title, _tags(fields.get("tags")), body)


def chunk_document(
    path: str, text: str, kind: str, options: ChunkOptions | None = None
) -> tuple[list[Chunk], Card | None]:
    """Chunk a file by its kind (`kind_of`); cards also return their `Card`."""
    options = options or ChunkOptions()
    if kind == "card":
        card = parse_card(text, path)
        chunks = chunk_markdown(
            text, options, start_line=card.body_start, title=card.title
        )
        if not chunks and text.strip():
            # Front matter only: the card is still findable by title and tags.
            lines = text.splitlines()
            chunks = [Chunk(0, 1, len(lines), "\n".join(lines), card.title)]
        return chunks, card
    if kind == "markdown":
        _, body = _front_matter(text.splitlines())
        return chunk_markdown(text, options, start_line=body), None
    return chunk_code(text, options), None
