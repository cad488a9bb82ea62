"""Property-based tests (hypothesis) of the store entry points: any array, layout, modality string or ids
either gives a clear error naming the argument, leaving the index as it was, or the exact answer."""

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gapcal import GapCalibrator
from gapcal.stores.faiss import MixedIndex

D = 12
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])
DTYPES = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "uint64", "bool", "complex64", "U3",
          "datetime64[s]"]
pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def small_cal():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((80, D))
    text = signal + 0.8 * rng.standard_normal((80, D)) + 2 * rng.standard_normal(D)
    image = signal + 0.8 * rng.standard_normal((80, D)) + 2 * rng.standard_normal(D)
    return GapCalibrator(sample_size=80).fit(text, image)


def fresh_index(cal):
    rng = np.random.default_rng(1)
    index = MixedIndex(cal, "Flat")
    index.add(rng.standard_normal((6, D)), modality="text", ids=np.arange(6))
    index.add(rng.standard_normal((5, D)), modality="image", ids=np.arange(100, 105))
    return index


@st.composite
def matrices(draw):
    """Arrays of any dtype and shape, with NaN/inf/extremes, in any memory layout; half of them (n, D) of real
    numbers drawn element by element (mostly valid, down to subnormal and up to the dtype's extremes)."""
    if draw(st.sampled_from([True, True, False])):
        dtype = np.dtype(draw(st.sampled_from(DTYPES[:8])))
        elements = hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False) if dtype.kind == "f" else None
        arr = draw(hnp.arrays(dtype, (draw(st.sampled_from([3, 1, 5, 0])), D), elements=elements, fill=st.nothing()))
    else:
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.one_of(st.tuples(st.integers(0, 5), st.sampled_from([D, D - 1, D + 1, 0])),
                               hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)))
        arr = draw(hnp.arrays(np.dtype(dtype), shape))
    layout = draw(st.sampled_from(["C", "F", "strided", "reversed", "readonly", "list"]))
    if arr.ndim == 2 and layout == "F":
        arr = np.asfortranarray(arr)
    elif arr.ndim == 2 and layout == "strided":
        wide = np.zeros((arr.shape[0], 2 * arr.shape[1]), dtype=arr.dtype)
        wide[:, ::2] = arr
        arr = wide[:, ::2]
    elif arr.ndim >= 1 and layout == "reversed":
        arr = arr[::-1]
    elif layout == "readonly":
        arr.setflags(write=False)
    elif layout == "list" and arr.dtype.kind in "fiu":
        return arr.tolist()
    return arr


