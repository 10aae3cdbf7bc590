"""The knowledge projection: ``knowledge.db``, folded from the knowledge events.

Tables (the first four are the read model: `verify` compares them row by row,
a rebuild copies them; the FTS5 tables are kept by triggers from them):

``knowledge_files``
    one row per indexed file: repo, path, sha256, kind, title/tags (cards),
    number of chunks, the position of the event that indexed it.
``knowledge_chunks``
    one row per chunk: repo, path, number, kind, line range, title, tags,
    text, sha256 of the embedded text. A chunk's id is
    ``position << 16 | number``: stable, and the same in every rebuild.
``knowledge_vectors``
    per chunk, its float32 embedding (the exact vector search's rescoring).
``knowledge_codes``
    per chunk, its repo and its int8 code (`quantize`): what the in-memory
    vector index (`nerve.knowledge._vindex`) loads and scans.
``knowledge_fts``
    FTS5 (porter stemming) over path, title, tags and text, external
    content on ``knowledge_chunks``; ``knowledge_fts_vocab`` its vocabulary.

Two small tables are not part of the read model (not compared, not copied):
they tell a vector index, in any process, what changed since it was loaded.
``knowledge_generation`` holds a counter bumped by every folded batch and an
epoch drawn anew whenever the tables are (re)created; ``knowledge_removals``
lists, per generation, the positions of the files whose chunks were removed
(the last few thousand generations only: an index further behind reloads).

Why not sqlite-vec (schema 1 kept a ``vec0`` table of bit codes): its scans
have no SIMD in the wheel this project gets, so a bit-code KNN took ~160 ms
at 100k x 384 with recall@10 0.87; the numpy index scans the same rows in a
few milliseconds with recall@10 above 0.99.

Embeddings come from the `EmbeddingCache` when the same text (same embedder)
was embedded before, so a rebuild or an edit embeds only new text. The
projection's version includes the embedder's name and the chunking options:
changing any of them rebuilds ``knowledge.db``.
"""

from __future__ import annotations

import array
import hashlib
import json
import secrets
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Final, cast

import apsw
import numpy as np
import numpy.typing as npt
import sqlite_vec

from nerve.events import BlobError, BlobStore, RecordedEvent
from nerve.projections import Projection

from ._cache import EmbeddingCache
from ._chunk import Chunk, ChunkOptions, chunk_document, kind_of
from ._embed import Embedder, HashingEmbedder
from ._events import FILE_INDEXED, KNOWLEDGE_TYPES, FileIndexed, as_indexed, as_removed
from ._vindex import quantize

__all__ = ["KnowledgeProjection", "load_sqlite_vec"]

