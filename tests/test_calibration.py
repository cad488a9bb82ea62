"""GapCalibrator: contract, score meaning, groups and leak-free selection, streaming, errors, persistence."""

import copy
import json
import os
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import gapcal
from gapcal import GapCalibrator, NotFittedError, metrics
from gapcal import _groups
from gapcal.baselines import RawCosine
from gapcal.calibration import selection
from gapcal.metrics import cross_modal_recall, mixed_pool_retrieval, pooled_auc, score_blocks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from simulated import multi_caption, repeated  # noqa: E402  (semi-synthetic sets built from COCO-500)

MODS = (("text", "text"), ("text", "image"), ("image", "text"), ("image", "image"))


@pytest.fixture(scope="module")
def split(coco):
    text, image = coco
    p = np.random.default_rng(0).permutation(len(text))
    return text[p[:250]], image[p[:250]], text[p[250:]], image[p[250:]]


@pytest.fixture(scope="module")
def fitted(split):
    return GapCalibrator().fit(split[0], split[1])


@pytest.fixture(scope="module")
def captions(coco):
    """COCO-500 images with five captions each (the real one and four simulated siblings), first 150 images."""
    text, image, groups = multi_caption(*coco)
    keep = groups < 150
    return text[keep], image[keep], groups[keep]


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_pairs(n, d, seed, rotate=False):
    """Seeded CLIP-like pairs: shared signal, modality offsets (the cone), optionally a rotated image space."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, d))
    text = signal + 0.7 * rng.standard_normal((n, d)) + 3 * rng.standard_normal(d)
    image = signal + 0.7 * rng.standard_normal((n, d)) + 3 * rng.standard_normal(d)
    if rotate:
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        image = image @ q
    return text.astype(np.float32), image.astype(np.float32)


# ---------------------------------------------------------------- quality on real embeddings
def test_defaults_make_mixed_pool_search_work_on_heldout_coco(split, fitted):
    _, _, text, image = split
    raw = score_blocks(RawCosine().fit(text, image), text, image)
    cal = score_blocks(fitted, text, image)
    assert mixed_pool_retrieval(raw)["R@1"] == 0.0  # the gap: same-modality items always win
    assert mixed_pool_retrieval(cal)["R@1"] > 0.55
    assert pooled_auc(cal) > 0.99
    assert cross_modal_recall(cal) >= cross_modal_recall(raw)


def test_pvalue_scores_mean_the_share_of_unrelated_items_scoring_higher(split):
    """score_norm="pvalue": on held-out pairs, exp(-score) is the share of unrelated pairs of that type above."""
    cal = GapCalibrator(score_norm="pvalue").fit(split[0], split[1])
    data = {"text": split[2], "image": split[3]}
    off = ~np.eye(len(split[2]), dtype=bool)
    for a, b in MODS:
        null = cal.similarity(data[a], data[b], query_modality=a, item_modality=b)[off]
        for level in (0.5, 0.1, 0.01):
            assert np.mean(null > -np.log(level)) == pytest.approx(level, rel=0.35, abs=0.004), (a, b, level)


def test_relevance_scores_put_true_pairs_of_every_type_at_one_height(split, fitted):
    """The default score is a log-likelihood ratio: unrelated pairs mostly below 0, true pairs well above,
    and a true text->image pair scores like a true image->text pair."""
    _, _, text, image = split
    data = {"text": text, "image": image}
    off = ~np.eye(len(text), dtype=bool)
    medians = {}
    for a, b in MODS:
        s = fitted.similarity(data[a], data[b], query_modality=a, item_modality=b)
        assert np.mean(s[off] > 0) < 0.05, (a, b)
        if a != b:
            medians[a] = np.median(np.diag(s))
    assert min(medians.values()) > 2.5 and abs(medians["text"] - medians["image"]) < 1.0


def test_similarity_is_the_score_map_of_query_times_item_vectors(split, fitted):
    _, _, text, image = split
    data = {"text": text[:40], "image": image[:40]}
    for a, b in MODS:
        s = fitted.similarity(data[a], data[b], query_modality=a, item_modality=b)
        u, v = fitted.transform_query(data[a], query_modality=a, item_modality=b), fitted.transform(data[b], modality=b)
        assert u.dtype == v.dtype == s.dtype == np.float32
        assert u.shape == v.shape == (40, fitted.output_dim_)
        assert v.flags.c_contiguous
        np.testing.assert_allclose(s, fitted.map_scores(u @ v.T, query_modality=a, item_modality=b), atol=1e-4)
        # the map is increasing: order inside one pair type is the inner products' order
        raw = (u @ v.T).ravel()
        assert np.all(np.diff(s.ravel()[np.argsort(raw, kind="stable")]) >= -1e-5)
    with pytest.raises(ValueError, match="item_modality must be one of"):
        fitted.map_scores(np.zeros(3), query_modality="text", item_modality="video")


def test_score_map_matches_a_reference_of_the_null_surprise():
    """Plain-numpy reference: with no stages and no hubness, pvalue scores are -ln of the empirical share
    of unmatched pairs (same type) scoring above, between the map's knots."""
    text, image = synthetic_pairs(120, 24, seed=1)
    cal = GapCalibrator(mean_shift=False, projection="none", hubness=False, score_norm="pvalue").fit(text, image)
    t, i = unit(text.astype(np.float64)), unit(image.astype(np.float64))
    emb = {"text": t, "image": i}
    off = ~np.eye(len(t), dtype=bool)
    for a, b in MODS:
        raw = (emb[a] @ emb[b].T)[off]
        probe = np.quantile(raw, [0.5, 0.8, 0.95, 0.99])
        want = -np.log([np.mean(raw > p) for p in probe])
        got = cal.map_scores(probe, query_modality=a, item_modality=b)
        np.testing.assert_allclose(got, want, atol=0.15)


