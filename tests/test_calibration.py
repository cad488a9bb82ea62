"""GapCalibrator: contract, numbers against reference implementations, streaming, errors, persistence."""

import copy
import json
import zipfile

import numpy as np
import pytest

import gapcal
from gapcal import GapCalibrator, NotFittedError
from gapcal.baselines import RawCosine
from gapcal.metrics import cross_modal_recall, mixed_pool_retrieval, pooled_auc, score_blocks

MODS = (("text", "text"), ("text", "image"), ("image", "text"), ("image", "image"))


@pytest.fixture(scope="module")
def split(coco):
    text, image = coco
    p = np.random.default_rng(0).permutation(len(text))
    return text[p[:250]], image[p[:250]], text[p[250:]], image[p[250:]]


@pytest.fixture(scope="module")
def fitted(split):
    return GapCalibrator().fit(split[0], split[1])


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
    assert mixed_pool_retrieval(cal)["R@1"] > 0.5
    assert pooled_auc(cal) > 0.985
    assert cross_modal_recall(cal) >= cross_modal_recall(raw)


def test_unmatched_scores_are_standardised_per_pair_type(split, fitted):
    """The documented score meaning: unrelated items score ~N(0, 1) for every (query, item) modality pair."""
    _, _, text, image = split
    data = {"text": text, "image": image}
    off = ~np.eye(len(text), dtype=bool)
    for a, b in MODS:
        s = fitted.similarity(data[a], data[b], a, b)
        assert abs(s[off].mean()) < 0.2 and 0.8 < s[off].std() < 1.25, (a, b)
        if a != b:
            assert np.diag(s).mean() > 2.0


def test_similarity_is_query_vectors_times_item_vectors_plus_offset(split, fitted):
    _, _, text, image = split
    data = {"text": text[:40], "image": image[:40]}
    for a, b in MODS:
        s = fitted.similarity(data[a], data[b], a, b)
        u, v = fitted.transform_query(data[a], a, b), fitted.transform(data[b], b)
        assert u.dtype == v.dtype == s.dtype == np.float32
        assert u.shape == v.shape == (40, fitted.output_dim_)
        assert v.flags.c_contiguous
        np.testing.assert_allclose(s, u @ v.T + fitted.score_offset(a, b), atol=1e-5)


def test_scores_match_a_reference_implementation():
    """Plain-numpy reference of the default score (no mean shift, no projection, exact covariance)."""
    text, image = synthetic_pairs(300, 24, seed=1)
    cal = GapCalibrator(mean_shift=False, projection="none").fit(text, image)
    t, i = unit(text.astype(np.float64)), unit(image.astype(np.float64))
    emb = {"text": t, "image": i}

    def hub(items, query_modality):
        ref = emb[query_modality]
        mu, cov = ref.mean(0), np.cov(ref, rowvar=False, bias=True)
        return 0.5 * (items @ mu + 1.6448536269514722 * np.sqrt(np.einsum("ij,jk,ik->i", items, cov, items)))

    off = ~np.eye(len(t), dtype=bool)
    for a, b in MODS:
        raw = emb[a] @ emb[b].T
        if a != b:
            raw = raw - hub(emb[b], a)[None, :]
        expected = (raw - raw[off].mean()) / raw[off].std()
        np.testing.assert_allclose(cal.similarity(emb[a], emb[b], a, b), expected, atol=2e-4)


def test_inputs_are_treated_as_directions(fitted, split):
    text = split[2][:10]
    np.testing.assert_allclose(fitted.transform(3.5 * text, "text"), fitted.transform(text, "text"), atol=1e-6)
    np.testing.assert_allclose(fitted.transform(text.astype(np.float64), "text"), fitted.transform(text, "text"))


