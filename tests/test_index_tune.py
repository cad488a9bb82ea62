"""Stored search settings: MixedIndex.tune picks the cheapest efSearch / nprobe reaching a target recall
against exact calibrated search, keeps them with the index, and searches use them."""

import faiss
import numpy as np
import pytest

from gapcal.stores.faiss import MixedIndex
from gapcal.stores.faiss.tuning import MARGIN_SE, NPROBE_LADDER, recall_at_k

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def grown(x, n, seed):
    """n unit vectors scattered around real COCO embeddings (a corpus larger than 500, same geometry)."""
    rng = np.random.default_rng(seed)
    base = x[rng.integers(0, len(x), n)] + rng.normal(0, 0.6 / np.sqrt(x.shape[1]), (n, x.shape[1]))
    return (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(coco):
    text, image = coco
    return grown(text, 4000, 1), grown(image, 4000, 2)


def exact_top(cal, q, query_modality, corpus, k, removed=()):
    text, image = corpus
    scores = np.hstack([cal.similarity(q, text, query_modality=query_modality, item_modality="text"),
                        cal.similarity(q, image, query_modality=query_modality, item_modality="image")])
    scores[:, list(removed)] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found, truth):
    return float(np.mean([np.isin(t, f).mean() for f, t in zip(found, truth)]))


def filled(cal, spec, corpus):
    index = MixedIndex(cal, spec)
    for (m, x), start in zip((("text", corpus[0]), ("image", corpus[1])), (0, len(corpus[0]))):
        if not index.is_trained(m):
            index.train(x, modality=m)
        index.add(x, modality=m, ids=np.arange(start, start + len(x)))
    return index


@pytest.mark.parametrize("spec, setting", [("HNSW16", "efSearch"), ("IVF64,Flat", "nprobe")])
def test_tuned_settings_reach_the_target_and_survive_save_and_load(cal, coco, corpus, spec, setting, tmp_path):
    index = filled(cal, spec, corpus)
    text, image = coco
    queries = {"text": text[:200], "image": image[:200]}
    for qm, q in queries.items():
        report = index.tune(q, query_modality=qm, target_recall=0.95)
        assert report["reached"] and report["query_modality"] == qm
        assert report["recall"] - report["standard_error"] >= 0.95 and 0 < report["standard_error"] < 0.02
        assert set(report["settings"]) in ({"text", "image"}, {"shared"})
        found = index.search(q, 10, query_modality=qm).ids  # no params: the stored settings
        assert recall(found, exact_top(cal, q, qm, corpus, 10)) >= 0.95
    defaults = index.search_defaults
    assert all(setting in s for per in defaults.values() for s in per.values())
    if setting == "efSearch":  # the out-of-distribution walk needs the wider beam
        assert defaults["text"]["image"]["efSearch"] >= defaults["text"]["text"]["efSearch"]
        assert defaults["image"]["text"]["efSearch"] >= defaults["image"]["image"]["efSearch"]
    else:  # lists of each modality (IVF64: 32 each), or one budget for all 64
        assert all(1 <= s["nprobe"] <= (64 if m == "shared" else 32) for per in defaults.values()
                   for m, s in per.items())
    index.save(tmp_path / "idx")
    loaded = MixedIndex.load(tmp_path / "idx")
    assert loaded.search_defaults == defaults
    np.testing.assert_array_equal(loaded.search(text[:50], 10, query_modality="text").ids,
                                  index.search(text[:50], 10, query_modality="text").ids)


def test_hnsw_stored_settings_beat_faiss_default_on_cross_modal_walks(cal, coco, corpus):
    index = filled(cal, "HNSW16", corpus)
    q = coco[0][200:400]
    truth = exact_top(cal, q, "text", corpus, 10)
    before = recall(index.search(q, 10, query_modality="text").ids, truth)  # faiss's default efSearch 16
    index.tune(coco[0][:200], query_modality="text", target_recall=0.95)
    after = recall(index.search(q, 10, query_modality="text").ids, truth)  # other queries than the tuning ones
    assert after > before and after >= 0.95  # with its margin, the target carries over to other queries
    explicit = index.search(q, 10, query_modality="text", params={"efSearch": 16}).ids  # params still override
    assert recall(explicit, truth) == pytest.approx(before)


