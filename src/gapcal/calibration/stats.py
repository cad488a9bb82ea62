"""Mergeable sufficient statistics of paired embeddings.

A calibrator never keeps all pairs: it keeps sums and second moments (float64, O(d^2)) and a bounded
sample of pairs chosen by a hash of their content (O(cap * d)). Both are independent of the number of
pairs, identical whatever the chunking, and can be merged across workers (map-reduce).
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
    """Counts, sums and the joint second-moment matrix of unit-normalised (text, image) pairs.

    ``gram`` is the (2d, 2d) matrix [[T^T T, T^T I], [I^T T, I^T I]] accumulated in float64 from
    float32 chunk products. ``sample_*`` hold the ``capacity`` pairs with the smallest content keys.
    """

    def __init__(self, dim: int, capacity: int):
        self.dim = dim
        self.capacity = capacity
        self.count = 0
        self.sums = np.zeros(2 * dim, dtype=np.float64)
        self.gram = np.zeros((2 * dim, 2 * dim), dtype=np.float64)
        self.sample_keys = np.zeros(0, dtype=np.uint64)
        self.sample_text = np.zeros((0, dim), dtype=np.float32)
        self.sample_image = np.zeros((0, dim), dtype=np.float32)

    def updated(self, text: np.ndarray, image: np.ndarray) -> "PairStatistics":
        """A new object with these pairs added (self is left untouched, so a failure changes nothing)."""
        joint = np.concatenate([text, image], axis=1)
        other = PairStatistics(self.dim, self.capacity)
        other.count = len(joint)
        other.sums = joint.sum(axis=0, dtype=np.float64)
        other.gram = (joint.T @ joint).astype(np.float64)
        other.sample_keys = content_keys(text, image)
        other.sample_text, other.sample_image = text, image
        return self.merged(other)

    def merged(self, other: "PairStatistics") -> "PairStatistics":
        """The statistics of both sets of pairs; the sample keeps the smallest keys of the union."""
        out = PairStatistics(self.dim, self.capacity)
        out.count = self.count + other.count
        out.sums = self.sums + other.sums
        out.gram = self.gram + other.gram
        keys = np.concatenate([self.sample_keys, other.sample_keys])
        keep = np.argsort(keys, kind="stable")[: self.capacity]
        out.sample_keys = keys[keep]
        out.sample_text = np.concatenate([self.sample_text, other.sample_text])[keep].copy()
        out.sample_image = np.concatenate([self.sample_image, other.sample_image])[keep].copy()
        return out

    def without(self, text: np.ndarray, image: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """(count, sums, gram) of all pairs except these ones (used to fit on a training split)."""
        joint = np.concatenate([text, image], axis=1).astype(np.float64)
        return self.count - len(joint), self.sums - joint.sum(axis=0), self.gram - joint.T @ joint


def moments(count: int, sums: np.ndarray, gram: np.ndarray, dim: int):
    """Means and centred (co)variances of text and image from accumulated sums: (mt, mi, Ctt, Cti, Cii)."""
    mean = sums / count
    cov = gram / count - np.outer(mean, mean)
    return mean[:dim], mean[dim:], cov[:dim, :dim], cov[:dim, dim:], cov[dim:, dim:]
