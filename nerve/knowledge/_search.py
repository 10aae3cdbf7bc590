"""Searching ``knowledge.db``: full text (BM25), vectors, and both fused.

* ``text``: FTS5 with BM25 (title and tags weigh 4, the path 2, the text 1).
  The query is taken as words: each word (``\\w+``) is quoted and the words are
  OR-ed, so FTS5 syntax characters (quotes, parentheses, ``AND``, ``*``,
  ``-``, ``:``) are plain text and can never make the query fail. With
  ``syntax="fts5"`` the query is FTS5's own language; a malformed one raises
  `SearchQueryError` naming the problem.
* ``vector``: the in-memory vector index (`nerve.knowledge._vindex`) scans
  every chunk's 2-bit code, rescores the best with their int8 codes, and the
  best ``candidates`` of those with the exact cosine of their float vectors.
* ``hybrid``: reciprocal rank fusion (RRF, k=60) of both rankings, the
  full-text one computed in a helper thread while the vectors are scanned.

Scores: hybrid the RRF sum, vector the cosine similarity, text ``-bm25``;
higher is better. On equal scores a card ranks above a plain chunk.

Everything here is blocking SQLite work: the facade runs it in a thread.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Final, Literal

import apsw
import attrs

from nerve.events import SearchQueryError

from ._projection import KnowledgeProjection
from ._vindex import VectorIndex

__all__ = ["MODES", "Hit", "search_sync"]

Mode = Literal["hybrid", "vector", "text"]
MODES: Final = ("hybrid", "vector", "text")
Syntax = Literal["words", "fts5"]

RRF_K: Final = 60
DEFAULT_CANDIDATES: Final = 32
"""Chunks whose exact vectors are read and rescored, per vector search."""
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


def query_terms(conn: apsw.Connection, query: str) -> dict[str, str]:
    """The query's terms as the index tokenizes them (stems), each with the
    word as written.

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
    return tokens


class DocumentCounts:
    """How many chunks each term matches, capped above the postings budget,
    remembered for one state of ``knowledge.db`` (its generation): common
    words come back in query after query. Thread-safe."""

    def __init__(self, limit: int = 65_536) -> None:
        self._lock = threading.Lock()
        self._state: tuple[int, int] | None = None
        self._counts: dict[str, int] = {}
        self._limit = limit

    def get(self, conn: apsw.Connection, words: dict[str, str]) -> dict[str, int]:
        """term -> chunks matching it, at most ``_POSTINGS_BUDGET + 1``, for
        ``words`` (term -> the word as written); read through ``conn``."""
        ((epoch, generation),) = conn.execute(
            "SELECT epoch, generation FROM knowledge_generation"
        ).fetchall()
        with self._lock:
            if self._state != (epoch, generation) or len(self._counts) > self._limit:
                self._state, self._counts = (epoch, generation), {}
            known = {t: self._counts[t] for t in words if t in self._counts}
        missing = [t for t in words if t not in known]
        if missing:
            # LIMIT stops a common term's count early: past the budget, the
            # exact number does not matter (see `pruned_words_query`).
            rows = conn.execute(
                "SELECT key, (SELECT count(*) FROM (SELECT 1 FROM knowledge_fts "
                "WHERE knowledge_fts MATCH '\"' || replace(value, '\"', '\"\"') "
                "|| '\"' LIMIT ?)) FROM json_each(?)",
                (_POSTINGS_BUDGET + 1, json.dumps({t: words[t] for t in missing})),
            ).fetchall()
            fresh = {str(t): int(n) for t, n in rows}
            known.update(fresh)
            with self._lock:
                if self._state == (epoch, generation):
                    self._counts.update(fresh)
        return known


