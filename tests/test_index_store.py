"""MixedIndex save/load: round trips for every layout, atomic overwrites, refusals of mismatched files."""

import json
import os

import faiss
import numpy as np
import pytest

from gapcal._format import sealed, sha256_of
from gapcal.calibration import GapCalibrator
from gapcal.stores.faiss import MixedIndex

N = 500


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def cal(coco):
    """The stages the default calibrator selects on COCO-500 (hubness on), without the selection's cost."""
    return GapCalibrator(mean_shift=False, projection="none").fit(*coco)


def build(cal, coco, spec):
    text, image = coco
    index = MixedIndex(cal, spec)
    if not index.faiss_index("text").is_trained:
        index.train(text, modality="text")
        index.train(image, modality="image")
    index.add(text, modality="text", ids=np.arange(N))
    index.add(image, modality="image", ids=np.arange(10_000, 10_000 + N))
    index.remove([3, 10_007])
    return index


def assert_same_results(a, b, queries):
    for m in ("text", "image"):
        ra, rb = a.search(queries, k=20, query_modality=m), b.search(queries, k=20, query_modality=m)
        np.testing.assert_array_equal(ra.ids, rb.ids)
        np.testing.assert_array_equal(ra.scores, rb.scores)
        np.testing.assert_array_equal(ra.modalities, rb.modalities)