def valid_rows(x) -> bool:
    """The reference rule: real numbers, shape (n, D), every row finite and not all zero."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu" or arr.ndim != 2 or arr.shape[1] != D:
        return False
    wide = arr.astype(np.float64)
    return bool(np.isfinite(wide).all() and (wide != 0).any(axis=1).all())


def mostly(good, bad):
    """``good`` three times in four, else ``bad`` (hypothesis's own choice leans to the first, simplest branch)."""
    return st.sampled_from([False, False, False, True]).flatmap(lambda wrong: bad if wrong else good)


modality_values = mostly(st.sampled_from(["text", "image"]),
                         st.one_of(st.sampled_from(["Text", "image ", "", "audio"]), st.text(max_size=6), st.none(),
                                   st.integers(), st.just(np.array(["text"])), st.just(b"text")))


def snapshot(index):
    return {m: index.ids(m).copy() for m in ("text", "image")}


def assert_unchanged(index, before):
    for m, ids in before.items():
        np.testing.assert_array_equal(index.ids(m), ids)


def exact_scores(cal, index, probe, items, modality, new_ids):
    """The scores ``index`` gives ``new_ids`` for ``probe``, and the calibrator's own scores for them."""
    found = index.search(probe, k=len(index), query_modality="text")
    where = {int(i): j for j, i in enumerate(found.ids[0])}
    got = np.array([found.scores[0, where[int(i)]] for i in new_ids])
    want = cal.similarity(probe, items, query_modality="text", item_modality=modality)[0]
    return got, want


@SETTINGS
@given(vectors=matrices(), modality=modality_values, with_ids=st.booleans())
def test_add_accepts_exactly_the_valid_rows(small_cal, vectors, modality, with_ids):
    index = fresh_index(small_cal)
    before = snapshot(index)
    n = len(vectors) if hasattr(vectors, "__len__") and np.ndim(vectors) >= 1 else 0
    ids = np.arange(1000, 1000 + n) if with_ids else None
    ok_modality = isinstance(modality, str) and modality in ("text", "image")
    event(f"accepted={ok_modality and valid_rows(vectors)}")
    if not (ok_modality and valid_rows(vectors)):
        with pytest.raises((ValueError, TypeError), match=r"^(modality|vectors|ids) must"):
            index.add(vectors, modality=modality, ids=ids)
        assert_unchanged(index, before)
        return
    new = index.add(vectors, modality=modality, ids=ids)
    assert len(new) == len(vectors) and len(index) == 11 + len(vectors)
    if len(new):
        probe = np.random.default_rng(2).standard_normal((1, D))
        got, want = exact_scores(small_cal, index, probe, np.asarray(vectors), modality, new)
        np.testing.assert_allclose(got, want, atol=1e-4)


@SETTINGS
@given(ids=mostly(st.one_of(st.lists(st.integers(6, 2**63 - 1), unique=True, max_size=4),
                            hnp.arrays(st.sampled_from([np.int32, np.uint64, np.int8]), st.integers(0, 4),
                                       elements=st.integers(6, 127), unique=True)),
                  st.one_of(st.lists(st.integers(-2**63, 2**64), max_size=4), st.lists(st.integers(0, 7), max_size=4),
                            hnp.arrays(st.sampled_from([np.float64, np.bool_, np.int64]), st.integers(0, 4)),
                            st.just(np.arange(6).reshape(2, 3)), st.text(max_size=3), st.just([[1, 2], [3]]))))
def test_ids_are_new_distinct_non_negative_integers_or_refused(small_cal, ids):
    index = fresh_index(small_cal)
    before = snapshot(index)
    arr = None
    try:
        arr = np.asarray(ids)
    except ValueError:
        pass
    rows = np.ones((len(ids) if hasattr(ids, "__len__") else 1, D))
    good = (arr is not None and arr.ndim == 1 and (arr.dtype.kind in "iu" or arr.size == 0)
            and arr.size == len(rows) and (arr.size == 0 or (arr.max() < 2**63 and arr.min() >= 0
                                                              and len(np.unique(arr)) == arr.size
                                                              and not np.isin(arr, np.r_[0:6, 100:105]).any())))
    event(f"accepted={good}")
    if not good:
        with pytest.raises((ValueError, TypeError), match=r"^ids must"):
            index.add(rows, modality="image", ids=ids)
        assert_unchanged(index, before)
        return
    np.testing.assert_array_equal(index.add(rows, modality="image", ids=ids), arr.astype(np.int64))
    assert set(index.ids("image")) == set(before["image"]) | set(arr.tolist())


@SETTINGS
@given(queries=matrices(), query_modality=modality_values, item_modality=st.one_of(st.none(), modality_values),
       k=mostly(st.one_of(st.integers(1, 30), st.just(2**40)),
               st.one_of(st.integers(-3, 0), st.floats(0, 3), st.booleans(), st.text(max_size=2))))
def test_search_answers_exactly_or_names_the_bad_argument(small_cal, queries, query_modality, item_modality, k):
    index = fresh_index(small_cal)
    ok = (isinstance(query_modality, str) and query_modality in ("text", "image")
          and (item_modality is None or isinstance(item_modality, str) and item_modality in ("text", "image"))
          and isinstance(k, int) and not isinstance(k, bool) and k >= 1
          and valid_rows(queries) and len(queries) > 0)
    event(f"accepted={ok}")
    if not ok:
        with pytest.raises((ValueError, TypeError), match=r"^(query_modality|item_modality|k|queries) must"):
            index.search(queries, k, query_modality=query_modality, item_modality=item_modality)
        return
    result = index.search(queries, k, query_modality=query_modality, item_modality=item_modality)
    targets = ("text", "image") if item_modality is None else (item_modality,)
    rng = np.random.default_rng(1)
    stored = {"text": (rng.standard_normal((6, D)), np.arange(6))}
    stored["image"] = (rng.standard_normal((5, D)), np.arange(100, 105))
    scores = np.hstack([small_cal.similarity(queries, stored[m][0], query_modality=query_modality, item_modality=m)
                        for m in targets])
    ids = np.concatenate([stored[m][1] for m in targets])
    width = min(k, len(ids))
    assert result.ids.shape == (len(queries), width)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :width]
    np.testing.assert_allclose(result.scores, np.take_along_axis(scores, order, 1), atol=1e-4)
    assert set(np.unique(result.ids)) <= set(ids.tolist())


@SETTINGS
@given(queries=matrices(), modality=modality_values)
def test_calibrator_transforms_accept_exactly_the_valid_rows(small_cal, queries, modality):
    ok = isinstance(modality, str) and modality in ("text", "image") and valid_rows(queries)
    event(f"accepted={ok}")
    if not ok:
        with pytest.raises((ValueError, TypeError), match=r"^(modality|x) must"):
            small_cal.transform(queries, modality=modality)
        return
    out = small_cal.transform(queries, modality=modality)
    reference = small_cal.transform(np.asarray(queries, dtype=np.float64).copy(), modality=modality)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, reference, atol=1e-5)


def test_faiss_reference_agrees_on_a_plain_case(small_cal):
    """Anchor for the properties above: the Flat MixedIndex equals an exact IndexFlatIP per modality."""
    index = fresh_index(small_cal)
    probe = np.random.default_rng(3).standard_normal((2, D))
    rng = np.random.default_rng(1)
    text = rng.standard_normal((6, D))
    flat = faiss.IndexFlatIP(small_cal.output_dim_)
    flat.add(small_cal.transform(text, modality="text"))
    inner, rows = flat.search(small_cal.transform_query(probe, query_modality="image", item_modality="text"), 6)
    want = small_cal.map_scores(inner, query_modality="image", item_modality="text")
    got = index.search(probe, 6, query_modality="image", item_modality="text")
    np.testing.assert_allclose(got.scores, want, atol=1e-5)
    np.testing.assert_array_equal(got.ids, rows)