def pruned_words_query(
    conn: apsw.Connection, query: str, counts: DocumentCounts | None = None
) -> str | None:
    """Like `words_query`, without the terms too common to be worth scanning.

    BM25 must score every chunk a term matches, so an OR with a term found in
    most chunks ("the", "self") costs a scan of most of the index for a term
    that, by its low inverse document frequency, barely moves the ranking.
    The query's terms (as the index tokenizes them) are taken rarest first,
    while the chunks they match add up to at most ``_POSTINGS_BUDGET``; the
    rarest term is always kept. None: no term of the query is in the index.

    Args:
        conn: reads ``knowledge.db``.
        query: the words.
        counts: where the terms' chunk counts are remembered (None: nowhere).

    Raises:
        SearchQueryError: the query has no words at all.
    """
    tokens = query_terms(conn, query)
    docs = (counts or DocumentCounts()).get(conn, tokens)
    frequency = sorted((n, t) for t, n in docs.items() if n)
    if frequency and frequency[0][0] > _POSTINGS_BUDGET:
        # Every term is beyond the budget: the rarest is kept all the same,
        # which takes exact counts (rare: only very common words).
        exact = conn.execute(
            "SELECT term, doc FROM knowledge_fts_vocab "
            "WHERE term IN (SELECT value FROM json_each(?))",
            (json.dumps([t for _, t in frequency]),),
        ).fetchall()
        frequency = sorted((int(n), str(t)) for t, n in exact)
    kept: list[str] = []
    scanned = 0
    for n, term in frequency:
        if kept and scanned + n > _POSTINGS_BUDGET:
            break
        kept.append(tokens[term])
        scanned += n
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
    if repo is None:
        sql = (
            f"SELECT rowid, {_BM25} AS r FROM knowledge_fts "
            "WHERE knowledge_fts MATCH ?1 ORDER BY r, rowid LIMIT ?2"
        )
    else:
        # The repo is in the chunks table: every match is looked up there
        # (about twice the cost of a global search).
        sql = (
            f"SELECT f.rowid, {_BM25} AS r FROM knowledge_fts f "
            "JOIN knowledge_chunks c ON c.id = f.rowid "
            "WHERE knowledge_fts MATCH ?1 AND c.repo = ?3 "
            "ORDER BY r, f.rowid LIMIT ?2"
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


_HELPERS: ThreadPoolExecutor | None = None
_HELPERS_LOCK = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    """The threads hybrid searches run their full-text side in."""
    global _HELPERS
    with _HELPERS_LOCK:
        if _HELPERS is None:
            _HELPERS = ThreadPoolExecutor(4, thread_name_prefix="nerve-knowledge")
        return _HELPERS


def _snippets(conn: apsw.Connection, match: str, ids: list[int]) -> dict[int, str]:
    """The snippets of the chunks ``ids`` matched by ``match``."""
    if not ids:
        return {}
    rows = conn.execute(
        f"SELECT rowid, {_SNIPPET} FROM knowledge_fts WHERE knowledge_fts MATCH ? "
        "AND rowid IN (SELECT value FROM json_each(?))",
        (match, json.dumps(ids)),
    ).fetchall()
    return {int(i): str(snippet) for i, snippet in rows}


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
    index: VectorIndex,
    query: str,
    k: int = 10,
    *,
    repo: str | None = None,
    mode: Mode = "hybrid",
    syntax: Syntax = "words",
    candidates: int = DEFAULT_CANDIDATES,
    counts: DocumentCounts | None = None,
) -> list[Hit]:
    """Search ``knowledge.db`` through ``conn``, with ``index`` its vectors
    and ``counts`` its terms' chunk counts (both kept across searches).

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

    snippets: dict[int, str] = {}

    def text_side() -> tuple[str | None, list[tuple[int, float]], dict[int, str]]:
        found = pruned_words_query(conn, query, counts) if syntax == "words" else query
        if found is None:
            return None, [], {}
        ranking = _text_ranking(conn, found, query, depth, repo)
        # The best text matches are likely hits: their snippets are made
        # now (in hybrid mode, while the vectors are scanned).
        return found, ranking, _snippets(conn, found, [i for i, _ in ranking[:k]])

    if mode == "text":
        match, text, snippets = text_side()
    elif mode == "vector":
        if syntax == "words":
            query_terms(conn, query)  # refuses a query without words
        wanted = projection.query_vector(query)
        vector = index.search(conn, wanted, depth, candidates=candidates, repo=repo)
    else:
        # The full-text side (SQLite) runs in a helper thread while this one
        # embeds the query and scans the vectors (numpy, no connection); both
        # release the GIL. Measured at 100k chunks: ~25% off a hybrid search
        # (the other way round, the scan in the helper, was slower: its data
        # stays warm in the caches of the core that keeps scanning). The
        # connection is used by one thread at a time: the helper has it
        # between `sync` and the rescoring.
        index.sync(conn)
        helper = _helpers().submit(text_side)
        try:
            wanted = projection.query_vector(query)
            near = index.nearest(wanted, max(candidates, depth), repo=repo)
        finally:
            wait([helper])
        match, text, snippets = helper.result()
        vector = index.rescore(conn, wanted, near, depth)
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
    matched = {i for i, _ in text}
    missing = [i for i in best if i in matched and i not in snippets]
    if missing and match is not None:
        snippets.update(_snippets(conn, match, missing))
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