def test_inputs_are_treated_as_directions(fitted, split):
    text = split[2][:10]
    np.testing.assert_allclose(fitted.transform(3.5 * text, modality="text"), fitted.transform(text, modality="text"), atol=1e-6)
    np.testing.assert_allclose(fitted.transform(text.astype(np.float64), modality="text"), fitted.transform(text, modality="text"), atol=1e-6)


# ---------------------------------------------------------------- the stages and their selection
def test_auto_on_250_real_pairs_keeps_only_what_wins_held_out_and_says_why(fitted):
    """On 250 COCO pairs the shift and the ridge maps lose; the soft contrastive map wins by more than 2 SE."""
    report = fitted.fit_report_
    assert report["holdout_pairs"] == 250 and report["holdout_folds"] == 5
    assert [c["projection"] for c in report["candidates"]] == ["none", "none", "ridge(1)", "ridge(10)", "soft(0.01)"]
    assert report["metric"] == "mixed-pool MRR"
    rows = report["candidates"]
    assert all(c["gain"] < 0 for c in rows[1:4])
    assert (fitted.mean_shift_, fitted.projection_) == (False, "soft(0.01)") and rows[4]["gain"] > 2 * rows[4]["se"]
    assert "raised held-out mixed-pool MRR by" in report["reason"] and f"{rows[4]['gain']:+.4f}" in report["reason"]
    text = fitted.summary()
    assert "projection: soft(0.01)" in text and "held-out check on 250 pairs (5 folds by group)" in text
    assert "250 distinct texts, 250 distinct images (0 repeated text rows" in text
    assert "contrastive projection (soft targets, temperature 0.01)" in text


def test_a_losing_best_alternative_is_named_with_its_real_gain(coco):
    text, image = coco
    cal = GapCalibrator().fit(text[:60], image[:60])
    report = cal.fit_report_
    assert (cal.mean_shift_, cal.projection_) == (False, "none")
    assert "kept the simplest choice" in report["reason"] and "keeping needs more than 2 SE" in report["reason"] \
        or "but made" in report["reason"]
    best = max(report["candidates"][1:], key=lambda c: c["gain"])
    assert f"{best['gain']:+.4f}" in report["reason"]  # the best alternative's real gain, negative or not


def test_auto_keeps_a_projection_where_it_helps():
    """Image space rotated away from text space: only a fitted map can align them."""
    text, image = synthetic_pairs(3000, 32, seed=2, rotate=True)
    cal = GapCalibrator().fit(text[:2500], image[:2500])
    assert cal.projection_ != "none"
    assert "raised held-out mixed-pool MRR" in cal.fit_report_["reason"]
    held = score_blocks(cal, text[2500:], image[2500:])
    plain = score_blocks(GapCalibrator(projection="none").fit(text[:2500], image[:2500]), text[2500:], image[2500:])
    assert mixed_pool_retrieval(held)["MRR"] > mixed_pool_retrieval(plain)["MRR"] + 0.05


def test_repeated_items_cannot_win_the_held_out_check(coco, monkeypatch):
    """COCO-500 pairs three times over plus two near-copies each: grouped, a projection has nothing to gain.
    The same fit with near-copy detection switched off keeps a projection that only wins through repeats."""
    text, image, _ = repeated(*(x[:300] for x in coco))
    cal = GapCalibrator().fit(text, image)
    report = cal.fit_report_
    assert cal.projection_ == "none"
    assert report["sample_groups"] == 300 and report["near_copies_in_sample"] == 1200
    assert report["duplicate_text_rows"] == 600 == report["duplicate_image_rows"]
    monkeypatch.setattr(_groups.near_copy_edges, "__defaults__", (0.0,))
    leaky = GapCalibrator().fit(text, image)
    assert leaky.projection_ != "none" and leaky.fit_report_["near_copies_in_sample"] == 0


