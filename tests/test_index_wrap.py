"""MixedIndex.wrap on existing faiss indexes of raw COCO-500 embeddings with the user's own ids."""

import faiss
import numpy as np
import pytest

from gapcal.calibration import GapCalibrator
from gapcal.stores.faiss import MixedIndex

N = 500
TEXT_IDS, IMAGE_IDS = np.arange(N) * 7 + 3, np.arange(N, 2 * N) * 7 + 3
MODALITIES = {"text": TEXT_IDS, "image": IMAGE_IDS}


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def cal(coco):
    """The stages the default calibrator selects on COCO-500 (hubness on), without the selection's cost."""
    return GapCalibrator(mean_shift=False, projection="none").fit(*coco)


def raw_index(coco, kind="IDMap,Flat"):
    """A user's index of raw embeddings of both modalities, with their ids."""
    text, image = coco
    vectors = np.vstack([text, image])
    if kind == "IDMap,Flat":
        index = faiss.IndexIDMap(faiss.IndexFlatIP(512))
    elif kind == "IDMap2,HNSW32":
        index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(512, 32, faiss.METRIC_INNER_PRODUCT))
    elif kind == "IVF16,Flat":
        index = faiss.index_factory(512, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    else:
        raise AssertionError(kind)
    index.add_with_ids(vectors, np.concatenate([TEXT_IDS, IMAGE_IDS]))
    return index


def truth(cal, coco, queries, query_modality, k=10):
    text, image = coco
    scores = np.hstack([cal.similarity(queries, text, query_modality=query_modality, item_modality="text"),
                        cal.similarity(queries, image, query_modality=query_modality, item_modality="image")])
    ids = np.concatenate([TEXT_IDS, IMAGE_IDS])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, 1), scores, ids


def recall(found, want):
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, want)]))


@pytest.mark.parametrize("query_modality", ["text", "image"])
def test_wrapped_scores_are_exact_and_recall_is_measured(cal, coco, query_modality):
    queries = coco[0] if query_modality == "text" else coco[1]
    index = MixedIndex.wrap(cal, raw_index(coco), MODALITIES)
    assert index.layout == "wrapped" and len(index) == 2 * N
    result = index.search(queries, k=10, query_modality=query_modality)
    want_ids, _, scores, ids = truth(cal, coco, queries, query_modality)
    column = {int(item): j for j, item in enumerate(ids)}
    exact = np.take_along_axis(scores, np.vectorize(column.get)(result.ids), 1)
    np.testing.assert_allclose(result.scores, exact, atol=1e-4, rtol=0)
    assert (np.diff(result.scores, axis=1) <= 0).all()
    np.testing.assert_array_equal(result.modalities, np.where(np.isin(result.ids, TEXT_IDS), "text", "image"))
    # measured on COCO-500 with the default calibrator (hubness on): 0.9518/0.9580 with 1 candidate per
    # result, 0.9946/0.9936 with 2, 0.9998/0.9996 with 4 (the default), 1.0 with 8
    assert recall(result.ids, want_ids) >= 0.999
    one = MixedIndex.wrap(cal, raw_index(coco), MODALITIES, candidates=1)
    assert 0.93 < recall(one.search(queries, k=10, query_modality=query_modality).ids, want_ids) < 0.99


def test_wrap_is_exact_when_every_stage_is_linear(coco):
    """No hubness, mean shift or projection, unit-norm stored vectors: the query side carries everything."""
    cal = GapCalibrator(hubness=False, mean_shift=False, projection="none").fit(*coco)
    index = MixedIndex.wrap(cal, raw_index(coco), MODALITIES, candidates=1)
    for m, queries in zip(("text", "image"), (coco[0][:60], coco[1][:60])):
        want_ids, want_scores, _, _ = truth(cal, coco, queries, m, k=2 * N)
        result = index.search(queries, k=2 * N, query_modality=m)
        np.testing.assert_allclose(result.scores, want_scores, atol=1e-4, rtol=0)
        differ = result.ids != want_ids
        assert np.all(np.abs(want_scores[differ] - result.scores[differ]) < 1e-5)  # only ties swap


