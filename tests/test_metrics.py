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
    with pytest.raises(ValueError, match=r"same shape \(paired rows\), got \(500, 512\) and \(499, 512\)"):
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
