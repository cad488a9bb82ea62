"""MixedIndex on the real COCO-500 CLIP embeddings: exactness, recall, ids, removal, threads, bad input."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import pytest

from gapcal.calibration import GapCalibrator
from gapcal.stores.faiss import MixedIndex
from gapcal.stores.core import ReadWriteLock as _ReadWriteLock

N = 500


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def brute_force(cal, queries, query_modality, items):
    """Calibrated scores of every query against ``items`` = {modality: (vectors, ids)}, as (scores, ids)."""
    scores = np.hstack([cal.similarity(queries, x, query_modality=query_modality, item_modality=m) for m, (x, _) in items.items()])
    ids = np.concatenate([ids for _, ids in items.values()])
    return scores, ids


def assert_ranked_like(result, scores, ids, k, tol=1e-4):
    """Same ranking as sorting ``scores`` (ids may only differ between items tied within ``tol``).

    Scores are score maps of float32 inner products; in the far tail a map is steep (about 100 per unit of
    cosine), so last-bit differences between faiss's and numpy's sums reach 1e-5."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    want_ids, want_scores = ids[order], np.take_along_axis(scores, order, 1)
    np.testing.assert_allclose(result.scores, want_scores, atol=tol, rtol=0)
    position = {int(item): j for j, item in enumerate(ids)}
    true_scores = np.take_along_axis(scores, np.vectorize(position.get)(result.ids), 1)
    np.testing.assert_allclose(result.scores, true_scores, atol=tol, rtol=0)
    differ = result.ids != want_ids
    assert np.all(np.abs(want_scores[differ] - result.scores[differ]) < tol)  # only tied items swap
    assert all(len(set(row)) == k for row in result.ids)


def recall(found, truth):
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.mark.parametrize("query_modality", ["text", "image"])
@pytest.mark.parametrize("k", [1, 10, 2 * N])
def test_flat_search_equals_brute_force_over_both_modalities(cal, coco, flat_index, query_modality, k):
    text, image = coco
    queries = text if query_modality == "text" else image
    scores, ids = brute_force(cal, queries, query_modality,
                              {"text": (text, np.arange(N)), "image": (image, np.arange(N, 2 * N))})
    result = flat_index.search(queries, k=k, query_modality=query_modality)
    assert result.ids.shape == result.scores.shape == result.modalities.shape == (N, k)
    assert_ranked_like(result, scores, ids, k)
    np.testing.assert_array_equal(result.modalities, np.where(result.ids < N, "text", "image"))


def test_flat_search_of_one_item_modality(cal, coco, flat_index):
    text, image = coco
    result = flat_index.search(image[:50], k=20, query_modality="image", item_modality="text")
    scores, ids = brute_force(cal, image[:50], "image", {"text": (text, np.arange(N))})
    assert_ranked_like(result, scores, ids, 20)
    assert set(result.modalities.ravel()) == {"text"}


def test_calibration_mixes_modalities_where_raw_scores_do_not(flat_index, coco):
    text, _ = coco
    shares = (flat_index.search(text[:100], k=10, query_modality="text").modalities == "image").mean()
    raw = faiss.IndexFlatIP(512)
    raw.add(np.vstack(coco))
    _, raw_ids = raw.search(text[:100], 10)
    assert (raw_ids >= N).mean() < 0.05 < shares


def test_fewer_items_than_k_are_padded(cal, coco):
    text, image = coco
    index = MixedIndex(cal, "HNSW32")
    index.add(text[:3], modality="text")
    index.add(image[:2], modality="image")
    result = index.search(text[10:12], k=8, query_modality="text")
    assert (result.ids[:, :5] >= 0).all() and (result.ids[:, 5:] == -1).all()
    assert np.isfinite(result.scores[:, :5]).all() and (result.scores[:, 5:] == -np.inf).all()
    assert (result.modalities[:, 5:] == "").all() and set(result.modalities[:, :5].ravel()) == {"text", "image"}


