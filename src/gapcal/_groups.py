"""Which paired rows belong together: exact duplicates, near-copies and user groups, as connected components.

Real paired data repeats items (one image with five captions, one title with several colour photos). Pairs
that share an item, directly or through other pairs, form one group: held-out checks split by group, and
items of one group are relevant to each other.
"""

from __future__ import annotations

import numpy as np

# Near-copies: unit rows closer than this fraction of the median squared distance between two rows of their
# set (a re-encoded image, a caption with a word changed). Relative, so that a model whose embeddings all
# crowd together (random-init CLIP images: median cosine 0.98) is judged on its own scale; measured against
# all rows rather than nearest neighbours, which in repeated data are the copies themselves.
NEAR_COPY_FRACTION = 0.05
_SCALE_ROWS = 512
_NEAR_COPY_BLOCK = 2048


def row_ids(x: np.ndarray) -> np.ndarray:
    """An int64 id per row of a 2-D array, equal exactly when the rows are equal bit for bit."""
    rows = np.ascontiguousarray(x)
    view = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, ids = np.unique(view, return_inverse=True)
    return ids.astype(np.int64).ravel()


def label_edges(labels) -> np.ndarray:
    """Edges (m, 2) joining the items that share a value of ``labels`` (one integer per item; -1: none)."""
    lab = np.asarray(labels, dtype=np.int64)
    items = np.flatnonzero(lab >= 0)
    items = items[np.argsort(lab[items], kind="stable")]
    same = lab[items[1:]] == lab[items[:-1]]
    return np.stack([items[:-1][same], items[1:][same]], axis=1)


def components(n: int, *edges: np.ndarray) -> np.ndarray:
    """Connected components of n items joined by the given (m, 2) edge arrays.

    Returns int64 component ids numbered 0, 1, ... in order of each component's first item.
    """
    pairs = np.concatenate([np.asarray(e, dtype=np.int64).reshape(-1, 2) for e in edges]) if edges else \
        np.zeros((0, 2), dtype=np.int64)
    comp = np.arange(n, dtype=np.int64)
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        lowest = np.minimum(comp[a], comp[b])
        before = comp.copy()
        np.minimum.at(comp, a, lowest)
        np.minimum.at(comp, b, lowest)
        comp = comp[comp]  # pointer jumping: take the representative's representative
        if np.array_equal(comp, before):
            break
    _, first, numbered = np.unique(comp, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[numbered.ravel()].astype(np.int64)


def near_copy_edges(units: np.ndarray, fraction: float = NEAR_COPY_FRACTION) -> np.ndarray:
    """Edges (m, 2) joining near-copies among unit rows.

    Candidates come from distances in a few leading directions (a projection never lengthens a
    distance, so no near-copy is missed); only they are checked in full. Memory O(block x n).
    """
    n = len(units)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    x = np.ascontiguousarray(units, dtype=np.float32)
    probe = x[np.linspace(0, n - 1, min(n, _SCALE_ROWS)).astype(np.int64)]
    cos = probe @ probe.T
    typical = float(np.median(2.0 - 2.0 * cos[~np.eye(len(probe), dtype=bool)]))
    limit = fraction * typical  # squared distance; |a - b|^2 = 2 - 2 cos
    basis, _ = np.linalg.qr((x.T @ (x @ np.random.default_rng(0).standard_normal((x.shape[1], 32)).astype(np.float32))))
    z = x @ basis.astype(np.float32)
    zz = np.einsum("ij,ij->i", z, z)
    found = []
    for start in range(0, n, _NEAR_COPY_BLOCK):
        block = z[start:start + _NEAR_COPY_BLOCK]
        near = zz[start:start + len(block), None] + zz[None, :] - 2.0 * (block @ z.T) < limit * 1.001 + 1e-6
        if near.sum() > 16 * len(block):  # the leading directions do not tell rows apart: compare in full
            near = 2.0 - 2.0 * (x[start:start + len(block)] @ x.T) < limit
            rows, cols = np.nonzero(near)
            keep = rows + start != cols
            found.append(np.stack([rows[keep] + start, cols[keep]], axis=1))
            continue
        rows, cols = np.nonzero(near)
        keep = rows + start != cols
        rows, cols = rows[keep] + start, cols[keep]
        exact = 2.0 - 2.0 * np.einsum("ij,ij->i", x[rows], x[cols]) < limit
        found.append(np.stack([rows[exact], cols[exact]], axis=1))
    return np.concatenate(found).astype(np.int64)


def distinct_items(text_ids: np.ndarray, image_ids: np.ndarray):
    """For pairs whose rows carry exact-duplicate ids: the first pair of each distinct text and image (in pair
    order) and, per pair, the position of its text and of its image among those."""
    return _first_seen(text_ids) + _first_seen(image_ids)


def _first_seen(ids: np.ndarray):
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    return first[order], position[inverse.ravel()]


def pair_components(text_ids, image_ids, *more_edges) -> np.ndarray:
    """Group id per pair: pairs sharing a text, an image, or joined by ``more_edges`` are one group."""
    return components(len(text_ids), label_edges(text_ids), label_edges(image_ids), *more_edges)
