"""The knowledge projection: ``knowledge.db``, folded from the knowledge events.

Tables (the first three are the read model: `verify` compares them row by row,
a rebuild copies them; the two virtual tables are kept by triggers from them):

``knowledge_files``
    one row per indexed file: repo, path, sha256, kind, title/tags (cards),
    number of chunks, the position of the event that indexed it.
``knowledge_chunks``
    one row per chunk: repo, path, number, kind, line range, title, tags,
    text, sha256 of the embedded text. A chunk's id is
    ``position << 16 | number``: stable, and the same in every rebuild.
``knowledge_vectors``
    per chunk, its float32 embedding and its *code*: a quantized form for
    the vector index.
``knowledge_fts``
    FTS5 (porter stemming) over path, title, tags and text, external
    content on ``knowledge_chunks``.
``knowledge_codes``
    sqlite-vec ``vec0`` table of the codes (``bit[levels * dimension]``), with
    the repo as a metadata column for repo-scoped searches.

Why codes, and which: an exact float KNN scan in sqlite-vec costs 60-70 ms
at 100k x 384 on the project's machines; a bit scan is several times
cheaper. A plain sign bit per dimension (``code_levels=1``) is too coarse to
find the exact top 10 among many near-equal candidates, so by default each
dimension gets a 4-level thermometer code (``code_levels=3``: bits for
``x > -t``, ``x > 0``, ``x > t``, t the quartile of a unit vector's
coordinates): the Hamming distance between two codes is then the L1 distance
between the quantized vectors. The candidates it finds are rescored with the
exact float cosine (`nerve.knowledge.search`).

Embeddings come from the `EmbeddingCache` when the same text (same embedder)
was embedded before, so a rebuild or an edit embeds only new text. The
projection's version includes the embedder's name, the chunking options and
the code levels: changing any of them rebuilds ``knowledge.db``.
"""

from __future__ import annotations

import array
import hashlib
import json
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Final

import apsw
import sqlite_vec

from nerve.events import BlobError, BlobStore, RecordedEvent
from nerve.projections import Projection

from ._cache import EmbeddingCache
from ._chunk import Chunk, ChunkOptions, chunk_document, kind_of
from ._embed import Embedder, HashingEmbedder
from ._events import FILE_INDEXED, KNOWLEDGE_TYPES, FileIndexed, as_indexed, as_removed

__all__ = ["KnowledgeProjection", "load_sqlite_vec"]

SCHEMA_VERSION: Final = 1
DATABASE: Final = "knowledge.db"
CACHE_DATABASE: Final = "knowledge-embeddings.db"
MAX_CHUNKS: Final = 1 << 16
"""Chunks kept per file (ids reserve 16 bits for the chunk number)."""


def load_sqlite_vec(conn: apsw.Connection) -> None:
    """Load sqlite-vec into ``conn`` unless it is there already."""
    try:
        conn.execute("SELECT vec_version()").fetchall()
        return
    except apsw.SQLError:
        pass
    conn.enable_load_extension(True)
    try:
        conn.load_extension(sqlite_vec.loadable_path())
    finally:
        conn.enable_load_extension(False)


def f32_bytes(vector: Sequence[float], dimension: int) -> bytes:
    """A vector as little-endian float32 bytes (what sqlite-vec reads)."""
    if isinstance(vector, array.array) and vector.typecode == "f":
        data = vector.tobytes()
    else:
        data = array.array("f", vector).tobytes()
    if len(data) != 4 * dimension:
        raise ValueError(
            f"the embedder returned a vector of {len(data) // 4} floats; "
            f"its dimension is {dimension}"
        )
    return data