def test_ids_given_or_drawn_at_random_like_milvus_stores(cal, coco):
    """One id policy for every store: given ids must be new; ids=None draws unused ids in [0, 2**62)."""
    text, image = coco
    index = MixedIndex(cal, "Flat")
    drawn = index.add(text[:3], modality="text")
    assert drawn.dtype == np.int64 and len(set(drawn)) == 3 and ((drawn >= 0) & (drawn < 2 ** 62)).all()
    np.testing.assert_array_equal(index.add(image[:2], modality="image", ids=[100, 50]), [100, 50])
    more = index.add(image[2:4], modality="image")
    assert not set(more) & {100, 50, *drawn}
    assert len(index) == 7 and index.count("image") == 4
    np.testing.assert_array_equal(np.sort(index.ids("image")), np.sort([100, 50, *more]))
    assert index.add(np.empty((0, 512)), modality="text").shape == (0,) and len(index) == 7


@pytest.mark.parametrize("spec, params", [("Flat", None), ("HNSW32", {"efSearch": 2 * N}), ("IVF16,Flat", {"nprobe": 16})])
def test_removed_items_are_never_returned(cal, coco, spec, params):
    text, image = coco
    index = ivf_index(cal, coco, spec) if spec.startswith("IVF") else MixedIndex(cal, spec)
    if not len(index):
        index.add(text, modality="text", ids=np.arange(N))
        index.add(image, modality="image", ids=np.arange(N, 2 * N))
    gone = np.concatenate([np.arange(0, N, 3), np.arange(N, 2 * N, 4)])
    assert index.remove(gone) == len(gone)
    assert len(index) == 2 * N - len(gone)
    result = index.search(text[:40], k=2 * N, params=params, query_modality="text")
    assert not np.isin(result.ids, gone).any()
    if spec != "HNSW32":  # exact: Flat, and IVF probing every list
        keep_t, keep_i = np.setdiff1d(np.arange(N), gone), np.setdiff1d(np.arange(N, 2 * N), gone)
        scores, ids = brute_force(cal, text[:40], "text", {"text": (text[keep_t], keep_t),
                                                           "image": (image[keep_i - N], keep_i)})
        k = len(ids)
        result = index.search(text[:40], k=k, params=params, query_modality="text")
        assert_ranked_like(result, scores, ids, k)


def test_hnsw_keeps_removed_ids_reserved(cal, coco):
    text, _ = coco
    index = MixedIndex(cal, "HNSW32")
    index.add(text[:10], modality="text", ids=np.arange(10))
    index.remove([3])
    with pytest.raises(ValueError, match=r"ids must be new, got 1 already in use \(removed ids of an engine that "
                                         r"cannot delete stay reserved\): \[3\]"):
        index.add(text[3:4], modality="text", ids=[3])
    assert 3 not in index.add(text[3:4], modality="text")


@pytest.fixture(scope="module")
def held_out(coco):
    """A calibrator fitted on 400 pairs, those pairs' rows, and the 100 held-out rows used as queries."""
    held = np.random.default_rng(0).permutation(N)
    cal = GapCalibrator(mean_shift=False, projection="none").fit(coco[0][held[:400]], coco[1][held[:400]])
    return cal, held[:400], held[400:]


@pytest.mark.parametrize("spec, params", [("HNSW32", None), ("HNSW32", {"efSearch": 10}), ("PQ16np", None)])
def test_approximate_recall_is_no_worse_than_bare_faiss(coco, held_out, spec, params):
    text, image = coco
    cal, fit, query = held_out
    raw = np.vstack([text[fit], image[fit]])
    bare = faiss.index_factory(512, spec, faiss.METRIC_INNER_PRODUCT)
    bare.train(raw)
    bare.add(raw)
    for name, value in (params or {}).items():
        faiss.ParameterSpace().set_index_parameter(bare, name, value)
    index = MixedIndex(cal, spec)
    for m, x in (("text", text[fit]), ("image", image[fit])):
        if not index.faiss_index(m).is_trained:
            index.train(x, modality=m)
    index.add(text[fit], modality="text", ids=np.arange(400))
    index.add(image[fit], modality="image", ids=np.arange(400, 800))
    for m, queries in (("text", text[query]), ("image", image[query])):
        _, bare_ids = bare.search(queries, 10)
        raw_truth = np.argsort(-(queries @ raw.T), axis=1)[:, :10]
        scores, ids = brute_force(cal, queries, m, {"text": (text[fit], np.arange(400)),
                                                    "image": (image[fit], np.arange(400, 800))})
        truth = ids[np.argsort(-scores, axis=1)[:, :10]]
        found = index.search(queries, k=10, query_modality=m, params=params).ids
        assert recall(found, truth) >= recall(bare_ids, raw_truth) - 0.02


