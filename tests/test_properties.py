"""Property-based tests (hypothesis) of the numeric core's public entry points."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gapcal import GapCalibrator
from gapcal._checks import check_groups, unit_rows
from gapcal.calibration.scoremap import relevance_map, surprise_map

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def clip_like(seed, n=60, d=12):
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, d))
    text = signal + 0.8 * rng.standard_normal((n, d)) + 2 * rng.standard_normal(d)
    image = signal + 0.8 * rng.standard_normal((n, d)) + 2 * rng.standard_normal(d)
    return text.astype(np.float32), image.astype(np.float32)


@pytest.fixture(scope="module")
def small_cal():
    return GapCalibrator(sample_size=64).fit(*clip_like(0))


@FAST
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-3, 1e3), rows=st.integers(1, 20))
def test_scores_ignore_the_length_of_inputs_and_keep_order_inside_a_type(small_cal, seed, scale, rows):
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((rows, 12)).astype(np.float32)
    items = rng.standard_normal((15, 12)).astype(np.float32)
    for a, b in (("text", "image"), ("image", "image")):
        s = small_cal.similarity(queries, items, query_modality=a, item_modality=b)
        assert s.shape == (rows, 15) and np.isfinite(s).all()
        np.testing.assert_allclose(small_cal.similarity(scale * queries, items / scale, query_modality=a, item_modality=b), s, atol=2e-3)
        raw = small_cal.transform_query(queries, query_modality=a, item_modality=b) @ small_cal.transform(items, modality=b).T
        for r, row in zip(raw, s):
            order = np.argsort(r, kind="stable")
            assert np.all(np.diff(row[order]) >= -1e-4)


@FAST
@given(seed=st.integers(0, 2**32 - 1), as_strings=st.booleans())
def test_group_labels_mean_only_which_pairs_share_a_group(seed, as_strings):
    text, image = clip_like(1, n=48)
    rng = np.random.default_rng(seed)
    labels = np.arange(48) // 3
    renamed = rng.permutation(1000)[labels]  # another name for every group, same partition
    renamed = renamed.astype(str) if as_strings else renamed
    a = GapCalibrator(sample_size=48, mean_shift=False, projection="none").fit(text, image, groups=labels)
    b = GapCalibrator(sample_size=48, mean_shift=False, projection="none").fit(text, image, groups=renamed)
    np.testing.assert_allclose(a.similarity(text[:5], image[:5], query_modality="text", item_modality="image"), b.similarity(text[:5], image[:5], query_modality="text", item_modality="image"), atol=1e-5)
    codes = check_groups(renamed, 48)
    assert (codes[:, None] == codes[None, :]).tolist() == (labels[:, None] == labels[None, :]).tolist()


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(200, 5000), shift=st.floats(-1, 1), spread=st.floats(0.01, 2))
def test_score_maps_are_strictly_increasing_and_invertible(seed, n, shift, spread):
    rng = np.random.default_rng(seed)
    null = shift + spread * rng.standard_normal(n)
    surprise = surprise_map(null)
    positive = surprise(shift + spread * (2.5 + rng.standard_normal(max(20, n // 50))))
    relevance = relevance_map(surprise, positive)
    probe = np.sort(np.concatenate([null[:200], shift + spread * np.linspace(-8, 12, 200)]))
    for m in (surprise, relevance):
        values = m(probe)
        assert np.isfinite(values).all() and np.all(np.diff(values) >= 0)
        np.testing.assert_allclose(m.inverse(values), probe, atol=1e-6 * (1 + np.abs(probe).max()))
    assert relevance(probe).min() >= np.log(1 / (len(positive) + 1)) - 1.0  # the pseudo-positive floor


@FAST
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["float16", "float32", "float64", "int8", "int16",
                                                             "int32", "int64", "uint8"]),
       magnitude=st.sampled_from([1e-3, 1.0, 100.0]), rows=st.sampled_from([1, 8]))
def test_unit_rows_gives_unit_rows_or_names_the_bad_ones(seed, dtype, magnitude, rows):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 5)) * magnitude
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    arr = np.clip(np.round(x), info.min, info.max).astype(dtype) if info else x.astype(dtype)
    zero = ~arr.astype(np.float64).any(axis=1)
    if zero.any():
        with pytest.raises(ValueError, match=r"x must not hold all-zero rows .*rows \[" + str(np.flatnonzero(zero)[0])):
            unit_rows("x", arr)
        return
    out = unit_rows("x", arr)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    ref = arr.astype(np.float64) / np.linalg.norm(arr.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("row, message", [([np.nan, 1.0], r"be finite: rows \[{}\] hold NaN or inf"),
                                          ([np.inf, 0.0], r"be finite: rows \[{}\] hold NaN or inf"),
                                          ([0.0, 0.0], r"not hold all-zero rows .*rows \[{}\]")])
def test_unit_rows_checks_one_row_as_it_checks_many(row, message):
    with pytest.raises(ValueError, match="x must " + message.format(0)):
        unit_rows("x", np.array([row]))
    with pytest.raises(ValueError, match="x must " + message.format(1)):
        unit_rows("x", np.array([[1.0, 2.0], row]))
    np.testing.assert_allclose(unit_rows("x", np.array([[1e300, 1e300]])), [[2 ** -0.5, 2 ** -0.5]], rtol=1e-6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(8, 70), d=st.integers(2, 9), n_groups=st.integers(1, 70),
       repeat_images=st.booleans(), labelled=st.booleans())
def test_fit_on_any_grouped_data_scores_or_says_why_not(seed, n, d, n_groups, repeat_images, labelled):
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((n, d)).astype(np.float32)
    image = rng.standard_normal((n, d)).astype(np.float32)
    if repeat_images:
        image = image[rng.integers(0, max(1, n // 3), n)]
    groups = rng.integers(0, n_groups, n) if labelled else None
    cal = GapCalibrator(sample_size=32)
    try:
        cal.fit(text, image, groups=groups)
    except ValueError as exc:
        assert "at least 3 groups" in str(exc)
        return
    for a, b in (("text", "image"), ("image", "text"), ("text", "text"), ("image", "image")):
        s = cal.similarity(text[:5], image[:4] if b == "image" else text[:4], query_modality=a, item_modality=b)
        assert s.shape == (5, 4) and np.isfinite(s).all()
    assert cal.summary().startswith(f"GapCalibrator fitted on {n} pairs")


@FAST
@given(seed=st.integers(0, 2**32 - 1), far=st.floats(1.0, 1e5))
def test_score_maps_extend_linearly_beyond_their_knots_at_any_distance(seed, far):
    """One np.interp over two far end knots serves the usual range; beyond them the same lines continue."""
    from gapcal.calibration.scoremap import ScoreMap

    rng = np.random.default_rng(seed)
    x, y = np.cumsum(rng.uniform(0.01, 1, 12)), np.cumsum(rng.uniform(0.01, 1, 12))
    m = ScoreMap(x, y, float(rng.uniform(0.1, 3)), float(rng.uniform(0.1, 3)))
    probe = np.array([x[0] - far, x[0] - 0.5, x[3], x[-1] + 0.5, x[-1] + far, np.inf, -np.inf])
    want = np.concatenate([y[0] + (probe[:2] - x[0]) * m.low_slope, np.interp(probe[2:3], x, y),
                           y[-1] + (probe[3:5] - x[-1]) * m.high_slope, [np.inf, -np.inf]])
    np.testing.assert_allclose(m(probe), want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m.inverse(m(probe[:5])), probe[:5], rtol=1e-9, atol=1e-6)
