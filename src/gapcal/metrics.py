"""Modality-gap and mixed-pool retrieval metrics (numpy only).

Retrieval metrics take the four score blocks of an evaluation set of n pairs:
``tt`` (text queries x text items), ``ti``, ``it``, ``ii``; row i of text pairs with row i of image.
In the *mixed pool* every item queries all other 2n - 1 items of both modalities and its pair is the
one relevant item.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._checks import check_pairs, l2_normalize


class ScoreBlocks(NamedTuple):
    tt: np.ndarray
    ti: np.ndarray
    it: np.ndarray
    ii: np.ndarray


def score_blocks(scorer, text, image) -> ScoreBlocks:
    """All four (query modality, item modality) score matrices of ``scorer.similarity`` on n pairs."""
    data = {"text": text, "image": image}
    return ScoreBlocks(*(np.asarray(scorer.similarity(data[a], data[b], query_modality=a, item_modality=b),
                                    dtype=np.float64)
                         for a, b in (("text", "text"), ("text", "image"), ("image", "text"), ("image", "image"))))


def _check_pairs(text, image):
    t, i = check_pairs(text, image, dtype=np.float64)
    return l2_normalize(t), l2_normalize(i)


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


# ---------------------------------------------------------------- balanced relevance (groups)
class RelevancePool(NamedTuple):
    """Distinct items of an evaluation set and which of them are relevant to each other.

    ``text`` (nt, d) and ``image`` (ni, d) hold each distinct row once (an image paired with five captions
    is one item); ``text_group`` / ``image_group`` number the group of each item: items of one group are
    relevant to each other, whatever their modality. ``pair_text[j]`` / ``pair_image[j]`` are the items of
    input pair j (its "own pair": a caption's image, an image's captions).
    """

    text: np.ndarray
    image: np.ndarray
    text_group: np.ndarray
    image_group: np.ndarray
    pair_text: np.ndarray
    pair_image: np.ndarray


def relevance_pool(text, image, groups=None) -> RelevancePool:
    """The items of n pairs and their groups: pairs sharing a row (exactly) or a ``groups`` label join.

    ``groups``: None or one label per pair (e.g. a product id: its photos and titles of every colour are
    relevant to each other). Without it, a group is an item and everything paired with it.
    """
    from ._checks import check_groups
    from ._groups import label_edges, pair_components, row_ids

    t, i = _check_pairs(text, image)
    labels = check_groups(groups, len(t))
    tid, iid = row_ids(t), row_ids(i)
    group = pair_components(tid, iid, *([] if labels is None else [label_edges(labels)]))
    return pool_of(t, i, tid, iid, group)


def pool_of(text, image, text_ids, image_ids, group) -> RelevancePool:
    """The pool of pairs whose rows already carry exact-duplicate ids and a group id per pair."""
    from ._groups import distinct_items

    t_first, pair_text, i_first, pair_image = distinct_items(text_ids, image_ids)
    return RelevancePool(text[t_first], image[i_first], group[t_first], group[i_first], pair_text, pair_image)


def pool_blocks(scorer, pool: RelevancePool) -> ScoreBlocks:
    """``score_blocks`` over the distinct items of a pool."""
    return score_blocks(scorer, pool.text, pool.image) if len(pool.text) == len(pool.image) else ScoreBlocks(
        *(np.asarray(scorer.similarity(q, x, query_modality=a, item_modality=b), dtype=np.float64)
          for a, q, b, x in (("text", pool.text, "text", pool.text), ("text", pool.text, "image", pool.image),
                             ("image", pool.image, "text", pool.text), ("image", pool.image, "image", pool.image))))


def _query_views(blocks: ScoreBlocks, pool: RelevancePool):
    """Per query modality: (scores over the mixed pool with the query itself at -inf, relevance, own pair)."""
    nt, ni = len(pool.text_group), len(pool.image_group)
    groups = np.concatenate([pool.text_group, pool.image_group])
    own = np.zeros((nt + ni, nt + ni), dtype=bool)
    own[pool.pair_text, nt + pool.pair_image] = True
    own[nt + pool.pair_image, pool.pair_text] = True
    views = {}
    for name, rows, same, cross in (("text", slice(0, nt), blocks.tt, blocks.ti),
                                    ("image", slice(nt, nt + ni), blocks.ii, blocks.it)):
        scores = np.concatenate([same, cross] if name == "text" else [cross, same], axis=1)
        relevant = groups[rows][:, None] == groups[None, :]
        self_col = np.arange(rows.start, rows.stop)
        scores[np.arange(len(scores)), self_col] = -np.inf
        relevant[np.arange(len(scores)), self_col] = False
        views[name] = (scores, relevant, own[rows])
    return views


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best scores, best first (ties: lower column first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, 1)), axis=1)
    return np.take_along_axis(part, order, 1)


def per_query(blocks: ScoreBlocks, pool: RelevancePool, k: int = 10, own_ks=(1, 5)) -> dict[str, dict]:
    """Per query modality, one value per query (each distinct item queries all others of both modalities):

    ``NDCG@k`` (binary relevance: the query's group; NaN for a query with no relevant item), ``own@k`` (an
    item it was paired with is in the top k), ``RR`` (1 / rank of its first paired item), and ``medium
    bias``: the share of the query's own modality among its top k *unrelated* items minus that share among
    all its unrelated candidates (0: the medium does not decide which unrelated items come first).
    """
    out = {}
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    nt = len(pool.text_group)
    for name, (scores, relevant, own) in _query_views(blocks, pool).items():
        n_items = scores.shape[1]
        kk = min(k, n_items)
        count = relevant.sum(1)
        # one ranking serves all: the top k unrelated items lie within the top k + (relevant items)
        depth = min(n_items, max(kk, *own_ks) + int(count.max(initial=0)))
        top = _top(scores, depth)
        hits = np.take_along_axis(relevant, top[:, :kk], 1)
        ideal = np.cumsum(discount)[np.maximum(np.minimum(count, kk), 1) - 1]
        ndcg = np.where(count > 0, (hits * discount[:kk]).sum(1) / ideal, np.nan)
        row = {f"NDCG@{k}": ndcg}
        for kown in own_ks:
            row[f"own@{kown}"] = np.take_along_axis(own, top[:, :kown], 1).any(axis=1).astype(np.float64)
        own_scores = np.where(own, scores, -np.inf).max(axis=1)
        row["RR"] = np.where(own.any(axis=1), 1.0 / (1 + (scores > own_scores[:, None]).sum(1)), np.nan)
        same_medium = np.zeros(n_items, dtype=bool)
        same_medium[:nt] = name == "text"
        same_medium[nt:] = name == "image"
        unrelated = ~relevant & np.isfinite(scores)
        ranked_unrelated = np.take_along_axis(unrelated, top, 1)
        first_k = np.cumsum(ranked_unrelated, axis=1) <= kk
        picked = ranked_unrelated & first_k
        share = (picked & same_medium[top]).sum(1) / np.maximum(picked.sum(1), 1)
        row["medium bias"] = share - (unrelated & same_medium).sum(1) / np.maximum(unrelated.sum(1), 1)
        out[name] = row
    return out


def balanced_relevance(blocks: ScoreBlocks, pool: RelevancePool, k: int = 10, own_ks=(1, 5)) -> dict[str, float]:
    """Mixed-pool quality when items of both modalities are relevant (the group's other items).

    Every distinct item queries all others of both modalities. Per query modality: NDCG@k with binary
    relevance (queries with no relevant item are skipped) and own-pair@k (one of the items it was paired
    with is in the top k). ``AUC``: pooled over all four pair types, P(a same-group pair outscores a pair
    from different groups), ties half.
    """
    out = {}
    for name, row in per_query(blocks, pool, k, own_ks).items():
        out[f"{name} NDCG@{k}"] = float(np.nanmean(row[f"NDCG@{k}"])) if np.isfinite(row[f"NDCG@{k}"]).any() \
            else float("nan")
        for kown in own_ks:
            out[f"{name} own@{kown}"] = float(row[f"own@{kown}"].mean())
    dist = score_distributions(blocks, pool)
    out["AUC"] = _auc(np.concatenate([d["positive"] for d in dist.values()]),
                      np.concatenate([d["null"] for d in dist.values()]))
    return out


_TYPES = (("text", "text"), ("text", "image"), ("image", "text"), ("image", "image"))


def _type_groups(pool: RelevancePool, modality: str) -> np.ndarray:
    return pool.text_group if modality == "text" else pool.image_group


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def score_distributions(blocks: ScoreBlocks, pool: RelevancePool) -> dict[str, dict[str, np.ndarray]]:
    """Per pair type ("text-image", ...), the scores of relevant (same-group) and unrelated pairs.

    A fair score puts "as relevant as a true match" at one height in every pair type: compare the
    ``positive`` distributions across types, and each against its ``null``.
    """
    out = {}
    for (a, b), block in zip(_TYPES, blocks):
        same = _type_groups(pool, a)[:, None] == _type_groups(pool, b)[None, :]
        keep = np.ones_like(same)
        if a == b:
            np.fill_diagonal(keep, False)
        out[f"{a}-{b}"] = {"positive": block[same & keep], "null": block[~same & keep]}
    return out