def test_search_settings_pass_through_to_faiss(cal, coco):
    text, image = coco
    index = MixedIndex(cal, "IVF16,Flat")
    index.train(text, modality="text")
    index.train(image, modality="image")
    index.add(text, modality="text", ids=np.arange(N))
    index.add(image, modality="image", ids=np.arange(N, 2 * N))
    scores, ids = brute_force(cal, text[:50], "text", {"text": (text, np.arange(N)), "image": (image, np.arange(N, 2 * N))})
    assert_ranked_like(index.search(text[:50], k=10, params={"nprobe": 16}, query_modality="text"), scores, ids, 10)
    truth = ids[np.argsort(-scores, axis=1)[:, :10]]
    assert recall(index.search(text[:50], k=10, query_modality="text").ids, truth) < 0.9  # the index's own nprobe (1) otherwise


def ivf_index(cal, coco, spec="IVF16,Flat"):
    text, image = coco
    index = MixedIndex(cal, spec)
    index.train(text, modality="text")
    index.train(image, modality="image")
    index.add(text, modality="text", ids=np.arange(N))
    index.add(image, modality="image", ids=np.arange(N, 2 * N))
    return index


def ivf_nlists(index):
    return [faiss.extract_index_ivf(index.faiss_index(m)).nlist for m in ("text", "image")]


def test_ivf_lists_are_shared_out_between_the_modalities(cal):
    assert ivf_nlists(MixedIndex(cal, "IVF16,Flat")) == [8, 8]
    assert ivf_nlists(MixedIndex(cal, "IVF5,Flat")) == [2, 3]
    assert ivf_nlists(MixedIndex(cal, "IVF1,Flat")) == [1, 1]


def test_ivf_scans_nprobe_lists_in_total_like_bare_faiss(cal, coco):
    """One nprobe budget for both modalities: the same number of lists (and of centroids) as a bare IVF."""
    text, _ = coco
    index = ivf_index(cal, coco)
    stats = faiss.cvar.indexIVF_stats
    for item_modality, nprobe in ((None, 3), (None, 16), ("image", 3)):
        stats.reset()
        index.search(text[:50], k=10, item_modality=item_modality, params={"nprobe": nprobe}, query_modality="text")
        assert stats.nq == 50 * (1 if item_modality else 2)
        assert stats.nlist == 50 * min(nprobe, 16 if item_modality is None else 8)


