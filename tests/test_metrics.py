"""gap and retrieval metrics against brute-force reference implementations and the data's documented facts."""

import itertools

import numpy as np
import pytest

from gapcal import metrics
from gapcal.metrics import ScoreBlocks


def random_blocks(n, seed, ties=False):
    rng = np.random.default_rng(seed)
    make = (lambda: rng.integers(0, 4, (n, n)).astype(float)) if ties else (lambda: rng.standard_normal((n, n)))
    blocks = ScoreBlocks(make(), make(), make(), make())
    for b in (blocks.ti, blocks.it):
        b[np.diag_indices(n)] += 1.0  # pairs a little above chance
    return blocks


def reference_ranks(blocks):
    """Loop version: each item queries every other item of both modalities; rank of its pair."""
    n = len(blocks.tt)
    ranks = []
    for same, cross in ((blocks.tt, blocks.ti), (blocks.ii, blocks.it)):
        for q in range(n):
            pool = [(cross[q, j], "pair" if j == q else "x") for j in range(n)]
            pool += [(same[q, j], "x") for j in range(n) if j != q]
            target = cross[q, q]
            ranks.append(1 + sum(score > target for score, _ in pool))
    return np.array(ranks)


def test_the_data_readme_facts(coco):
    text, image = coco
    assert metrics.centroid_distance(text, image) == pytest.approx(0.851, abs=1e-3)
    cos = metrics.cosine_distributions(text, image)
    assert cos["matched text-image"].mean() == pytest.approx(0.31, abs=0.01)
    assert cos["unmatched text-image"].mean() == pytest.approx(0.16, abs=0.01)
    # the seed observation: unmatched captions are closer to each other than matched image-caption pairs
    assert cos["unmatched text-text"].mean() > cos["matched text-image"].mean()
    assert cos["unmatched text-text"].shape == (500 * 499,)


def test_relative_modality_gap_matches_loop_reference(coco):
    text, image = (x[:40].astype(np.float64) for x in coco)
    d = lambda a, b: (1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)) / 2  # noqa: E731
    matched = np.mean([d(text[i], image[i]) for i in range(40)])
    within = np.mean([np.mean([d(x[i], x[j]) for i, j in itertools.permutations(range(40), 2)]) for x in (text, image)])
    assert metrics.relative_modality_gap(text, image) == pytest.approx(matched / (within + matched), rel=1e-9)


def test_linear_separability_tells_gap_from_no_gap(coco):
    text, image = coco
    assert metrics.linear_separability(text, image) > 0.99
    rng = np.random.default_rng(0)
    same = rng.standard_normal((400, 16))
    assert metrics.linear_separability(same[:200], same[200:]) < 0.65


@pytest.mark.parametrize("ties", [False, True])
def test_mixed_pool_retrieval_matches_reference(ties):
    blocks = random_blocks(25, seed=1, ties=ties)
    ranks = reference_ranks(blocks)
    got = metrics.mixed_pool_retrieval(blocks, ks=(1, 5))
    assert got["R@1"] == pytest.approx(np.mean(ranks <= 1))
    assert got["R@5"] == pytest.approx(np.mean(ranks <= 5))
    assert got["MRR"] == pytest.approx(np.mean(1 / ranks))


def test_cross_modal_recall_matches_reference():
    blocks = random_blocks(30, seed=2)
    hits = [np.argsort(-b[q])[:3].tolist().count(q) for b in (blocks.ti, blocks.it) for q in range(30)]
    assert metrics.cross_modal_recall(blocks, k=3) == pytest.approx(np.mean(hits))


@pytest.mark.parametrize("ties", [False, True])
def test_pooled_auc_matches_pairwise_reference(ties):
    blocks = random_blocks(12, seed=3, ties=ties)
    off = ~np.eye(12, dtype=bool)
    pos = np.r_[np.diag(blocks.ti), np.diag(blocks.it)]
    neg = np.concatenate([b[off] for b in blocks])
    expected = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert metrics.pooled_auc(blocks) == pytest.approx(expected)


def test_same_modality_share_and_parity_on_raw_clip(coco):
    from gapcal.baselines import RawCosine

    text, image = (x[:200] for x in coco)
    blocks = metrics.score_blocks(RawCosine().fit(text, image), text, image)
    assert metrics.same_modality_share(blocks, k=10) == 1.0
    assert metrics.duplicate_parity(blocks, text, image) == 1.0
    flipped = ScoreBlocks(blocks.tt - 10, blocks.ti, blocks.it, blocks.ii - 10)
    assert metrics.same_modality_share(flipped, k=10) == 0.0
    assert metrics.duplicate_parity(flipped, text, image) == 0.0


def test_bad_inputs(coco):
    text, image = coco
    with pytest.raises(ValueError, match=r"same number of rows \(row i of each is a pair\), got 500 and 499"):
        metrics.centroid_distance(text, image[:-1])
    with pytest.raises(ValueError, match="text must be finite"):
        metrics.relative_modality_gap(np.full((3, 2), np.nan), np.ones((3, 2)))
    with pytest.raises(ValueError, match="at least 2 pairs, got 1"):
        metrics.relative_modality_gap(text[:1], image[:1])
    with pytest.raises(ValueError, match="at least 4 pairs, got 3"):
        metrics.linear_separability(text[:3], image[:3])
    with pytest.raises(ValueError, match=r"text must hold at least one row, got shape \(0, 512\)"):
        metrics.cosine_distributions(text[:0], image[:0])
    blocks = random_blocks(5, seed=0)
    with pytest.raises(ValueError, match="no near-duplicate pairs found"):
        metrics.duplicate_parity(blocks, text[:5], image[:5], quantile=1.0)


