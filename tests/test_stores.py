"""MilvusStore against the real Milvus Lite engine (a local file per test module) on the COCO-500 embeddings."""

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gapcal.calibration import GapCalibrator
from gapcal.stores import SearchResult
from gapcal.stores.core import merge_ranked
from gapcal.stores.milvus import MilvusStore

N = 500
TOL = 1e-4  # score maps are steep in the far tail: float32 sums of faiss, Milvus and numpy differ there


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return str(tmp_path_factory.mktemp("milvus") / "gapcal.db")


@pytest.fixture(scope="module")
def store(uri, cal, coco):
    """Texts 0..N-1 (payload n = id) and images N..2N-1 in a FLAT collection; tests only read it."""
    text, image = coco
    store = MilvusStore(cal, uri, "coco", show_progress=False)
    store.add(text, modality="text", ids=np.arange(N), payload={"n": np.arange(N)})
    store.add(image, modality="image", ids=np.arange(N, 2 * N))
    yield store
    store.close()


_names = iter(f"c{i}" for i in range(10**6))


@pytest.fixture
def fresh(uri, cal):
    """A new empty collection in the module's Milvus Lite file."""
    store = MilvusStore(cal, uri, next(_names), show_progress=False)
    yield store
    store.client.drop_collection(store.collection)
    store.close()


def assert_same_ranking(got, want, cal, queries, query_modality, items):
    """Scores within TOL at every rank; ids equal except where two items tie within TOL (Milvus and faiss sum
    in float32 in different orders, so such items may swap: 2 of 5000 top-10 places on COCO-500), and every
    returned score is the item's true calibrated score."""
    assert got.ids.shape == want.ids.shape
    np.testing.assert_allclose(got.scores, want.scores, atol=TOL, rtol=0)
    found = got.ids >= 0
    np.testing.assert_array_equal(found, want.ids >= 0)
    truth = {m: cal.similarity(queries, x, query_modality=query_modality, item_modality=m) for m, (x, _) in items.items()}
    column = {int(i): (m, j) for m, (_, ids) in items.items() for j, i in enumerate(ids)}
    for row, col in zip(*np.nonzero(found)):
        m, j = column[int(got.ids[row, col])]
        assert got.modalities[row, col] == m
        assert abs(truth[m][row, j] - got.scores[row, col]) < TOL
    differ = got.ids != want.ids
    assert np.all(np.abs(got.scores[differ] - want.scores[differ]) < TOL)
    assert all(len(set(row[row >= 0])) == int((row >= 0).sum()) for row in got.ids)


# ---------------------------------------------------------------------- equality with MixedIndex on FLAT
@pytest.mark.parametrize("query_modality", ["text", "image"])
def test_top10_equals_mixed_index(store, flat_index, cal, coco, query_modality):
    text, image = coco
    queries = text if query_modality == "text" else image
    got = store.search(queries, k=10, query_modality=query_modality)
    want = flat_index.search(queries, k=10, query_modality=query_modality)
    assert isinstance(got, SearchResult)
    assert_same_ranking(got, want, cal, queries, query_modality,
                        {"text": (text, np.arange(N)), "image": (image, np.arange(N, 2 * N))})
    assert set(got.modalities.ravel()) == {"text", "image"}  # calibrated: both modalities rank near the top


@pytest.mark.parametrize("query_modality", ["text", "image"])
@pytest.mark.parametrize("k", [2 * N, 2 * N + 37])
def test_whole_ranking_equals_mixed_index(store, flat_index, cal, coco, query_modality, k):
    text, image = coco
    queries = (text if query_modality == "text" else image)[::25]
    got = store.search(queries, k=k, query_modality=query_modality)
    want = flat_index.search(queries, k=k, query_modality=query_modality)
    assert_same_ranking(got, want, cal, queries, query_modality,
                        {"text": (text, np.arange(N)), "image": (image, np.arange(N, 2 * N))})
    assert got.ids.shape[1] == 2 * N and (got.ids >= 0).all()  # k beyond the items gives them all


