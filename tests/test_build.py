"""The user's path: pairs -> gapcal build -> gapcal search, on the bundled COCO JPEGs with the tiny model."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gapcal import GapCalibrator, OnnxClipEncoder
from gapcal import folder as folder_module
from gapcal.folder import BuildSettings, IndexFolder, build_folder

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "examples" / "coco"
TINY = ROOT / "models" / "tiny-clip"


def run(*args):
    return subprocess.run([sys.executable, "-m", "gapcal.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "coco-index"
    done = run("build", COCO / "pairs.csv", "--model", TINY, "-o", out)
    assert done.returncode == 0, done.stderr
    return out, done


@pytest.fixture(scope="module")
def encoder():
    return OnnxClipEncoder(TINY)


def test_build_writes_a_folder_that_keeps_every_pair_aligned(built, encoder):
    out, done = built
    assert "GapCalibrator fitted on 32 pairs" in done.stdout and f"gapcal search {out}" in done.stdout
    manifest = json.loads((out / "gapcal.json").read_text())
    assert manifest["counts"] == {"image": 32, "text": 32} and manifest["model"] == str(TINY)
    assert not list(out.parent.glob(".coco-index.partial*"))
    rows = list(csv.DictReader((COCO / "pairs.csv").open(encoding="utf-8")))
    folder = IndexFolder(out)
    ids = {m: folder.index.ids(m) for m in ("image", "text")}
    # every image item is the file its payload names, every text item its caption: embedded again here
    images = folder.index.payload(ids["image"], ["image"])["image"]
    texts = folder.index.payload(ids["text"], ["text"])["text"]
    assert images == [r["image"] for r in rows] and texts == [r["caption"] for r in rows]
    raw = folder._read_embeddings()
    np.testing.assert_allclose(raw["image"][0], encoder.encode_image([COCO / p for p in images]), atol=1e-6)
    np.testing.assert_allclose(raw["text"][0], encoder.encode_text(texts), atol=1e-6)
    # the calibrator was fitted on the pairs, row i of the CSV with row i
    again = GapCalibrator().fit(raw["text"][0], raw["image"][0], groups=np.arange(32))
    assert again.fingerprint_ == folder.index.calibrator.fingerprint_


def test_search_by_text_returns_the_exact_calibrated_ranking_with_payloads(built, encoder):
    out, _ = built
    done = run("search", out, "two zebras fighting", "-k", "7", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["query"] == "two zebras fighting" and found["modality"] == "text"
    folder = IndexFolder(out)
    raw = folder._read_embeddings()
    cal = folder.index.calibrator
    q = encoder.encode_text(["two zebras fighting"])
    scores = np.concatenate([cal.similarity(q, raw[m][0], query_modality="text", item_modality=m)[0]
                             for m in ("text", "image")])
    ids = np.concatenate([raw[m][1] for m in ("text", "image")])
    expected = ids[np.argsort(-scores, kind="stable")[:7]]
    assert [hit["id"] for hit in found["results"]] == expected.tolist()
    for hit in found["results"]:
        assert ("image" in hit) == (hit["modality"] == "image") and ("text" in hit) == (hit["modality"] == "text")


def test_search_by_image_and_the_raw_view(built):
    out, _ = built
    done = run("search", out, "--image", COCO / "images" / "4.jpg", "-k", "3", "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["modality"] == "image" and len(found["results"]) == 3
    assert "images/4.jpg" in [hit.get("image") for hit in found["results"]]  # itself (random weights: not always 1st)
    shown = run("search", out, "a dog on a beach", "--raw")
    assert shown.returncode == 0, shown.stderr
    assert "calibrated" in shown.stdout and "raw cosine" in shown.stdout and shown.stdout.count("\n") == 12
    raw = IndexFolder(out).search(text="a dog on a beach", k=5, raw=True)["raw"]
    assert [h["rank"] for h in raw] == [1, 2, 3, 4, 5] and all(a["score"] >= b["score"] for a, b in zip(raw, raw[1:]))


@pytest.mark.parametrize("args, message", [
    (["{out}"], "give a query text"),
    (["{out}", "text", "--image", "{img}"], "give a query text .* not both"),
    (["{out}", "--image", "{tmp}/none.jpg"], "--image: no such file"),
    (["{tmp}", "text"], "is not an index folder written by gapcal build"),
    (["{out}", "text", "--model", "{tmp}/moved"], "model folder .*moved' is not there: pass the model's folder"),
    (["{out}", "--image", "{tmp}/bad.jpg"], "bad.jpg"),
])
def test_search_errors_are_one_line(built, tmp_path, args, message):
    out, _ = built
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    done = run("search", *[a.format(out=out, tmp=tmp_path, img=COCO / "images" / "4.jpg") for a in args])
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert __import__("re").search(message, done.stderr), done.stderr


def test_build_refuses_to_replace_an_existing_folder(built, tmp_path):
    out, _ = built
    before = (out / "gapcal.json").read_bytes()
    done = run("build", COCO / "pairs.csv", "--model", TINY, "-o", out)
    assert done.returncode == 1 and "already exists; pass --overwrite" in done.stderr
    assert (out / "gapcal.json").read_bytes() == before
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "stray.txt").write_text("mine")
    done = run("build", COCO / "pairs.csv", "--model", TINY, "-o", copy, "--overwrite", "--factory", "HNSW16")
    assert done.returncode == 0, done.stderr
    assert not (copy / "stray.txt").exists() and IndexFolder(copy).index.spec == "HNSW16"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".copy")]


@pytest.mark.parametrize("command", [
    ["fit", "--text", "{t}/t.npy", "--image", "{t}/t.npy", "-o", "{t}/existing"],
    ["report", "--text", "{t}/t.npy", "--image", "{t}/t.npy", "-o", "{t}"],
    ["embed", "--model", str(TINY), "--texts", "{t}/texts.txt", "-o", "{t}/t.npy"],
    ["index", "build", "--calibrator", "{t}/c.npz", "-o", "{t}/existing"],
])
def test_every_command_refuses_to_overwrite(tmp_path, command):
    np.save(tmp_path / "t.npy", np.eye(4, 8, dtype=np.float32))
    (tmp_path / "existing").write_text("keep me")
    (tmp_path / "report.html").write_text("keep me")
    (tmp_path / "texts.txt").write_text("a\nb\n")
    done = run(*[a.format(t=tmp_path) for a in command])
    assert done.returncode == 1 and "already exists; pass --overwrite to replace it" in done.stderr, done.stderr
    assert (tmp_path / "existing").read_text() == "keep me" and (tmp_path / "report.html").read_text() == "keep me"


def test_repeated_images_are_one_item_and_one_group_with_user_columns(tmp_path):
    rows = [("images/2.jpg", "three people play frisbee", "a1"), ("images/2.jpg", "a frisbee game outside", "a2"),
            ("images/4.jpg", "two zebras fight", "b1")]
    rows += [(f"images/{n}.jpg", f"caption {n}", f"c{n}") for n in (5, 6, 7, 8, 9)]
    with open(tmp_path / "pairs.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "caption", "sku"), *rows])
    shutil.copytree(COCO / "images", tmp_path / "images")
    (tmp_path / "more.txt").write_text("an unpaired text\n")
    done = run("build", tmp_path / "pairs.csv", "--model", TINY, "-o", tmp_path / "out", "--texts",
               tmp_path / "more.txt", "--images", tmp_path / "images")
    assert done.returncode == 0, done.stderr
    assert "8 pairs labelled in 7 groups" in done.stdout
    folder = IndexFolder(tmp_path / "out")
    assert folder.index.count("image") == 32 and folder.index.count("text") == 9  # 7 paired + 25 extra images
    assert folder.index.payload_fields == ["image", "sku", "text"]
    first = folder.index.payload(folder.index.ids("image")[:1])
    assert first == {"image": ["images/2.jpg"], "sku": ["a1"], "text": [None]}
    assert folder.index.payload(folder.index.ids("text")[-2:], ["sku"]) == {"sku": ["c9", None]}


def test_skip_errors_reports_and_keeps_pairs_aligned(tmp_path):
    shutil.copytree(COCO / "images", tmp_path / "images")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    rows = [(f"images/{n}.jpg", f"caption {n}") for n in (2, 4, 5)] + [("images/broken.jpg", "broken"),
                                                                      ("images/gone.jpg", "gone")]
    rows += [(f"images/{n}.jpg", f"caption {n}") for n in (6, 7, 8, 9, 11)]
    with open(tmp_path / "pairs.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "caption"), *rows])
    done = run("build", tmp_path / "pairs.csv", "--model", TINY, "-o", tmp_path / "out")
    assert done.returncode == 1 and "gone.jpg" in done.stderr and "--skip-errors" in done.stderr
    assert not (tmp_path / "out").exists()
    done = run("build", tmp_path / "pairs.csv", "--model", TINY, "-o", tmp_path / "out", "--skip-errors")
    assert done.returncode == 0, done.stderr
    assert "skipped pairs.csv line 6: image 'images/gone.jpg' not found" in done.stdout
    assert "skipped unreadable image images/broken.jpg" in done.stdout and "left out 1 pairs" in done.stdout
    folder = IndexFolder(tmp_path / "out")
    assert folder.index.payload(folder.index.ids("image"), ["image"])["image"] == [
        f"images/{n}.jpg" for n in (2, 4, 5, 6, 7, 8, 9, 11)]
    assert folder.index.payload(folder.index.ids("text"), ["text"])["text"] == [
        "caption 2", "caption 4", "caption 5", "broken", *[f"caption {n}" for n in (6, 7, 8, 9, 11)]]


class Interrupting:
    """An encoder that fails on its n-th image batch, and counts what it embeds."""

    def __init__(self, fail_at=None):
        self.inner, self.fail_at, self.image_calls, self.texts = OnnxClipEncoder(TINY), fail_at, 0, 0
        self.dim = self.inner.dim

    def encode_image(self, items, **kwargs):
        self.image_calls += 1
        if self.image_calls == self.fail_at:
            raise KeyboardInterrupt
        return self.inner.encode_image(items, **kwargs)

    def encode_text(self, items, **kwargs):
        self.texts += len(items)
        return self.inner.encode_text(items, **kwargs)


def test_an_interrupted_build_resumes_without_redoing_finished_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_module, "CHUNK_ITEMS", 8)
    settings = BuildSettings(batch_size=4)
    quiet = dict(log=lambda *a: None, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_folder(COCO / "pairs.csv", TINY, tmp_path / "out", settings=settings, encoder=Interrupting(3),
                     **quiet)
    assert not (tmp_path / "out").exists()
    assert len(list((tmp_path / ".out.partial" / "chunks").glob("image-*.npz"))) == 2
    resumed = Interrupting()
    build_folder(COCO / "pairs.csv", TINY, tmp_path / "out", settings=settings, encoder=resumed, **quiet)
    assert resumed.image_calls == 2 and resumed.texts == 32  # chunks 3 and 4 of 4; the texts had not started
    assert not (tmp_path / ".out.partial").exists()
    fresh = Interrupting()
    build_folder(COCO / "pairs.csv", TINY, tmp_path / "fresh", settings=settings, encoder=fresh, **quiet)
    a, b = IndexFolder(tmp_path / "out")._read_embeddings(), IndexFolder(tmp_path / "fresh")._read_embeddings()
    for m in ("image", "text"):
        np.testing.assert_array_equal(a[m][0], b[m][0])


def test_a_partial_build_of_other_inputs_is_not_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_module, "CHUNK_ITEMS", 8)
    said, small = [], BuildSettings(batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        build_folder(COCO / "pairs.csv", TINY, tmp_path / "out", settings=small, encoder=Interrupting(3),
                     log=said.append, show_progress=False)
    chunk = next((tmp_path / ".out.partial" / "chunks").glob("image-*.npz"))
    chunk.write_bytes(b"truncated")  # a damaged chunk is embedded again, not trusted
    again = Interrupting(fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        build_folder(COCO / "pairs.csv", TINY, tmp_path / "out", settings=small, encoder=again, log=said.append,
                     show_progress=False)
    assert "resuming the interrupted build" in said[-1]
    other = Interrupting()
    build_folder(COCO / "pairs.csv", TINY, tmp_path / "out", settings=BuildSettings(batch_size=4, precision="fp16"),
                 encoder=other, log=said.append, show_progress=False)
    assert any("discarding an interrupted build of other inputs" in line for line in said)
    assert other.image_calls == 4
    (tmp_path / ".mine.partial").mkdir()
    with pytest.raises(FileExistsError, match="exists and is not an interrupted gapcal build: move it away"):
        build_folder(COCO / "pairs.csv", TINY, tmp_path / "mine", encoder=other, log=said.append)


def test_a_bad_factory_string_stops_before_embedding(tmp_path):
    encoder = Interrupting()
    with pytest.raises(ValueError, match="index must be a faiss index_factory string .* got 'Bogus'"):
        build_folder(COCO / "pairs.csv", TINY, tmp_path / "out", settings=BuildSettings(factory="Bogus"),
                     encoder=encoder, log=lambda *a: None)
    assert encoder.image_calls == 0 and encoder.texts == 0 and list(tmp_path.iterdir()) == []


def test_build_errors_leave_nothing_behind(tmp_path):
    with pytest.raises(ValueError, match="pairs must be a .csv, .tsv or .jsonl file or a folder"):
        build_folder(tmp_path / "pairs.txt", TINY, tmp_path / "out")
    with pytest.raises(ValueError, match="out's folder does not exist"):
        build_folder(COCO / "pairs.csv", TINY, tmp_path / "no" / "out")
    assert list(tmp_path.iterdir()) == []


def test_hnsw_build_stores_search_settings_that_reach_the_target(tmp_path):
    done = run("build", COCO / "pairs.csv", "--model", TINY, "-o", tmp_path / "out", "--factory", "HNSW8",
               "--target-recall", "0.99")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "gapcal.json").read_text())
    assert {r["query_modality"] for r in manifest["tuning"]} == {"image", "text"}
    assert all(r["reached"] and r["recall"] >= 0.99 for r in manifest["tuning"])
    assert {(r["query_modality"], r["item_modality"]) for r in manifest["links"]} == {("text", "image"),
                                                                                      ("image", "text")}
    assert "linked images that are top results of one text query" in done.stdout
    defaults = IndexFolder(tmp_path / "out").index.search_defaults
    assert set(defaults) == {"text", "image"} and all("efSearch" in s for d in defaults.values() for s in d.values())
    done = run("search", tmp_path / "out", "a cat", "--ef-search", "200", "--json")
    assert done.returncode == 0 and len(json.loads(done.stdout)["results"]) == 10, done.stderr
    done = run("search", tmp_path / "out", "a cat", "--nprobe", "4")
    assert done.returncode == 1 and "params['nprobe'] applies to IVF indexes" in done.stderr


def test_a_rebuild_of_the_same_inputs_reuses_the_embeddings(tmp_path):
    quiet = dict(show_progress=False)
    said = []
    build_folder(COCO / "pairs.csv", TINY, tmp_path / "out", encoder=Interrupting(), log=said.append, **quiet)
    again = Interrupting()
    build_folder(COCO / "pairs.csv", TINY, tmp_path / "out", settings=BuildSettings(factory="HNSW8"),
                 encoder=again, overwrite=True, log=said.append, **quiet)
    assert again.image_calls == 0 and again.texts == 0
    assert any(line.startswith("reusing the embeddings") for line in said)
    assert IndexFolder(tmp_path / "out").index.spec == "HNSW8"
    (tmp_path / "more.txt").write_text("one more text\n")
    other = Interrupting()
    build_folder(COCO / "pairs.csv", TINY, tmp_path / "out", extra_texts=tmp_path / "more.txt", encoder=other,
                 overwrite=True, log=said.append, **quiet)
    assert other.image_calls == 1 and other.texts == 33  # other inputs: embedded again


def test_a_changed_folder_is_refused_with_the_file_named(built, tmp_path):
    out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "gapcal.json").read_text())
    manifest["counts"]["text"] = 31
    (copy / "gapcal.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="gapcal.json does not match the checksum recorded in it"):
        IndexFolder(copy)
    shutil.copy(out / "gapcal.json", copy / "gapcal.json")
    data = bytearray((copy / "embeddings" / "text.npy").read_bytes())
    data[-1] ^= 0xFF
    (copy / "embeddings" / "text.npy").write_bytes(bytes(data))
    folder = IndexFolder(copy)  # the index itself is intact: calibrated search works
    assert len(folder.search_vector(np.ones((1, 32), np.float32), query_modality="text", k=3)["results"]) == 3
    with pytest.raises(ValueError, match="text.npy"):
        folder.search_vector(np.ones((1, 32), np.float32), query_modality="text", k=3, raw=True)
    (copy / "gapcal.json").write_text("{nope")
    with pytest.raises(ValueError, match="gapcal.json is not valid JSON"):
        IndexFolder(copy)
    (copy / "gapcal.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a gapcal index folder"):
        IndexFolder(copy)


def test_queries_need_one_input_and_the_index_model(built):
    out, _ = built
    folder = IndexFolder(out)
    for kwargs in ({}, {"text": "a cat", "image": COCO / "images" / "4.jpg"}):
        with pytest.raises(ValueError, match=r"give a query text or a query image \(exactly one\)"):
            folder.search(**kwargs)
    with pytest.raises(ValueError, match="the query text must be a non-empty string, got '  '"):
        folder.search(text="  ")
    other = IndexFolder(out, model=ROOT / "models" / "tiny-clip-masked")  # 24-d, the index holds 32-d
    with pytest.raises(ValueError, match="gives 24-d embeddings, the index holds 32-d ones: pass the model it was "
                                         "built with"):
        other.search(text="a cat")