def test_tune_skips_removed_items_and_excluded_self_matches(cal, coco, corpus):
    index = filled(cal, "HNSW16", corpus)
    gone = np.arange(0, 4000, 7)
    index.remove(gone)  # HNSW cannot delete: they stay in the graph, hidden
    q = corpus[0][:150]  # stored items as queries: each finds itself, which should not count
    report = index.tune(q, query_modality="text", target_recall=0.95, exclude_ids=np.arange(150))
    assert report["reached"]
    found = index.search(q, 11, query_modality="text").ids
    assert not np.isin(found, gone).any()


def test_flat_needs_no_tuning(flat_index, coco):
    report = flat_index.tune(coco[0][:20], query_modality="text")
    assert report["settings"] == {} and report["recall"] == 1.0 and flat_index.search_defaults == {}


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(target_recall=0), ValueError, r"target_recall must be a number in \(0, 1\], got 0"),
    (dict(target_recall=1.5), ValueError, r"target_recall must be a number in \(0, 1\], got 1.5"),
    (dict(target_recall=True), ValueError, r"target_recall must be a number in \(0, 1\], got True"),
    (dict(k=0), ValueError, "k must be"),
    (dict(exclude_ids=np.arange(3)), ValueError, r"exclude_ids must hold one integer id per query \(20,\)"),
    (dict(exclude_ids=np.zeros(20)), ValueError, r"exclude_ids must hold one integer id per query"),
    (dict(query_modality="audio"), ValueError, "query_modality must be"),
])
def test_tune_errors(flat_index, coco, kwargs, error, message):
    args = {"query_modality": "text", **kwargs}
    with pytest.raises(error, match=message):
        flat_index.tune(coco[0][:20], **args)


def test_search_defaults_are_validated(cal, coco):
    index = MixedIndex(cal, "HNSW8")
    index.add(coco[1][:50], modality="image", ids=np.arange(50))
    index.set_search_defaults({"text": {"image": {"efSearch": 40}}})
    assert index.search_defaults == {"text": {"image": {"efSearch": 40}}}
    for bad, error, message in [
        ({"audio": {}}, ValueError, "a search defaults key .* must be"),
        ({"text": {"image": {"nprobe": 4}}}, ValueError, r"params\['nprobe'\] applies to IVF indexes"),
        ({"text": {"image": {"efSearch": 0}}}, ValueError, r"params\['efSearch'\] must be a positive integer"),
        ({"text": [1]}, TypeError, r"search defaults\['text'\] must map item modalities to settings"),
        ({"text": {"shared": {"efSearch": 8}, "image": {"efSearch": 8}}}, ValueError,
         r"search defaults\['text'\] must hold either 'shared' \(one setting for both modalities\) or item "
         r"modalities, got \['shared', 'image'\]"),
        ([1], TypeError, "search defaults must be a dict"),
    ]:
        with pytest.raises(error, match=message):
            index.set_search_defaults(bad)
        assert index.search_defaults == {"text": {"image": {"efSearch": 40}}}  # unchanged
    index.set_search_defaults(None)
    assert index.search_defaults == {}


@pytest.mark.parametrize("spec, setting", [("HNSW16", {"efSearch": 40}), ("IVF64,Flat", {"nprobe": 5})])
def test_a_stored_shared_setting_searches_as_params_do(cal, coco, corpus, spec, setting):
    index = filled(cal, spec, corpus)
    q = coco[0][:100]
    index.set_search_defaults({"text": {"shared": setting}})
    np.testing.assert_array_equal(index.search(q, 10, query_modality="text").ids,
                                  index.search(q, 10, query_modality="text", params=setting).ids)