def test_groups_give_sibling_positives_and_a_balanced_selection_metric(captions):
    text, image, groups = captions
    cal = GapCalibrator(sample_size=400).fit(text, image, groups=groups)
    report = cal.fit_report_
    assert report["metric"] == "NDCG@10" and report["pairs_with_groups"] == 750 and report["label_groups"] == 150
    assert report["sample_pairs"] == 400 and report["sample_pairs"] % 5 == 0  # whole groups only
    assert report["sibling_texts_in_sample"] == 400 and report["sibling_images_in_sample"] == 0
    types = report["scores"]["types"]
    assert types["text-text"]["positives"] == "siblings" and types["image-image"]["positives"] == "assumed"
    assert types["text-image"]["positives"] == "matched pairs"
    assert "sibling pairs" in cal.summary() and "assumed: no siblings" in cal.summary()
    # the same pairs without labels: shared images still make the groups
    unlabelled = GapCalibrator(sample_size=400).fit(text, image)
    assert unlabelled.fit_report_["sibling_texts_in_sample"] > 100 and unlabelled.fit_report_["metric"] == "NDCG@10"


def test_the_sample_keeps_groups_whole(captions):
    text, image, groups = captions
    labelled = GapCalibrator(sample_size=64).fit(text, image, groups=groups)._stats
    assert len(labelled.sample_key) == 60 and all((labelled.sample_key == k).sum() == 5 for k in labelled.sample_key)
    stats = GapCalibrator(sample_size=64).fit(text, image)._stats  # no labels: a pair's key is its smaller item hash
    by_image = stats.sample_key == stats.sample_image_hash
    assert by_image.any()
    for h in np.unique(stats.sample_image_hash[by_image]):
        assert (stats.sample_image_hash == h).sum() == 5  # an image drawn by its own hash brings all five captions


@pytest.mark.parametrize("projection", ["ridge", "procrustes"])
def test_forced_projection_is_used(split, projection):
    cal = GapCalibrator(projection=projection, mean_shift=False).fit(split[0], split[1])
    assert cal.projection_.startswith(projection)
    assert cal.fit_report_["reason"].startswith("stages fixed")
    assert cal.projection_matrix(modality="image") is None
    if projection == "procrustes":  # a rotation keeps lengths
        q = cal.projection_matrix(modality="text")
        np.testing.assert_allclose(q @ q.T, np.eye(len(q)), atol=1e-8)


def test_stage_switches(split):
    text, image = split[0], split[1]
    no_hub = GapCalibrator(hubness=False).fit(text, image)
    assert no_hub.output_dim_ == 512 and no_hub.transform(text[:3], modality="image").shape == (3, 512)
    plain = GapCalibrator(score_norm="none", hubness=False, mean_shift=False, projection="none").fit(text, image)
    np.testing.assert_allclose(plain.similarity(text[:5], image[:7], query_modality="text", item_modality="image"), unit(text[:5]) @ unit(image[:7]).T, atol=1e-6)
    shifted = GapCalibrator(mean_shift=True, projection="none").fit(text, image)
    assert shifted.mean_shift_ is True
    e = shifted.embed(image, modality="image")
    assert np.linalg.norm(e.mean(0)) < 0.2 < np.linalg.norm(unit(image).mean(0))
    z = GapCalibrator(score_norm="zscore", mean_shift=False, projection="none").fit(text, image)
    off = ~np.eye(250, dtype=bool)
    s = z.similarity(text, text, query_modality="text", item_modality="text")[off]
    assert abs(s.mean()) < 0.2 and 0.8 < s.std() < 1.25


def test_few_pairs_skip_the_held_out_check():
    text, image = synthetic_pairs(15, 16, seed=3)
    cal = GapCalibrator().fit(text, image)
    assert (cal.mean_shift_, cal.projection_) == (False, "none")
    assert "too few" in cal.fit_report_["reason"]
    assert cal.fit_report_["scores"]["kind"] == "pvalue"  # fewer than 20 matched pairs: no relevance model
    assert "asked for relevance, fitted pvalue" in cal.summary()
    forced = GapCalibrator(projection="ridge").fit(text, image)  # 'auto' mean shift, too few pairs to check it
    assert (forced.mean_shift_, forced.projection_) == (False, "ridge(1)")


# ---------------------------------------------------------------- inputs of every dtype
@pytest.mark.parametrize("dtype, scale", [(np.int8, 120), (np.int16, 400), (np.int32, 10_000), (np.uint16, 400),
                                          (np.float16, 1), (np.float64, 1e200), (np.float64, 1e-200)])
