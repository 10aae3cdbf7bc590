"""The embedding cache: vectors by (embedder name, sha256 of the text).

Embedding is the costly part of indexing, and a rebuild folds the whole
history into a *new* database, so the cache lives outside ``knowledge.db``:
in its own file (``knowledge-embeddings.db`` next to it) or, without a path,
in memory. A rebuild, a replay or ``verify`` then embeds only text it has
never seen. The cache is not part of the read model: losing it costs time,
never correctness (the embedder is deterministic), and it is written in its
own short transactions, independent of the projection's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

import apsw

from nerve.events._sqlite import mapped_errors, open_connection

__all__ = ["EmbeddingCache"]

# Vectors are appended to a rowid table, found through a small index: with
# the (embedder, sha256) key as a WITHOUT ROWID primary key instead, every
# insert lands at a random place among rows of ~1.5 kB, and writing 50k
# vectors took ~6x longer (180 against 30 us a vector, measured here). The
# first cache format had that table, named "embeddings": it is dropped.
_SCHEMA: Final = """
DROP TABLE IF EXISTS embeddings;
CREATE TABLE IF NOT EXISTS vectors (
    embedder TEXT NOT NULL,
    sha256   BLOB NOT NULL,
    vector   BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS vectors_by_text ON vectors (embedder, sha256);
"""
_LOOKUP_BATCH = 500


class EmbeddingCache:
    """Float32 vectors keyed by (embedder name, text sha256); thread-safe.

    Args:
        path: the cache database; None keeps the cache in memory (for this
            process only).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._memory: dict[tuple[str, str], bytes] = {}
        self._conn: apsw.Connection | None = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path) if self.path else 'memory'})"

    def _connection(self) -> apsw.Connection:
        if self._conn is None:
            assert self.path is not None
            conn = open_connection(self.path, synchronous="NORMAL")
            try:
                with mapped_errors(self.path):
                    conn.execute(_SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def get_many(self, embedder: str, digests: Iterable[str]) -> dict[str, bytes]:
        """The cached vectors among ``digests`` (missing ones are absent)."""
        wanted = list(dict.fromkeys(digests))
        found: dict[str, bytes] = {}
        with self._lock:
            if self.path is None:
                for d in wanted:
                    v = self._memory.get((embedder, d))
                    if v is not None:
                        found[d] = v
            else:
                conn = self._connection()
                with mapped_errors(self.path):
                    for i in range(0, len(wanted), _LOOKUP_BATCH):
                        part = wanted[i : i + _LOOKUP_BATCH]
                        marks = ",".join("?" * len(part))
                        rows = conn.execute(
                            "SELECT sha256, vector FROM vectors WHERE embedder = ? "
                            f"AND sha256 IN ({marks})",
                            (embedder, *(bytes.fromhex(d) for d in part)),
                        )
                        found.update((bytes(d).hex(), bytes(v)) for d, v in rows)
            self.hits += len(found)
            self.misses += len(wanted) - len(found)
        return found

    def put_many(self, embedder: str, vectors: Mapping[str, bytes]) -> None:
        """Store vectors (one transaction; existing entries are kept)."""
        if not vectors:
            return
        with self._lock:
            if self.path is None:
                for d, v in vectors.items():
                    self._memory[(embedder, d)] = v
                return
            conn = self._connection()
            with mapped_errors(self.path):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "INSERT OR IGNORE INTO vectors VALUES (?, ?, ?)",
                        ((embedder, bytes.fromhex(d), v) for d, v in vectors.items()),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

    def __len__(self) -> int:
        with self._lock:
            if self.path is None:
                return len(self._memory)
            with mapped_errors(self.path):
                return int(
                    self._connection()
                    .execute("SELECT count(*) FROM vectors")
                    .fetchall()[0][0]
                )

    def close(self) -> None:
        """Close the cache database (it reopens on next use)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