# ---------------------------------------------------------------- balanced relevance (groups)
def grouped_set(seed):
    """12 pairs: images 0-3 each with three captions; groups join images 2 and 3 (a product in two colours)."""
    rng = np.random.default_rng(seed)
    image = np.repeat(rng.standard_normal((4, 6)), 3, axis=0)
    text = rng.standard_normal((12, 6))
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
    return text, image, groups


def test_relevance_pool_dedupes_rows_and_joins_groups():
    text, image, groups = grouped_set(0)
    pool = metrics.relevance_pool(text, image, groups)
    assert pool.text.shape == (12, 6) and pool.image.shape == (4, 6)
    np.testing.assert_array_equal(pool.pair_image, np.repeat(np.arange(4), 3))
    assert len(set(pool.image_group[2:])) == 1 and len(set(pool.image_group)) == 3
    alone = metrics.relevance_pool(text, image)  # without labels: each image with its captions
    assert len(set(alone.image_group)) == 4
    with pytest.raises(ValueError, match=r"groups must be a 1-D array with one label per pair, got shape \(12, 1\)"):
        metrics.relevance_pool(text, image, groups[:, None])
    with pytest.raises(TypeError, match="groups must hold integer or string labels, got dtype float64"):
        metrics.relevance_pool(text, image, groups * 1.0)


def reference_balanced(blocks, pool, k=10):
    """Loop version: each item queries all others; NDCG@k, own@1/@5 per query modality, pooled AUC."""
    nt, ni = len(pool.text_group), len(pool.image_group)
    items = [("text", j) for j in range(nt)] + [("image", j) for j in range(ni)]
    group = {("text", j): pool.text_group[j] for j in range(nt)} | {("image", j): pool.image_group[j] for j in range(ni)}
    own = {("text", t): {("image", i) for t2, i in zip(pool.pair_text, pool.pair_image) if t2 == t} for t in range(nt)}
    own |= {("image", i): {("text", t) for t, i2 in zip(pool.pair_text, pool.pair_image) if i2 == i} for i in range(ni)}
    block = {("text", "text"): blocks.tt, ("text", "image"): blocks.ti, ("image", "text"): blocks.it,
             ("image", "image"): blocks.ii}
    out = {}
    for m in ("text", "image"):
        ndcg, own1, own5 = [], [], []
        for q in [x for x in items if x[0] == m]:
            ranked = sorted((x for x in items if x != q), key=lambda x: -block[(m, x[0])][q[1], x[1]])
            rel = [group[x] == group[q] for x in ranked]
            dcg = sum(r / np.log2(r_ + 2) for r_, r in enumerate(rel[:k]))
            ideal = sum(1 / np.log2(r_ + 2) for r_ in range(min(k, sum(rel))))
            if sum(rel):
                ndcg.append(dcg / ideal)
            own1.append(bool(set(ranked[:1]) & own[q]))
            own5.append(bool(set(ranked[:5]) & own[q]))
        out[f"{m} NDCG@{k}"], out[f"{m} own@1"], out[f"{m} own@5"] = np.mean(ndcg), np.mean(own1), np.mean(own5)
    pos, neg = [], []
    for q in items:
        for x in items:
            if x != q:
                (pos if group[x] == group[q] else neg).append(block[(q[0], x[0])][q[1], x[1]])
    out["AUC"] = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_balanced_relevance_matches_a_loop_reference(seed):
    text, image, groups = grouped_set(seed)
    pool = metrics.relevance_pool(text, image, groups)
    rng = np.random.default_rng(seed + 10)
    nt, ni = len(pool.text), len(pool.image)
    blocks = ScoreBlocks(rng.standard_normal((nt, nt)), rng.standard_normal((nt, ni)),
                         rng.standard_normal((ni, nt)), rng.standard_normal((ni, ni)))
    got = metrics.balanced_relevance(blocks, pool, k=4)
    want = reference_balanced(blocks, pool, k=4)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_medium_bias_is_zero_when_the_medium_does_not_decide_and_half_for_raw_clip(coco):
    from gapcal.baselines import RawCosine

    text, image = (x[:150] for x in coco)
    pool = metrics.relevance_pool(text, image)
    raw = metrics.per_query(metrics.pool_blocks(RawCosine().fit(text, image), pool), pool)
    assert raw["text"]["medium bias"].mean() == pytest.approx(0.5, abs=0.01)  # only captions among unrelated tops
    rng = np.random.default_rng(0)
    noise = ScoreBlocks(*(rng.standard_normal((150, 150)) for _ in range(4)))  # one distribution for every type
    fair = metrics.per_query(noise, pool)
    assert abs(fair["text"]["medium bias"].mean()) < 0.05 and abs(fair["image"]["medium bias"].mean()) < 0.05


def test_score_distributions_split_relevant_from_unrelated():
    text, image, groups = grouped_set(2)
    pool = metrics.relevance_pool(text, image, groups)
    blocks = ScoreBlocks(*(np.arange(a * b, dtype=float).reshape(a, b) for a, b in ((12, 12), (12, 4), (4, 12), (4, 4))))
    dist = metrics.score_distributions(blocks, pool)
    assert len(dist["text-text"]["positive"]) == 3 * 2 + 3 * 2 + 6 * 5  # siblings, never an item with itself
    assert len(dist["image-image"]["positive"]) == 2 and len(dist["image-image"]["null"]) == 10
    assert len(dist["text-image"]["positive"]) + len(dist["text-image"]["null"]) == 48