def test_one_item_modality(store, flat_index, cal, coco):
    text, image = coco
    got = store.search(image[:40], k=30, query_modality="image", item_modality="text")
    want = flat_index.search(image[:40], k=30, query_modality="image", item_modality="text")
    assert_same_ranking(got, want, cal, image[:40], "image", {"text": (text, np.arange(N))})
    assert set(got.modalities.ravel()) == {"text"}


def test_filter_and_output_fields_on_the_payload(store, cal, coco):
    text, image = coco
    got = store.search(image[:20], k=15, query_modality="image", filter="n < 100", fields=["n"])
    truth = cal.similarity(image[:20], text[:100], query_modality="image", item_modality="text")
    want = np.argsort(-truth, axis=1, kind="stable")[:, :15]
    np.testing.assert_allclose(got.scores, np.take_along_axis(truth, want, 1), atol=TOL, rtol=0)
    np.testing.assert_array_equal(got.ids, want)  # images have no field n, so the filter leaves texts 0..99
    np.testing.assert_array_equal(got.fields["n"].astype(np.int64), got.ids)


def test_reopening_with_the_saved_calibrator_finds_the_same_items(store, uri, cal, coco, tmp_path):
    cal.save(tmp_path / "cal.npz")
    with MilvusStore(GapCalibrator.load(tmp_path / "cal.npz"), uri, "coco") as again:
        assert len(again) == 2 * N and again.count("text") == again.count("image") == N
        got, want = (again.search(coco[0][:5], k=10, query_modality="text"),
                     store.search(coco[0][:5], k=10, query_modality="text"))
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)


def test_closing_one_store_leaves_another_on_the_same_uri_working(store, uri, cal, coco):
    MilvusStore(cal, uri, "coco").close()
    assert store.search(coco[0][:3], k=5, query_modality="text").ids.shape == (3, 5) and len(store) == 2 * N


def test_ivf_index_and_search_params_pass_through(uri, flat_index, cal, coco):
    text, image = coco
    ivf = MilvusStore(cal, uri, "coco_ivf", index_params={"index_type": "IVF_FLAT", "params": {"nlist": 16}})
    try:
        ivf.add(text, modality="text", ids=np.arange(N))
        ivf.add(image, modality="image", ids=np.arange(N, 2 * N))
        assert ivf.client.describe_index("coco_ivf", index_name="vector")["index_type"] == "IVF_FLAT"
        got = ivf.search(text[:50], k=10, params={"nprobe": 16}, query_modality="text")  # every list probed: exact
        assert_same_ranking(got, flat_index.search(text[:50], k=10, query_modality="text"), cal, text[:50], "text",
                            {"text": (text, np.arange(N)), "image": (image, np.arange(N, 2 * N))})
    finally:
        ivf.client.drop_collection("coco_ivf")
        ivf.close()


def test_concurrent_searches_equal_serial_ones(store, coco):
    batches = [coco[i % 2][20 * i:20 * i + 20] for i in range(8)]
    serial = [store.search(q, k=10, query_modality=("text", "image")[i % 2]) for i, q in enumerate(batches)]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda iq: store.search(iq[1], k=10, query_modality=("text", "image")[iq[0] % 2]),
                                 enumerate(batches)))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)


# ---------------------------------------------------------------------- the collection's calibrator
def test_another_calibrator_is_refused(store, uri, coco):
    other = GapCalibrator(projection="none").fit(*coco)
    assert other.output_dim_ == store.calibrator.output_dim_
    with pytest.raises(ValueError, match=r"calibrator must be the one collection 'coco' was built with \(fingerprint "
                                         rf"{store.calibrator.fingerprint_}\), got fingerprint {other.fingerprint_}"):
        MilvusStore(other, uri, "coco")
    assert len(store) == 2 * N


def test_another_dimension_is_refused(store, uri, coco):
    small = GapCalibrator().fit(coco[0][:, :256], coco[1][:, :256])
    with pytest.raises(ValueError, match=r"dimension of collection 'coco': it stores vectors of width 513 "
                                         r"\(embeddings of d=512\), the calibrator makes width 257 \(d=256\)"):
        MilvusStore(small, uri, "coco")
    assert len(store) == 2 * N