def test_ivf_stored_settings_give_each_modality_its_own_lists(cal, coco):
    """Stored nprobe per item modality: each scans its own best lists, as a search of that modality alone does;
    params still share one budget out."""
    text, _ = coco
    index = ivf_index(cal, coco)
    index.set_search_defaults({"text": {"text": {"nprobe": 2}, "image": {"nprobe": 5}}})
    stats = faiss.cvar.indexIVF_stats
    stats.reset()
    result = index.search(text[:50], k=10, query_modality="text")
    assert stats.nlist == 50 * (2 + 5)
    alone = [index.search(text[:50], k=10, query_modality="text", item_modality=m, params={"nprobe": n})
             for m, n in (("text", 2), ("image", 5))]
    order = np.argsort(-np.hstack([a.scores for a in alone]), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(result.ids, np.take_along_axis(np.hstack([a.ids for a in alone]), order, 1))
    stats.reset()
    index.search(text[:50], k=10, query_modality="text", params={"nprobe": 3})
    assert stats.nlist == 50 * 3
    stats.reset()
    index.search(text[:50], k=10, query_modality="image")  # nothing stored for image queries: faiss's nprobe (1)
    assert stats.nlist == 50 * 1


def test_ivf_shares_the_budget_better_than_an_even_split(cal, coco):
    """Lists ranked across modalities by calibrated reach beat probing nprobe/2 of each modality's lists."""
    text, image = coco
    index = ivf_index(cal, coco, "IVF32,Flat")
    items = {"text": (text, np.arange(N)), "image": (image, np.arange(N, 2 * N))}
    for m, queries in (("text", text), ("image", image)):
        scores, ids = brute_force(cal, queries, m, items)
        truth = ids[np.argsort(-scores, axis=1)[:, :10]]
        halves = [index.search(queries, k=10, query_modality=m, item_modality=t, params={"nprobe": 2})
                  for t in ("text", "image")]
        merged = np.argsort(-np.hstack([h.scores for h in halves]), axis=1)[:, :10]
        even = np.take_along_axis(np.hstack([h.ids for h in halves]), merged, 1)
        shared = index.search(queries, k=10, query_modality=m, params={"nprobe": 4}).ids
        assert recall(shared, truth) > recall(even, truth) + 0.01


@pytest.mark.parametrize("spec", ["IVF8,PQ16x4np", "IVF8,SQ8", "PCA128,IVF8,Flat"])
def test_ivf_lists_scan_as_faiss_scans_them(cal, coco, spec):
    """Preassigned scans give faiss's own scores, including residual codes that need the centroid score."""
    text, image = coco
    index = ivf_index(cal, coco, spec)
    for m in ("text", "image"):
        result = index.search(image[:30], k=10, query_modality="image", item_modality=m, params={"nprobe": 4})
        sub = index.faiss_index(m)
        faiss.extract_index_ivf(sub).nprobe = 4
        u = cal.transform_query(image[:30], query_modality="image", item_modality=m)
        scores, ids = sub.search(np.pad(u, ((0, 0), (0, sub.d - u.shape[1]))), 10)  # zero columns up to its width
        np.testing.assert_array_equal(result.ids, ids)
        np.testing.assert_allclose(result.scores, cal.map_scores(scores, query_modality="image", item_modality=m),
                                   atol=1e-4)


def test_trained_ivf_template_keeps_its_lists(cal, coco):
    text, image = coco
    template = faiss.index_factory(cal.output_dim_, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    template.train(np.vstack([cal.transform(text, modality="text"), cal.transform(image, modality="image")]))
    index = MixedIndex(cal, template)
    assert ivf_nlists(index) == [8, 8]
    index.add(text, modality="text", ids=np.arange(N))
    index.add(image, modality="image", ids=np.arange(N, 2 * N))
    scores, ids = brute_force(cal, text[:40], "text", {"text": (text, np.arange(N)), "image": (image, np.arange(N, 2 * N))})
    assert_ranked_like(index.search(text[:40], k=10, params={"nprobe": 16}, query_modality="text"), scores, ids, 10)
    assert all(spread > 0 for spread in index._backend.spread.values())  # measured on the first add


def test_pq_widths_are_padded_with_zero_columns(cal, coco):
    text, _ = coco
    index = MixedIndex(cal, "PQ64x4fs")
    assert index.faiss_index("text").d == 576 and cal.output_dim_ == 513
    index.train(text, modality="text")
    index.add(text, modality="text")
    assert index.search(text[:5], k=3, item_modality="text", query_modality="text").ids.shape == (5, 3)


def test_faiss_index_object_as_template(cal, coco):
    text, image = coco
    template = faiss.IndexHNSWFlat(cal.output_dim_, 16, faiss.METRIC_INNER_PRODUCT)
    template.hnsw.efSearch = 64
    index = MixedIndex(cal, template)
    index.add(text, modality="text")
    index.add(image, modality="image")
    assert template.ntotal == 0 and index.spec == "HNSW16"
    assert index.faiss_index("image").ntotal == N


@pytest.mark.parametrize("spec", ["HNSW32", "IVF16,Flat"])
def test_concurrent_searches_equal_serial_ones(cal, coco, spec):
    text, image = coco
    index = ivf_index(cal, coco, spec) if spec.startswith("IVF") else MixedIndex(cal, spec)
    if not len(index):
        index.add(text, modality="text")
        index.add(image, modality="image")
    batches = [(text if j % 2 else image)[j * 20:(j + 1) * 20] for j in range(20)]
    modalities = ["text" if j % 2 else "image" for j in range(20)]
    serial = [index.search(b, k=15, query_modality=m) for b, m in zip(batches, modalities)]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda bm: index.search(bm[0], k=15, query_modality=bm[1]),
                                 zip(batches, modalities)))
    for s, p in zip(serial, parallel):
        np.testing.assert_array_equal(s.ids, p.ids)
        np.testing.assert_array_equal(s.scores, p.scores)