class KnowledgeProjection(Projection):
    """Folds ``knowledge.file.indexed`` / ``.removed`` into ``knowledge.db``.

    Args:
        embedder: turns chunk text into vectors (default: `HashingEmbedder`).
        blobs: the log's blob store, for files too large to travel inline
            (``log.blobs``). Without it such files are recorded with a
            problem and no chunks.
        cache: an `EmbeddingCache`, or a path for one (None: in memory).
        chunking: chunk sizes.
        code_levels: thresholds per dimension in the vector index's codes
            (1: sign bits; 3, the default: a 4-level thermometer code).
    """

    name = "knowledge"
    database = DATABASE
    types = KNOWLEDGE_TYPES
    tables = {
        "knowledge_files": ("repo", "path"),
        "knowledge_chunks": ("id",),
        "knowledge_vectors": ("id",),
    }

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        blobs: BlobStore | None = None,
        cache: EmbeddingCache | Path | None = None,
        chunking: ChunkOptions | None = None,
        code_levels: int = 3,
    ) -> None:
        self.embedder: Embedder = embedder or HashingEmbedder()
        if not isinstance(self.embedder, Embedder):
            raise TypeError(f"{embedder!r} is not an Embedder (name, dimension, embed)")
        if code_levels < 1 or code_levels % 2 == 0:
            raise ValueError(f"code_levels must be odd and >= 1, got {code_levels}")
        self.dimension = int(self.embedder.dimension)
        if self.dimension < 8 or self.dimension % 8:
            raise ValueError(
                f"embedder {self.embedder.name!r} has dimension {self.dimension}; "
                "the vector index needs a positive multiple of 8"
            )
        self.blobs = blobs
        self.cache = (
            cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
        )
        self.chunking = chunking or ChunkOptions()
        self.code_levels = code_levels
        self.code_bits = code_levels * self.dimension
        # Thresholds: the quantiles of one coordinate of a random unit vector,
        # which is close to normal with standard deviation 1/sqrt(dimension).
        sd = 1.0 / math.sqrt(self.dimension)
        normal = NormalDist(0.0, sd)
        cuts = [normal.inv_cdf((i + 1) / (code_levels + 1)) for i in range(code_levels)]
        cuts[code_levels // 2] = 0.0  # the median, exactly
        self.thresholds = tuple(
            array.array("f", [c] * self.dimension).tobytes() for c in cuts
        )
        parts = " || ".join(
            f"vec_quantize_binary(vec_sub(?1, ?{i + 2}))" for i in range(code_levels)
        )
        # Concatenating blobs with || yields text; CAST gives the bytes back.
        self.code_sql = f"CAST({parts} AS BLOB)" if code_levels > 1 else parts
        signature = (
            f"{self.embedder.name}|{self.dimension}|{self.chunking.max_chars}|"
            f"{self.chunking.overlap_lines}|{code_levels}"
        )
        # The version changes with anything that changes the rows: a runner
        # then rebuilds knowledge.db by itself.
        self.version = SCHEMA_VERSION * 1_000_000 + zlib.crc32(signature.encode()) % (
            1_000_000
        )
        self.texts_embedded = 0

    def __repr__(self) -> str:
        return (
            f"<KnowledgeProjection {self.embedder.name} dim={self.dimension} "
            f"v{self.version}>"
        )

    # -- Projection ----------------------------------------------------------

    def prepare(self, conn: apsw.Connection) -> None:
        load_sqlite_vec(conn)

    def setup(self, conn: apsw.Connection) -> None:
        # The virtual tables are not in `tables` (a rebuild could not copy
        # them with INSERT ... SELECT *): they are dropped and recreated here,
        # then filled by the triggers as the rows are copied in.
        conn.execute(
            f"""
            DROP TABLE IF EXISTS knowledge_fts_vocab;
            DROP TABLE IF EXISTS knowledge_fts;
            DROP TABLE IF EXISTS knowledge_codes;
            CREATE TABLE knowledge_files (
                repo     TEXT NOT NULL,
                path     TEXT NOT NULL,
                sha256   TEXT NOT NULL,
                size     INTEGER NOT NULL,
                kind     TEXT NOT NULL,
                title    TEXT NOT NULL,
                tags     TEXT NOT NULL,
                chunks   INTEGER NOT NULL,
                position INTEGER NOT NULL,
                problem  TEXT,
                PRIMARY KEY (repo, path)
            ) WITHOUT ROWID;
            CREATE TABLE knowledge_chunks (
                id         INTEGER PRIMARY KEY,
                repo       TEXT NOT NULL,
                path       TEXT NOT NULL,
                number     INTEGER NOT NULL,
                kind       TEXT NOT NULL,
                start_line INTEGER NOT NULL,
                end_line   INTEGER NOT NULL,
                title      TEXT NOT NULL,
                tags       TEXT NOT NULL,
                text       TEXT NOT NULL,
                sha256     TEXT NOT NULL
            );
            CREATE INDEX knowledge_chunks_by_file ON knowledge_chunks (repo, path);
            CREATE TABLE knowledge_vectors (
                id        INTEGER PRIMARY KEY,
                embedding BLOB NOT NULL,
                code      BLOB NOT NULL
            );
            CREATE VIRTUAL TABLE knowledge_fts USING fts5(
                path, title, tags, text,
                content='knowledge_chunks', content_rowid='id',
                tokenize='porter unicode61 remove_diacritics 2'
            );
            CREATE VIRTUAL TABLE knowledge_fts_vocab USING fts5vocab(
                knowledge_fts, 'row'
            );
            CREATE VIRTUAL TABLE knowledge_codes USING vec0(
                id INTEGER PRIMARY KEY,
                repo TEXT,
                code bit[{self.code_bits}]
            );
            CREATE TRIGGER knowledge_chunks_ai AFTER INSERT ON knowledge_chunks BEGIN
                INSERT INTO knowledge_fts (rowid, path, title, tags, text)
                VALUES (new.id, new.path, new.title, new.tags, new.text);
            END;
            CREATE TRIGGER knowledge_chunks_ad AFTER DELETE ON knowledge_chunks BEGIN
                INSERT INTO knowledge_fts (knowledge_fts, rowid, path, title, tags,
                                           text)
                VALUES ('delete', old.id, old.path, old.title, old.tags, old.text);
                DELETE FROM knowledge_vectors WHERE id = old.id;
            END;
            CREATE TRIGGER knowledge_vectors_ai AFTER INSERT ON knowledge_vectors BEGIN
                INSERT INTO knowledge_codes (id, repo, code)
                VALUES (
                    new.id,
                    (SELECT repo FROM knowledge_chunks WHERE id = new.id),
                    vec_bit(new.code)
                );
            END;
            CREATE TRIGGER knowledge_vectors_ad AFTER DELETE ON knowledge_vectors BEGIN
                DELETE FROM knowledge_codes WHERE id = old.id;
            END;
            """
        )

    def apply(self, conn: apsw.Connection, events: Sequence[RecordedEvent]) -> None:
        # Each event replaces everything known about its file, so only the
        # last one per file in a batch matters: earlier versions are never
        # chunked or embedded.
        latest: dict[tuple[str, str], RecordedEvent] = {}
        for e in events:
            data = as_indexed(e.data) if e.type == FILE_INDEXED else as_removed(e.data)
            key = (data.repo, data.path)
            latest.pop(key, None)
            latest[key] = e
        for repo, path in latest:
            conn.execute(
                "DELETE FROM knowledge_chunks WHERE repo = ? AND path = ?", (repo, path)
            )
            conn.execute(
                "DELETE FROM knowledge_files WHERE repo = ? AND path = ?", (repo, path)
            )
        files: list[tuple[object, ...]] = []
        chunks: list[tuple[object, ...]] = []
        for e in latest.values():
            if e.type != FILE_INDEXED:
                continue
            file_row, chunk_rows = self._file(as_indexed(e.data), e.position)
            files.append(file_row)
            chunks.extend(chunk_rows)
        if files:
            conn.executemany(
                "INSERT INTO knowledge_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                files,
            )
        if chunks:
            vectors = self.vectors([(str(c[10]), self._embed_text(c)) for c in chunks])
            conn.executemany(
                "INSERT INTO knowledge_chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                chunks,
            )
            conn.executemany(
                "INSERT INTO knowledge_vectors (id, embedding, code) "
                f"SELECT ?{self.code_levels + 2}, ?1, {self.code_sql}",
                ((vectors[str(c[10])], *self.thresholds, c[0]) for c in chunks),
            )

    # -- folding one file ------------------------------------------------------

    def _text(self, data: FileIndexed) -> tuple[str | None, str | None]:
        """(the file's text, or None and the problem that prevents it)."""
        if data.content is not None:
            return data.content, None
        digest = data.blob or data.sha256
        if self.blobs is None:
            return None, f"content in blob {digest}, but no blob store was given"
        try:
            raw = self.blobs.get_sync(digest)
        except BlobError as e:
            return None, f"content unavailable: {e}"
        try:
            return raw.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, f"blob {digest} is not UTF-8 text"

    def _file(
        self, data: FileIndexed, position: int
    ) -> tuple[tuple[object, ...], list[tuple[object, ...]]]:
        kind = kind_of(data.path, data.kind)
        text, problem = self._text(data)
        pieces: list[Chunk] = []
        title, tags = "", ""
        if text is not None:
            pieces, card = chunk_document(data.path, text, kind, self.chunking)
            if card is not None:
                title, tags = card.title, " ".join(card.tags)
            if len(pieces) > MAX_CHUNKS:
                problem = f"only the first {MAX_CHUNKS} of {len(pieces)} chunks kept"
                pieces = pieces[:MAX_CHUNKS]
        rows: list[tuple[object, ...]] = []
        for c in pieces:
            row = (
                (position << 16) | c.number,
                data.repo,
                data.path,
                c.number,
                kind,
                c.start_line,
                c.end_line,
                c.title or title,
                tags,
                c.text,
            )
            digest = hashlib.sha256(self._embed_text(row).encode()).hexdigest()
            rows.append((*row, digest))
        file_row = (
            data.repo,
            data.path,
            data.sha256,
            data.size,
            kind,
            title,
            json.dumps(tags.split()),
            len(rows),
            position,
            problem,
        )
        return file_row, rows

    @staticmethod
    def _embed_text(row: tuple[object, ...]) -> str:
        """What gets embedded for a chunk row: path, title and tags give the
        text its context (a query naming the file finds it)."""
        path, title, tags, text = row[2], row[7], row[8], row[9]
        return "\n".join(str(p) for p in (path, title, tags, text) if p)

    # -- embedding -------------------------------------------------------------

    def vectors(self, items: Sequence[tuple[str, str]]) -> dict[str, bytes]:
        """float32 vectors for (sha256, text) pairs, from the cache or embedded."""
        name = self.embedder.name
        wanted = dict(items)
        found = self.cache.get_many(name, wanted)
        missing = [(d, t) for d, t in wanted.items() if d not in found]
        fresh: dict[str, bytes] = {}
        for i in range(0, len(missing), 256):
            batch = missing[i : i + 256]
            out = self.embedder.embed([t for _, t in batch])
            if len(out) != len(batch):
                raise ValueError(
                    f"embedder {name!r} returned {len(out)} vectors for "
                    f"{len(batch)} texts"
                )
            for (d, _), v in zip(batch, out, strict=True):
                fresh[d] = f32_bytes(v, self.dimension)
        self.texts_embedded += len(fresh)
        self.cache.put_many(name, fresh)
        found.update(fresh)
        return found

    def query_vector(self, text: str) -> bytes:
        """The float32 vector of a query."""
        (v,) = self.embedder.embed([text])
        return f32_bytes(v, self.dimension)