def test_metadata_lives_in_properties_or_description(store):
    desc = store.client.describe_collection("coco")
    stored = [json.loads(t) for t in ((desc.get("properties") or {}).get("gapcal.store"),
                                      (desc.get("description") or "").partition("store ")[2] or None) if t]
    assert stored and all(m["fingerprint"] == store.calibrator.fingerprint_ and m["vector_dim"] == 513 for m in stored)


def test_foreign_collection_is_refused(store, uri, cal):
    store.client.create_collection("plain", dimension=513)
    try:
        with pytest.raises(ValueError, match="collection 'plain' .* was not made by gapcal"):
            MilvusStore(cal, uri, "plain")
    finally:
        store.client.drop_collection("plain")


def test_other_index_type_on_reopen_is_refused(store, uri, cal):
    with pytest.raises(ValueError, match="index_params asks for a HNSW index, but collection 'coco' already has a "
                                         "FLAT index"):
        MilvusStore(cal, uri, "coco", index_params={"index_type": "HNSW"})


def test_refitted_calibrator_is_refused(uri, coco):
    own = GapCalibrator(projection="none").fit(*coco)
    with MilvusStore(own, uri, "refit") as refit:
        refit.add(coco[0][:10], modality="text")
        own.fit(coco[0][:300], coco[1][:300])
        for call in (lambda: refit.search(coco[0][:2], query_modality="text"), lambda: refit.add(coco[0][:2], modality="text"),
                     lambda: refit.remove([0])):
            with pytest.raises(ValueError, match="calibrator was refitted after this MilvusStore was made"):
                call()
        refit.client.drop_collection("refit")


# ---------------------------------------------------------------------- add, remove, len, progress
def test_add_remove_len(fresh, cal, coco):
    text, image = coco
    empty = fresh.search(text[:2], k=3, query_modality="text")
    assert len(fresh) == 0 and (empty.ids == -1).all() and (empty.scores == -np.inf).all()
    ids = fresh.add(text[:120], modality="text")
    assert ids.dtype == np.int64 and len(np.unique(ids)) == 120 and (ids >= 0).all()
    fresh.add(image[:80], modality="image", ids=np.arange(80))
    assert len(fresh) == 200 and fresh.count("text") == 120 and fresh.count("image") == 80
    gone = np.concatenate([ids[::2], np.arange(0, 80, 4)])
    assert fresh.remove(gone) == 80
    assert len(fresh) == 120 and fresh.count("text") == 60 and fresh.count("image") == 60
    res = fresh.search(np.vstack([text[:120:2], image[:80:4]]), k=200, query_modality="text")
    assert not np.isin(res.ids, gone).any()
    assert (res.ids >= 0).sum(axis=1).tolist() == [120] * len(res.ids)
    with pytest.raises(ValueError, match=r"ids must all be in the MilvusStore, got 1 that are not: \[999\]"):
        fresh.remove([1, 999])
    assert len(fresh) == 120 and fresh.count("image") == 60  # id 1 is still there
    assert fresh.remove([]) == 0


def test_batches_with_progress_bar(uri, cal, coco, capsys):
    with MilvusStore(cal, uri, "progress", batch_size=64, show_progress=True) as shown:
        shown.add(coco[0][:300], modality="text")
        err = capsys.readouterr().err
        assert "progress += text" in err and "300/300" in err
        shown.client.drop_collection("progress")
    with MilvusStore(cal, uri, "quiet", batch_size=64) as quiet:  # None: only on a terminal (pytest captures)
        quiet.add(coco[0][:300], modality="text")
        assert capsys.readouterr().err == ""
        assert len(quiet) == 300
        quiet.client.drop_collection("quiet")


