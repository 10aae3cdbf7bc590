"""Searching ``knowledge.db``: full text (BM25), vectors, and both fused.

* ``text``: FTS5 with BM25 (title and tags weigh 4, the path 2, the text 1).
  The query is taken as words: each word (``\\w+``) is quoted and the words are
  OR-ed, so FTS5 syntax characters (quotes, parentheses, ``AND``, ``*``,
  ``-``, ``:``) are plain text and can never make the query fail. With
  ``syntax="fts5"`` the query is FTS5's own language; a malformed one raises
  `SearchQueryError` naming the problem.
* ``vector``: the query's embedding is coded like the chunks' and the
  nearest codes by Hamming distance (sqlite-vec) are the candidates, which
  are then ranked by the exact cosine of the float vectors.
* ``hybrid``: reciprocal rank fusion (RRF, k=60) of both rankings.

Scores: hybrid the RRF sum, vector the cosine similarity, text ``-bm25``;
higher is better. On equal scores a card ranks above a plain chunk.

Everything here is blocking SQLite work: the facade runs it in a thread.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Final, Literal

import apsw
import attrs

from nerve.events import SearchQueryError

from ._projection import KnowledgeProjection

__all__ = ["MODES", "Hit", "search_sync"]

Mode = Literal["hybrid", "vector", "text"]
MODES: Final = ("hybrid", "vector", "text")
Syntax = Literal["words", "fts5"]

RRF_K: Final = 60
DEFAULT_CANDIDATES: Final = 128
"""Codes fetched by the vector index, per search, before exact rescoring."""
MAX_K: Final = 1000
_WORDS = re.compile(r"\w+")
_TOKENIZER: Final = ("porter", ["unicode61", "remove_diacritics", "2"])
_POSTINGS_BUDGET: Final = 4000
_BM25: Final = "bm25(knowledge_fts, 2.0, 4.0, 4.0, 1.0)"
_SNIPPET: Final = "snippet(knowledge_fts, 3, '«', '»', '…', 24)"
_SNIPPET_CHARS: Final = 240


@attrs.frozen
class Hit:
    """One search result: a chunk of a file or card.

    Attributes:
        repo: the repository.
        path: the file, relative to the indexed root.
        start_line: the chunk's first line (from 1).
        end_line: its last line (inclusive).
        score: higher is better (see the module's documentation).
        snippet: matched terms in «», or the chunk's first lines.
        kind: ``card``, ``markdown``, ``code`` or ``text``.
        title: the card's title or the Markdown heading trail ("" for code).
        chunk: the chunk's number in its file.
    """

    repo: str
    path: str
    start_line: int
    end_line: int
    score: float
    snippet: str
    kind: str
    title: str
    chunk: int


def _no_words(query: str) -> SearchQueryError:
    return SearchQueryError(
        f"the search query {query!r} has no words to search for "
        "(only punctuation or spaces)"
    )


def words_query(query: str) -> str:
    """The FTS5 query matching any of the words of ``query``.

    Raises:
        SearchQueryError: the query has no words at all.
    """
    words = list(dict.fromkeys(w.lower() for w in _WORDS.findall(query)))
    if not words:
        raise _no_words(query)
    return " OR ".join(f'"{w}"' for w in words)


def pruned_words_query(conn: apsw.Connection, query: str) -> str | None:
    """Like `words_query`, without the terms too common to be worth scanning.

    BM25 must score every chunk a term matches, so an OR with a term found in
    most chunks ("the", "self") costs a scan of most of the index for a term
    that, by its low inverse document frequency, barely moves the ranking.
    The query's terms (as the index tokenizes them) are taken rarest first,
    while the chunks they match add up to at most ``_POSTINGS_BUDGET``; the
    rarest term is always kept. None: no term of the query is in the index.

    Raises:
        SearchQueryError: the query has no words at all.
    """
    tokenizer = conn.fts5_tokenizer(*_TOKENIZER)
    raw = query.encode("utf-8")
    tokens: dict[str, str] = {}
    for start, end, term in tokenizer(
        raw, apsw.FTS5_TOKENIZE_QUERY, None, include_colocated=False
    ):
        # Quote the word as written: quoting the stem would stem it twice.
        tokens.setdefault(term, raw[start:end].decode("utf-8"))
    if not tokens:
        raise _no_words(query)
    frequency = conn.execute(
        "SELECT term, doc FROM knowledge_fts_vocab "
        "WHERE term IN (SELECT value FROM json_each(?))",
        (json.dumps(list(tokens)),),
    ).fetchall()
    kept: list[str] = []
    scanned = 0
    for term, docs in sorted(frequency, key=lambda r: (r[1], r[0])):
        if kept and scanned + docs > _POSTINGS_BUDGET:
            break
        kept.append(tokens[term])
        scanned += docs
    if not kept:
        return None
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in kept)


def _check(query: object, k: object, mode: object, syntax: object) -> None:
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, not {type(query).__name__}")
    if not query.strip():
        raise SearchQueryError("the search query is empty")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an int from 1 to {MAX_K}, got {k!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if syntax not in ("words", "fts5"):
        raise ValueError(f"syntax must be 'words' or 'fts5', got {syntax!r}")


def _text_ranking(
    conn: apsw.Connection, match: str, raw: str, n: int, repo: str | None
) -> list[tuple[int, float]]:
    """(chunk id, -bm25) of the best ``n`` full-text matches."""
    scope = "AND c.repo = ?3" if repo is not None else ""
    sql = (
        f"SELECT f.rowid, {_BM25} AS r FROM knowledge_fts f "
        f"JOIN knowledge_chunks c ON c.id = f.rowid "
        f"WHERE knowledge_fts MATCH ?1 {scope} ORDER BY r, f.rowid LIMIT ?2"
    )
    args: tuple[object, ...] = (match, n) if repo is None else (match, n, repo)
    try:
        rows = conn.execute(sql, args).fetchall()
    except apsw.SQLError as e:
        raise SearchQueryError(
            f"malformed FTS5 query {raw!r}: {e}; use syntax='words' (the "
            "default) to search for the words as written"
        ) from e
    return [(int(i), -float(r)) for i, r in rows]


def _vector_ranking(
    conn: apsw.Connection,
    projection: KnowledgeProjection,
    query: str,
    n: int,
    repo: str | None,
    candidates: int,
) -> list[tuple[int, float]]:
    """(chunk id, cosine similarity) of the best ``n`` chunks by vector."""
    vector = projection.query_vector(query)
    (code,) = conn.execute(
        f"SELECT {projection.code_sql}", (vector, *projection.thresholds)
    ).fetchall()[0]
    # sqlite-vec answers at most 4096 neighbours per query.
    knn = min(max(candidates, n), 4096)
    scope = "AND repo = :repo" if repo is not None else ""
    sql = (
        "WITH c AS (SELECT id FROM knowledge_codes "
        f"WHERE code MATCH vec_bit(:code) AND k = :knn {scope}) "
        "SELECT c.id, vec_distance_cosine(v.embedding, :vector) AS d "
        "FROM c JOIN knowledge_vectors v ON v.id = c.id ORDER BY d, c.id LIMIT :n"
    )
    args = {"code": code, "knn": knn, "vector": vector, "n": n}
    if repo is not None:
        args["repo"] = repo
    rows = conn.execute(sql, args).fetchall()
    return [(int(i), 1.0 - float(d)) for i, d in rows]


def _fuse(rankings: Sequence[list[tuple[int, float]]]) -> dict[int, float]:
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (chunk_id, _) in enumerate(ranking, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
    return scores


def _leading(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    out = " ⏎ ".join(lines[:4])
    return out if len(out) <= _SNIPPET_CHARS else out[: _SNIPPET_CHARS - 1] + "…"


def search_sync(
    conn: apsw.Connection,
    projection: KnowledgeProjection,
    query: str,
    k: int = 10,
    *,
    repo: str | None = None,
    mode: Mode = "hybrid",
    syntax: Syntax = "words",
    candidates: int = DEFAULT_CANDIDATES,
) -> list[Hit]:
    """Search ``knowledge.db`` through ``conn`` (sqlite-vec loaded).

    See `Knowledge.search`. Call inside a read transaction for one snapshot.
    """
    _check(query, k, mode, syntax)
    if repo is not None and not isinstance(repo, str):
        raise TypeError(f"repo must be a string or None, not {type(repo).__name__}")
    # Fusion looks deeper than k into each ranking: an item that is 12th in
    # both lists may beat one that is 1st in one list only.
    depth = k if mode != "hybrid" else max(3 * k, 30)
    text: list[tuple[int, float]] = []
    vector: list[tuple[int, float]] = []
    match: str | None = query
    if syntax == "words":
        match = pruned_words_query(conn, query)
    if mode in ("text", "hybrid") and match is not None:
        text = _text_ranking(conn, match, query, depth, repo)
    if mode in ("vector", "hybrid"):
        vector = _vector_ranking(conn, projection, query, depth, repo, candidates)
    scores = _fuse([text, vector]) if mode == "hybrid" else dict(text or vector)
    if not scores:
        return []
    rows = {
        r[0]: r
        for r in conn.execute(
            "SELECT id, repo, path, number, kind, start_line, end_line, title, text "
            "FROM knowledge_chunks WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(scores)),),
        )
    }

    def order(chunk_id: int) -> tuple[float, int, str, str, int]:
        r = rows[chunk_id]
        return (-scores[chunk_id], 0 if r[4] == "card" else 1, r[1], r[2], r[3])

    best = sorted((i for i in scores if i in rows), key=order)[:k]
    snippets: dict[int, str] = {}
    from_text = [i for i in best if i in dict(text)]
    if from_text and match is not None:
        snippets = dict(
            conn.execute(
                f"SELECT rowid, {_SNIPPET} FROM knowledge_fts "
                "WHERE knowledge_fts MATCH ? "
                "AND rowid IN (SELECT value FROM json_each(?))",
                (match, json.dumps(from_text)),
            ).fetchall()
        )
    hits = []
    for i in best:
        _, r_repo, path, number, kind, start, end, title, body = rows[i]
        hits.append(
            Hit(
                repo=r_repo,
                path=path,
                start_line=start,
                end_line=end,
                score=scores[i],
                snippet=snippets.get(i) or _leading(body),
                kind=kind,
                title=title,
                chunk=number,
            )
        )
    return hits
