"""The vector index: an in-memory copy of ``knowledge.db``'s codes, searched
in three steps, each on fewer rows with a finer measure.

1. **2-bit scan, every row.** Each chunk's int8 code (``knowledge_codes``) is
   held in memory with a 2-bit form of it in bit planes: per dimension, the
   sign and whether the magnitude is above the row's median magnitude (levels
   -1.5, -0.5, 0.5, 1.5). The query gets the same 2-bit form, and the dot
   product of the two, for every row at once, is a handful of AND + popcount
   passes over ``2 x dimension / 64`` words per row (numpy, no BLAS).
2. **int8 rescoring** of the best ``shortlist`` rows (default 1024): the int8
   codes (about 1/250 of a coordinate's range per step) times the float query,
   divided by the code's norm: an estimate of the cosine within ~1%.
3. **Exact rescoring** of the best ``candidates`` of those with the float32
   embeddings read from ``knowledge_vectors``: the cosine the hits report.

Measured at 100k x 384 (the bench corpus of ``bench/knowledge.py``): the
2-bit scan keeps the exact top 10 among its best 1024 rows 99.9% of the
time, the int8 step keeps them among its best 20 every time, and the three
steps take about half of the time of one exact float32 matrix-vector product
over all rows (numpy, BLAS). The memory is ``dimension + 2 * dimension / 8 +
~20`` bytes per chunk: ~50 MB for 100k chunks of 384 dimensions (their
float32 vectors would take 150 MB).

Staying in sync: the index is loaded from the database at the first search
and brought up to date at each search, inside the search's read transaction
(so it matches the snapshot being read): ``knowledge_generation`` says
whether the tables changed since (a generation counter, bumped by every
folded batch, and an epoch, new whenever the tables are rebuilt);
``knowledge_removals`` lists the files whose chunks each generation removed,
and chunks added since are those with a larger id than any seen (a chunk's
id grows with the position of the event that indexed it). This works
whatever process folds the projection.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Sequence
from typing import Any, Final

import apsw
import numpy as np
import numpy.typing as npt

__all__ = ["VectorIndex", "quantize"]

DEFAULT_SHORTLIST: Final = 1024
"""Rows the 2-bit scan passes to the int8 rescoring."""
_DEAD: Final = -(1 << 30)
"""The 2-bit score of a removed row (below any real score)."""
_LOAD_BATCH: Final = 8192
_COMPACT_MIN = 1024
"""Removed rows are dropped from memory once there are this many, and a
quarter of all rows."""
_GROWTH: Final = 1.25


def quantize(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.int8]:
    """The int8 codes of float vectors (rows): each row scaled so that its
    largest magnitude is 127, then rounded.

    Only element-wise IEEE operations (no sums), so the codes are the same
    on every platform and in any batch: they are part of the read model.
    """
    x = np.nan_to_num(vectors.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(len(x))
    with np.errstate(divide="ignore"):
        factor = np.where(peak > 0, 127.0 / peak, 0.0)
    return np.clip(np.rint(x * factor[:, None]), -127, 127).astype(np.int8)


def _planes(codes: npt.NDArray[np.int8]) -> npt.NDArray[np.uint64]:
    """The 2-bit form of int8 codes as bit planes: (2, words, rows).

    Plane 0: the sign (1: positive). Plane 1: 1 for a positive coordinate
    above the row's median magnitude or a negative one at or below it, so
    that ``2 * sign + plane1`` orders the four levels.
    """
    rows, d = codes.shape
    magnitude = np.abs(codes.astype(np.int16))
    median = np.partition(magnitude, d // 2, axis=1)[:, d // 2 : d // 2 + 1]
    positive = codes > 0
    big = magnitude > median
    pad = -d % 64
    out = np.zeros((2, (d + pad) // 64, rows), dtype=np.uint64)
    for p, bits in enumerate((positive, positive == big)):
        if pad:
            bits = np.concatenate([bits, np.zeros((rows, pad), dtype=bool)], axis=1)
        packed = np.packbits(bits, axis=1, bitorder="little")
        out[p] = packed.view("<u8").T
    return out


class VectorIndex:
    """The codes of ``knowledge.db`` in memory; see the module's documentation.

    Thread-safe: `search` holds a lock while it syncs and scans. Several
    searches therefore run one after the other, each a few milliseconds.
    """

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._words = -(-dimension // 64)
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._generation = 0
        self._high = -1  # the largest chunk id ever loaded
        self._count = 0  # rows in use (live or removed)
        self._dead = 0
        self._repos: dict[str, int] = {}
        self._allocate(0)
        self.loads = 0  # full loads, for tests and statistics

    def _allocate(self, capacity: int) -> None:
        d, w = self.dimension, self._words
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._repo = np.zeros(capacity, dtype=np.int32)
        self._codes = np.zeros((capacity, d), dtype=np.int8)
        # Bit planes with the rows last, so that a word of every row is one
        # contiguous array (what the scan reads).
        self._bits = np.zeros((2, w, capacity), dtype=np.uint64)
        self._base = np.zeros(capacity, dtype=np.int32)
        self._inverse_norm = np.zeros(capacity, dtype=np.float32)

    def _arrays(self) -> list[npt.NDArray[Any]]:
        """Every per-row array, rows on the first axis (bit planes: a view)."""
        return [
            self._ids,
            self._repo,
            self._codes,
            self._bits.transpose(2, 0, 1),
            self._base,
            self._inverse_norm,
        ]

    def __len__(self) -> int:
        """Live rows."""
        return self._count - self._dead

    @property
    def nbytes(self) -> int:
        """Memory held by the index's arrays."""
        return sum(a.nbytes for a in self._arrays())

    # -- sync ------------------------------------------------------------------

    def sync(self, conn: apsw.Connection) -> None:
        """Bring the index up to the snapshot ``conn`` reads (in a transaction)."""
        with self._lock:
            self._sync(conn)

    def _sync(self, conn: apsw.Connection) -> None:
        epoch, generation, pruned = conn.execute(
            "SELECT epoch, generation, pruned FROM knowledge_generation"
        ).fetchall()[0]
        if epoch != self._epoch or self._generation < pruned:
            # Not loaded until the load completes: an error leaves it empty.
            self._epoch, self._generation, self._high = None, 0, -1
            self._count = self._dead = 0
            self._repos = {}
            self.loads += 1
            # Exactly the room needed: a full load is the common case.
            (rows,) = conn.execute("SELECT count(*) FROM knowledge_codes").fetchall()
            self._allocate(int(rows[0]))
            self._add(conn)
            self._epoch, self._generation = epoch, generation
            return
        if generation == self._generation:
            return
        removed = conn.execute(
            "SELECT DISTINCT position FROM knowledge_removals WHERE generation > ?",
            (self._generation,),
        ).fetchall()
        if removed:
            self._remove([int(p) for (p,) in removed])
        self._add(conn)
        self._generation = generation
        if self._dead > max(_COMPACT_MIN, self._count // 4):
            self._compact()

    def _remove(self, positions: Sequence[int]) -> None:
        """Mark the chunks of files indexed at ``positions`` as removed."""
        ids = self._ids[: self._count]
        for position in positions:
            lo, hi = np.searchsorted(ids, [position << 16, (position + 1) << 16])
            if hi > lo:
                live = self._base[lo:hi] != _DEAD
                self._dead += int(live.sum())
                self._base[lo:hi] = _DEAD

    def _add(self, conn: apsw.Connection) -> None:
        """Load the rows with an id above every id loaded so far."""
        cursor = conn.execute(
            "SELECT id, repo, code FROM knowledge_codes WHERE id > ? ORDER BY id",
            (self._high,),
        )
        while True:
            rows = list(itertools.islice(cursor, _LOAD_BATCH))
            if not rows:
                return
            self._append(rows)

    def _append(self, rows: Sequence[tuple[int, str, bytes]]) -> None:
        d, n = self.dimension, len(rows)
        raw = b"".join(r[2] for r in rows)
        if len(raw) != n * d:
            raise ValueError(
                f"knowledge.db holds codes of {len(rows[0][2])} dimensions; this "
                f"index expects {d} (the embedder changed: rebuild the projection)"
            )
        codes = np.frombuffer(raw, dtype=np.int8).reshape(n, d)
        at = self._count
        if at + n > len(self._ids):
            self._grow(at + n)
        self._ids[at : at + n] = [r[0] for r in rows]
        repos = self._repos
        self._repo[at : at + n] = [repos.setdefault(r[1], len(repos)) for r in rows]
        self._codes[at : at + n] = codes
        bits = _planes(codes)
        self._bits[:, :, at : at + n] = bits
        counts = np.bitwise_count(bits).sum(axis=1, dtype=np.int32)
        # The row's part of the 2-bit dot product (see `_scan`).
        self._base[at : at + n] = -6 * counts[0] - 3 * counts[1]
        wide = codes.astype(np.int32)
        norms = np.sqrt(np.einsum("ij,ij->i", wide, wide).astype(np.float64))
        with np.errstate(divide="ignore"):
            self._inverse_norm[at : at + n] = np.where(norms > 0, 1.0 / norms, 0.0)
        self._count += n
        self._high = int(rows[-1][0])

    def _grow(self, needed: int) -> None:
        old, n = self._arrays(), self._count
        self._allocate(max(needed, int(len(self._ids) * _GROWTH) + 1024))
        for new, before in zip(self._arrays(), old, strict=True):
            new[:n] = before[:n]

    def _compact(self) -> None:
        keep = np.flatnonzero(self._base[: self._count] != _DEAD)
        old = self._arrays()
        self._allocate(len(keep))
        for new, before in zip(self._arrays(), old, strict=True):
            new[:] = before[keep]
        self._count, self._dead = len(keep), 0

    # -- search ----------------------------------------------------------------

    def search(
        self,
        conn: apsw.Connection,
        query: npt.NDArray[np.float32],
        n: int,
        *,
        candidates: int,
        repo: str | None = None,
        shortlist: int = DEFAULT_SHORTLIST,
    ) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity) of the ``n`` rows nearest ``query``.

        ``conn`` reads ``knowledge.db`` in a transaction: the index is synced
        to its snapshot, and the exact vectors are read from it. The same as
        `sync`, `nearest` and `rescore` in turn.
        """
        with self._lock:
            self._sync(conn)
            ids = self._nearest(query, max(candidates, n), repo, shortlist)
        return self.rescore(conn, query, ids, n)

    def nearest(
        self,
        query: npt.NDArray[np.float32],
        m: int,
        *,
        repo: str | None = None,
        shortlist: int = DEFAULT_SHORTLIST,
    ) -> npt.NDArray[np.int64]:
        """The ids (ascending) of the ``m`` rows nearest ``query`` by their
        codes, as of the last `sync`. Needs no connection: it can run in
        another thread while the caller queries the database."""
        with self._lock:
            return self._nearest(query, m, repo, shortlist)

    def rescore(
        self,
        conn: apsw.Connection,
        query: npt.NDArray[np.float32],
        ids: npt.NDArray[np.int64],
        n: int,
    ) -> list[tuple[int, float]]:
        """(id, exact cosine) of the best ``n`` of ``ids``, best first (ties:
        smaller id first), from the float vectors ``conn`` reads. Ids absent
        from its snapshot are left out."""
        if not len(ids):
            return []
        rows = conn.execute(
            "SELECT id, embedding FROM knowledge_vectors "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids.tolist()),),
        ).fetchall()
        if not rows:
            return []
        found = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        vectors = vectors.reshape(len(rows), -1).astype(np.float64)
        q = query.astype(np.float64)
        dots = np.einsum("ij,j->i", vectors, q)
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors)) * np.sqrt(q @ q)
        with np.errstate(divide="ignore", invalid="ignore"):
            cosine = np.where(norms > 0, dots / norms, 0.0)
        order = np.lexsort((found, -cosine))[:n]
        return [(int(found[i]), float(cosine[i])) for i in order]

    def _nearest(
        self,
        query: npt.NDArray[np.float32],
        m: int,
        repo: str | None,
        shortlist: int,
    ) -> npt.NDArray[np.int64]:
        """The ids of the ``m`` rows best by int8 estimate, among the best
        ``max(shortlist, m)`` by 2-bit score."""
        count = self._count
        none = np.zeros(0, dtype=np.int64)
        if count == 0:
            return none
        excluded: npt.NDArray[np.bool_] | None = None
        if self._dead:
            excluded = self._base[:count] == _DEAD
        if repo is not None:
            code = self._repos.get(repo)
            if code is None:
                return none
            other = self._repo[:count] != code
            excluded = other if excluded is None else excluded | other
        best = self._scan(query, min(max(shortlist, m), count), excluded)
        if not len(best):
            return none
        estimate = np.einsum(
            "ij,j->i", self._codes[best].astype(np.float32), query.astype(np.float32)
        )
        estimate *= self._inverse_norm[best]
        if m < len(best):
            best = best[np.argpartition(estimate, len(best) - m)[len(best) - m :]]
        return self._ids[np.sort(best)]

    def _scan(
        self,
        query: npt.NDArray[np.float32],
        short: int,
        excluded: npt.NDArray[np.bool_] | None,
    ) -> npt.NDArray[np.intp]:
        """The rows (not ``excluded``) of the ``short`` best 2-bit scores.

        The score is twice the dot product of the row's and the query's
        2-bit forms, less the query's own part (the same for every row). With
        row levels ``2b + c - 1.5`` and query levels ``2s + t - 1.5`` (b, c,
        s, t bits) that is ``2 * sum((2b + c)(2s + t)) - 3 * sum(2b + c)``:
        four popcounts of ANDs, plus ``_base``.

        (Measured, not kept: scanning the sign plane first and the level
        plane of its best 16k rows only was no faster, its gathers being
        cache misses; neither was splitting the scan across two threads on
        the busy two-core machine this was measured on.)
        """
        count = self._count
        q = quantize(query.reshape(1, -1))
        (wanted,) = _planes(q).transpose(2, 0, 1)  # (2, words)
        ss, st = _ones(self._bits[0, :, :count], wanted)
        cs, ct = _ones(self._bits[1, :, :count], wanted)
        scores = self._base[:count].copy()
        for weight, ones in ((8, ss), (4, st), (4, cs), (2, ct)):
            scores += weight * ones.astype(np.int32)
        if excluded is not None:
            scores[excluded] = _DEAD
            rows = np.flatnonzero(~excluded)
            if short < len(rows):
                top = np.argpartition(scores[rows], len(rows) - short)
                rows = rows[top[len(rows) - short :]]
            return rows
        if short < count:
            return np.argpartition(scores, count - short)[count - short :]
        return np.arange(count)


def _ones(
    plane: npt.NDArray[np.uint64], wanted: npt.NDArray[np.uint64]
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint16]]:
    """Per column of ``plane`` (words x rows), the popcounts of its AND with
    each of the two query planes ``wanted`` (2 x words)."""
    words, n = plane.shape
    out = (np.zeros(n, dtype=np.uint16), np.zeros(n, dtype=np.uint16))
    tmp = np.empty(n, dtype=np.uint64)
    ones = np.empty(n, dtype=np.uint8)
    for w in range(words):
        row = plane[w]
        for bits, total in zip(wanted, out, strict=True):
            np.bitwise_and(row, bits[w], out=tmp)
            np.bitwise_count(tmp, out=ones)
            total += ones
    return out