def test_failed_batch_removes_the_batches_already_written(fresh, coco, monkeypatch):
    fresh.add(coco[1][:5], modality="image", ids=np.arange(5))
    with MilvusStore(fresh.calibrator, fresh.uri, fresh.collection, batch_size=100, show_progress=False) as store:
        real_insert, calls = store.client.insert, []

        def insert_then_fail(*args, **kwargs):  # the real insert, until the third batch's connection "drops"
            calls.append(len(args[1]))
            if len(calls) == 3:
                raise RuntimeError("connection lost")
            return real_insert(*args, **kwargs)

        monkeypatch.setattr(store.client, "insert", insert_then_fail)
        with pytest.raises(RuntimeError, match="connection lost"):
            store.add(coco[0][:250], modality="text", ids=np.arange(100, 350))
    assert calls == [100, 100, 50]
    assert len(fresh) == 5 and fresh.count("text") == 0


def bad_adds(text):
    return [
        (lambda s: s.add(text[:3], modality="audio"), ValueError, r"modality must be one of \('text', 'image'\), got 'audio'"),
        (lambda s: s.add(text[:3, :100], modality="text"), ValueError, r"vectors must have dimension d=512 .* got shape \(3, 100\)"),
        (lambda s: s.add(np.full((2, 512), np.nan), modality="text"), ValueError, r"vectors must be finite: rows \[0, 1\]"),
        (lambda s: s.add(text[:3], modality="text", ids=[7, 8, 8]), ValueError, r"ids must not repeat an id, got repeats of \[8\]"),
        (lambda s: s.add(text[:3], modality="text", ids=[1, 2]), ValueError, r"ids must hold one id per vector \(3\), got 2"),
        (lambda s: s.add(text[:3], modality="text", ids=[0, 41, 42]), ValueError,
         r"ids must be new, got 2 already in use .*: \[41, 42\]"),
        (lambda s: s.add(text[:3], modality="text", ids=[-1, 5, 6]), ValueError, "ids must be non-negative"),
        (lambda s: s.add(text[:3], modality="text", ids=["a", "b", "c"]), TypeError, "ids must be an array of integer ids"),
        (lambda s: s.add(text[:3], modality="text", payload={"url": ["a", "b"]}), ValueError,
         r"payload\['url'\] must hold one value per vector \(3\), got 2"),
        (lambda s: s.add(text[:3], modality="text", payload={"modality": ["a"] * 3}), ValueError,
         "payload field names must be an identifier .* other than"),
        (lambda s: s.add(text[:3], modality="text", payload={"x": [object()] * 3}), TypeError, r"payload\['x'\] must hold JSON"),
        (lambda s: s.add(text[:3], modality="text", payload={"x": [float("nan")] * 3}), TypeError, r"payload\['x'\] must hold JSON"),
        (lambda s: s.add(text[:3], modality="text", payload={"x": "abc"}), TypeError, r"payload\['x'\] must be a list or array"),
        (lambda s: s.add(text[:3], modality="text", payload=["a", "b", "c"]), TypeError, "payload must map field names"),
    ]


@pytest.mark.parametrize("case", range(len(bad_adds(np.zeros((3, 512))))))
def test_bad_add_names_the_problem_and_writes_nothing(fresh, coco, case):
    fresh.add(coco[0][40:45], modality="text", ids=np.arange(40, 45))
    call, error, match = bad_adds(coco[0])[case]
    with pytest.raises(error, match=match):
        call(fresh)
    assert len(fresh) == 5 and fresh.count("text") == 5


@pytest.mark.parametrize("kwargs, error, match", [
    ({"query_modality": "audio"}, ValueError, r"query_modality must be one of \('text', 'image'\), got 'audio'"),
    ({"item_modality": "video"}, ValueError, r"item_modality must be one of \('text', 'image'\), got 'video'"),
    ({"k": 0}, ValueError, "k must be an integer >= 1, got 0"),
    ({"k": 2.5}, TypeError, "k must be an integer, got 2.5"),
    ({"filter": 3}, TypeError, "filter must be a Milvus boolean expression string, got int"),
    ({"params": 64}, TypeError, "params must be a dict of Milvus index search settings"),
    ({"fields": "n"}, TypeError, "fields must be a list of payload field names, got 'n'"),
])
def test_bad_search_names_the_problem(store, coco, kwargs, error, match):
    with pytest.raises(error, match=match):
        store.search(coco[0][:2], **{"query_modality": "text", **kwargs})


