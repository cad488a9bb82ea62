"""The gapcal command, driven as a user would: a subprocess."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "gapcal.cli", *args], capture_output=True, text=True, timeout=300)


def test_demo_runs_on_bundled_data():
    out = run("demo")
    assert out.returncode == 0, out.stderr
    assert "GapCalibrator fitted on 500 pairs" in out.stdout
    for row in ("raw cosine", "GR-CLIP", "per-type z", "gapcal", "NDCG@10 text", "mixed R@1"):
        assert row in out.stdout
    assert "3. One FAISS MixedIndex" in out.stdout and out.stdout.count("query: ") == 6
    assert "image #1 *" in out.stdout  # a caption's own image ranked among mixed results


def test_usage_errors_exit_2():
    out = run("demo", "--seed", "x")
    assert out.returncode == 2 and "expected an integer seed, got 'x'" in out.stderr
    assert run().returncode == 2


@pytest.mark.parametrize("args, message", [
    (["demo", "--seed", "-1"], "--seed: expected a seed from 0 to 2\\*\\*32 - 1, got -1"),
    (["index", "search", "ix", "--queries", "q.npy", "--query-modality", "text", "-k", "0"],
     "-k: expected a positive integer, got 0"),
    (["index", "search", "ix", "--queries", "q.npy", "--query-modality", "text", "--nprobe", "0"],
     "--nprobe: expected a positive integer, got 0"),
    (["index", "search", "ix", "--queries", "q.npy", "--query-modality", "text", "--ef-search", "-3"],
     "--ef-search: expected a positive integer, got -3"),
    (["index", "search", "ix", "--queries", "q.npy", "--query-modality", "text", "-k", "1.5"],
     "-k: expected a positive integer, got '1.5'"),
    (["embed", "--model", "m", "--texts", "t.txt", "-o", "v.npy", "--batch-size", "0"],
     "--batch-size: expected a positive integer, got 0"),
    (["--threads", "0", "demo"], "--threads: expected a positive integer, got 0"),
    (["build", "p.csv", "--model", "m", "-o", "out", "--target-recall", "1.2"],
     r"--target-recall: expected a number in \(0, 1\], got 1.2"),
    (["serve", "ix", "--port", "70000"], "--port: expected a port from 0 to 65535, got 70000"),
    (["search", "ix", "a cat", "-k", "0"], "-k: expected a positive integer, got 0"),
])
def test_zero_or_negative_counts_are_usage_errors(args, message, capsys):
    from gapcal.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_import_gapcal_pulls_no_heavy_dependency():
    code = ("import sys, gapcal, gapcal.metrics, gapcal.baselines, gapcal.evaluation, gapcal.pairs, gapcal.folder; "
            "heavy = {'faiss', 'onnxruntime', 'torch', 'transformers', 'matplotlib', 'pymilvus', 'scipy', 'flask'}; "
            "print(sorted(heavy & set(sys.modules)), gapcal.data.load_coco500()[0].shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[] (500, 512)", out.stdout + out.stderr


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from gapcal.data import load_coco500

    folder = tmp_path_factory.mktemp("pairs")
    text, image = load_coco500()
    np.save(folder / "text.npy", text)
    np.save(folder / "image.npy", image)
    np.savez(folder / "pairs.npz", text=text, image=image)
    return folder


def test_fit_eval_report_end_to_end(pairs, tmp_path):
    cal = tmp_path / "cal.npz"
    out = run("fit", "--text", str(pairs / "pairs.npz"), "--image", str(pairs / "pairs.npz"), "-o", str(cal))
    assert out.returncode == 0, out.stderr
    assert "GapCalibrator fitted on 500 pairs" in out.stdout and "decision:" in out.stdout
    from gapcal import GapCalibrator

    loaded = GapCalibrator.load(cal)
    assert loaded.fingerprint_ in out.stdout

    out = run("eval", "--text", str(pairs / "text.npy"), "--image", str(pairs / "image.npy"), "--calibrator", str(cal))
    assert out.returncode == 0, out.stderr
    assert "gapcal (given calibrator)" in out.stdout and "pooled AUC" in out.stdout

    report = tmp_path / "report"
    out = run("report", "--text", str(pairs / "text.npy"), "--image", str(pairs / "image.npy"), "-o", str(report),
              "--map", "mds")  # UMAP's first call compiles for ~10 s; tests/test_report.py covers it
    assert out.returncode == 0, out.stderr
    page = (report / "report.html").read_text()
    assert 'src="histograms.png"' in page and 'src="map.png"' in page and "GR-CLIP" in page
    for png in ("histograms.png", "map.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_and_eval_with_groups(pairs, tmp_path):
    """Captions of one image: pairs 2k and 2k+1 share a group (a text file, one label a line)."""
    labels = tmp_path / "groups.txt"
    labels.write_text("\n".join(f"g{k // 2}" for k in range(500)) + "\n")
    cal = tmp_path / "cal.npz"
    out = run("fit", "--text", str(pairs / "text.npy"), "--image", str(pairs / "image.npy"), "--groups", str(labels),
              "-o", str(cal))
    assert out.returncode == 0, out.stderr
    assert "500 pairs labelled in 250 groups" in out.stdout and "NDCG@10" in out.stdout
    np.save(tmp_path / "groups.npy", np.arange(500) // 2)
    out = run("eval", "--text", str(pairs / "text.npy"), "--image", str(pairs / "image.npy"), "--groups",
              str(tmp_path / "groups.npy"), "--calibrator", str(cal))
    assert out.returncode == 0, out.stderr
    assert "NDCG@10 text" in out.stdout and "mixed R@1" not in out.stdout and "Groups:" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["fit", "--text", "missing.npy", "--image", "missing.npy", "-o", "c.npz"], "--text: no such file: missing.npy"),
    (["eval", "--text", "{p}/pairs.npz:nope", "--image", "{p}/image.npy"], "has no array 'nope'"),
    (["eval", "--text", "{p}/text.npy", "--image", "{p}/two.npz"], r"holds several arrays: it holds \['a', 'b'\]"),
    (["fit", "--text", "{p}/text.npy", "--image", "{p}/short.npy", "-o", "{t}/c.npz"], "same number of rows"),
    (["eval", "--text", "{p}/text.npy", "--image", "{p}/image.npy", "--calibrator", "{p}/text.npy"], "not a gapcal calibrator"),
    (["fit", "--text", "{p}/vector.npy", "--image", "{p}/image.npy", "-o", "{t}/c.npz"], r"expected a 2-D array \(n, d\), got shape \(512,\)"),
    (["fit", "--text", "{p}/garbage.npy", "--image", "{p}/image.npy", "-o", "{t}/c.npz"], r"--text: .*garbage.npy is not a readable .npy/.npz file"),
    (["fit", "--text", "{p}/text.npy", "--image", "{p}/image.npy", "--groups", "{p}/few.txt", "-o", "{t}/c.npz"],
     r"--groups: expected one label per pair \(500\), got shape \(3,\)"),
    (["eval", "--text", "{p}/text.npy", "--image", "{p}/short.npy"], r"same number of rows .* got 500 and 10"),
    (["eval", "--text", "{p}/text.npy", "--image", "{p}/image.npy", "--groups", "{p}/none.npy"], "--groups: no such file"),
    (["eval", "--text", "{p}/broken.npz", "--image", "{p}/image.npy"], r"--text: .*broken.npz is not a readable"),
    (["fit", "--text", "{p}/text.npy", "--image", "{p}/image.npy", "-o", "{p}/text.npy/cal.npz"],
     r"path's folder does not exist|Not a directory"),
    (["report", "--text", "{p}/text.npy", "--image", "{p}/image.npy", "-o", "{p}/text.npy"], r"File exists|text\.npy"),
])
def test_user_errors_are_one_line(pairs, tmp_path, args, message):
    np.save(pairs / "short.npy", np.load(pairs / "image.npy")[:10])
    np.save(pairs / "vector.npy", np.ones(512, dtype=np.float32))
    np.savez(pairs / "two.npz", a=np.ones((2, 2)), b=np.ones((2, 2)))
    (pairs / "garbage.npy").write_bytes(b"not numpy")
    (pairs / "few.txt").write_text("a\nb\nc\n")
    (pairs / "broken.npz").write_bytes((pairs / "pairs.npz").read_bytes()[:5000])
    out = run(*[a.format(p=pairs, t=tmp_path) for a in args])
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), out.stderr
    assert not (tmp_path / "c.npz").exists()


def test_debug_shows_the_traceback(pairs):
    out = run("--debug", "fit", "--text", "missing.npy", "--image", "missing.npy", "-o", "c.npz")
    assert out.returncode != 0 and "Traceback" in out.stderr


TINY_MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny-clip"
COCO_IMAGES = Path(__file__).resolve().parent / "data" / "coco_images"


def test_embed_images_and_texts_with_the_tiny_model(tmp_path):
    out = run("embed", "--model", str(TINY_MODEL), "--images", str(COCO_IMAGES), "-o", str(tmp_path / "img.npy"))
    assert out.returncode == 0, out.stderr
    vectors = np.load(tmp_path / "img.npy")
    ids = (tmp_path / "img.ids.txt").read_text().splitlines()
    jpegs = sorted((p for p in COCO_IMAGES.iterdir() if p.suffix == ".jpg"), key=lambda p: int(p.stem))
    assert vectors.shape == (len(jpegs), 32) and vectors.dtype == np.float32
    assert ids == [str(p) for p in jpegs]  # natural order: 3.jpg before 10.jpg, as a caption file numbers them

    from gapcal import OnnxClipEncoder

    np.testing.assert_allclose(vectors, OnnxClipEncoder(TINY_MODEL).encode_image(jpegs), atol=1e-6)

    captions = [line.split("\t", 1)[1] for line in (COCO_IMAGES / "captions.tsv").read_text().splitlines()[1:]]
    (tmp_path / "caps.txt").write_text("\n".join(captions) + "\n")
    out = run("embed", "--model", str(TINY_MODEL), "--texts", str(tmp_path / "caps.txt"), "-o", str(tmp_path / "t.npy"))
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), OnnxClipEncoder(TINY_MODEL).encode_text(captions), atol=1e-6)
    assert (tmp_path / "t.ids.txt").read_text().split() == [str(i) for i in range(1, len(captions) + 1)]


def test_embed_skips_or_names_unreadable_images(tmp_path):
    listing = tmp_path / "list.txt"
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    listing.write_text(f"{COCO_IMAGES / '0.jpg'}\nbroken.jpg\n")
    out = run("embed", "--model", str(TINY_MODEL), "--images", str(listing), "-o", str(tmp_path / "v.npy"))
    assert out.returncode == 1 and "broken.jpg" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "v.npy").exists()
    out = run("embed", "--model", str(TINY_MODEL), "--images", str(listing), "-o", str(tmp_path / "v.npy"), "--skip-errors")
    assert out.returncode == 0 and "skipped 1 unreadable images" in out.stderr
    assert np.load(tmp_path / "v.npy").shape == (1, 32)
    assert (tmp_path / "v.ids.txt").read_text().split() == [str(COCO_IMAGES / "0.jpg")]


@pytest.mark.parametrize("args, message", [
    (["--images", "{t}/nowhere", "-o", "{t}/v.npy"], "--images: expected a folder of images or a file listing "
     "image paths, got .*nowhere', which does not exist"),
    (["--images", "{t}", "-o", "{t}/v.npy"], "--images: no image files in the folder"),
    (["--texts", "{t}/none.txt", "-o", "{t}/v.npy"], "--texts: expected a UTF-8 file with one text per line, got "
     ".*none.txt', which does not exist"),
    (["--texts", "{t}/none.txt", "-o", "{t}/v.csv"], r"-o/--output must name a .npy file"),
    (["--images", "{t}/empty.txt", "-o", "{t}/v.npy"], r"--images: the list file .*empty.txt' names no image"),
])
def test_embed_user_errors(tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("\n")
    out = run("embed", "--model", str(TINY_MODEL), *[a.format(t=tmp_path) for a in args])
    assert out.returncode == 1 and re.search(message, out.stderr), out.stderr


def test_export_subcommand_writes_a_folder_the_encoder_runs(tmp_path):
    """`gapcal export` from a local transformers CLIP folder (the tiny model) to the encoder's layout."""
    out = run("export", str(TINY_MODEL), str(tmp_path / "exported"), "--exporter", "torch", "--max-length", "32")
    assert out.returncode == 0, out.stderr
    from gapcal import OnnxClipEncoder

    enc = OnnxClipEncoder(tmp_path / "exported")
    np.testing.assert_allclose(enc.encode_text(["a red cat"]), OnnxClipEncoder(TINY_MODEL).encode_text(["a red cat"]),
                               atol=1e-5)
    again = run("export", str(TINY_MODEL), str(tmp_path / "exported"))
    assert again.returncode == 1 and "--overwrite" in again.stderr


