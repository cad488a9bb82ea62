"""Mergeable sufficient statistics of paired embeddings.

A calibrator never keeps all pairs: it keeps sums and the second moments its stages need (float64,
O(d^2)) and a bounded sample of pairs chosen by a hash of their content (O(cap * d)). Both are
independent of the number of pairs, identical whatever the chunking, and can be merged across workers
(map-reduce).
"""

from __future__ import annotations

import numpy as np

_HASH_COLUMNS = 8
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


def content_keys(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each pair's leading coordinates: a pseudo-random, order-free sampling key."""
    bits = np.concatenate([text[:, :_HASH_COLUMNS], image[:, :_HASH_COLUMNS]], axis=1)
    bits = np.ascontiguousarray(bits, dtype=np.float32).view(np.uint32).astype(np.uint64)
    h = np.full(len(bits), _GOLDEN, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in bits.T:
            h ^= column
            h *= _MIX
            h ^= h >> np.uint64(31)
    return h


class PairStatistics:
    """Count, per-modality sums, T^T T and T^T I of unit-normalised (text, image) pairs, plus a sample.

    The products are computed per chunk in float32 (BLAS speed) and accumulated in float64. ``sample_*``
    hold the ``capacity`` pairs with the smallest content keys, in key order.
    """

    def __init__(self, dim: int, capacity: int):
        self.dim = dim
        self.capacity = capacity
        self.count = 0
        self.text_sum = np.zeros(dim)
        self.image_sum = np.zeros(dim)
        self.text_gram = np.zeros((dim, dim))
        self.cross_gram = np.zeros((dim, dim))
        self.sample_keys = np.zeros(0, dtype=np.uint64)
        self.sample_text = np.zeros((0, dim), dtype=np.float32)
        self.sample_image = np.zeros((0, dim), dtype=np.float32)

    @classmethod
    def of(cls, text: np.ndarray, image: np.ndarray, capacity: int) -> "PairStatistics":
        """Statistics of one chunk of unit-normalised float32 pairs."""
        out = cls(text.shape[1], capacity)
        out.count = len(text)
        ones = np.ones(len(text), dtype=np.float32)
        out.text_sum = (ones @ text).astype(np.float64)  # BLAS sums: no float64 copy of the chunk
        out.image_sum = (ones @ image).astype(np.float64)
        out.text_gram = (text.T @ text).astype(np.float64)
        out.cross_gram = (text.T @ image).astype(np.float64)
        keys = content_keys(text, image)
        keep = np.argsort(keys, kind="stable")[:capacity]
        out.sample_keys, out.sample_text, out.sample_image = keys[keep], text[keep], image[keep]
        return out

    def merged(self, other: "PairStatistics") -> "PairStatistics":
        """The statistics of both sets of pairs; the sample keeps the smallest keys of the union."""
        out = PairStatistics(self.dim, self.capacity)
        out.count = self.count + other.count
        for name in ("text_sum", "image_sum", "text_gram", "cross_gram"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        n_mine = len(self.sample_keys)
        keys = np.concatenate([self.sample_keys, other.sample_keys])
        keep = np.argsort(keys, kind="stable")[: self.capacity]
        mine, theirs = keep < n_mine, keep >= n_mine
        out.sample_keys = keys[keep]
        for name in ("sample_text", "sample_image"):
            rows = np.empty((len(keep), self.dim), dtype=np.float32)
            rows[mine] = getattr(self, name)[keep[mine]]
            rows[theirs] = getattr(other, name)[keep[theirs] - n_mine]
            setattr(out, name, rows)
        return out

    def moments(self, exclude: int = 0):
        """(count, text mean, image mean, E[t t^T], E[t i^T]) over all pairs but the first ``exclude``
        sample pairs (the held-out ones)."""
        t = self.sample_text[:exclude].astype(np.float64)
        i = self.sample_image[:exclude].astype(np.float64)
        n = self.count - len(t)
        return (n, (self.text_sum - t.sum(0)) / n, (self.image_sum - i.sum(0)) / n,
                (self.text_gram - t.T @ t) / n, (self.cross_gram - t.T @ i) / n)