def files(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("spec", ["Flat", "HNSW32", "IVF16,Flat", "PQ16np"])
def test_round_trip_keeps_results_ids_and_removals(cal, coco, tmp_path, spec):
    index = build(cal, coco, spec)
    index.save(tmp_path / "ix")
    loaded = MixedIndex.load(tmp_path / "ix")
    assert len(loaded) == len(index) == 2 * N - 2 and loaded.spec == index.spec
    assert loaded.calibrator.fingerprint_ == cal.fingerprint_
    assert_same_results(index, loaded, coco[0][:30])
    # ids stay taken after loading: removed ones too where faiss could not delete them
    assert loaded.add(coco[0][:1], modality="text")[0] not in set(range(N)) | set(range(10_000, 10_000 + N))
    with pytest.raises(ValueError, match="ids must be new"):
        loaded.add(coco[0][:1], modality="text", ids=[4])
    if spec == "HNSW32":
        with pytest.raises(ValueError, match="ids must be new"):
            loaded.add(coco[0][:1], modality="text", ids=[3])


def test_round_trip_of_a_wrapped_index(cal, coco, tmp_path):
    text, image = coco
    raw = faiss.IndexIDMap(faiss.IndexFlatIP(512))
    raw.add_with_ids(np.vstack([text, image]), np.arange(2 * N) * 3)
    index = MixedIndex.wrap(cal, raw, {"text": np.arange(N) * 3, "image": np.arange(N, 2 * N) * 3})
    index.remove([6])
    index.save(tmp_path / "w")
    loaded = MixedIndex.load(tmp_path / "w", calibrator=cal)
    assert loaded.layout == "wrapped" and len(loaded) == 2 * N - 1
    assert_same_results(index, loaded, image[:30])


def test_overwrite_replaces_the_files_of_the_previous_save(cal, coco, tmp_path):
    index = build(cal, coco, "Flat")
    index.save(tmp_path / "ix")
    first = files(tmp_path / "ix")
    index.add(coco[0][:5], modality="text")
    index.save(tmp_path / "ix")
    second = files(tmp_path / "ix")
    assert len(first) == len(second) == 6 and not set(first) & set(second) - {"mixed.json"}
    assert len(MixedIndex.load(tmp_path / "ix")) == len(index)


def test_failed_save_leaves_the_previous_save_intact(cal, coco, tmp_path, monkeypatch):
    index = build(cal, coco, "Flat")
    index.save(tmp_path / "ix")
    before = {name: (tmp_path / "ix" / name).read_bytes() for name in files(tmp_path / "ix")}
    index.add(coco[0][:5], modality="text")
    calls = []

    def write_then_fail(idx, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        faiss.write_index(idx, path)

    monkeypatch.setattr(faiss, "write_index", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "ix")
    monkeypatch.undo()
    assert {name: (tmp_path / "ix" / name).read_bytes() for name in files(tmp_path / "ix")} == before
    assert len(MixedIndex.load(tmp_path / "ix")) == 2 * N - 2


def test_failed_first_save_leaves_no_folder(cal, coco, tmp_path, monkeypatch):
    index = build(cal, coco, "Flat")
    monkeypatch.setattr(faiss, "write_index", lambda idx, path: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_save_refuses_a_file_path_or_missing_parent(cal, coco, tmp_path):
    index = build(cal, coco, "Flat")
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(ValueError, match=r"path must be a directory .* got the file"):
        index.save(tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "keep me"
    with pytest.raises(ValueError, match=r"path's folder does not exist"):
        index.save(tmp_path / "no" / "such")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mixed.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match=r"is not a gapcal MixedIndex sidecar \(format 'something else'\)"):
        index.save(tmp_path / "other")
    assert files(tmp_path / "other") == ["mixed.json"]


@pytest.fixture()
def saved(cal, coco, tmp_path):
    build(cal, coco, "HNSW32").save(tmp_path / "ix")
    return tmp_path / "ix"


def edit_sidecar(folder, change, seal=True):
    """Change the sidecar; ``seal`` also records its new checksum (a deliberate edit, to reach later checks)."""
    header = json.loads((folder / "mixed.json").read_text())
    change(header)
    (folder / "mixed.json").write_text(json.dumps(sealed(header) if seal else header))
    return header


def rechecksum(folder):
    """Record the files' current checksums: a tampering that also rewrites the sidecar."""
    def update(header):
        for entry in [header["calibrator"], header["ids"], header["payload"], *header["indexes"].values()]:
            entry["sha256"] = sha256_of(folder / entry["file"])
    edit_sidecar(folder, update)


def test_load_refuses_another_calibrator(saved, coco):
    other = GapCalibrator(hubness=False, mean_shift=False, projection="none").fit(*coco)
    with pytest.raises(ValueError, match=r"calibrator must be the one the index was built with \(fingerprint"):
        MixedIndex.load(saved, calibrator=other)


def test_load_refuses_a_swapped_calibrator_file(saved, coco):
    header = json.loads((saved / "mixed.json").read_text())
    GapCalibrator(hubness=False, mean_shift=False, projection="none").fit(*coco).save(
        saved / header["calibrator"]["file"])
    with pytest.raises(ValueError, match=r"calibrator-.*\.npz does not match the checksum recorded when it was written"):
        MixedIndex.load(saved)
    rechecksum(saved)
    with pytest.raises(ValueError, match=r"the calibrator file does not match the index \(fingerprint"):
        MixedIndex.load(saved)


def test_load_refuses_mismatched_item_counts(saved):
    edit_sidecar(saved, lambda h: h["indexes"]["text"].update(ntotal=h["indexes"]["text"]["ntotal"] + 1))
    with pytest.raises(ValueError, match=r"does not match its sidecar: it holds a IndexIDMap2\(HNSW32\) index of 500 "
                                         r"vectors of dimension 513, the sidecar says a IndexIDMap2\(HNSW32\) index "
                                         r"of 501"):
        MixedIndex.load(saved)


def test_load_refuses_a_faiss_file_of_another_structure(saved, cal, coco, tmp_path):
    """Issue 13: an HNSW folder took a Flat file of the same count; the sidecar records each index's structure."""
    build(cal, coco, "Flat").save(tmp_path / "flat")
    flat, hnsw = (json.loads((folder / "mixed.json").read_text()) for folder in (tmp_path / "flat", saved))
    foreign = (tmp_path / "flat" / flat["indexes"]["text"]["file"]).read_bytes()
    (saved / hnsw["indexes"]["text"]["file"]).write_bytes(foreign)
    with pytest.raises(ValueError, match="does not match the checksum"):
        MixedIndex.load(saved)
    rechecksum(saved)  # a tampering that also rewrites the checksums is still caught by the structure
    with pytest.raises(ValueError, match=r"it holds a IndexIDMap2\(Flat\) index .* the sidecar says a "
                                         r"IndexIDMap2\(HNSW32\) index"):
        MixedIndex.load(saved)


def test_load_refuses_mismatched_id_lists(saved):
    edit_sidecar(saved, lambda h: h["counts"]["image"].update(live=h["counts"]["image"]["live"] - 1))
    with pytest.raises(ValueError, match=r"does not match its sidecar: live image ids should be 498"):
        MixedIndex.load(saved)


def test_load_refuses_a_mismatched_dimension(saved):
    edit_sidecar(saved, lambda h: h.update(dim=768))
    with pytest.raises(ValueError, match=r"the sidecar says d=768, its calibrator has d=512"):
        MixedIndex.load(saved)


def test_load_refuses_swapped_index_files(saved):
    header = json.loads((saved / "mixed.json").read_text())
    text_file, image_file = (saved / header["indexes"][m]["file"] for m in ("text", "image"))
    data = text_file.read_bytes()
    text_file.write_bytes(image_file.read_bytes())
    image_file.write_bytes(data)
    with pytest.raises(ValueError, match=r"\.faiss does not match the checksum recorded"):
        MixedIndex.load(saved)
    rechecksum(saved)
    with pytest.raises(ValueError, match=r"the text faiss index holds 500 items, 500 of them with ids the id file does "
                                         r"not list for it \(e\.g\. \[10000, "):
        MixedIndex.load(saved)


def test_ivf_round_trip_keeps_the_list_spread_and_refuses_a_sidecar_without_it(cal, coco, tmp_path):
    index = build(cal, coco, "IVF16,Flat")
    index.save(tmp_path / "ivf")
    loaded = MixedIndex.load(tmp_path / "ivf")
    assert loaded._backend.spread == index._backend.spread and all(index._backend.spread.values())
    for nprobe in (1, 3):
        queries = coco[1][:30]
        a = index.search(queries, k=10, params={"nprobe": nprobe}, query_modality="text")
        b = loaded.search(queries, k=10, params={"nprobe": nprobe}, query_modality="text")
        np.testing.assert_array_equal(a.ids, b.ids)
    edit_sidecar(tmp_path / "ivf", lambda h: h["backend"].pop("list_spread"))
    with pytest.raises(ValueError, match=r"the text index's list_spread entry, which IVF searches rank lists by, must be "
                                         r"a non-negative number, got None"):
        MixedIndex.load(tmp_path / "ivf")


def test_load_refuses_a_corrupt_faiss_file(saved):
    header = json.loads((saved / "mixed.json").read_text())
    path = saved / header["indexes"]["image"]["file"]
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"image-.*\.faiss does not match the checksum recorded when it was written "
                                         r"\(corrupt, truncated or replaced\)"):
        MixedIndex.load(saved)
    rechecksum(saved)
    with pytest.raises(ValueError, match=r"is not a readable faiss index \(truncated or corrupt\)"):
        MixedIndex.load(saved)


def test_a_flipped_byte_anywhere_is_refused(saved):
    """Issue 13 measured 39 of 40 random byte flips in a faiss file loading silently; checksums refuse all."""
    header = json.loads((saved / "mixed.json").read_text())
    rng = np.random.default_rng(0)
    for entry in [header["calibrator"], header["ids"], header["payload"], *header["indexes"].values()]:
        path = saved / entry["file"]
        good = path.read_bytes()
        spot = int(rng.integers(len(good)))
        path.write_bytes(good[:spot] + bytes([good[spot] ^ 0x10]) + good[spot + 1:])
        with pytest.raises(ValueError, match="does not match the checksum"):
            MixedIndex.load(saved)
        path.write_bytes(good)
    assert len(MixedIndex.load(saved)) == 2 * N - 2


def test_load_refuses_missing_files_and_newer_formats(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path does not hold a saved MixedIndex"):
        MixedIndex.load(tmp_path / "nothing")
    header = json.loads((saved / "mixed.json").read_text())
    os.unlink(saved / header["ids"]["file"])
    with pytest.raises(ValueError, match=r"is incomplete: its sidecar names files that are not there"):
        MixedIndex.load(saved)
    edit_sidecar(saved, lambda h: h.update(format_version=99))
    with pytest.raises(ValueError, match=r"uses gapcal MixedIndex sidecar format version 99; .* upgrade gapcal"):
        MixedIndex.load(saved)


def test_saved_files_are_plain_faiss_and_npz(saved):
    header = json.loads((saved / "mixed.json").read_text())
    text_index = faiss.read_index(str(saved / header["indexes"]["text"]["file"]))
    assert text_index.ntotal == 500 and text_index.d == 513
    with np.load(saved / header["ids"]["file"], allow_pickle=False) as ids:
        assert sorted(ids.files) == ["hidden_image", "hidden_text", "live_image", "live_text"]
        assert ids["hidden_text"].tolist() == [3]


def test_files_of_an_interrupted_save_are_removed_by_the_next_save_or_load(cal, coco, tmp_path):
    index = build(cal, coco, "Flat")
    index.save(tmp_path / "ix")
    kept = files(tmp_path / "ix")
    orphans = ["text-999999-0123456789ab.faiss", "ids-999999-0123456789ab.npz", ".mixed.json.999999-0123abcd.gapcal-tmp"]
    for name in orphans:  # what a save killed in the middle leaves (pid 999999 does not exist)
        (tmp_path / "ix" / name).write_bytes(b"partial")
    live = f"image-{os.getpid()}-0123456789ab.faiss"  # a save in progress in a live process is left alone
    (tmp_path / "ix" / live).write_bytes(b"partial")
    assert len(MixedIndex.load(tmp_path / "ix")) == 2 * N - 2
    assert files(tmp_path / "ix") == sorted(kept + [live])
    for name in orphans:
        (tmp_path / "ix" / name).write_bytes(b"partial")
    index.save(tmp_path / "ix")
    assert len(files(tmp_path / "ix")) == 7 and live in files(tmp_path / "ix")  # the 6 of the new save + live


def test_saved_index_files_keep_the_umask_mode(cal, coco, tmp_path):
    previous = os.umask(0o027)
    try:
        build(cal, coco, "Flat").save(tmp_path / "ix")
    finally:
        os.umask(previous)
    modes = {name: (tmp_path / "ix" / name).stat().st_mode & 0o777 for name in files(tmp_path / "ix")}
    assert set(modes.values()) == {0o640}, modes


@pytest.mark.parametrize("change", [
    lambda h: h["counts"]["text"].update(hidden=0),
    lambda h: h.update(dim=h["dim"] + 1),
    lambda h: h["indexes"]["text"].update(ntotal=1),
    lambda h: h["backend"].update(extra=1),
])
def test_a_changed_sidecar_value_is_refused_by_its_own_checksum(saved, change):
    """Issue 13: edited sidecar values (an IVF list spread, id counts) changed results; the sidecar is sealed."""
    edit_sidecar(saved, change, seal=False)
    with pytest.raises(ValueError, match=r"mixed\.json' does not match the checksum recorded in it \(corrupt or edited\)"):
        MixedIndex.load(saved)


def test_payload_reads_back_by_id(cal, coco, tmp_path):
    index = MixedIndex(cal, "Flat")
    index.add(coco[0][:3], modality="text", ids=[10, 11, 12], payload={"caption": ["a", "b", "c"], "n": [1, 2, 3]})
    index.add(coco[1][:1], modality="image", ids=[20], payload={"path": ["x.jpg"]})
    assert index.payload_fields == ["caption", "n", "path"]
    assert index.payload([12, 20, 99]) == {"caption": ["c", None, None], "n": [3, None, None],
                                           "path": [None, "x.jpg", None]}
    index.save(tmp_path / "ix")
    assert MixedIndex.load(tmp_path / "ix").payload([11], ["n"]) == {"n": [2]}
    index.remove([11])
    assert index.payload([11], ["caption"]) == {"caption": [None]}
    with pytest.raises(ValueError, match="ids must not repeat an id"):
        index.payload([10, 10])
    with pytest.raises(TypeError, match="fields must be a list of payload field names, got 'n'"):
        index.payload([10], "n")
