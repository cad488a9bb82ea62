"""Modality-gap and mixed-pool retrieval metrics (numpy only).

Retrieval metrics take the four score blocks of an evaluation set of n pairs:
``tt`` (text queries x text items), ``ti``, ``it``, ``ii``; row i of text pairs with row i of image.
In the *mixed pool* every item queries all other 2n - 1 items of both modalities and its pair is the
one relevant item.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._checks import as_matrix


class ScoreBlocks(NamedTuple):
    tt: np.ndarray
    ti: np.ndarray
    it: np.ndarray
    ii: np.ndarray


def score_blocks(scorer, text, image) -> ScoreBlocks:
    """All four (query modality, item modality) score matrices of ``scorer.similarity`` on n pairs."""
    data = {"text": text, "image": image}
    return ScoreBlocks(*(np.asarray(scorer.similarity(data[a], data[b], a, b), dtype=np.float64)
                         for a, b in (("text", "text"), ("text", "image"), ("image", "text"), ("image", "image"))))


def _unit(name, x):
    x = as_matrix(name, x, dtype=np.float64, allow_empty=False)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _check_pairs(text, image):
    t, i = _unit("text", text), _unit("image", image)
    if t.shape != i.shape:
        raise ValueError(f"text and image must have the same shape (paired rows), got {t.shape} and {i.shape}")
    return t, i


# ---------------------------------------------------------------- geometry of the gap
def centroid_distance(text, image) -> float:
    """||mean(image) - mean(text)|| of unit vectors (Liang et al., 2022)."""
    t, i = _check_pairs(text, image)
    return float(np.linalg.norm(i.mean(0) - t.mean(0)))


def relative_modality_gap(text, image) -> float:
    """Relative modality gap (after Schrodi et al., 2025), with cosine dissimilarity d = (1 - cos) / 2.

    RMG = mean d(matched pair) / (mean d(unmatched same-modality pairs, both modalities) + mean d(matched pair)):
    near 0 when pairs coincide, 0.5 when a caption is as far from its image as from other captions.
    """
    t, i = _check_pairs(text, image)
    n = len(t)
    if n < 2:
        raise ValueError(f"text and image must hold at least 2 pairs, got {n}")
    matched = np.mean((1 - np.einsum("ij,ij->i", t, i)) / 2)
    off = ~np.eye(n, dtype=bool)
    within = np.mean([((1 - x @ x.T) / 2)[off].mean() for x in (t, i)])
    return float(matched / (within + matched))


def linear_separability(text, image, *, seed: int = 0) -> float:
    """Held-out accuracy of a ridge-regularised linear classifier telling texts from images (2-fold).

    1.0 means the modalities sit in linearly separable regions; 0.5 means they cannot be told apart.
    """
    t, i = _check_pairs(text, image)
    n = len(t)
    if n < 4:
        raise ValueError(f"text and image must hold at least 4 pairs, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    folds = (order[: n // 2], order[n // 2:])
    correct = 0
    for train, test in (folds, folds[::-1]):
        x = np.vstack([t[train], i[train]])
        y = np.r_[-np.ones(len(train)), np.ones(len(train))]
        xb = np.hstack([x, np.ones((len(x), 1))])
        lam = 1e-3 * np.trace(xb.T @ xb) / xb.shape[1]
        w = np.linalg.solve(xb.T @ xb + lam * np.eye(xb.shape[1]), xb.T @ y)
        score = lambda z: np.hstack([z, np.ones((len(z), 1))]) @ w  # noqa: E731
        correct += (score(t[test]) < 0).sum() + (score(i[test]) > 0).sum()
    return float(correct / (2 * n))


def cosine_distributions(text, image) -> dict[str, np.ndarray]:
    """Cosines of matched text-image pairs and of unmatched text-image, text-text and image-image pairs.

    The seed observation of the modality gap: unmatched text-text pairs are closer than matched ones.
    """
    t, i = _check_pairs(text, image)
    off = ~np.eye(len(t), dtype=bool)
    return {"matched text-image": np.einsum("ij,ij->i", t, i),
            "unmatched text-image": (t @ i.T)[off],
            "unmatched text-text": (t @ t.T)[off],
            "unmatched image-image": (i @ i.T)[off]}


# ---------------------------------------------------------------- retrieval in a mixed pool
def _pair_ranks(blocks: ScoreBlocks) -> np.ndarray:
    """Rank (1 = best) of each item's pair among all other items of both modalities; text queries first."""
    ranks = []
    for same, cross in ((blocks.tt, blocks.ti), (blocks.ii, blocks.it)):
        target = np.diag(cross)[:, None]
        beaten = (cross > target).sum(1) + (same > target).sum(1) - (np.diag(same) > target[:, 0])
        ranks.append(beaten + 1)
    return np.concatenate(ranks)