SCHEMA_VERSION: Final = 2
DATABASE: Final = "knowledge.db"
CACHE_DATABASE: Final = "knowledge-embeddings.db"
MAX_CHUNKS: Final = 1 << 16
"""Chunks kept per file (ids reserve 16 bits for the chunk number)."""
REMOVALS_KEPT: Final = 4096
"""Generations whose removals stay listed (an index further behind reloads)."""
_PRUNE_EVERY: Final = 256


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
    elif isinstance(vector, np.ndarray):
        data = np.ascontiguousarray(vector, dtype="<f4").tobytes()
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
    """

    name = "knowledge"
    database = DATABASE
    types = KNOWLEDGE_TYPES
    tables = {
        "knowledge_files": ("repo", "path"),
        "knowledge_chunks": ("id",),
        "knowledge_vectors": ("id",),
        "knowledge_codes": ("id",),
    }

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        blobs: BlobStore | None = None,
        cache: EmbeddingCache | Path | None = None,
        chunking: ChunkOptions | None = None,
    ) -> None:
        self.embedder: Embedder = embedder or HashingEmbedder()
        if not isinstance(self.embedder, Embedder):
            raise TypeError(f"{embedder!r} is not an Embedder (name, dimension, embed)")
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
        signature = (
            f"{self.embedder.name}|{self.dimension}|{self.chunking.max_chars}|"
            f"{self.chunking.overlap_lines}"
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
        # Schema 1 kept a sqlite-vec table: dropping it (when the new version
        # rebuilds the database) needs the extension that defines it.
        old = conn.execute(
            "SELECT 1 FROM main.sqlite_schema WHERE name = 'knowledge_codes' "
            "AND sql LIKE '%USING vec0%'"
        ).fetchall()
        if old:
            load_sqlite_vec(conn)

    def setup(self, conn: apsw.Connection) -> None:
        # The FTS5 tables are not in `tables` (a rebuild could not copy them
        # with INSERT ... SELECT *): they are dropped and recreated here, then
        # filled by the triggers as the rows are copied in.
        conn.execute(
            """
            DROP TABLE IF EXISTS main.knowledge_fts_vocab;
            DROP TABLE IF EXISTS main.knowledge_fts;
            DROP TABLE IF EXISTS main.knowledge_codes;
            DROP TABLE IF EXISTS main.knowledge_removals;
            DROP TABLE IF EXISTS main.knowledge_generation;
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
                embedding BLOB NOT NULL
            );
            CREATE TABLE knowledge_codes (
                id   INTEGER PRIMARY KEY,
                repo TEXT NOT NULL,
                code BLOB NOT NULL
            );
            CREATE VIRTUAL TABLE knowledge_fts USING fts5(
                path, title, tags, text,
                content='knowledge_chunks', content_rowid='id',
                tokenize='porter unicode61 remove_diacritics 2'
            );
            CREATE VIRTUAL TABLE knowledge_fts_vocab USING fts5vocab(
                knowledge_fts, 'row'
            );
            CREATE TABLE knowledge_generation (
                singleton  INTEGER PRIMARY KEY CHECK (singleton = 0),
                epoch      INTEGER NOT NULL,
                generation INTEGER NOT NULL,
                pruned     INTEGER NOT NULL,
                bulk       INTEGER NOT NULL DEFAULT 0
            );
            -- Rows copied in by a rebuild are indexed one by one; `apply`
            -- turns this off ("bulk") and indexes its batch in one statement,
            -- which costs ~40% less per chunk.
            CREATE TRIGGER knowledge_chunks_ai AFTER INSERT ON knowledge_chunks
            WHEN (SELECT bulk FROM knowledge_generation) = 0 BEGIN
                INSERT INTO knowledge_fts (rowid, path, title, tags, text)
                VALUES (new.id, new.path, new.title, new.tags, new.text);
            END;
            CREATE TRIGGER knowledge_chunks_ad AFTER DELETE ON knowledge_chunks BEGIN
                INSERT INTO knowledge_fts (knowledge_fts, rowid, path, title, tags,
                                           text)
                VALUES ('delete', old.id, old.path, old.title, old.tags, old.text);
                DELETE FROM knowledge_vectors WHERE id = old.id;
                DELETE FROM knowledge_codes WHERE id = old.id;
            END;
            CREATE TABLE knowledge_removals (
                generation INTEGER NOT NULL,
                position   INTEGER NOT NULL
            );
            CREATE INDEX knowledge_removals_by_generation
                ON knowledge_removals (generation);
            """
        )
        # A new epoch: any vector index loaded from the old tables reloads.
        # Random, not derived from the events: it names this copy of the
        # tables, and is no part of the read model.
        conn.execute(
            "INSERT INTO main.knowledge_generation VALUES (0, ?, 0, 0, 0)",
            (secrets.randbits(62),),
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
        removed: list[int] = []
        for repo, path in latest:
            conn.execute(
                "DELETE FROM knowledge_chunks WHERE repo = ? AND path = ?", (repo, path)
            )
            for (position,) in conn.execute(
                "DELETE FROM knowledge_files WHERE repo = ? AND path = ? "
                "RETURNING position",
                (repo, path),
            ):
                removed.append(position)
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
            self._insert(conn, chunks)
        self._next_generation(conn, removed)

    def _insert(self, conn: apsw.Connection, chunks: list[tuple[object, ...]]) -> None:
        """Insert chunk rows with their FTS entries, vectors and codes."""
        vectors = self.vectors([(str(c[10]), self._embed_text(c)) for c in chunks])
        ids = [cast(int, c[0]) for c in chunks]
        conn.execute("UPDATE knowledge_generation SET bulk = 1")
        conn.executemany(
            "INSERT INTO knowledge_chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            chunks,
        )
        # The batch's chunks are the ones with the largest ids: each was
        # indexed by an event later than every chunk already there.
        conn.execute(
            "INSERT INTO knowledge_fts (rowid, path, title, tags, text) "
            "SELECT id, path, title, tags, text FROM knowledge_chunks WHERE id >= ?",
            (min(ids),),
        )
        conn.execute("UPDATE knowledge_generation SET bulk = 0")
        embeddings = [vectors[str(c[10])] for c in chunks]
        conn.executemany(
            "INSERT INTO knowledge_vectors VALUES (?, ?)",
            zip(ids, embeddings, strict=True),
        )
        matrix = np.frombuffer(b"".join(embeddings), dtype="<f4")
        codes = quantize(matrix.reshape(len(chunks), self.dimension))
        conn.executemany(
            "INSERT INTO knowledge_codes VALUES (?, ?, ?)",
            (
                (i, c[1], code.tobytes())
                for i, c, code in zip(ids, chunks, codes, strict=True)
            ),
        )

    def _next_generation(self, conn: apsw.Connection, removed: list[int]) -> None:
        """Tell vector indexes that the tables changed, and which files went."""
        ((generation,),) = conn.execute(
            "UPDATE knowledge_generation SET generation = generation + 1 "
            "RETURNING generation"
        ).fetchall()
        if removed:
            conn.executemany(
                "INSERT INTO knowledge_removals VALUES (?, ?)",
                ((generation, p) for p in removed),
            )
        if generation % _PRUNE_EVERY == 0 and generation > REMOVALS_KEPT:
            pruned = generation - REMOVALS_KEPT
            conn.execute(
                "DELETE FROM knowledge_removals WHERE generation <= ?", (pruned,)
            )
            conn.execute("UPDATE knowledge_generation SET pruned = ?", (pruned,))

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

    def query_vector(self, text: str) -> npt.NDArray[np.float32]:
        """The float32 vector of a query."""
        (v,) = self.embedder.embed([text])
        return np.frombuffer(f32_bytes(v, self.dimension), dtype="<f4")