def test_any_real_dtype_fits_and_transforms_like_its_float_values(split, dtype, scale):
    """Integers never overflow (the issue's int16 fit differed by up to 5 score units), float16 fits and
    transforms alike, float64 beyond float32's range keeps its directions."""
    text, image = split[0][:120], split[1][:120]
    if np.issubdtype(dtype, np.integer):
        shift = 200 if dtype == np.uint16 else 0  # unsigned: move away from zero first
        conv = lambda x: np.round(x * scale + shift).astype(dtype)  # noqa: E731
    else:
        conv = lambda x: (x.astype(np.float64) * scale).astype(dtype)  # noqa: E731
    t, i = conv(text), conv(image)
    options = dict(mean_shift=False, projection="none")
    direct = GapCalibrator(**options).fit(t, i)
    reference = GapCalibrator(**options).fit(t.astype(np.float64) / scale, i.astype(np.float64) / scale)
    # unsigned rows are shifted away from zero, so nearly parallel: float32 cosines keep fewer digits
    tolerance = 1e-2 if dtype == np.uint16 else 2e-3
    np.testing.assert_allclose(direct.similarity(t[:20], i[:30], query_modality="text", item_modality="image"), reference.similarity(t[:20].astype(np.float64), i[:30].astype(np.float64), query_modality="text", item_modality="image"),
                               atol=tolerance)


def test_bool_and_complex_inputs_are_refused(split):
    with pytest.raises(TypeError, match=r"text must be a real numeric array of shape \(n, d\).* got dtype bool"):
        GapCalibrator().fit(split[0] > 0, split[1])
    with pytest.raises(TypeError, match="x must be a real numeric array .* got dtype complex"):
        GapCalibrator().fit(split[0], split[1]).transform(split[0][:2] + 0j, modality="text")


# ---------------------------------------------------------------- options are frozen after fit
def test_changing_an_option_after_fit_refuses_use(split):
    cal = GapCalibrator(score_norm="pvalue").fit(split[0], split[1])
    before = cal.fingerprint_
    cal.hubness = False
    for call in (lambda: cal.similarity(split[2][:2], split[3][:2], query_modality="text", item_modality="image"), lambda: cal.transform(split[2][:2], modality="text"),
                 lambda: cal.fingerprint_, lambda: cal.summary(), lambda: cal.save("unused.npz")):
        with pytest.raises(ValueError, match="option hubness was changed from True to False after fitting"):
            call()
    cal.hubness = True
    assert cal.fingerprint_ == before
    cal.set_params(score_norm="zscore")
    with pytest.raises(ValueError, match="option score_norm was changed from 'pvalue' to 'zscore'"):
        cal.transform_query(split[2][:2], query_modality="text", item_modality="image")
    cal.fit(split[0], split[1])
    assert cal.fingerprint_ != before and cal.fit_report_["scores"]["kind"] == "zscore"


def test_scikit_learn_clone_and_params():
    base = pytest.importorskip("sklearn.base")
    cal = GapCalibrator(projection="ridge", sample_size=99, score_norm="tail")
    twin = base.clone(cal)
    assert twin.get_params() == cal.get_params() and twin is not cal
    assert cal.get_params(deep=False) == cal.get_params()
    assert cal.set_params(hubness=False) is cal and cal.hubness is False
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\]"):
        cal.set_params(colour="red")


# ---------------------------------------------------------------- streaming
def test_fit_equals_partial_fit_over_chunks_in_any_order():
    text, image = synthetic_pairs(1200, 32, seed=4)
    groups = np.arange(1200) // 3
    whole = GapCalibrator(sample_size=300).fit(text, image, groups=groups)
    chunked, shuffled = GapCalibrator(sample_size=300), GapCalibrator(sample_size=300)
    for s in range(0, 1200, 250):
        chunked.partial_fit(text[s:s + 250], image[s:s + 250], groups=groups[s:s + 250])
    order = np.random.default_rng(0).permutation(1200)
    for part in np.array_split(order, 7):
        shuffled.partial_fit(text[part], image[part], groups=groups[part])
    probe_t, probe_i = text[:50], image[:50]
    for other in (chunked, shuffled):
        assert other.n_pairs_ == 1200 and (other.mean_shift_, other.projection_) == (whole.mean_shift_, whole.projection_)
        np.testing.assert_array_equal(np.sort(other._stats.sample_key), np.sort(whole._stats.sample_key))
        for a, b in MODS:
            x, y = (probe_t if a == "text" else probe_i), (probe_t if b == "text" else probe_i)
            np.testing.assert_allclose(other.similarity(x, y, query_modality=a, item_modality=b), whole.similarity(x, y, query_modality=a, item_modality=b), atol=1e-4)


