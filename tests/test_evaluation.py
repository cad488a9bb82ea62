"""The quality protocol: grouped 2-fold cross-fit, reference numbers on the bundled real data, tables."""

import numpy as np
import pytest

from gapcal import GapCalibrator
from gapcal.baselines import GRClip, PerTypeZ, RawCosine
from gapcal.data import load_coco500
from gapcal.evaluation import (BALANCED_COLUMNS, PAIR_COLUMNS, baseline_check, cross_fit, default_methods, evaluate,
                               format_table, group_folds)


@pytest.fixture(scope="module")
def rows():
    text, image = load_coco500()
    methods = [("raw cosine", RawCosine), ("GR-CLIP", GRClip), ("per-type z", PerTypeZ), ("gapcal", GapCalibrator)]
    return dict(cross_fit(text, image, methods, seed=0))


def test_bundled_data_is_the_real_set():
    text, image = load_coco500()
    assert text.shape == image.shape == (500, 512) and text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, atol=1e-3)


def test_reference_numbers_of_the_protocol(rows):
    raw, gr = rows["raw cosine"], rows["GR-CLIP"]
    assert raw["R@1"] == 0.0 and raw["pair AUC"] == pytest.approx(0.506, abs=1e-3)
    assert raw["cross R@1"] == pytest.approx(0.624, abs=1e-3)
    assert gr["R@1"] == pytest.approx(0.062, abs=1e-3) and gr["pair AUC"] == pytest.approx(0.968, abs=1e-3)
    assert raw["text medium bias"] == pytest.approx(0.5) and raw["text NDCG@10"] == 0.0  # the gap, in two numbers


def test_gapcal_meets_the_coco_targets_without_favouring_a_medium(rows):
    gap, raw = rows["gapcal"], rows["raw cosine"]
    assert gap["R@1"] >= 0.58 and gap["pair AUC"] >= 0.992 and gap["cross R@1"] >= raw["cross R@1"]
    assert 0.25 < gap["share"] < 0.75 and 0.25 < gap["parity"] < 0.75  # raw CLIP: 1.0 and 1.0
    for key, mine, best, who in baseline_check(list(rows.items())):
        assert mine >= best, (key, who)


def test_folds_never_split_a_group():
    text, image = load_coco500()
    text = np.vstack([text[:100], text[:100]])  # every caption twice, each time with its own image: one group
    image = np.vstack([image[:100], image[100:200]])
    for fit, held in group_folds(text, image, seed=3):
        assert not set(fit % 100) & set(held % 100)
        assert len(fit) + len(held) == 200
    labels = np.repeat(np.arange(50), 4)
    for fit, held in group_folds(text, image, labels, seed=1):
        assert not set(labels[fit]) & set(labels[held])


def test_cross_fit_passes_groups_to_calibrators_and_evaluates_by_group(coco):
    text, image = coco
    labels = np.arange(200) // 2  # pairs two by two: each item has a relevant item of each modality
    rows = dict(cross_fit(text[:200], image[:200], [("gapcal", lambda: GapCalibrator(sample_size=64))],
                          groups=labels, seed=0))
    assert "R@1" not in rows["gapcal"]  # two relevant items per modality: pair retrieval is not reported
    assert 0 < rows["gapcal"]["text NDCG@10"] < 1
    with pytest.raises(ValueError, match=r"groups must hold one label per pair \(200 pairs\), got 3 labels"):
        cross_fit(text[:200], image[:200], groups=[1, 2, 3])


def test_evaluate_on_pairs_with_repeated_images(coco):
    text, image = coco
    cal = GapCalibrator().fit(text[:300], image[:300])
    images = np.repeat(image[300:350], 2, axis=0)  # each image with its caption and a neighbour's
    texts = text[300:400]
    out = evaluate(cal, texts, images)
    assert "R@1" not in out and 0 < out["image own@5"] <= 1


def test_table_lists_every_method_and_column(rows):
    table = format_table(list(rows.items()))
    assert all(label in table for label, _ in BALANCED_COLUMNS + PAIR_COLUMNS)
    assert all(name in table for name in rows)
    assert [name for name, _ in default_methods()][:5] == ["raw cosine", "GR-CLIP", "per-type z", "I0T", "gapcal"]