@pytest.mark.parametrize("kind", ["IDMap2,HNSW32", "IVF16,Flat"])
def test_auto_reindexes_approximate_indexes_and_leaves_them_as_they_were(cal, coco, kind):
    raw = raw_index(coco, kind)
    ivf = faiss.try_extract_index_ivf(raw)
    index = MixedIndex.wrap(cal, raw, MODALITIES)
    assert index.layout == "per-modality" and index.spec == {"IDMap2,HNSW32": "HNSW32", "IVF16,Flat": "IVF16,Flat"}[kind]
    params = {"nprobe": 16} if ivf is not None else {"efSearch": 64}
    result = index.search(coco[1][:100], k=10, query_modality="image", params=params)
    assert recall(result.ids, truth(cal, coco, coco[1][:100], "image")[0]) >= 0.99
    assert raw.ntotal == 2 * N
    if ivf is not None:
        assert ivf.direct_map.type == faiss.DirectMap.NoMap


def test_in_place_ivf_reads_vectors_through_a_direct_map(cal, coco):
    raw = raw_index(coco, "IVF16,Flat")
    index = MixedIndex.wrap(cal, raw, MODALITIES, reindex=False)
    assert index.layout == "wrapped" and faiss.extract_index_ivf(raw).direct_map.type == faiss.DirectMap.Hashtable
    result = index.search(coco[1][:100], k=10, query_modality="image", params={"nprobe": 16})
    assert recall(result.ids, truth(cal, coco, coco[1][:100], "image")[0]) >= 0.999


def test_reindex_rebuilds_an_exact_per_modality_index(cal, coco):
    raw = raw_index(coco)
    native = MixedIndex(cal, "Flat")
    native.add(coco[0], modality="text", ids=TEXT_IDS)
    native.add(coco[1], modality="image", ids=IMAGE_IDS)
    index = MixedIndex.wrap(cal, raw, MODALITIES, reindex=True)
    assert index.layout == "per-modality" and index.spec == "Flat" and len(index) == 2 * N
    a, b = index.search(coco[0][:50], k=30, query_modality="text"), native.search(coco[0][:50], k=30, query_modality="text")
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_reindex_accepts_any_metric_and_restores_ivf_direct_maps(cal, coco):
    _, image = coco
    l2 = faiss.index_factory(512, "IVF8,Flat")  # L2 metric, no direct map
    l2.train(np.vstack(coco))
    l2.add_with_ids(np.vstack(coco), np.concatenate([TEXT_IDS, IMAGE_IDS]))
    index = MixedIndex.wrap(cal, l2, MODALITIES, reindex=True)
    assert index.spec == "IVF8,Flat" and index.count("text") == N
    assert l2.direct_map.type == faiss.DirectMap.NoMap
    want_ids = truth(cal, coco, image[:50], "image")[0]
    assert recall(index.search(image[:50], k=10, query_modality="image", params={"nprobe": 8}).ids, want_ids) == 1.0


def test_wrapped_add_and_remove(cal, coco):
    text, image = coco
    raw = faiss.IndexIDMap(faiss.IndexFlatIP(512))
    raw.add_with_ids(np.vstack([text[:400], image[:400]]), np.concatenate([TEXT_IDS[:400], IMAGE_IDS[:400]]))
    index = MixedIndex.wrap(cal, raw, {"text": TEXT_IDS[:400], "image": IMAGE_IDS[:400]})
    index.add(text[400:], modality="text", ids=TEXT_IDS[400:])
    index.add(image[400:], modality="image", ids=IMAGE_IDS[400:])
    assert raw.ntotal == 2 * N and len(index) == 2 * N
    full = index.search(text[:20], k=10, query_modality="text").ids
    np.testing.assert_array_equal(full, MixedIndex.wrap(cal, raw_index(coco), MODALITIES).search(text[:20], k=10, query_modality="text").ids)
    gone = full[:, 0]
    index.remove(np.unique(gone))
    assert raw.ntotal == 2 * N and len(index) == 2 * N - len(np.unique(gone))
    assert not np.isin(index.search(text[:20], k=10, query_modality="text").ids, gone).any()
    with pytest.raises(ValueError, match="ids must be new"):
        index.add(text[:1], modality="text", ids=gone[:1])