def test_partial_fit_only_accumulates_and_finalises_once(monkeypatch):
    text, image = synthetic_pairs(600, 16, seed=8)
    calls = []
    real = selection.select
    monkeypatch.setattr("gapcal.calibration.calibrator.select", lambda *a, **k: calls.append(1) or real(*a, **k))
    cal = GapCalibrator(sample_size=200)
    for s in range(0, 600, 100):
        cal.partial_fit(text[s:s + 100], image[s:s + 100])
    assert calls == []
    assert cal.finalize() is cal and calls == [1]
    cal.similarity(text[:3], image[:3], query_modality="text", item_modality="image")
    cal.transform(text[:3], modality="text")
    assert calls == [1]
    cal.partial_fit(text[:50], image[:50])
    assert cal.n_pairs_ == 650 and calls == [1, 1]


def test_memory_does_not_grow_with_pairs():
    text, image = synthetic_pairs(5000, 16, seed=5)
    cal = GapCalibrator(sample_size=64).fit(text, image)
    stats = cal._stats
    assert len(stats.sample_text) == 64 and stats.text_sum.shape == (16,) and stats.count == 5000
    assert len(stats.text_sketch) <= 4096 and not hasattr(stats, "text_gram")


def test_merge_of_shards_equals_fit_on_all():
    text, image = synthetic_pairs(900, 24, seed=6)
    whole = GapCalibrator(sample_size=200).fit(text, image)
    left = GapCalibrator(sample_size=200).fit(text[:400], image[:400])
    right = GapCalibrator(sample_size=200).fit(text[400:], image[400:])
    assert left.merge(right) is left
    assert left.n_pairs_ == 900 and (left.mean_shift_, left.projection_) == (whole.mean_shift_, whole.projection_)
    np.testing.assert_allclose(left.similarity(text[:30], image[:30], query_modality="text", item_modality="image"), whole.similarity(text[:30], image[:30], query_modality="text", item_modality="image"), atol=1e-4)


def test_merge_rejects_mismatches(split, fitted):
    with pytest.raises(TypeError, match="other must be a GapCalibrator"):
        GapCalibrator().fit(split[0], split[1]).merge("x")
    with pytest.raises(ValueError, match="same options"):
        GapCalibrator().fit(split[0], split[1]).merge(GapCalibrator(hubness=False).fit(split[0], split[1]))
    t16, i16 = synthetic_pairs(50, 16, seed=7)
    with pytest.raises(ValueError, match="dimension 512"):
        GapCalibrator().fit(split[0], split[1]).merge(GapCalibrator().fit(t16, i16))
    with pytest.raises(NotFittedError, match="merge needs two calibrators"):
        GapCalibrator().merge(fitted)


# ---------------------------------------------------------------- bad input
def state(cal):
    return cal.fingerprint_, cal.n_pairs_, cal._stats.count, cal._stats.text_sum.copy()


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda t, i, g: (np.where(np.arange(len(t))[:, None] == 3, np.nan, t), i, g), ValueError,
     r"text must be finite: rows \[3\]"),
    (lambda t, i, g: (t, np.where(np.arange(len(i))[:, None] == 5, np.inf, i), g), ValueError,
     r"image must be finite: rows \[5\]"),
    (lambda t, i, g: (t, np.where(np.arange(len(i))[:, None] == 2, 0.0, i), g), ValueError,
     r"image must not hold all-zero rows .*: rows \[2\]"),
    (lambda t, i, g: (t[0], i, g), ValueError, r"text must be a 2-D array of shape \(n, d\), got shape \(512,\)"),
    (lambda t, i, g: (t.astype(str), i, g), TypeError, r"text must be a real numeric array .* got dtype <U"),
    (lambda t, i, g: (t[:-1], i, g), ValueError, r"same number of rows .* got 19 and 20"),
    (lambda t, i, g: (t[:, :10], i[:, :10], g), ValueError, r"dimension d=512 \(the fitted dimension\), got 10"),
    (lambda t, i, g: (t, i[:, :10], g), ValueError, r"same dimension, got 512 and 10"),
    (lambda t, i, g: (t[:0], i[:0], g), ValueError, r"text must hold at least one row, got shape \(0, 512\)"),
    (lambda t, i, g: (t, i, g[:-1]), ValueError, r"groups must hold one label per pair \(20 pairs\), got 19 labels"),
    (lambda t, i, g: (t, i, g * 0.5), TypeError, "groups must hold integer or string labels, got dtype float64"),
    (lambda t, i, g: (t, i, g[:, None]), ValueError, r"groups must be a 1-D array with one label per pair"),
])
def test_bad_partial_fit_names_the_problem_and_changes_nothing(fitted, split, mutate, exc, match):
    cal = copy.deepcopy(fitted)
    before = state(cal)
    with pytest.raises(exc, match=match):
        text, image, groups = mutate(split[2][:20], split[3][:20], np.arange(20))
        cal.partial_fit(text, image, groups=groups)
    after = state(cal)
    assert before[:3] == after[:3]
    np.testing.assert_array_equal(before[3], after[3])