def test_adds_and_removes_are_atomic_for_concurrent_searches(cal, coco):
    """Searches during add/remove see the index before or after each change, never in between."""
    text, image = coco
    index = MixedIndex(cal, "Flat")
    index.add(text[:400], modality="text", ids=np.arange(400))
    index.add(image[:400], modality="image", ids=np.arange(400, 800))
    extra, extra_ids = text[400:], np.arange(1000, 1100)
    queries = image[400:420]
    without = index.search(queries, k=30, query_modality="image")
    index.add(extra, modality="text", ids=extra_ids)
    with_extra = index.search(queries, k=30, query_modality="image")
    assert not np.array_equal(without.ids, with_extra.ids)
    stop, seen = threading.Event(), []

    def writer():
        try:
            for i in range(15):
                deadline = time.monotonic() + 5
                while len(seen) <= i and time.monotonic() < deadline:  # let searches in between the changes
                    time.sleep(0.001)
                index.remove(extra_ids)
                index.add(extra, modality="text", ids=extra_ids)
        finally:
            stop.set()

    def reader():
        while not stop.is_set():
            seen.append(index.search(queries, k=30, query_modality="image").ids)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(writer)] + [pool.submit(reader) for _ in range(3)]
        for future in futures:
            future.result()  # re-raises any error from a thread
    assert len(seen) > 3
    for ids in seen:
        assert np.array_equal(ids, without.ids) or np.array_equal(ids, with_extra.ids)


def test_read_write_lock_lets_readers_share_and_writers_exclude():
    lock, inside, log = _ReadWriteLock(), threading.Barrier(2, timeout=5), []

    def read():
        with lock.read():
            inside.wait()  # both readers must be inside at once, else this times out
            log.append("read")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    with lock.write():
        blocked = threading.Thread(target=lambda: lock.read().__enter__() or log.append("late read"))
        blocked.start()
        blocked.join(0.2)
        assert blocked.is_alive() and log == ["read", "read"]
    blocked.join(5)
    assert log == ["read", "read", "late read"]


def test_refitted_calibrator_is_refused(coco):
    text, image = coco
    cal = GapCalibrator(mean_shift=False, projection="none").fit(text[:200], image[:200])
    index = MixedIndex(cal, "Flat")
    index.add(text[:10], modality="text")
    cal.partial_fit(text[200:300], image[200:300])
    with pytest.raises(ValueError, match="calibrator was refitted after this MixedIndex was made"):
        index.search(text[:2], query_modality="text")
    with pytest.raises(ValueError, match="calibrator was refitted"):
        index.add(text[:2], modality="text")


def test_an_option_changed_after_fit_is_refused_not_silently_used(coco):
    """The issue's case: hubness switched off after the index was built changed 91 of 100 results silently."""
    text, image = coco
    cal = GapCalibrator(mean_shift=False, projection="none").fit(text[:200], image[:200])
    index = MixedIndex(cal, "Flat")
    index.add(text[200:300], modality="text")
    index.add(image[200:300], modality="image")
    before = index.search(text[:5], k=10, query_modality="text")
    cal.hubness = False
    with pytest.raises(ValueError, match="option hubness was changed from True to False after fitting"):
        index.search(text[:5], k=10, query_modality="text")
    cal.hubness = True
    np.testing.assert_array_equal(index.search(text[:5], k=10, query_modality="text").ids, before.ids)


# ---------------------------------------------------------------------- bad input leaves everything as it was
def _state(index, queries):
    result = index.search(queries, k=5, query_modality="text")
    return len(index), result.ids.copy(), result.scores.copy()


def _assert_same(before, after):
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[2], after[2])