def mixed_pool_retrieval(blocks: ScoreBlocks, ks=(1, 10)) -> dict[str, float]:
    """Pair recall@k and MRR when each item queries all other items of both modalities."""
    ranks = _pair_ranks(blocks)
    out = {f"R@{k}": float((ranks <= k).mean()) for k in ks}
    out["MRR"] = float((1.0 / ranks).mean())
    return out


def cross_modal_recall(blocks: ScoreBlocks, k: int = 1) -> float:
    """Recall@k of the pair when only the other modality is ranked (text->image and image->text)."""
    hits = [((cross > np.diag(cross)[:, None]).sum(1) < k) for cross in (blocks.ti, blocks.it)]
    return float(np.concatenate(hits).mean())


def pooled_auc(blocks: ScoreBlocks) -> float:
    """P(a matched pair scores above an unmatched pair of any modality combination); ties count half."""
    n = len(blocks.tt)
    off = ~np.eye(n, dtype=bool)
    pos = np.concatenate([np.diag(blocks.ti), np.diag(blocks.it)])
    neg = np.concatenate([b[off] for b in blocks])
    neg.sort()
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def same_modality_share(blocks: ScoreBlocks, k: int = 10) -> float:
    """Share of the query's own modality among its top k in the mixed pool (about 0.5 = no medium bias
    when both modalities hold as many related items; 1.0 = raw CLIP; 0.0 = the other medium pushed up)."""
    n = len(blocks.tt)
    shares = []
    for same, cross in ((blocks.tt, blocks.ti), (blocks.ii, blocks.it)):
        same = same.copy()
        np.fill_diagonal(same, -np.inf)
        pool = np.concatenate([same, cross], axis=1)
        top = np.argpartition(-pool, k - 1, axis=1)[:, :k]
        shares.append((top < n).mean())
    return float(np.mean(shares))


def duplicate_parity(blocks: ScoreBlocks, text, image, quantile: float = 0.99) -> float:
    """Fairness when both media are relevant: for query i and a near-duplicate pair j, how often
    item j of the query's own modality outranks item j of the other modality.

    Pair j is a near-duplicate of pair i when its *other-modality* members are close (top ``1 - quantile``
    of unmatched cosines: image-image for text queries, text-text for image queries), so neither candidate
    is favoured by how it was chosen. 0.5 = the medium does not decide; 1.0 = own medium always first.
    """
    t, i = _check_pairs(text, image)
    off = ~np.eye(len(t), dtype=bool)
    wins = []
    for same, cross, other in ((blocks.tt, blocks.ti, i), (blocks.ii, blocks.it, t)):
        cos = other @ other.T
        q, j = np.nonzero((cos > np.quantile(cos[off], quantile)) & off)
        wins.append(same[q, j] > cross[q, j])
    wins = np.concatenate(wins)
    if len(wins) == 0:
        raise ValueError("no near-duplicate pairs found: lower quantile or use more pairs")
    return float(wins.mean())