# ---------------------------------------------------------------- the stages and their selection
def test_auto_rejects_overfitting_projection_on_250_pairs_and_says_why(fitted):
    assert fitted.projection_ == "none"
    report = fitted.fit_report_
    assert report["holdout_pairs"] == 50 and len(report["candidates"]) == 10
    assert "standard error" in report["reason"]
    text = fitted.summary()
    assert "projection: none" in text and "held-out check on 50 pairs" in text


def test_auto_keeps_a_projection_where_it_helps():
    """Image space rotated away from text space: only a fitted map can align them."""
    text, image = synthetic_pairs(3000, 32, seed=2, rotate=True)
    cal = GapCalibrator().fit(text[:2500], image[:2500])
    assert cal.projection_ != "none"
    assert "raised held-out mixed-pool MRR" in cal.fit_report_["reason"]
    held = score_blocks(cal, text[2500:], image[2500:])
    plain = score_blocks(GapCalibrator(projection="none").fit(text[:2500], image[:2500]), text[2500:], image[2500:])
    assert mixed_pool_retrieval(held)["MRR"] > mixed_pool_retrieval(plain)["MRR"] + 0.2


@pytest.mark.parametrize("projection", ["ridge", "procrustes"])
def test_forced_projection_is_used(split, projection):
    cal = GapCalibrator(projection=projection, mean_shift=False).fit(split[0], split[1])
    assert cal.projection_.startswith(projection)
    assert cal.fit_report_["reason"].startswith("stages fixed")
    assert cal.projection_matrix("image") is None
    if projection == "procrustes":  # a rotation keeps lengths
        q = cal.projection_matrix("text")
        np.testing.assert_allclose(q @ q.T, np.eye(len(q)), atol=1e-8)


def test_stage_switches(split):
    text, image = split[0], split[1]
    no_hub = GapCalibrator(hubness=False).fit(text, image)
    assert no_hub.output_dim_ == 512 and no_hub.transform(text[:3], "image").shape == (3, 512)
    no_norm = GapCalibrator(score_norm=False, hubness=False, mean_shift=False, projection="none").fit(text, image)
    np.testing.assert_allclose(no_norm.similarity(text[:5], image[:7]), unit(text[:5]) @ unit(image[:7]).T, atol=1e-6)
    assert no_norm.score_offset("text", "image") == 0.0
    shifted = GapCalibrator(mean_shift=True, projection="none").fit(text, image)
    assert shifted.mean_shift_ is True
    e = shifted.embed(image, "image")
    assert np.linalg.norm(e.mean(0)) < 0.2 < np.linalg.norm(unit(image).mean(0))


def test_few_pairs_skip_the_held_out_check():
    text, image = synthetic_pairs(15, 16, seed=3)
    cal = GapCalibrator().fit(text, image)
    assert (cal.mean_shift_, cal.projection_) == (False, "none")
    assert "too few" in cal.fit_report_["reason"]
    forced = GapCalibrator(projection="ridge").fit(text, image)  # 'auto' mean shift, too few pairs to check it
    assert (forced.mean_shift_, forced.projection_) == (False, "ridge(1)")
    assert "too few" in forced.fit_report_["reason"]


# ---------------------------------------------------------------- streaming
def test_fit_equals_partial_fit_over_chunks_in_any_order():
    text, image = synthetic_pairs(1200, 32, seed=4)
    whole = GapCalibrator(sample_size=300).fit(text, image)
    chunked, shuffled = GapCalibrator(sample_size=300), GapCalibrator(sample_size=300)
    for s in range(0, 1200, 250):
        chunked.partial_fit(text[s:s + 250], image[s:s + 250])
    order = np.random.default_rng(0).permutation(1200)
    for part in np.array_split(order, 7):
        shuffled.partial_fit(text[part], image[part])
    probe_t, probe_i = text[:50], image[:50]
    for other in (chunked, shuffled):
        assert other.n_pairs_ == 1200 and (other.mean_shift_, other.projection_) == (whole.mean_shift_, whole.projection_)
        np.testing.assert_array_equal(other._stats.sample_keys, whole._stats.sample_keys)
        np.testing.assert_allclose(other._stats.text_gram, whole._stats.text_gram, rtol=1e-5, atol=1e-5)
        for a, b in MODS:
            x, y = (probe_t if a == "text" else probe_i), (probe_t if b == "text" else probe_i)
            np.testing.assert_allclose(other.similarity(x, y, a, b), whole.similarity(x, y, a, b), atol=1e-4)