def test_bad_fit_inputs(split):
    with pytest.raises(ValueError, match="at least 8 pairs in total to fit, got 5"):
        GapCalibrator().fit(split[0][:5], split[1][:5])
    cal = GapCalibrator()
    with pytest.raises(ValueError, match="text must be finite"):
        cal.fit(np.full((20, 4), np.nan), np.ones((20, 4)))
    assert not hasattr(cal, "dim_")
    one_caption = np.tile(split[0][:1], (20, 1))  # every image with the same caption: one group
    with pytest.raises(ValueError, match=r"at least 3 groups .* got 1 group\(s\) in 20 pairs"):
        cal.fit(one_caption, split[1][:20])
    with pytest.raises(ValueError, match=r"at least 3 groups .* got 2 group\(s\)"):
        cal.fit(split[0][:20], split[1][:20], groups=np.arange(20) % 2)
    assert not hasattr(cal, "dim_")


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"mean_shift": "yes"}, ValueError, "mean_shift must be 'auto', True or False, got 'yes'"),
    ({"projection": "pca"}, ValueError, "projection must be one of .* got 'pca'"),
    ({"hubness": 1}, TypeError, "hubness must be True or False, got 1"),
    ({"score_norm": True}, ValueError, r"score_norm must be one of \('relevance', 'pvalue', 'tail', 'zscore', 'none'\), "
                                       "got True"),
    ({"holdout_fraction": 1.5}, ValueError, r"holdout_fraction must be a number in \(0, 1\), got 1.5"),
    ({"sample_size": 3}, ValueError, "sample_size must be an integer >= 16, got 3"),
])
def test_bad_options(split, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GapCalibrator(**kwargs).fit(split[0], split[1])


def test_use_before_fit_raises_not_fitted():
    cal = GapCalibrator()
    for call in (lambda: cal.transform(np.ones((2, 4)), modality="text"), lambda: cal.similarity(np.ones((1, 4)), np.ones((1, 4)), query_modality="text", item_modality="image"),
                 lambda: cal.transform_query(np.ones((1, 4)), query_modality="text", item_modality="image"), lambda: cal.summary(), lambda: cal.finalize(),
                 lambda: cal.output_dim_, lambda: cal.projection_matrix(modality="text"), lambda: cal.fingerprint_,
                 lambda: cal.plan_queries(np.ones((1, 4)), query_modality="text"),
                 lambda: cal.map_scores(np.ones(2), query_modality="text", item_modality="text")):
        with pytest.raises(NotFittedError, match="not fitted yet: call fit"):
            call()


def test_bad_transform_and_similarity_inputs(fitted, split):
    q = split[2][:3]
    with pytest.raises(ValueError, match=r"modality must be one of \('text', 'image'\), got 'audio'"):
        fitted.transform(q, modality="audio")
    with pytest.raises(ValueError, match="query_modality must be one of"):
        fitted.similarity(q, q, query_modality="video", item_modality="text")
    with pytest.raises(ValueError, match="item_modality must be one of"):
        fitted.transform_query(q, query_modality="text", item_modality="img")
    with pytest.raises(ValueError, match=r"x must have dimension d=512 \(the fitted dimension\), got shape \(3, 10\)"):
        fitted.transform(q[:, :10], modality="text")
    with pytest.raises(ValueError, match=r"queries must be finite"):
        fitted.similarity(np.full((1, 512), np.inf), q, query_modality="text", item_modality="image")
    with pytest.raises(ValueError, match="x must not hold all-zero rows"):
        fitted.transform(np.zeros((1, 512)), modality="image")
    assert fitted.transform(q[:0], modality="text").shape == (0, fitted.output_dim_)
    np.testing.assert_allclose(fitted.transform(np.vstack([q, 1e30 * q[:1]]), modality="text")[3], fitted.transform(q[:1], modality="text")[0],
                               atol=1e-6)  # its float32 squared norm overflows: redone in float64, same direction
    with pytest.raises(ValueError, match=r"x must be finite: rows \[1\] hold NaN"):
        fitted.transform(np.vstack([q[:1], np.full((1, 512), np.nan), np.zeros((1, 512))]), modality="text")


# ---------------------------------------------------------------- persistence
def test_save_load_round_trip_after_fit(tmp_path, fitted, split):
    path = tmp_path / "cal.npz"
    fitted.save(path)
    loaded = GapCalibrator.load(path)
    assert loaded.fingerprint_ == fitted.fingerprint_ and loaded.get_params() == fitted.get_params()
    assert loaded.summary() == fitted.summary()
    for a, b in MODS:
        x = split[2][:20] if a == "text" else split[3][:20]
        y = split[2][:30] if b == "text" else split[3][:30]
        np.testing.assert_array_equal(loaded.similarity(x, y, query_modality=a, item_modality=b), fitted.similarity(x, y, query_modality=a, item_modality=b))
    with pytest.raises(ValueError, match="cannot continue a calibrator loaded from a file"):
        loaded.partial_fit(split[2], split[3])


def test_save_load_round_trip_before_fit(tmp_path):
    GapCalibrator(hubness=False, projection="ridge", sample_size=99).save(tmp_path / "c.npz")
    loaded = GapCalibrator.load(tmp_path / "c.npz")
    assert loaded.get_params()["sample_size"] == 99 and loaded.projection == "ridge"
    assert not hasattr(loaded, "dim_")


def test_save_is_atomic(tmp_path, fitted, monkeypatch):
    path = tmp_path / "cal.npz"
    GapCalibrator(hubness=False).save(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        fitted.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cal.npz"]


def test_save_bad_path(tmp_path, fitted):
    with pytest.raises(ValueError, match="folder does not exist"):
        fitted.save(tmp_path / "missing" / "cal.npz")
    with pytest.raises(ValueError, match="must be a file path, got the directory"):
        fitted.save(tmp_path)


def _rewrite(src, dst, change):
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    np.savez(dst, **arrays)


def _header(arrays, **changes):
    header = json.loads(arrays["header"].tobytes())
    header.update(changes)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def test_load_refuses_bad_files(tmp_path, fitted):
    good = tmp_path / "good.npz"
    fitted.save(good)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GapCalibrator.load(tmp_path / "nope.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        GapCalibrator.load(truncated)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        GapCalibrator.load(text_file)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(ValueError, match="not a gapcal calibrator file: it has no header"):
        GapCalibrator.load(foreign)
    cases = {"newer": (lambda a: _header(a, format_version=99), "format version 99.*upgrade gapcal"),
             "older": (lambda a: _header(a, format_version=1), "format version 1, which this gapcal .* no longer reads: .*fit the calibrator again"),
             "map": (lambda a: a.__setitem__("map_text_image", a["map_text_image"] * 1.01), "do not match the fingerprint"),
             "unordered map": (lambda a: a.__setitem__("map_text_image", a["map_text_image"][::-1].copy()),
                               "score map must be finite and strictly increasing"),
             "missing": (lambda a: a.pop("map_image_text"), "entry 'map_image_text' is missing"),
             "pickled": (lambda a: a.__setitem__("text_mean", np.array([{"evil": 1}], dtype=object)),
                         "member 'text_mean' holds Python objects, which gapcal never reads"),
             "oversized": (lambda a: a.__setitem__("text_mean", np.zeros(10 * 512)),
                           "member 'text_mean' .* more than the 4096"),
             "bad dim": (lambda a: _header(a, dim="abc"), r"dim must be an integer in \[1, 65536\], got 'abc'")}
    for name, (change, message) in cases.items():
        bad = tmp_path / f"{name}.npz"
        _rewrite(good, bad, change)
        with pytest.raises(ValueError, match=message):
            GapCalibrator.load(bad)
    assert zipfile.is_zipfile(good)


def test_load_decompresses_only_what_a_calibrator_holds(tmp_path, fitted):
    """An extra 1 GiB member is never inflated; a member claiming 10^12 elements is refused from its header."""
    import tracemalloc

    good = tmp_path / "good.npz"
    fitted.save(good)
    padded = tmp_path / "padded.npz"
    _rewrite(good, padded, lambda a: a.__setitem__("junk", np.zeros(1 << 27)))  # 1 GiB of zeros, compresses away
    tracemalloc.start()
    loaded = GapCalibrator.load(padded)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert loaded.fingerprint_ == fitted.fingerprint_ and peak < 64 << 20
    with zipfile.ZipFile(good) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    header = np.lib.format.header_data_from_array_1_0(np.zeros(4, dtype=np.float64))
    header["shape"] = (10 ** 12,)
    liar = tmp_path / "liar.npz"
    with zipfile.ZipFile(liar, "w") as archive:
        for name, data in members.items():
            if name == "text_mean.npy":
                import io

                buffer = io.BytesIO()
                np.lib.format.write_array_header_1_0(buffer, header)
                data = buffer.getvalue() + b"\0" * 32
            archive.writestr(name, data)
    with pytest.raises(ValueError, match=r"member 'text_mean' claims \(1000000000000,\) x float64, more than"):
        GapCalibrator.load(liar)


def test_saved_files_keep_the_umask_mode_and_no_temporary_is_left(tmp_path, fitted):
    previous = os.umask(0o022)
    try:
        fitted.save(tmp_path / "cal.npz")
        assert (tmp_path / "cal.npz").stat().st_mode & 0o777 == 0o644  # readable by others, like any new file
        os.umask(0o077)
        fitted.save(tmp_path / "private.npz")
        assert (tmp_path / "private.npz").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)
    dead = tmp_path / ".cal.npz.999999-0123abcd.gapcal-tmp"  # left by a writer that was killed (no such pid)
    dead.write_bytes(b"half a file")
    alive = tmp_path / f".cal.npz.{os.getpid()}-0123abcd.gapcal-tmp"  # being written by a live process
    alive.write_bytes(b"in progress")
    fitted.save(tmp_path / "cal.npz")
    assert not dead.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cal.npz", "private.npz", alive.name])


def test_public_names():
    assert gapcal.GapCalibrator is GapCalibrator
    assert "GapCalibrator" in repr(GapCalibrator())


def test_plan_queries_equal_transform_query_for_each_item_modality(cal, coco):
    text, image = coco
    for query_modality, queries in (("text", text[:20]), ("image", image[:20])):
        both = cal.plan_queries(queries, query_modality=query_modality).vectors
        for item_modality, u in zip(("text", "image"), both):
            np.testing.assert_array_equal(u, cal.transform_query(queries, query_modality=query_modality, item_modality=item_modality))
    plan = cal.plan_queries(text[:3], query_modality="text", item_modalities=("image",))
    assert len(plan.vectors) == len(plan.maps) == 1 and plan.fingerprint == cal.fingerprint_
    assert plan.maps[0] is cal.score_map(query_modality="text", item_modality="image")
    with pytest.raises(ValueError, match=r"item_modalities must be one of \('text', 'image'\), got 'audio'"):
        cal.plan_queries(text[:3], query_modality="text", item_modalities=("text", "audio"))
    with pytest.raises(ValueError, match=r"queries must have dimension d=512"):
        cal.plan_queries(text[:3, :10], query_modality="text")


def test_evaluation_pool_of_the_calibrator_agrees_with_metrics(captions):
    """The sample's groups (shared images) are the relevance groups the metrics use."""
    text, image, groups = captions
    pool = metrics.relevance_pool(text, image, groups)
    assert len(pool.image) == 150 and len(pool.text) == 750


def test_two_threads_of_partial_fit_lose_no_pairs(coco):
    """Each partial_fit merges into the statistics there are when it finishes (similarity racing partial_fit:
    tests/test_reliability.py)."""
    text, image = coco
    chunks = [slice(s, s + 60) for s in range(0, 300, 60)]
    probe = text[300:306], image[300:340]
    expected = GapCalibrator().fit(text[:300], image[:300]).similarity(*probe, query_modality="text",
                                                                       item_modality="image")
    twice = GapCalibrator()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda half: [twice.partial_fit(text[c], image[c]) for c in chunks[half::2]], (0, 1)))
    assert twice.n_pairs_ == 300
    np.testing.assert_allclose(twice.similarity(*probe, query_modality="text", item_modality="image"), expected,
                               atol=1e-5)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_permission_error_not_corrupt(tmp_path, fitted):
    fitted.save(tmp_path / "cal.npz")
    (tmp_path / "cal.npz").chmod(0)
    with pytest.raises(PermissionError, match="cal.npz"):
        GapCalibrator.load(tmp_path / "cal.npz")


def test_partial_fit_landing_inside_similarity_does_not_mix_two_fits(coco, monkeypatch):
    """The worst moment for a concurrent partial_fit: after similarity embedded the queries, before the items.
    One snapshot of the fitted state serves the whole call, so the answer is the old fit's, whole."""
    from gapcal.calibration import model as model_lib

    text, image = coco
    probe = text[300:306], image[300:340]
    before = GapCalibrator().fit(text[:200], image[:200]).similarity(*probe, query_modality="text",
                                                                     item_modality="image")
    shared = GapCalibrator().partial_fit(text[:200], image[:200])
    shared.finalize()
    query_vectors, landed = model_lib.Model.query_vectors, []

    def query_vectors_then_another_thread_adds_pairs(self, *args):
        out = query_vectors(self, *args)
        if not landed:
            landed.append(shared.partial_fit(text[200:300], image[200:300]))
        return out

    monkeypatch.setattr(model_lib.Model, "query_vectors", query_vectors_then_another_thread_adds_pairs)
    np.testing.assert_allclose(shared.similarity(*probe, query_modality="text", item_modality="image"), before,
                               atol=1e-6)
    assert landed and shared.n_pairs_ == 300