@pytest.mark.parametrize("call, error, match", [
    (lambda ix, t: ix.add(t[:, :300], modality="text"), ValueError, r"vectors must have dimension d=512 .*got shape \(5, 300\)"),
    (lambda ix, t: ix.add(t, modality="text", payload={"x": [1]}), ValueError,
     r"payload\['x'\] must hold one value per vector \(5\), got 1"),
    (lambda ix, t: ix.add(t, modality="audio"), ValueError, r"modality must be one of \('text', 'image'\), got 'audio'"),
    (lambda ix, t: ix.add(t, modality="text", ids=[0, 1000, 5, 3000, 3001]), ValueError, r"ids must be new, got 3 already in use .*\[0, 5, 1000\]"),
    (lambda ix, t: ix.add(t, modality="text", ids=[7, 7, 8, 9, 10]), ValueError, r"ids must not repeat an id, got repeats of \[7\]"),
    (lambda ix, t: ix.add(t, modality="text", ids=[1000, 1001]), ValueError, r"ids must hold one id per vector \(5\), got 2"),
    (lambda ix, t: ix.add(t, modality="text", ids=[-1, 1001, 1002, 1003, 1004]), ValueError, r"ids must be non-negative"),
    (lambda ix, t: ix.add(t, modality="text", ids=np.array([2**63, 1, 2, 3, 4], dtype=np.uint64)), ValueError,
     r"ids must fit in int64 \(below 2\*\*63\), got 9223372036854775808"),
    (lambda ix, t: ix.add([[1.0, 2.0], [3.0]], modality="text"), ValueError,
     r"vectors must be an array of shape \(n, d\); got nested sequences of unequal lengths \(list of 2 rows\)"),
    (lambda ix, t: ix.search(t, 5, query_modality=np.array(["text"])), TypeError,
     r"query_modality must be a str, one of \('text', 'image'\), got ndarray"),
    (lambda ix, t: ix.add(t, modality="text", ids=np.linspace(0, 1, 5) + 2000), TypeError, r"ids must be an array of integer ids"),
    (lambda ix, t: ix.add(np.where(np.arange(512) == 0, np.nan, t), modality="text"), ValueError, r"vectors must be finite"),
    (lambda ix, t: ix.remove([1, 99999]), ValueError, r"ids must all be in the MixedIndex, got 1 that are not: \[99999\]"),
    (lambda ix, t: ix.remove([1, 1]), ValueError, r"ids must not repeat an id"),
    (lambda ix, t: ix.search(t, k=0, query_modality="text"), ValueError, r"k must be an integer >= 1, got 0"),
    (lambda ix, t: ix.search(t, k=-3, query_modality="text"), ValueError, r"k must be an integer >= 1, got -3"),
    (lambda ix, t: ix.search(t, k=2.5, query_modality="text"), TypeError, r"k must be an integer, got 2.5"),
    (lambda ix, t: ix.search(t[:0], query_modality="text"), ValueError, r"queries must hold at least one row, got shape \(0, 512\)"),
    (lambda ix, t: ix.search(t[:, :10], query_modality="text"), ValueError, r"queries must have dimension d=512"),
    (lambda ix, t: ix.search(np.where(np.arange(len(t))[:, None] == 2, np.nan, t), query_modality="text"), ValueError,
     r"queries must be finite: rows \[2\] hold NaN"),
    (lambda ix, t: ix.search(np.where(np.arange(len(t))[:, None] == 1, 0.0, t), query_modality="text"), ValueError,
     r"queries must not hold all-zero rows .*: rows \[1\]"),
    (lambda ix, t: ix.search(t, query_modality="video"), ValueError, r"query_modality must be one of"),
    (lambda ix, t: ix.search(t, item_modality="txt", query_modality="text"), ValueError, r"item_modality must be one of"),
    (lambda ix, t: ix.search(t, params={"nprobe": 4}, query_modality="text"), ValueError, r"params\['nprobe'\] applies to IVF indexes, got a HNSW32"),
    (lambda ix, t: ix.search(t, params={"ef": 4}, query_modality="text"), ValueError, r"params keys must be among \['efSearch', 'nprobe'\], got 'ef'"),
    (lambda ix, t: ix.search(t, params={"efSearch": 0}, query_modality="text"), ValueError, r"params\['efSearch'\] must be a positive integer"),
    (lambda ix, t: ix.train(t, modality="text"), ValueError, r"modality 'text': its faiss index \(HNSW32\) is already trained"),
])
def test_bad_input_names_the_problem_and_changes_nothing(cal, coco, call, error, match):
    text, image = coco
    index = MixedIndex(cal, "HNSW32")
    index.add(text[:100], modality="text", ids=np.arange(100))
    index.add(image[:100], modality="image", ids=np.arange(1000, 1100))
    index.remove([5])
    before = _state(index, text[200:203])
    with pytest.raises(error, match=match):
        call(index, text[300:305])
    _assert_same(before, _state(index, text[200:203]))


L2_QUANTIZER = faiss.IndexFlatL2(513)  # kept alive: the IVF index below only points to it