def test_memory_does_not_grow_with_pairs():
    text, image = synthetic_pairs(5000, 16, seed=5)
    cal = GapCalibrator(sample_size=64).fit(text, image)
    stats = cal._stats
    assert len(stats.sample_text) == 64 and stats.text_gram.shape == (16, 16) and stats.text_gram.dtype == np.float64
    assert stats.count == 5000


def test_merge_of_shards_equals_fit_on_all():
    text, image = synthetic_pairs(900, 24, seed=6)
    whole = GapCalibrator(sample_size=200).fit(text, image)
    left = GapCalibrator(sample_size=200).fit(text[:400], image[:400])
    right = GapCalibrator(sample_size=200).fit(text[400:], image[400:])
    assert left.merge(right) is left
    assert left.n_pairs_ == 900
    np.testing.assert_array_equal(left._stats.sample_keys, whole._stats.sample_keys)
    np.testing.assert_allclose(left.similarity(text[:30], image[:30]), whole.similarity(text[:30], image[:30]), atol=1e-4)


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
    return (cal.fingerprint_, cal.n_pairs_, cal._stats.count, cal._stats.text_gram.copy())


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda t, i: (np.where(np.arange(len(t))[:, None] == 3, np.nan, t), i), ValueError, r"text must be finite: rows \[3\]"),
    (lambda t, i: (t, np.where(np.arange(len(i))[:, None] == 5, np.inf, i)), ValueError, r"image must be finite: rows \[5\]"),
    (lambda t, i: (t, np.where(np.arange(len(i))[:, None] == 2, 0.0, i)), ValueError, r"image must not hold all-zero rows .*: rows \[2\]"),
    (lambda t, i: (t[0], i), ValueError, r"text must be a 2-D array of shape \(n, d\), got shape \(512,\)"),
    (lambda t, i: (t.astype(str), i), TypeError, r"text must be a numeric array .* got dtype <U"),
    (lambda t, i: (t[:-1], i), ValueError, r"same number of rows .* got 19 and 20"),
    (lambda t, i: (t[:, :10], i[:, :10]), ValueError, r"dimension d=512 \(the fitted dimension\), got 10"),
    (lambda t, i: (t, i[:, :10]), ValueError, r"same dimension, got 512 and 10"),
    (lambda t, i: (t[:0], i[:0]), ValueError, r"at least one pair"),
])
def test_bad_partial_fit_names_the_problem_and_changes_nothing(fitted, split, mutate, exc, match):
    cal = copy.deepcopy(fitted)
    before = state(cal)
    with pytest.raises(exc, match=match):
        cal.partial_fit(*mutate(split[2][:20], split[3][:20]))
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


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"mean_shift": "yes"}, ValueError, "mean_shift must be 'auto', True or False, got 'yes'"),
    ({"projection": "pca"}, ValueError, "projection must be one of .* got 'pca'"),
    ({"hubness": 1}, TypeError, "hubness must be True or False, got 1"),
    ({"score_norm": None}, TypeError, "score_norm must be True or False, got None"),
    ({"holdout_fraction": 1.5}, ValueError, r"holdout_fraction must be a number in \(0, 1\), got 1.5"),
    ({"sample_size": 3}, ValueError, "sample_size must be an integer >= 8, got 3"),
])
def test_bad_options(split, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GapCalibrator(**kwargs).fit(split[0], split[1])


def test_use_before_fit_raises_not_fitted():
    cal = GapCalibrator()
    for call in (lambda: cal.transform(np.ones((2, 4))), lambda: cal.similarity(np.ones((1, 4)), np.ones((1, 4))),
                 lambda: cal.transform_query(np.ones((1, 4))), lambda: cal.score_offset(), lambda: cal.summary(),
                 lambda: cal.output_dim_, lambda: cal.projection_matrix("text"),
                 lambda: cal.transform_queries(np.ones((1, 4)))):
        with pytest.raises(NotFittedError, match="not fitted yet: call fit"):
            call()


def test_bad_transform_and_similarity_inputs(fitted, split):
    q = split[2][:3]
    with pytest.raises(ValueError, match=r"modality must be one of \('text', 'image'\), got 'audio'"):
        fitted.transform(q, "audio")
    with pytest.raises(ValueError, match="query_modality must be one of"):
        fitted.similarity(q, q, "video", "text")
    with pytest.raises(ValueError, match="item_modality must be one of"):
        fitted.transform_query(q, "text", "img")
    with pytest.raises(ValueError, match=r"x must have dimension d=512 \(the fitted dimension\), got shape \(3, 10\)"):
        fitted.transform(q[:, :10], "text")
    with pytest.raises(ValueError, match=r"queries must be finite"):
        fitted.similarity(np.full((1, 512), np.inf), q)
    with pytest.raises(ValueError, match="x must not hold all-zero rows"):
        fitted.transform(np.zeros((1, 512)), "image")
    assert fitted.transform(q[:0], "text").shape == (0, fitted.output_dim_)
    with pytest.raises(ValueError, match=r"x must be finite: rows \[3\] .*a norm outside float32's range"):
        fitted.transform(np.vstack([q, np.full((1, 512), 1e30)]), "text")  # its squared norm overflows
    with pytest.raises(ValueError, match=r"x must be finite: rows \[1\] hold NaN"):
        fitted.transform(np.vstack([q[:1], np.full((1, 512), np.nan), np.zeros((1, 512))]), "text")


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
        np.testing.assert_array_equal(loaded.similarity(x, y, a, b), fitted.similarity(x, y, a, b))
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

    def bump_version(arrays):
        header = json.loads(arrays["header"].tobytes())
        header["format_version"] = 99
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)

    newer = tmp_path / "newer.npz"
    _rewrite(good, newer, bump_version)
    with pytest.raises(ValueError, match="format version 99.*upgrade gapcal"):
        GapCalibrator.load(newer)
    tampered = tmp_path / "tampered.npz"
    _rewrite(good, tampered, lambda a: a.__setitem__("score_std", a["score_std"] * 2))
    with pytest.raises(ValueError, match="do not match the fingerprint"):
        GapCalibrator.load(tampered)
    pickled = tmp_path / "pickled.npz"
    _rewrite(good, pickled, lambda a: a.__setitem__("text_mean", np.array([{"evil": 1}], dtype=object)))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        GapCalibrator.load(pickled)
    assert zipfile.is_zipfile(good)


def test_public_names():
    assert gapcal.GapCalibrator is GapCalibrator
    assert "GapCalibrator" in repr(GapCalibrator())


def test_transform_queries_equal_transform_query_for_each_item_modality(cal, coco):
    text, image = coco
    for query_modality, queries in (("text", text[:20]), ("image", image[:20])):
        both = cal.transform_queries(queries, query_modality)
        for item_modality, u in zip(("text", "image"), both):
            np.testing.assert_array_equal(u, cal.transform_query(queries, query_modality, item_modality))
    assert len(cal.transform_queries(text[:3], "text", ("image",))) == 1
    with pytest.raises(ValueError, match=r"item_modalities must be one of \('text', 'image'\), got 'audio'"):
        cal.transform_queries(text[:3], "text", ("text", "audio"))
    with pytest.raises(ValueError, match=r"queries must have dimension d=512"):
        cal.transform_queries(text[:3, :10], "text")