def test_ivf_tune_keeps_the_cheaper_of_one_shared_budget_and_lists_per_modality(cal, coco, corpus):
    """The stored setting scans no more lists than the least shared nprobe reaching the target (found here
    through the public API); both modalities have 4000 items in 32 lists, so lists count items alike."""
    index = filled(cal, "IVF64,Flat", corpus)
    for qm, q in (("text", coco[0][:200]), ("image", coco[1][:200])):
        report = index.tune(q, query_modality=qm, target_recall=0.95)
        truth = exact_top(cal, q, qm, corpus, 10)
        def clears(n):  # mean recall minus MARGIN_SE standard errors reaches the target
            mean, error = recall_at_k(index.search(q, 10, query_modality=qm, params={"nprobe": n}).ids, truth)
            return mean - MARGIN_SE * error >= 0.95
        least = next(n for n in NPROBE_LADDER if clears(n))
        chosen = report["settings"]
        if "shared" in chosen:
            assert chosen == {"shared": {"nprobe": least}}
        else:
            assert chosen["text"]["nprobe"] + chosen["image"]["nprobe"] <= least
        assert report["reached"]


def test_ivf_tune_with_one_modality_stored_keeps_the_shared_budget(cal, coco, corpus):
    """Both families then scan the same lists; a tie keeps the shared budget, which params also give."""
    index = MixedIndex(cal, "IVF64,Flat")
    index.train(corpus[1], modality="image")
    index.add(corpus[1], modality="image", ids=np.arange(len(corpus[1])))
    q = coco[0][:200]
    report = index.tune(q, query_modality="text", target_recall=0.95)
    assert set(report["settings"]) == {"shared"} and report["reached"]
    budget = report["settings"]["shared"]
    np.testing.assert_array_equal(index.search(q, 10, query_modality="text").ids,
                                  index.search(q, 10, query_modality="text", params=budget).ids)


def test_a_wrapped_index_has_no_stored_settings(cal, coco):
    raw = faiss.IndexFlatIP(coco[0].shape[1])
    raw.add(coco[1][:20])
    wrapped = MixedIndex.wrap(cal, raw, {"image": np.arange(20), "text": np.empty(0, dtype=np.int64)})
    with pytest.raises(ValueError, match="tune applies to indexes MixedIndex built per modality"):
        wrapped.tune(coco[0][:5], query_modality="text")
    with pytest.raises(ValueError, match="set_search_defaults applies to indexes MixedIndex built per modality"):
        wrapped.set_search_defaults({})
    with pytest.raises(ValueError, match="link applies to indexes MixedIndex built per modality"):
        wrapped.link(coco[0][:5], query_modality="text")
    assert wrapped.search_defaults == {}


def cross_modal_recall(index, cal, q, corpus, ef):
    found = index.search(q, 10, query_modality="text", item_modality="image", params={"efSearch": ef}).ids
    text, image = corpus
    scores = cal.similarity(q, image, query_modality="text", item_modality="image")
    truth = np.argsort(-scores, axis=1, kind="stable")[:, :10] + len(text)
    return recall(found, truth)


def test_link_adds_cross_modal_edges_that_walks_use_and_saves_them(cal, coco, corpus, tmp_path):
    index = filled(cal, "HNSW16", corpus)
    q = coco[0][:200]
    before = cross_modal_recall(index, cal, q, corpus, 16)
    same_before = index.search(coco[1][:100], 10, query_modality="image", item_modality="image",
                               params={"efSearch": 16}).ids
    report = index.link(corpus[0][:3000], query_modality="text")
    assert report["item_modality"] == "image" and report["added"] > 10_000 and report["queries"] == 3000
    after = cross_modal_recall(index, cal, q, corpus, 16)
    assert after > before + 0.1  # real COCO captions as queries, sample queries from other texts
    same_after = index.search(coco[1][:100], 10, query_modality="image", item_modality="image",
                              params={"efSearch": 16}).ids
    assert recall(same_after, same_before) > 0.95  # the image graph still serves image queries
    index.save(tmp_path / "linked")
    loaded = MixedIndex.load(tmp_path / "linked")
    assert cross_modal_recall(loaded, cal, q, corpus, 16) == pytest.approx(after)
    again = index.link(corpus[0][:3000], query_modality="text")
    assert again["added"] == 0  # the same edges are not added twice


