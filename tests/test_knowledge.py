"""The knowledge store end to end: indexing as events, search, rebuild, cache."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

import nerve
from nerve.events import EventRegistry, SearchQueryError
from nerve.knowledge import (
    FILE_INDEXED,
    FileIndexed,
    HashingEmbedder,
    Knowledge,
    index,
    knowledge_stream,
    open_knowledge,
)
from nerve.projections import verify

ALPHA = {
    "src/scheduler.py": '''\
"""Retries with exponential backoff."""

import random


def backoff_delay(attempt, base=0.5, cap=30.0):
    """Exponential backoff with jitter before the next retry."""
    delay = min(cap, base * 2**attempt)
    return delay * random.random()


def should_retry(error, attempt, limit=5):
    """Give up after the restart limit."""
    return attempt < limit and not isinstance(error, KeyboardInterrupt)
''',
    "src/storage.py": '''\
"""Durable storage: write-ahead log and checkpoints."""


def commit(conn, rows):
    """Group commit: one fsync for the whole batch."""
    conn.executemany("INSERT INTO t VALUES (?)", rows)
    conn.fsync()


def checkpoint(conn):
    """Truncate the WAL once readers are done."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
''',
    "README.md": """\
# Alpha

Alpha schedules jobs.

## Installation

Install alpha with pip and run the daemon.

## Configuration

Set the concurrency and the overflow policy in alpha.yaml.
""",
    ".gitignore": "build/\n*.tmp\n!keep.tmp\n",
    "build/generated.py": "zebraword = 'generated and ignored'\n",
    "notes.tmp": "quokkaword ignored temporary notes\n",
    "keep.tmp": "wombatword kept despite the tmp rule\n",
    ".knowledge/retries.md": """\
---
title: Retry policy
tags: [reliability, backoff]
---
Jobs that fail are retried with exponential backoff and jitter,
up to the restart limit.
""",
}
BETA = {
    "lib/parser.rs": """\
/// The tokenizer turns source text into tokens for the grammar.
pub fn tokenize(source: &str) -> Vec<Token> {
    source.split_whitespace().map(Token::from).collect()
}

/// Parse tokens with the grammar rules.
pub fn parse(tokens: &[Token]) -> Ast {
    Grammar::default().apply(tokens)
}
""",
    "docs/usage.md": "# Usage\n\nCall parse on the output of tokenize.\n",
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


class CountingEmbedder:
    """The default embedder, counting what it is asked to embed."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder()
        self.calls = 0
        self.texts: list[str] = []

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        self.calls += 1
        self.texts.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    alpha = write_tree(tmp_path / "alpha", ALPHA)
    (alpha / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    return alpha, write_tree(tmp_path / "beta", BETA)


@pytest.fixture
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture
async def knowledge(
    log: nerve.Log, trees: tuple[Path, Path], embedder: CountingEmbedder
) -> AsyncIterator[Knowledge]:
    async with open_knowledge(log, embedder=embedder) as kn:
        await kn.index(trees[0], repo="alpha")
        await kn.index(trees[1], repo="beta")
        yield kn


def paths(hits: Sequence[nerve.knowledge.Hit]) -> list[str]:
    return [h.path for h in hits]


async def chunk_ids(kn: Knowledge, path: str) -> list[int]:
    def q(conn: object) -> list[int]:
        rows = conn.execute(  # type: ignore[attr-defined]
            "SELECT id FROM knowledge_chunks WHERE path = ? ORDER BY id", (path,)
        )
        return [r[0] for r in rows]

    return await kn._read(q)


# -- indexing ------------------------------------------------------------------------


async def test_index_appends_one_event_per_selected_file(
    log: nerve.Log, trees: tuple[Path, Path]
) -> None:
    result = await index(log, trees[0], repo="alpha")
    assert sorted(result.added) == [
        ".gitignore",
        ".knowledge/retries.md",
        "README.md",
        "keep.tmp",
        "src/scheduler.py",
        "src/storage.py",
    ]
    assert [s.path for s in result.skipped] == ["logo.png"]
    events = [e async for e in log.read(stream=knowledge_stream("alpha"))]
    assert len(events) == 6 == result.position
    assert {e.type for e in events} == {FILE_INDEXED}
    card = next(e.data for e in events if e.data.path == ".knowledge/retries.md")
    assert isinstance(card, FileIndexed)
    assert card.kind == "card"
    assert card.content is not None
    assert card.blob is None


async def test_search_modes_and_scopes(knowledge: Knowledge) -> None:
    for mode in ("hybrid", "vector", "text"):
        hits = await knowledge.search("fsync checkpoint WAL", k=3, mode=mode)
        assert hits[0].path == "src/storage.py", mode
        assert hits[0].repo == "alpha"
        hits = await knowledge.search("tokenizer grammar", k=3, mode=mode)
        assert hits[0].path == "lib/parser.rs", mode
        assert (hits[0].start_line, hits[0].end_line) == (1, 9)
        assert hits[0].kind == "code"
    # Repo scope: the Rust parser is not in alpha.
    for mode in ("hybrid", "vector", "text"):
        scoped = await knowledge.search(
            "tokenizer grammar", k=5, repo="alpha", mode=mode
        )
        assert all(h.repo == "alpha" for h in scoped), mode
        assert "lib/parser.rs" not in paths(scoped)
    assert await knowledge.search("tokenizer", repo="nope", mode="text") == []


async def test_markdown_sections_cards_and_snippets(knowledge: Knowledge) -> None:
    (hit,) = await knowledge.search("concurrency overflow policy", k=1, mode="text")
    assert (hit.path, hit.kind, hit.title) == (
        "README.md",
        "markdown",
        "Alpha > Configuration",
    )
    assert (hit.start_line, hit.end_line) == (9, 11)
    assert "«concurrency»" in hit.snippet
    hits = await knowledge.search("exponential backoff retry jitter", k=3)
    assert {".knowledge/retries.md", "src/scheduler.py"} == set(paths(hits[:2]))
    card = next(h for h in hits if h.kind == "card")
    assert card.title == "Retry policy"
    assert card.start_line == 5
    # The card's tags are searchable.
    (tagged,) = await knowledge.search("reliability", k=1, mode="text")
    assert tagged.kind == "card"


async def test_cards_rank_above_chunks_on_equal_scores(knowledge: Knowledge) -> None:
    # "restart limit" is in the card and in scheduler.py; in text mode both
    # score by BM25, but whatever the scores a card wins a tie.
    hits = await knowledge.search("restart limit", k=5, mode="hybrid")
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    for a, b in itertools.pairwise(hits):
        if a.score == b.score:
            assert not (a.kind != "card" and b.kind == "card")


async def test_ignored_and_binary_files_are_not_searchable(
    knowledge: Knowledge,
) -> None:
    assert await knowledge.search("zebraword", mode="text") == []
    assert await knowledge.search("quokkaword", mode="text") == []
    assert paths(await knowledge.search("wombatword", mode="text")) == ["keep.tmp"]


async def test_fts_syntax_characters_are_answered_or_refused_clearly(
    knowledge: Knowledge,
) -> None:
    tricky = [
        '"unbalanced quote backoff',
        "(backoff",
        "backoff AND",
        "AND OR NOT",
        "backoff*",
        "-retry",
        "title:retry",
        "NEAR(backoff retry)",
        'a"b(c)d:e*f-g',
        "^backoff",
        "{retry}",
    ]
    for query in tricky:
        for mode in ("hybrid", "text", "vector"):
            hits = await knowledge.search(query, mode=mode)
            assert isinstance(hits, list), (query, mode)
    assert paths(await knowledge.search("(backoff", k=1, mode="text")) != []
    for nothing in ["*", '"', "( ) - : *", "   "]:
        with pytest.raises(SearchQueryError, match=r"empty|no words"):
            await knowledge.search(nothing)
    # FTS5's own syntax, when asked for, works or says what is wrong.
    assert await knowledge.search('"exponential backoff"', syntax="fts5", mode="text")
    for mode in ("text", "hybrid"):
        with pytest.raises(SearchQueryError, match="malformed FTS5 query"):
            await knowledge.search('"unbalanced', syntax="fts5", mode=mode)
    assert await knowledge.search("backoff", mode="hybrid")
    with pytest.raises(ValueError, match="mode"):
        await knowledge.search("x", mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        await knowledge.search("x", k=0)


# -- incremental ---------------------------------------------------------------------


async def test_unchanged_reindex_appends_nothing(
    log: nerve.Log,
    knowledge: Knowledge,
    trees: tuple[Path, Path],
    embedder: CountingEmbedder,
) -> None:
    head, embedded = log.head, len(embedder.texts)
    result = await knowledge.index(trees[0], repo="alpha")
    assert result.appended == 0
    assert result.position is None
    assert result.unchanged == 6
    assert log.head == head
    assert len(embedder.texts) == embedded


async def test_an_edit_rechunks_only_that_file(
    log: nerve.Log,
    knowledge: Knowledge,
    trees: tuple[Path, Path],
    embedder: CountingEmbedder,
) -> None:
    before = {
        p: await chunk_ids(knowledge, p) for p in ("src/scheduler.py", "README.md")
    }
    storage_before = await chunk_ids(knowledge, "src/storage.py")
    embedded = len(embedder.texts)
    path = trees[0] / "src" / "storage.py"
    path.write_text(
        path.read_text() + "\n\ndef vacuum(conn):\n    conn.execute('VACUUM')\n"
    )
    result = await knowledge.index(trees[0], repo="alpha")
    assert result.changed == ("src/storage.py",)
    assert result.appended == 1
    for p, ids in before.items():
        assert await chunk_ids(knowledge, p) == ids
    assert set(await chunk_ids(knowledge, "src/storage.py")).isdisjoint(storage_before)
    new_texts = embedder.texts[embedded:]
    assert new_texts
    assert all(t.startswith("src/storage.py") for t in new_texts)
    assert paths(await knowledge.search("vacuum", k=1, mode="text")) == [
        "src/storage.py"
    ]


async def test_a_removal_removes_its_chunks(
    knowledge: Knowledge, trees: tuple[Path, Path]
) -> None:
    (trees[0] / "src" / "scheduler.py").unlink()
    (trees[0] / "keep.tmp").write_bytes(b"\x00now binary")
    result = await knowledge.index(trees[0], repo="alpha")
    assert result.removed == ("keep.tmp", "src/scheduler.py")
    assert await chunk_ids(knowledge, "src/scheduler.py") == []
    hits = await knowledge.search("backoff_delay should_retry", k=10, mode="text")
    assert "src/scheduler.py" not in paths(hits)
    stats = await knowledge.statistics()
    assert stats.files == 4 + 2
    assert stats.cards == 1
    assert stats.repos == ("alpha", "beta")


# -- rebuild, verify, cache ----------------------------------------------------------


async def test_rebuild_equals_live_and_reuses_the_cache(
    log: nerve.Log,
    knowledge: Knowledge,
    trees: tuple[Path, Path],
    embedder: CountingEmbedder,
) -> None:
    (trees[1] / "docs" / "usage.md").write_text("# Usage\n\nChanged.\n")
    (trees[0] / "README.md").unlink()
    await knowledge.index(trees[0], repo="alpha")
    await knowledge.index(trees[1], repo="beta")
    assert await verify(log, [knowledge.projection]) == []
    before = await knowledge.search("tokenizer grammar", k=5)
    calls, embedded = embedder.calls, len(embedder.texts)
    await knowledge.rebuild()
    assert embedder.calls == calls
    assert len(embedder.texts) == embedded
    assert await verify(log, [knowledge.projection]) == []
    assert await knowledge.search("tokenizer grammar", k=5) == before
    stats = await knowledge.statistics()
    assert stats.texts_embedded < embedded  # the queries were embedded too
    assert stats.cache_hits > 0


async def test_embedding_cache_survives_a_restart(
    data_dir: Path, trees: tuple[Path, Path]
) -> None:
    first = CountingEmbedder()
    async with (
        nerve.open_log(data_dir) as log,
        open_knowledge(log, embedder=first) as kn,
    ):
        await kn.index(trees[0], repo="alpha")
    assert first.texts
    (data_dir / "knowledge.db").unlink()
    second = CountingEmbedder()
    async with (
        nerve.open_log(data_dir) as log,
        open_knowledge(log, embedder=second) as kn,
    ):
        # knowledge.db was rebuilt from the log: no text embedded again.
        assert (await kn.statistics()).chunks > 0
        assert second.texts == []
        assert paths(await kn.search("fsync", k=1))[0] == "src/storage.py"
    assert second.texts == ["fsync"]  # the query only


async def test_large_files_travel_as_blobs(
    log: nerve.Log, trees: tuple[Path, Path]
) -> None:
    async with open_knowledge(log) as kn:
        result = await kn.index(trees[0], repo="alpha", inline_limit=64)
        events = [e async for e in log.read(stream=knowledge_stream("alpha"))]
        big = next(e.data for e in events if e.data.path == "src/storage.py")
        assert big.content is None
        assert big.blob == big.sha256
        assert await log.blobs.exists(big.blob)
        assert result.position is not None
        assert paths(await kn.search("wal_checkpoint TRUNCATE", k=1, mode="text")) == [
            "src/storage.py"
        ]
        assert await verify(log, [kn.projection]) == []


async def test_a_log_with_its_own_registry(
    data_dir: Path, trees: tuple[Path, Path]
) -> None:
    # The knowledge classes are not registered there: events are mappings.
    async with (
        nerve.open_log(data_dir, registry=EventRegistry()) as log,
        open_knowledge(log, cache=False) as kn,
    ):
        await kn.index(trees[1], repo="beta")
        event = await anext(aiter(log.read()))
        assert isinstance(event.data, dict)
        assert paths(await kn.search("tokenize", k=1)) == ["lib/parser.rs"]


async def test_changing_the_embedder_rebuilds(
    data_dir: Path, trees: tuple[Path, Path]
) -> None:
    async with nerve.open_log(data_dir) as log:
        async with open_knowledge(log) as kn:
            await kn.index(trees[1], repo="beta")
        async with open_knowledge(log, embedder=HashingEmbedder(dimension=128)) as kn:
            assert kn.runner.statistics().rebuilds == 1
            assert (await kn.statistics()).dimension == 128
            assert paths(await kn.search("tokenize", k=1, mode="vector")) == [
                "lib/parser.rs"
            ]