@pytest.mark.parametrize("make, error, match", [
    (lambda c: MixedIndex(c, 42), TypeError, r"index must be a faiss index_factory string or an empty faiss.Index, got int"),
    (lambda c: MixedIndex(c, "NoSuchIndex"), ValueError, r"index must be a faiss index_factory string .* got 'NoSuchIndex'"),
    (lambda c: MixedIndex(c, faiss.IndexFlatL2(513)), ValueError,
     r"index must use faiss.METRIC_INNER_PRODUCT.* got faiss.METRIC_L2"),
    (lambda c: MixedIndex(c, faiss.IndexFlatIP(512)), ValueError, r"index must have dimension >= 513 .* got d=512"),
    (lambda c: MixedIndex(c, faiss.IndexIDMap(faiss.IndexFlatIP(513))), TypeError, r"without an IndexIDMap"),
    (lambda c: MixedIndex(c, faiss.IndexIVFFlat(L2_QUANTIZER, 513, 4, faiss.METRIC_INNER_PRODUCT)), ValueError,
     r"index must have an inner-product coarse quantizer .* got faiss.METRIC_L2"),
    (lambda c: MixedIndex("calibrator", "Flat"), TypeError, r"calibrator must be a fitted gapcal GapCalibrator, got str"),
    (lambda c: MixedIndex(GapCalibrator(), "Flat"), ValueError, r"calibrator must be fitted"),
])
def test_bad_construction_is_refused(cal, make, error, match):
    with pytest.raises(error, match=match):
        make(cal)


def test_non_empty_template_is_refused_and_untouched(cal, coco):
    template = faiss.IndexFlatIP(513)
    template.add(np.ones((3, 513), dtype=np.float32))
    with pytest.raises(ValueError, match=r"index must be empty .* holding 3 vectors: use MixedIndex.wrap"):
        MixedIndex(cal, template)
    assert template.ntotal == 3


def test_untrained_index_asks_for_training(cal, coco):
    text, _ = coco
    index = MixedIndex(cal, "IVF16,Flat")
    with pytest.raises(ValueError, match=r"the text items' faiss index \(IVF16,Flat\) is not trained: call train"):
        index.add(text[:20], modality="text")
    with pytest.raises(ValueError, match=r"vectors could not train the text items' index \(IVF16,Flat\)"):
        index.train(text[:5], modality="text")
    assert len(index) == 0 and not index.faiss_index("text").is_trained


def test_demo_rows_show_raw_own_medium_and_calibrated_mix(cal, coco):
    from gapcal.stores.faiss import demo_rows, format_demo_rows

    rows = demo_rows(*coco, cal, query_rows=(0, 1, 2), k=5)
    assert [(r["modality"], r["row"]) for r in rows] == [(m, j) for m in ("text", "image") for j in (0, 1, 2)]
    for r in rows:
        for ranking in (r["before"], r["after"]):
            assert len(ranking) == 5 and (r["modality"], r["row"]) not in [(m, j) for m, j, _, _ in ranking]
            assert [s for _, _, s, _ in ranking] == sorted((s for _, _, s, _ in ranking), reverse=True)
            assert all(pair == (m != r["modality"] and j == r["row"]) for m, j, _, pair in ranking)
        assert {m for m, _, _, _ in r["before"]} == {r["modality"]}  # raw CLIP: the query's own medium only
    assert {m for r in rows for m, _, _, _ in r["after"]} == {"text", "image"}
    text = format_demo_rows(rows, captions=[f"caption {j}" for j in range(N)])
    assert "query: text  #0    'caption 0'" in text and "image #2 *" in text
    with pytest.raises(ValueError, match=r"query_rows must be row numbers in \[0, 500\), got \[500\]"):
        demo_rows(*coco, cal, query_rows=[500])


@pytest.mark.parametrize("spec", ["IVF16,Flat", "PQ16np"])
def test_an_untrained_modality_holds_nothing_to_find(cal, coco, spec):
    text, image = coco
    index = MixedIndex(cal, spec)
    assert (index.search(image[:3], k=4, query_modality="image").ids == -1).all()
    index.train(text, modality="text")
    index.add(text, modality="text", ids=np.arange(N))
    result = index.search(image[:20], k=5, query_modality="image", params={"nprobe": 8} if "IVF" in spec else None)
    assert (result.modalities == "text").all() and (result.ids < N).all() and np.isfinite(result.scores).all()