@pytest.mark.parametrize("queries, match", [
    (np.zeros((0, 512)), r"queries must hold at least one row, got shape \(0, 512\)"),
    (np.ones((2, 500)), r"queries must have dimension d=512 .* got shape \(2, 500\)"),
    (np.ones(512), r"queries must be a 2-D array"),
    (np.vstack([np.ones((1, 512)), np.full((1, 512), np.nan)]), r"queries must be finite: rows \[1\] hold NaN"),
    (np.vstack([np.zeros((1, 512)), np.ones((1, 512))]), r"queries must not hold all-zero rows .*: rows \[0\]"),
])
def test_bad_queries_name_the_problem(store, queries, match):
    with pytest.raises(ValueError, match=match):
        store.search(queries, query_modality="text")


# ---------------------------------------------------------------------- construction and connection
@pytest.mark.parametrize("kwargs, error, match", [
    ({"collection": "my-items"}, ValueError, "collection must be a Milvus collection name .* got 'my-items'"),
    ({"calibrator": "cal.npz"}, TypeError, "calibrator must be a fitted gapcal GapCalibrator, got str"),
    ({"calibrator": GapCalibrator()}, ValueError, "calibrator must be fitted"),
    ({"uri": 19530}, TypeError, "uri must be a local file path ending in .db .* got int"),
    ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
    ({"show_progress": "yes"}, TypeError, "show_progress must be None .* got 'yes'"),
    ({"timeout": 0}, ValueError, "timeout must be a positive number of seconds, got 0"),
    ({"token": 123}, TypeError, "token must be a string"),
    ({"index_params": {"index_type": "FLAT", "metric_type": "COSINE"}}, ValueError,
     r"index_params\['metric_type'\] must be 'IP'.* got 'COSINE'"),
    ({"index_params": {"kind": "HNSW"}}, ValueError, r"index_params keys must be among .* got \['kind'\]"),
    ({"index_params": "HNSW"}, TypeError, "index_params must be a dict like"),
])
def test_bad_construction_is_refused_before_connecting(uri, cal, kwargs, error, match):
    args = {"uri": uri, "collection": "never", "calibrator": cal, **kwargs}
    with pytest.raises(error, match=match):
        MilvusStore(args.pop("calibrator"), args.pop("uri"), args.pop("collection"), **args)


def test_unreachable_server_names_the_uri(cal):
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"could not connect to Milvus at uri='http://127.0.0.1:{port}' "
                                              r"\(timeout 2 s\)"):
        MilvusStore(cal, f"http://127.0.0.1:{port}", "items", timeout=2)
    assert time.monotonic() - started < 30


def test_missing_local_folder_names_the_uri(cal, tmp_path):
    path = str(tmp_path / "absent" / "items.db")
    with pytest.raises(ConnectionError, match=f"could not connect to Milvus at uri='{path}'"):
        MilvusStore(cal, path, "items")