def test_link_needs_an_hnsw_graph_over_flat_vectors(cal, coco, flat_index):
    with pytest.raises(ValueError, match="link applies to HNSW indexes over flat vectors .* got a Flat index"):
        flat_index.link(coco[0][:10], query_modality="text")
    index = MixedIndex(cal, "HNSW8")
    index.add(coco[1][:1], modality="image", ids=[5])
    assert index.link(coco[0][:10], query_modality="text")["added"] == 0  # one image: nothing to link
    with pytest.raises(ValueError, match="k must be"):
        index.link(coco[0][:10], query_modality="text", k=1)
    with pytest.raises(ValueError, match="query_modality must be"):
        index.link(coco[0][:10], query_modality="audio")
    with pytest.raises(ValueError, match="dimension d=512"):
        index.link(np.ones((2, 7), dtype=np.float32), query_modality="text")


def test_tune_through_a_transform_in_front_of_the_graph(cal, coco):
    """PCA in front of HNSW: no flat storage to scan, so the exact truth is a walk over every node."""
    text, image = coco
    index = MixedIndex(cal, "PCA64,HNSW16")
    for m, x, start in (("text", text, 0), ("image", image, 500)):
        index.train(x, modality=m)
        index.add(x, modality=m, ids=np.arange(start, start + 500))
    report = index.tune(text[:50], query_modality="text", exclude_ids=np.arange(50))
    assert report["reached"] and set(report["settings"]) == {"text", "image"}


def _link_one_by_one(neighbors, starts, width, src, dst):
    """Reference for plumbing.link_level0: the edges one at a time into the first free slot; a repeated
    edge counts once."""
    added = full = 0
    seen = set()
    for s, d in zip(src.tolist(), dst.tolist()):
        slots = neighbors[starts[s]:starts[s] + width]
        if s == d or (s, d) in seen or (slots == d).any():
            continue
        seen.add((s, d))
        free = np.flatnonzero(slots < 0)
        if len(free):
            slots[free[0]] = d
            added += 1
        else:
            full += 1
    return added, full


@pytest.mark.parametrize("seed", range(4))
def test_link_level0_equals_adding_edges_one_at_a_time(seed):
    from gapcal.stores.faiss import plumbing

    rng = np.random.default_rng(seed)
    graph = faiss.IndexHNSWFlat(8, 4)  # 8 level-0 slots: lists fill up, so refusals happen too
    graph.add(rng.standard_normal((300, 8)).astype(np.float32))
    hnsw = graph.hnsw
    begin, end = (int(v) for v in faiss.vector_to_array(hnsw.cum_nneighbor_per_level)[:2])
    starts = faiss.vector_to_array(hnsw.offsets)[:-1].astype(np.int64) + begin
    expected = faiss.vector_to_array(hnsw.neighbors).copy()
    src = rng.integers(0, 300, 3000)
    dst = np.where(rng.random(3000) < 0.1, src, rng.integers(0, 300, 3000))  # some self edges and repeats
    counts = _link_one_by_one(expected, starts, end - begin, src, dst)
    assert plumbing.link_level0(graph, src, dst) == counts and counts[0] > 0 and counts[1] > 0
    np.testing.assert_array_equal(faiss.vector_to_array(hnsw.neighbors), expected)
    assert plumbing.link_level0(graph, src[:0], dst[:0]) == (0, 0)


def test_recall_at_k_gives_the_mean_share_and_its_standard_error():
    from gapcal.stores.faiss.tuning import recall_at_k

    truth = np.array([[1, 2, 3, 4], [5, 6, -1, -1], [7, 8, 9, 10], [-1, -1, -1, -1]])
    found = np.array([[1, 2, 3, 0], [6, 0, 0, 0], [7, 8, 9, 10], [1, 2, 3, 4]])
    shares = np.array([0.75, 0.5, 1.0])  # the row without true ids does not count
    mean, error = recall_at_k(found, truth)
    assert mean == pytest.approx(shares.mean()) and error == pytest.approx(shares.std(ddof=1) / np.sqrt(3))
    assert recall_at_k(found[:1], truth[:1]) == (0.75, 0.0) and recall_at_k(found[3:], truth[3:]) == (1.0, 0.0)
