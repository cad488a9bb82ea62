"""What every calibrated store shares, free of any engine: the result type and argument checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import MODALITIES
from .calibration import GapCalibrator


@dataclass(frozen=True)
class SearchResult:
    """Ranked results, best first, each (n_queries, k).

    ``ids`` holds the items' ids (-1 where fewer than k items exist), ``scores`` their calibrated scores
    (-inf there) and ``modalities`` "text" or "image" ("" there).
    """

    ids: np.ndarray
    scores: np.ndarray
    modalities: np.ndarray


def merge_ranked(targets, parts, k):
    """One ranked top-k from per-item-modality ones: ``parts[j] = (scores, ids)`` for ``targets[j]``.

    Returns ``(order, scores, ids, modalities)``; ``order`` indexes the concatenated columns, for callers
    that carry more per-hit data. Missing hits (id -1) rank last with score -inf.
    """
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    codes = np.repeat(np.array([MODALITIES.index(m) for m in targets]), [p[1].shape[1] for p in parts])
    codes = np.where(ids < 0, len(MODALITIES), codes)
    scores[ids < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(ids))[:, None]
    return order, scores[rows, order], ids[rows, order], np.array([*MODALITIES, ""])[codes[rows, order]]


def check_calibrator(calibrator) -> GapCalibrator:
    if not isinstance(calibrator, GapCalibrator):
        raise TypeError(f"calibrator must be a fitted gapcal GapCalibrator, got {type(calibrator).__name__}")
    if not hasattr(calibrator, "fingerprint_"):
        raise ValueError("calibrator must be fitted (call fit(text, image) first), got an unfitted GapCalibrator")
    return calibrator


def check_ids(name, ids, n=None) -> np.ndarray:
    """A 1-D int64 array of distinct non-negative ids (-1 is reserved for "no result")."""
    arr = np.asarray(ids)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name} must be an array of integer ids, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of ids, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} must hold one id per vector ({n}), got {len(arr)}")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise ValueError(f"{name} must be non-negative (-1 marks a missing result), got "
                         f"{arr[arr < 0][:5].tolist()}")
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name} must not repeat an id, got repeats of {uniq[counts > 1][:5].tolist()}")
    return arr


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be a positive integer, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    return int(k)
