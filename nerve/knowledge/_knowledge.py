"""`Knowledge`: indexing and search over a log and its knowledge projection.

The kernel exposes one as ``kernel.knowledge``; without a kernel,
``async with open_knowledge(log) as knowledge:`` runs the projection in a
nursery of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import apsw
import attrs
import trio

from nerve.events import Log
from nerve.events._sqlite import open_connection
from nerve.projections import Progress, ProjectionRunner, ProjectionStatistics

from ._cache import EmbeddingCache
from ._chunk import ChunkOptions
from ._embed import Embedder
from ._index import DEFAULT_INLINE_LIMIT, IndexResult, index
from ._projection import CACHE_DATABASE, KnowledgeProjection
from ._search import DEFAULT_CANDIDATES, DocumentCounts, Hit, Mode, Syntax, search_sync
from ._vindex import VectorIndex
from ._walk import DEFAULT_MAX_BYTES

__all__ = ["Knowledge", "KnowledgeStatistics", "open_knowledge"]

T = TypeVar("T")

_POOL = 4


@attrs.frozen
class KnowledgeStatistics:
    """The knowledge store at a glance.

    Attributes:
        files: indexed files (cards included).
        cards: indexed ``.knowledge/`` cards.
        chunks: chunks (each has a vector).
        repos: the repositories, sorted.
        embedder: the embedder's name.
        dimension: its vector length.
        texts_embedded: texts embedded by this process (cache misses).
        cache_hits: chunk texts found in the embedding cache by this process.
        projection: the projection runner's position, lag and counters.
    """

    files: int
    cards: int
    chunks: int
    repos: tuple[str, ...]
    embedder: str
    dimension: int
    texts_embedded: int
    cache_hits: int
    projection: ProjectionStatistics


class Knowledge:
    """Index trees and search them; the reads come from ``knowledge.db``.

    Args:
        log: the log the knowledge events are appended to.
        runner: the `ProjectionRunner` keeping a `KnowledgeProjection` (started
            by the caller: ``await nursery.start(runner.run)``).

    Searches read through a small pool of connections of their own, each
    search in one read transaction, in a worker thread. Vector searches go
    through an in-memory index of the chunks' codes (`vector_index`), loaded at the
    first one and kept in sync with ``knowledge.db`` as it changes. Call
    `aclose` (or use `open_knowledge`) to close the connections.
    """

    def __init__(self, log: Log, runner: ProjectionRunner) -> None:
        if not isinstance(runner.projection, KnowledgeProjection):
            raise TypeError(
                f"the runner keeps {runner.projection!r}, not a KnowledgeProjection"
            )
        self.log = log
        self.runner = runner
        self.projection: KnowledgeProjection = runner.projection
        self.vector_index = VectorIndex(self.projection.dimension)
        self._counts = DocumentCounts()
        self._idle: list[apsw.Connection] = []
        self._closed = False

    # -- writing -------------------------------------------------------------

    async def index(
        self,
        root: str | os.PathLike[str],
        *,
        repo: str,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        max_bytes: int = DEFAULT_MAX_BYTES,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        wait: bool = True,
    ) -> IndexResult:
        """Index ``root`` as ``repo`` (see `nerve.knowledge.index`).

        Args:
            wait: return once the projection has folded the new events, so
                a search right after sees them.
        """
        result = await index(
            self.log,
            root,
            repo=repo,
            include=include,
            exclude=exclude,
            max_bytes=max_bytes,
            inline_limit=inline_limit,
        )
        if wait and result.position is not None:
            await self.runner.wait_for(result.position)
        return result

    async def rebuild(self, *, progress: Progress | None = None) -> None:
        """Refold ``knowledge.db`` from the whole history and swap it in.

        Chunk texts already in the embedding cache are not embedded again.
        """
        await self.runner.rebuild(progress=progress)

    async def wait(self) -> None:
        """Wait until the projection has folded every event appended so far."""
        await self.runner.wait_for(self.log.head)

    # -- reading -------------------------------------------------------------

    async def search(
        self,
        query: str,
        k: int = 10,
        *,
        repo: str | None = None,
        mode: Mode = "hybrid",
        syntax: Syntax = "words",
        candidates: int = DEFAULT_CANDIDATES,
    ) -> list[Hit]:
        """The ``k`` chunks that best answer ``query``, best first.

        Args:
            query: words to look for (or an FTS5 query with ``syntax="fts5"``).
            k: how many hits (1 to 1000).
            repo: None searches every repository; a name only that one.
            mode: ``"hybrid"`` (BM25 and vectors fused by reciprocal rank),
                ``"vector"`` or ``"text"``.
            syntax: ``"words"`` treats every character as text: quotes,
                parentheses, ``AND``, ``*``, ``-``, ``:`` never cause an
                error. ``"fts5"`` passes the query to FTS5 as is.
            candidates: chunks the vector index proposes for rescoring with
                their exact vectors: more is slower and closer to an exact
                search.

        Raises:
            SearchQueryError: the query is empty, has no words, or (FTS5
                syntax) is malformed.
            ValueError: ``k``, ``mode`` or ``syntax`` is invalid.
        """
        return await self._read(
            lambda conn: search_sync(
                conn,
                self.projection,
                self.vector_index,
                query,
                k,
                repo=repo,
                mode=mode,
                syntax=syntax,
                candidates=candidates,
                counts=self._counts,
            )
        )

    async def statistics(self) -> KnowledgeStatistics:
        """Counts of files, cards, chunks and repos, and the projection's lag."""

        def count(conn: apsw.Connection) -> tuple[int, int, int, tuple[str, ...]]:
            files, cards = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE kind = 'card') "
                "FROM knowledge_files"
            ).fetchall()[0]
            chunks = conn.execute("SELECT count(*) FROM knowledge_chunks").fetchall()
            repos = conn.execute(
                "SELECT DISTINCT repo FROM knowledge_files ORDER BY repo"
            ).fetchall()
            return files, cards, chunks[0][0], tuple(r[0] for r in repos)

        files, cards, chunks, repos = await self._read(count)
        p = self.projection
        return KnowledgeStatistics(
            files=files,
            cards=cards,
            chunks=chunks,
            repos=repos,
            embedder=p.embedder.name,
            dimension=p.dimension,
            texts_embedded=p.texts_embedded,
            cache_hits=p.cache.hits,
            projection=self.runner.statistics(),
        )

    async def _read(self, fn: Callable[[apsw.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("this Knowledge is closed")
        conn = self._idle.pop() if self._idle else None

        def run() -> tuple[apsw.Connection, T]:
            c = conn or self._connect()
            try:
                c.execute("BEGIN")
                try:
                    return c, fn(c)
                finally:
                    c.execute("COMMIT")
            except BaseException:
                # A failed read may leave the connection in any state: it is
                # not worth keeping.
                c.close()
                raise

        used, result = await trio.to_thread.run_sync(run)
        if self._closed or len(self._idle) >= _POOL:
            used.close()
        else:
            self._idle.append(used)
        return result

    def _connect(self) -> apsw.Connection:
        conn = open_connection(self.runner.path, synchronous="NORMAL", create=False)
        try:
            self.projection.prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def aclose(self) -> None:
        """Close the read connections (the runner is the caller's)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


@contextlib.asynccontextmanager
async def open_knowledge(
    log: Log,
    *,
    embedder: Embedder | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    cache: bool = True,
    chunking: ChunkOptions | None = None,
) -> AsyncIterator[Knowledge]:
    """Run the knowledge projection next to ``log``; yield its `Knowledge`.

    ``knowledge.db`` (and the embedding cache ``knowledge-embeddings.db``)
    live in ``data_dir`` (default: the log's data directory). The projection
    catches up (or is rebuilt, when new or of another version) before this
    yields; leaving the block stops it.

    Args:
        log: an open log.
        embedder: default `HashingEmbedder`.
        data_dir: where the databases live.
        cache: keep the embedding cache in a file (False: in memory).
        chunking: chunk sizes.
    """
    root = Path(data_dir) if data_dir is not None else log.data_dir
    projection = KnowledgeProjection(
        embedder,
        blobs=log.blobs,
        cache=EmbeddingCache(root / CACHE_DATABASE if cache else None),
        chunking=chunking,
    )
    runner = ProjectionRunner(log, projection, root)
    knowledge = Knowledge(log, runner)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            try:
                yield knowledge
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await knowledge.aclose()
        projection.cache.close()
