"""Mergeable statistics of paired embeddings.

A calibrator never keeps all pairs: it keeps per-modality sums (float64, for the means), a bounded sample
of pairs (O(capacity * d): projections, hubness terms and score maps are fitted on it) and small hash
sketches that count distinct items. All of it is independent of the number of pairs, identical whatever
the chunking or order, and mergeable across workers (map-reduce).

The sample is chosen by content keys so that groups arrive whole: with user groups, all pairs of a group
share the group's key; without them a pair's key is the smaller of its two item hashes, so every pair
that shares an item whose hash is small (one image with five captions, say) enters the sample with it.
"""

from __future__ import annotations

import hashlib

import numpy as np

_HASH_COLUMNS = 32
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
SKETCH = 4096
_TOP = 2.0 ** 64


def _mix(h: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (splitmix64): nearby inputs give unrelated outputs."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(30))
        h = h * _MIX
        h = h ^ (h >> np.uint64(27))
        h = h * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def row_hashes(units: np.ndarray) -> np.ndarray:
    """A 64-bit hash per unit float32 row from up to 32 evenly spaced coordinates (exact duplicates share
    it; distinct rows sharing it by chance are told apart later, in the sample, by their full rows)."""
    step = max(1, units.shape[1] // _HASH_COLUMNS)
    bits = units[:, ::step][:, :_HASH_COLUMNS].view(np.uint32).astype(np.uint64)
    h = np.full(len(units), _GOLDEN, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in bits.T:
            h = (h ^ column) * _MIX
            h ^= h >> np.uint64(29)
    return _mix(h)


def label_hashes(labels: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each pair's group label (integers or strings), the same in every chunk and worker."""
    uniq, codes = np.unique(labels, return_inverse=True)
    if uniq.dtype.kind in "iu":
        keys = _mix(uniq.astype(np.int64).view(np.uint64) ^ np.uint64(0x5BD1E995))
    else:
        keys = np.array([int.from_bytes(hashlib.blake2b(str(v).encode("utf-8"), digest_size=8).digest(), "little")
                         for v in uniq], dtype=np.uint64)
    return keys[codes.ravel()]


def _smallest_distinct(values: np.ndarray, k: int = SKETCH) -> np.ndarray:
    return np.unique(values)[:k]


def distinct_estimate(sketch: np.ndarray) -> float:
    """Distinct values behind a k-minimum-values sketch: exact below k, else (k - 1) / (k-th value / 2^64)."""
    if len(sketch) < SKETCH:
        return float(len(sketch))
    return float((SKETCH - 1) / (float(sketch[-1]) / _TOP))


class PairStatistics:
    """Count and per-modality sums of unit-normalised (text, image) pairs; a sample of pairs with their
    item and group hashes; k-minimum-values sketches of distinct texts, images and groups.

    The sample keeps the ``capacity`` pairs with the smallest (key, pair hash), dropping a group cut at
    the end.
    """

    _SAMPLE = ("sample_key", "sample_order", "sample_text_hash", "sample_image_hash", "sample_group_hash",
               "sample_grouped", "sample_text", "sample_image")

    def __init__(self, dim: int, capacity: int):
        self.dim = dim
        self.capacity = capacity
        self.count = 0
        self.grouped = 0
        self.text_sum = np.zeros(dim)
        self.image_sum = np.zeros(dim)
        for name in self._SAMPLE[:5]:
            setattr(self, name, np.zeros(0, dtype=np.uint64))
        self.sample_grouped = np.zeros(0, dtype=bool)
        self.sample_text = np.zeros((0, dim), dtype=np.float32)
        self.sample_image = np.zeros((0, dim), dtype=np.float32)
        self.text_sketch = np.zeros(0, dtype=np.uint64)
        self.image_sketch = np.zeros(0, dtype=np.uint64)
        self.group_sketch = np.zeros(0, dtype=np.uint64)

    @classmethod
    def of(cls, text: np.ndarray, image: np.ndarray, capacity: int, group_hash=None) -> "PairStatistics":
        """Statistics of one chunk of unit-normalised float32 pairs (``group_hash``: one per pair, or None)."""
        out = cls(text.shape[1], capacity)
        out.count = len(text)
        ones = np.ones(len(text), dtype=np.float32)
        out.text_sum = (ones @ text).astype(np.float64)  # BLAS sums: no float64 copy of the chunk
        out.image_sum = (ones @ image).astype(np.float64)
        th, ih = row_hashes(text), row_hashes(image)
        grouped = np.zeros(len(text), dtype=bool) if group_hash is None else np.ones(len(text), dtype=bool)
        gh = np.zeros(len(text), dtype=np.uint64) if group_hash is None else group_hash
        key = np.minimum(th, ih) if group_hash is None else gh
        order = _mix(th ^ _mix(ih))
        out.grouped = int(grouped.sum())
        out.text_sketch, out.image_sketch = _smallest_distinct(th), _smallest_distinct(ih)
        out.group_sketch = _smallest_distinct(gh[grouped])
        out._keep(key, order, th, ih, gh, grouped, text, image)
        return out

    def _keep(self, key, order, th, ih, gh, grouped, text, image) -> None:
        """Set the sample to the ``capacity`` smallest (key, order) of these pairs, whole key groups only."""
        rank = np.lexsort((order, key))
        if len(rank) > self.capacity:
            first_out = key[rank[self.capacity]]
            rank = rank[: self.capacity]
            whole = key[rank] != first_out
            if whole.any():  # one group larger than the whole sample keeps its first `capacity` pairs
                rank = rank[whole]
        self.sample_key, self.sample_order = key[rank], order[rank]
        self.sample_text_hash, self.sample_image_hash = th[rank], ih[rank]
        self.sample_group_hash, self.sample_grouped = gh[rank], grouped[rank]
        self.sample_text, self.sample_image = text[rank], image[rank]

    def merged(self, other: "PairStatistics") -> "PairStatistics":
        """The statistics of both sets of pairs; the sample is what one chunk of all of them would keep."""
        out = PairStatistics(self.dim, self.capacity)
        out.count = self.count + other.count
        out.grouped = self.grouped + other.grouped
        for name in ("text_sum", "image_sum"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        for name in ("text_sketch", "image_sketch", "group_sketch"):
            setattr(out, name, _smallest_distinct(np.concatenate([getattr(self, name), getattr(other, name)])))
        out._keep(*(np.concatenate([getattr(self, name), getattr(other, name)]) for name in self._SAMPLE))
        return out

    def moments(self) -> "Moments":
        """Means over all pairs; second moments (which only projections need) over the sample."""
        return Moments(self.text_sum / self.count, self.image_sum / self.count, self.sample_text, self.sample_image)

    def sample_moments(self, rows) -> "Moments":
        """``moments`` of the sample pairs ``rows`` alone (the training part of a held-out check)."""
        t, i = self.sample_text[rows], self.sample_image[rows]
        ones = np.ones(len(t), dtype=np.float32)
        return Moments((ones @ t).astype(np.float64) / len(t), (ones @ i).astype(np.float64) / len(t), t, i)


class Moments:
    """Per-modality means, and E[t t^T], E[t i^T] of some rows, computed on first use."""

    def __init__(self, text_mean, image_mean, text_rows, image_rows):
        self.text_mean, self.image_mean = text_mean, image_mean
        self._rows = text_rows, image_rows
        self._grams = None

    @property
    def rows(self):
        """The (text, image) unit rows the second moments are taken over."""
        return self._rows

    @property
    def grams(self):
        if self._grams is None:
            t, i = self._rows
            self._grams = (t.T @ t).astype(np.float64) / len(t), (t.T @ i).astype(np.float64) / len(t)
        return self._grams
