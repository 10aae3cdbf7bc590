"""The vector index (quality, staying in sync), the numpy embedder against a
plain reference, the int8 codes, the embedding cache's file, term counts."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import apsw
import attrs
import numpy as np
import numpy.typing as npt
import pytest
import trio

import nerve
from nerve.knowledge import (
    FILE_INDEXED,
    EmbeddingCache,
    FileIndexed,
    HashingEmbedder,
    Knowledge,
    _embed,
    _projection,
    _search,
    _vindex,
    knowledge_stream,
    open_knowledge,
)
from nerve.knowledge._vindex import VectorIndex, quantize
from nerve.projections import verify

# -- an embedder with known vectors ----------------------------------------------------

DIM = 64


def unit_rows(seed: int, n: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


class TableEmbedder:
    """``vec<i>`` in a text stands for row i of ``base``, ``qry<i>`` for row i
    of ``queries``: exact search is then plain numpy."""

    def __init__(
        self, base: npt.NDArray[np.float32], queries: npt.NDArray[np.float32]
    ) -> None:
        self.base, self.queries = base, queries

    @property
    def name(self) -> str:
        return f"table-{len(self.base)}"

    @property
    def dimension(self) -> int:
        return DIM

    def embed(self, texts: Sequence[str]) -> list[npt.NDArray[np.float32]]:
        out = []
        for text in texts:
            found = re.search(r"\b(vec|qry)(\d+)\b", text)
            assert found is not None, text
            table = self.base if found.group(1) == "vec" else self.queries
            out.append(table[int(found.group(2))])
        return out


async def append_vectors(
    log: nerve.Log, numbers: Sequence[int], repo: str = "r", tag: str = ""
) -> None:
    """One file per vector: ``v<i>.txt`` holding ``vec<i>``."""
    events = []
    for i in numbers:
        text = f"vec{i} {tag}\n"
        data = FileIndexed(
            repo, f"v{i}.txt", hashlib.sha256(text.encode()).hexdigest(), 1
        )
        events.append(
            nerve.NewEvent(FILE_INDEXED, attrs.asdict(attrs.evolve(data, content=text)))
        )
    for at in range(0, len(events), 500):
        await log.append(knowledge_stream(repo), events[at : at + 500])


async def remove_vectors(
    log: nerve.Log, numbers: Sequence[int], repo: str = "r"
) -> None:
    await log.append(
        knowledge_stream(repo),
        [
            nerve.NewEvent(
                "knowledge.file.removed", {"repo": repo, "path": f"v{i}.txt"}
            )
            for i in numbers
        ],
    )


def exact_top(
    base: npt.NDArray[np.float32],
    query: npt.NDArray[np.float32],
    live: Sequence[int],
    k: int,
) -> list[str]:
    rows = np.array(sorted(live))
    sims = base[rows] @ query
    order = np.argsort(-sims, kind="stable")[:k]
    return [f"v{rows[i]}.txt" for i in order]


async def test_vector_search_finds_the_exact_neighbours(log: nerve.Log) -> None:
    base, queries = unit_rows(1, 3000), unit_rows(2, 40)
    async with open_knowledge(
        log, embedder=TableEmbedder(base, queries), cache=False
    ) as kn:
        await append_vectors(log, range(len(base)))
        await kn.wait()
        recalls = []
        for q in range(len(queries)):
            hits = await kn.search(f"qry{q}", k=10, mode="vector")
            truth = exact_top(base, queries[q], range(len(base)), 10)
            recalls.append(len({h.path for h in hits} & set(truth)) / 10)
            # The scores are the exact cosines, best first.
            expected = sorted(
                (float(base[int(h.path[1:-4])] @ queries[q]) for h in hits),
                reverse=True,
            )
            assert [h.score for h in hits] == pytest.approx(expected, abs=1e-6)
        assert sum(recalls) / len(recalls) >= 0.95
        # A smaller shortlist and fewer candidates trade recall for time, but
        # the index stays a good approximation.
        conn_hits = await kn._read(
            lambda conn: kn.vector_index.search(
                conn, queries[0], 10, candidates=10, shortlist=200
            )
        )
        assert len(conn_hits) == 10


async def test_the_index_follows_additions_removals_and_rebuilds(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_vindex, "_COMPACT_MIN", 100)
    base, queries = unit_rows(3, 600), unit_rows(4, 12)
    live = set(range(400))

    async def check(kn: Knowledge) -> None:
        # The incrementally synced index equals a freshly loaded one, and its
        # answers are the exact neighbours among the files indexed now.
        def fresh_and_synced(conn: apsw.Connection) -> None:
            fresh = VectorIndex(DIM)
            fresh.sync(conn)
            kn.vector_index.sync(conn)
            assert len(fresh) == len(kn.vector_index) == len(live)
            for q in queries:
                a = kn.vector_index.nearest(q, 20)
                b = fresh.nearest(q, 20)
                assert a.tolist() == b.tolist()

        await kn._read(fresh_and_synced)
        for q in range(len(queries)):
            hits = await kn.search(f"qry{q}", k=5, mode="vector")
            assert [h.path for h in hits] == exact_top(base, queries[q], live, 5)

    embedder = TableEmbedder(base, queries)
    async with open_knowledge(log, embedder=embedder, cache=False) as kn:
        await append_vectors(log, sorted(live))
        await kn.wait()
        await check(kn)
        assert kn.vector_index.loads == 1
        # New files, removed files, re-indexed files (new content: new ids).
        await append_vectors(log, range(400, 600))
        live |= set(range(400, 600))
        await remove_vectors(log, range(0, 300, 2))
        live -= set(range(0, 300, 2))
        await append_vectors(log, range(1, 100, 2), tag="edited")
        await kn.wait()
        await check(kn)
        assert kn.vector_index.loads == 1  # kept in sync, not reloaded
        # Removing most rows compacts the index.
        await remove_vectors(log, range(300, 600))
        live -= set(range(300, 600))
        await kn.wait()
        await check(kn)
        assert kn.vector_index.loads == 1
        assert kn.vector_index._dead == 0
        assert kn.vector_index._count == len(live)
        # A rebuild swaps in new tables: the index notices and reloads.
        await kn.rebuild()
        await check(kn)
        assert kn.vector_index.loads == 2
        assert await verify(log, [kn.projection]) == []


async def test_an_index_far_behind_reloads(
    log: nerve.Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_projection, "REMOVALS_KEPT", 2)
    monkeypatch.setattr(_projection, "_PRUNE_EVERY", 1)
    base, queries = unit_rows(5, 50), unit_rows(6, 3)
    async with open_knowledge(
        log, embedder=TableEmbedder(base, queries), cache=False
    ) as kn:
        await append_vectors(log, range(50))
        await kn.wait()
        assert await kn.search("qry0", mode="vector")
        assert kn.vector_index.loads == 1
        for i in range(5):  # five generations, each removing a file
            await remove_vectors(log, [i])
            await kn.wait()
        hits = await kn.search("qry0", k=50, mode="vector")
        assert kn.vector_index.loads == 2  # its removals were pruned: reloaded
        assert {h.path for h in hits} == {f"v{i}.txt" for i in range(5, 50)}


async def test_concurrent_searches_while_indexing(log: nerve.Log) -> None:
    base, queries = unit_rows(10, 400), unit_rows(11, 8)
    async with open_knowledge(
        log, embedder=TableEmbedder(base, queries), cache=False
    ) as kn:
        await append_vectors(log, range(200))
        await kn.wait()
        found: list[int] = []

        async def searches(mode: str) -> None:
            for q in range(len(queries)):
                hits = await kn.search(f"qry{q} vec1", k=5, mode=mode)  # type: ignore[arg-type]
                found.append(len(hits))

        async with trio.open_nursery() as nursery:
            for mode in ("hybrid", "vector", "text", "hybrid", "vector"):
                nursery.start_soon(searches, mode)
            nursery.start_soon(append_vectors, log, range(200, 400))
        await kn.wait()
        assert all(found)
        hits = await kn.search("qry0", k=5, mode="vector")
        assert [h.path for h in hits] == exact_top(base, queries[0], range(400), 5)


async def test_repo_scope_in_the_index(log: nerve.Log) -> None:
    base, queries = unit_rows(7, 200), unit_rows(8, 4)
    async with open_knowledge(
        log, embedder=TableEmbedder(base, queries), cache=False
    ) as kn:
        await append_vectors(log, range(100), repo="a")
        await append_vectors(log, range(100, 200), repo="b")
        await kn.wait()
        for q in range(len(queries)):
            hits = await kn.search(f"qry{q}", k=5, mode="vector", repo="b")
            assert [h.path for h in hits] == exact_top(
                base, queries[q], range(100, 200), 5
            )
        assert await kn.search("qry0", mode="vector", repo="nope") == []


# -- the embedder against a plain reference ----------------------------------------

_STOP = _embed._STOPWORDS
_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_]+")


def reference_embedding(text: str, dimension: int = 384) -> list[float]:
    """The HashingEmbedder's definition, one feature at a time, in Python ints."""
    counts = Counter(re.findall(r"\w+", text))
    if len(counts) > 1:
        for word in [t for t in counts if t.lower() in _STOP]:
            if len(counts) > 1:
                del counts[word]
    if not counts:
        counts = Counter({"\x00empty": 1})
    sums = [0] * dimension
    for token, tf in counts.items():
        weights: Counter[str] = Counter({"w" + token.lower(): 3})
        parts = [p.lower() for p in _PARTS.findall(token)]
        if len(parts) > 1:
            for p in parts:
                weights["w" + p] += 2
        for p in parts or [token.lower()]:
            if p.isdigit() or len(p) > 40:
                continue
            padded = f"<{p}>"
            for i in range(len(padded) - 2):
                weights["g" + padded[i : i + 3]] += 1
        gain = tf.bit_length()
        for feature, w in weights.items():
            digest = hashlib.shake_128(feature.encode()).digest(dimension // 8)
            for d in range(dimension):
                bit = (digest[d // 8] >> (d % 8)) & 1
                sums[d] += gain * w * (1 if bit else -1)
    norm = math.sqrt(sum(v * v for v in sums))
    scale = 1.0 / norm if norm else 0.0
    return [float(np.float32(v * scale)) for v in sums]


TEXTS = [
    "open the durable event log",
    "openLog opens a durable log of events; openLog again",
    "The of AND",  # only stop words: the last one stays
    "",
    "snake_case_name and camelCaseName with HTTPServer 2024 v2",
    "déjà vu: naïve café, 東京 and Ελλάδα",
    "repeat repeat repeat repeat repeat once",
    "x" * 12_000 + " long",  # one token wider than 16-bit counters
]


def test_the_embedder_matches_its_plain_definition() -> None:
    e = HashingEmbedder()
    got = e.embed(TEXTS)
    for text, vector in zip(TEXTS, got, strict=True):
        assert list(vector) == reference_embedding(text), text[:40]


def test_the_embedder_is_independent_of_batches_and_cache() -> None:
    texts = [f"text {i} about topic{i % 7} and word{i * 13 % 101}" for i in range(600)]
    texts += TEXTS
    whole = HashingEmbedder().embed_matrix(texts)
    one_by_one = HashingEmbedder(token_cache=3)
    for i in (0, 255, 256, 599, len(texts) - 1):
        assert one_by_one.embed_matrix([texts[i]])[0].tobytes() == whole[i].tobytes()
    no_cache = HashingEmbedder(token_cache=0).embed_matrix(texts[::-1])[::-1]
    assert no_cache.tobytes() == whole.tobytes()


# -- int8 codes ------------------------------------------------------------------------


def test_codes_are_per_row_and_exact() -> None:
    rows = unit_rows(9, 100)
    rows[3] = 0.0
    codes = quantize(rows)
    assert codes.dtype == np.int8
    assert (np.abs(codes).max(axis=1)[rows.any(axis=1)] == 127).all()
    assert not codes[3].any()
    for i in (0, 3, 57):
        assert quantize(rows[i : i + 1])[0].tobytes() == codes[i].tobytes()
    # One step is 1/127 of the row's largest coordinate.
    scale = np.abs(rows).max(axis=1, keepdims=True) / 127
    assert np.abs(codes * scale - rows).max() <= scale.max() / 2 + 1e-7


# -- the embedding cache's file ----------------------------------------------------


def test_the_cache_file_round_trips_and_drops_the_old_format(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    old = apsw.Connection(str(path))
    old.execute(
        "CREATE TABLE embeddings (embedder TEXT, sha256 TEXT, vector BLOB, "
        "PRIMARY KEY (embedder, sha256)) WITHOUT ROWID"
    )
    old.close()
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1200)]
    cache = EmbeddingCache(path)
    cache.put_many("e", {d: d.encode()[:8] for d in digests[:1000]})
    cache.put_many("e", {digests[0]: b"ignored"})  # existing entries are kept
    cache.close()
    again = EmbeddingCache(path)
    found = again.get_many("e", digests)
    assert found == {d: d.encode()[:8] for d in digests[:1000]}
    assert again.get_many("other", digests[:5]) == {}
    assert len(again) == 1000
    assert (again.hits, again.misses) == (1000, 205)
    tables = {
        r[0]
        for r in apsw.Connection(str(path)).execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table'"
        )
    }
    assert "embeddings" not in tables
    again.close()


# -- term counts -------------------------------------------------------------------


async def test_pruning_with_remembered_counts_equals_exact_counts(
    log: nerve.Log, tmp_path: Path
) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(60):
        words = ["common"] + [f"w{i % 5}", f"rare{i}"] + (["half"] if i % 2 else [])
        (root / f"f{i}.txt").write_text(" ".join(words) + "\n")
    queries = ["common w1 rare7", "half common", "rare3 rare4 w2", "nothinghere common"]
    monkey = pytest.MonkeyPatch()
    monkey.setattr(_search, "_POSTINGS_BUDGET", 40)
    try:
        async with open_knowledge(log, cache=False) as kn:
            await kn.index(root, repo="t")

            def both(conn: apsw.Connection) -> None:
                counts = _search.DocumentCounts()
                for q in queries * 2:  # the second time from memory
                    remembered = _search.pruned_words_query(conn, q, counts)
                    assert remembered == reference_pruning(conn, q), q

            await kn._read(both)
    finally:
        monkey.undo()


def reference_pruning(conn: apsw.Connection, query: str) -> str | None:
    """The pruning rule with exact document counts from fts5vocab."""
    tokens = _search.query_terms(conn, query)
    rows = conn.execute(
        "SELECT term, doc FROM knowledge_fts_vocab "
        "WHERE term IN (SELECT value FROM json_each(?))",
        (json.dumps(list(tokens)),),
    ).fetchall()
    kept: list[str] = []
    scanned = 0
    for term, docs in sorted(rows, key=lambda r: (r[1], r[0])):
        if kept and scanned + docs > _search._POSTINGS_BUDGET:
            break
        kept.append(tokens[term])
        scanned += docs
    return " OR ".join(f'"{w}"' for w in kept) if kept else None