def test_a_file_another_process_holds_is_named_with_the_lock_reason(store, uri, cal, tmp_path):
    """Milvus Lite lets one process open a .db file; the second gets why, in one line, no logged traceback."""
    cal.save(tmp_path / "cal.npz")
    code = ("from gapcal import GapCalibrator; from gapcal.stores.milvus import MilvusStore\n"
            f"try:\n    MilvusStore(GapCalibrator.load({str(tmp_path / 'cal.npz')!r}), {uri!r}, 'coco', timeout=10)\n"
            "except ConnectionError as error:\n    print(error)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert f"could not connect to Milvus at uri='{uri}'" in out.stdout
    assert "DataDirLockedError: another process holds the lock" in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def test_importing_gapcal_does_not_import_pymilvus():
    code = ("import sys, gapcal, gapcal.stores; gapcal.GapCalibrator; import gapcal.calibration, gapcal.data; "
            "assert 'pymilvus' not in sys.modules and 'faiss' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_milvus_store_needs_no_faiss():
    import subprocess
    import sys

    code = "import sys, gapcal.stores.milvus; print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr


def test_a_filter_cannot_reach_the_other_modality(store, coco):
    """Each modality is searched in its own partition: an expression naming the other modality finds nothing
    there (issue 13's injection `year >= 0) or (modality == "text"` returned texts labelled as images)."""
    got = store.search(coco[1][:5], k=20, query_modality="image", item_modality="image",
                       filter='n >= 0 or modality == "text"')
    assert set(got.modalities.ravel()) <= {"image", ""}
    assert (got.ids[got.ids >= 0] >= N).all()


def test_search_results_unpack_like_faiss_and_give_hits_per_query(store, coco):
    scores, ids, modalities = result = store.search(coco[0][:3], k=4, query_modality="text", fields=["n"])
    assert scores.shape == ids.shape == modalities.shape == (3, 4) and result.counts.tolist() == [4, 4, 4]
    hits = result.hits(0)
    assert [h.rank for h in hits] == [1, 2, 3, 4] and hits[0].id == ids[0, 0] and hits[0].score == scores[0, 0]
    assert all(("n" in h.payload) for h in hits)
    listed = result.to_list()
    assert json.loads(json.dumps(listed))[2][0]["id"] == int(ids[2, 0])


def test_k_is_capped_at_the_stored_items_and_at_milvus_top_k_limit(store, coco, monkeypatch):
    got = store.search(coco[0][:2], k=2 ** 31, query_modality="text")
    assert got.ids.shape == (2, 2 * N) and (got.counts == 2 * N).all()
    import gapcal.stores.milvus as milvus_module

    monkeypatch.setattr(milvus_module, "MAX_TOPK", 100)
    with pytest.raises(ValueError, match=r"k must be at most 100 \(Milvus's top-k limit\), got 500"):
        store.search(coco[0][:2], k=500, query_modality="text")


@pytest.mark.parametrize("params, match", [
    ({"efSearch": 64}, r"params keys must be among \['ef', 'nprobe', .*\], got 'efSearch'"),
    ({"ef": 0}, r"params\['ef'\] must be a positive number below 2\*\*31, got 0"),
    ({"nprobe": 2 ** 31}, r"params\['nprobe'\] must be a positive number below 2\*\*31"),
    ({"radius": 0.5}, r"params keys must be among .* got 'radius'"),
])
def test_unknown_or_bad_search_settings_are_refused(store, coco, params, match):
    with pytest.raises(ValueError, match=match):
        store.search(coco[0][:2], query_modality="text", params=params)


@pytest.mark.parametrize("expression", ['year >= 0) or (modality == "text"', "n <<< 3", "no_such_function(n)"])
def test_a_bad_filter_is_a_value_error_naming_it(store, coco, expression, capfd):
    with pytest.raises(ValueError, match=r"filter must be a Milvus boolean expression on this collection's fields, got "):
        store.search(coco[0][:2], query_modality="text", filter=expression)
    assert "Traceback" not in capfd.readouterr().err  # pymilvus's own log of the failure is kept quiet


def test_merge_of_one_query_equals_its_row_of_a_batch():
    """One query takes a shorter path through the merge: same order (ties too), scores, ids and modalities."""
    rng = np.random.default_rng(0)
    parts = [(np.round(rng.random((6, 4)), 1), rng.integers(-1, 50, (6, 4))),
             (np.round(rng.random((6, 3)), 1).astype(np.float32), rng.integers(-1, 50, (6, 3)))]
    batch = merge_ranked(("text", "image"), parts, 5)
    for row in range(6):
        one = merge_ranked(("text", "image"), [(s[row:row + 1], i[row:row + 1]) for s, i in parts], 5)
        for got, expected in zip(one, batch, strict=True):
            np.testing.assert_array_equal(got, expected[row:row + 1])