def test_positional_ids_continue_on_add(cal, coco):
    text, image = coco
    raw = faiss.IndexFlatIP(512)
    raw.add(np.vstack([text[:100], image[:100]]))
    index = MixedIndex.wrap(cal, raw, {"text": np.arange(100), "image": np.arange(100, 200)})
    np.testing.assert_array_equal(index.add(text[100:103], modality="text"), [200, 201, 202])
    with pytest.raises(ValueError, match=r"ids must be the next positions 203\.\.204: the engine's index keeps its items by position"):
        index.add(image[100:102], modality="image", ids=[500, 501])
    assert raw.ntotal == 203 and len(index) == 203


@pytest.mark.parametrize("make, error, match", [
    (lambda raw, cal: MixedIndex.wrap(cal, "index", MODALITIES), TypeError, r"index must be a faiss.Index holding raw"),
    (lambda raw, cal: MixedIndex.wrap(cal, raw, {"text": TEXT_IDS}), ValueError,
     r"modalities must cover every id in the index: 500 are missing, e\.g\. \[3503, "),
    (lambda raw, cal: MixedIndex.wrap(cal, raw, {"text": TEXT_IDS, "image": np.append(IMAGE_IDS, 1)}), ValueError,
     r"modalities lists 1 ids that the index does not hold, e\.g\. \[1\]"),
    (lambda raw, cal: MixedIndex.wrap(cal, raw, {"text": TEXT_IDS, "image": np.append(IMAGE_IDS[1:], 3)}),
     ValueError, r"modalities must give each id one modality, got ids in both: \[3\]"),
    (lambda raw, cal: MixedIndex.wrap(cal, raw, {"text": TEXT_IDS, "audio": IMAGE_IDS}), ValueError,
     r"modalities keys must be among \('text', 'image'\), got \['audio'\]"),
    (lambda raw, cal: MixedIndex.wrap(cal, raw, [TEXT_IDS, IMAGE_IDS]), TypeError,
     r"modalities must map 'text' and 'image' to arrays of ids, got list"),
    (lambda raw, cal: MixedIndex.wrap(cal, raw, MODALITIES, candidates=0), ValueError,
     r"candidates must be an integer >= 1, got 0"),
    (lambda raw, cal: MixedIndex.wrap(cal, raw, MODALITIES, reindex="yes"), ValueError,
     r"reindex must be 'auto', True or False, got 'yes'"),
    (lambda raw, cal: MixedIndex.wrap(cal, faiss.IndexFlatIP(768), {}), ValueError,
     r"index must hold raw embeddings of the calibrator's dimension d=512, got an index with d=768"),
    (lambda raw, cal: MixedIndex.wrap(cal, faiss.index_factory(512, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT), {}),
     ValueError, r"index must be trained and hold the raw embeddings, got an untrained IVF4,Flat"),
])
def test_bad_wrap_input_is_refused(cal, coco, make, error, match):
    raw = raw_index(coco)
    with pytest.raises(error, match=match):
        make(raw, cal)
    assert raw.ntotal == 2 * N


def test_wrap_refuses_metrics_and_indexes_it_cannot_search_per_modality(cal, coco):
    l2 = faiss.IndexFlatL2(512)
    l2.add(coco[0][:10])
    with pytest.raises(ValueError, match=r"index must use faiss.METRIC_INNER_PRODUCT.* got faiss.METRIC_L2"):
        MixedIndex.wrap(cal, l2, {"text": np.arange(10)})
    pq = faiss.index_factory(512, "PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    pq.train(np.vstack(coco))
    pq.add(coco[0][:300])
    with pytest.raises(ValueError, match=r"index must accept faiss ID selectors.* a PQ16x4fs index does not .*"
                                         r"use reindex=True"):
        MixedIndex.wrap(cal, pq, {"text": np.arange(300)}, reindex=False)
    assert MixedIndex.wrap(cal, pq, {"text": np.arange(300)}).layout == "per-modality"
    wrapped = MixedIndex.wrap(cal, raw_index(coco), MODALITIES)
    with pytest.raises(ValueError, match=r"train applies to per-modality indexes"):
        wrapped.train(coco[0], modality="text")