def test_index_build_add_search_end_to_end(pairs, tmp_path):
    import json

    from gapcal import GapCalibrator

    cal_path, index_dir = tmp_path / "cal.npz", tmp_path / "index"
    text, image = np.load(pairs / "text.npy"), np.load(pairs / "image.npy")
    GapCalibrator().fit(text[:250], image[:250]).save(cal_path)
    np.save(tmp_path / "held_text.npy", text[250:])
    np.save(tmp_path / "held_image.npy", image[250:])
    np.save(tmp_path / "queries.npy", image[250:253])
    out = run("index", "build", "--calibrator", str(cal_path), "--text", str(tmp_path / "held_text.npy"),
              "-o", str(index_dir))
    assert out.returncode == 0, out.stderr
    assert "added 250 text items (ids 0..249)" in out.stdout
    out = run("index", "add", str(index_dir), "--vectors", str(tmp_path / "held_image.npy"), "--modality", "image")
    assert out.returncode == 0 and "ids 250..499" in out.stdout and "holds 500" in out.stdout, out.stderr

    out = run("index", "search", str(index_dir), "--queries", str(tmp_path / "queries.npy"),
              "--query-modality", "image", "-k", "7", "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    cal = GapCalibrator.load(cal_path)
    scores = np.hstack([cal.similarity(image[250:253], text[250:], query_modality="image", item_modality="text"),
                        cal.similarity(image[250:253], image[250:], query_modality="image", item_modality="image")])
    for q, entry in enumerate(results):
        expected = np.argsort(-scores[q], kind="stable")[:7]
        assert [hit["id"] for hit in entry["results"]] == expected.tolist()
        np.testing.assert_allclose([hit["score"] for hit in entry["results"]], scores[q, expected], atol=1e-4)
        assert [hit["modality"] for hit in entry["results"]] == ["text" if i < 250 else "image" for i in expected]

    out = run("index", "search", str(index_dir), "--queries", str(tmp_path / "queries.npy"),
              "--query-modality", "image", "--item-modality", "text", "-k", "3")
    assert out.returncode == 0 and out.stdout.count("text  id") == 9 and "image id" not in out.stdout


@pytest.mark.parametrize("args, message", [
    (["search", "{t}/missing", "--queries", "{p}/text.npy", "--query-modality", "text"], "missing"),
    (["search", "{t}/index", "--queries", "{p}/text.npy", "--query-modality", "text", "--nprobe", "4"],
     r"params\['nprobe'\] applies to IVF indexes, got a Flat index"),
    (["add", "{t}/index", "--vectors", "{p}/vector2d.npy", "--modality", "text"], "dimension d=512"),
])
def test_index_user_errors(pairs, tmp_path, args, message):
    from gapcal import GapCalibrator

    text, image = np.load(pairs / "text.npy"), np.load(pairs / "image.npy")
    GapCalibrator().fit(text, image).save(tmp_path / "cal.npz")
    np.save(pairs / "vector2d.npy", np.ones((2, 10), dtype=np.float32))
    assert run("index", "build", "--calibrator", str(tmp_path / "cal.npz"), "--image", str(pairs / "image.npy"),
               "-o", str(tmp_path / "index")).returncode == 0
    out = run("index", *[a.format(t=tmp_path, p=pairs) for a in args])
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and re.search(message, out.stderr), out.stderr


def test_report_without_matplotlib_says_how_to_install(pairs, tmp_path, monkeypatch, capsys):
    from gapcal import cli

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.delitem(sys.modules, "gapcal.report", raising=False)
    code = cli.main(["report", "--text", str(pairs / "text.npy"), "--image", str(pairs / "image.npy"),
                     "-o", str(tmp_path / "r")])
    assert code == 1
    assert "pip install 'gapcal[report]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_blas_threads_follow_the_flag_the_environment_or_the_idle_cores(monkeypatch):
    from gapcal import cli

    monkeypatch.delenv("GAPCAL_THREADS", raising=False)
    assert cli.blas_threads(3) == 3
    assert 1 <= cli.blas_threads(None) <= (os.cpu_count() or 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 0.0, 0.0))  # a busy machine: one thread
    assert cli.blas_threads(None) == 1
    monkeypatch.setenv("GAPCAL_THREADS", "2")
    assert cli.blas_threads(None) == 2
    monkeypatch.setenv("GAPCAL_THREADS", "lots")
    with pytest.raises(cli.UserError, match="GAPCAL_THREADS: expected a positive integer, got 'lots'"):
        cli.blas_threads(None)


def test_commands_run_inside_the_blas_thread_limit(monkeypatch):
    from threadpoolctl import threadpool_info

    from gapcal import cli

    seen = []
    monkeypatch.setattr(cli, "_demo", lambda args: seen.append(
        [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]) or 0)
    assert cli.main(["--threads", "1", "demo"]) == 0
    assert seen and seen[0] and set(seen[0]) == {1}