def test_chunked_adds_store_every_vector(cal, coco, monkeypatch):
    """Adds larger than a chunk reserve room first, then append chunk by chunk: the same index as one add."""
    import gapcal.stores.faiss.backends as mixed_module

    text, image = coco
    whole = MixedIndex(cal, "Flat")
    whole.add(text, modality="text", ids=np.arange(N))
    monkeypatch.setattr(mixed_module, "_CHUNK", 64)
    chunked = MixedIndex(cal, "Flat")
    chunked.add(text[:10], modality="text", ids=np.arange(10))
    chunked.add(text[10:], modality="text", ids=np.arange(10, N))
    a, b = (faiss.downcast_index(ix.faiss_index("text").index) for ix in (whole, chunked))
    assert a.ntotal == b.ntotal == N
    stored = [faiss.vector_to_array(ix.codes).view(np.float32).reshape(N, -1) for ix in (a, b)]
    np.testing.assert_allclose(stored[0], stored[1], atol=1e-6)  # BLAS blocking differs in the last bit
    np.testing.assert_array_equal(whole.search(image[:20], k=10, query_modality="image").ids,
                                  chunked.search(image[:20], k=10, query_modality="image").ids)


def test_k_beyond_the_items_gives_them_all_without_allocating_for_k(flat_index, coco):
    got = flat_index.search(coco[0][:3], k=2 ** 31, query_modality="text")
    assert got.ids.shape == (3, 2 * N) and (got.counts == 2 * N).all()
    one = flat_index.search(coco[0][:3], k=2 ** 31, query_modality="text", item_modality="image")
    assert one.ids.shape == (3, N)


def test_payload_is_kept_returned_saved_and_dropped_with_its_items(cal, coco, tmp_path):
    text, image = coco
    index = MixedIndex(cal, "Flat")
    index.add(text[:50], modality="text", ids=np.arange(50), payload={"caption": [f"c{i}" for i in range(50)]})
    index.add(image[:50], modality="image", ids=np.arange(100, 150), payload={"path": [f"{i}.jpg" for i in range(50)],
                                                                            "size": [[i, i] for i in range(50)]})
    scores, ids, modalities = result = index.search(image[:4], k=8, query_modality="image",
                                                    fields=["caption", "path", "size"])
    for q in range(4):
        for rank, (i, m) in enumerate(zip(ids[q], modalities[q])):
            if m == "text":
                assert result.fields["caption"][q, rank] == f"c{i}" and result.fields["path"][q, rank] is None
            else:
                assert result.fields["path"][q, rank] == f"{i - 100}.jpg"
                assert result.fields["size"][q, rank] == [i - 100] * 2
    assert result.hits(0)[0].payload.keys() == {"caption", "path", "size"}
    index.save(tmp_path / "ix")
    loaded = MixedIndex.load(tmp_path / "ix")
    again = loaded.search(image[:4], k=8, query_modality="image", fields=["caption", "path", "size"])
    for name in ("caption", "path", "size"):
        assert again.fields[name].tolist() == result.fields[name].tolist()
    loaded.remove([0, 100])
    assert loaded._backend.payload["caption"].get(0) is None and loaded._backend.payload["path"].get(100) is None
    with pytest.raises(ValueError, match="filter applies to Milvus stores"):
        index.search(image[:1], query_modality="image", filter="n > 1")


def test_faiss_search_parameters_objects_are_accepted(cal, coco):
    text, image = coco
    index = MixedIndex(cal, "HNSW32")
    index.add(text, modality="text", ids=np.arange(N))
    index.add(image, modality="image", ids=np.arange(N, 2 * N))
    params = faiss.SearchParametersHNSW()
    params.efSearch = 256
    a = index.search(text[:20], k=10, query_modality="text", params=params)
    b = index.search(text[:20], k=10, query_modality="text", params={"efSearch": 256})
    np.testing.assert_array_equal(a.ids, b.ids)
    ivf_params = faiss.SearchParametersIVF()
    with pytest.raises(ValueError, match=r"params\['nprobe'\] applies to IVF indexes, got a HNSW32 index"):
        index.search(text[:2], query_modality="text", params=ivf_params)
    params.sel = faiss.IDSelectorRange(0, 10)
    with pytest.raises(ValueError, match="params must not carry an ID selector"):
        index.search(text[:2], query_modality="text", params=params)
    with pytest.raises(TypeError, match="params must be a dict of faiss search settings or a faiss.SearchParameters"):
        index.search(text[:2], query_modality="text", params=[("efSearch", 16)])
