"""The gapcal command, driven as a user would: a subprocess."""

import re
import subprocess
import sys

import numpy as np
import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "gapcal.cli", *args], capture_output=True, text=True, timeout=300)


def test_demo_runs_on_bundled_data():
    out = run("demo")
    assert out.returncode == 0, out.stderr
    assert "GapCalibrator fitted on 500 pairs" in out.stdout
    for row in ("raw cosine", "GR-CLIP", "I0T", "gapcal + ridge"):
        assert row in out.stdout


def test_usage_errors_exit_2():
    out = run("demo", "--seed", "x")
    assert out.returncode == 2 and "invalid int value: 'x'" in out.stderr
    assert run().returncode == 2


def test_import_gapcal_pulls_no_heavy_dependency():
    code = ("import sys, gapcal, gapcal.metrics, gapcal.baselines, gapcal.evaluation; "
            "heavy = {'faiss', 'onnxruntime', 'torch', 'transformers', 'matplotlib', 'pymilvus', 'scipy'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


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
    out = run("report", "--text", str(pairs / "text.npy"), "--image", str(pairs / "image.npy"), "-o", str(report))
    assert out.returncode == 0, out.stderr
    page = (report / "report.html").read_text()
    assert 'src="histograms.png"' in page and 'src="map.png"' in page and "GR-CLIP" in page
    for png in ("histograms.png", "map.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["fit", "--text", "missing.npy", "--image", "missing.npy", "-o", "c.npz"], "--text: no such file: missing.npy"),
    (["eval", "--text", "{p}/pairs.npz:nope", "--image", "{p}/image.npy"], "has no array 'nope'"),
    (["eval", "--text", "{p}/text.npy", "--image", "{p}/two.npz"], r"holds several arrays: it holds \['a', 'b'\]"),
    (["fit", "--text", "{p}/text.npy", "--image", "{p}/short.npy", "-o", "{t}/c.npz"], "same number of rows"),
    (["eval", "--text", "{p}/text.npy", "--image", "{p}/image.npy", "--calibrator", "{p}/text.npy"], "not a gapcal calibrator"),
    (["fit", "--text", "{p}/vector.npy", "--image", "{p}/image.npy", "-o", "{t}/c.npz"], r"expected a 2-D array \(n, d\), got shape \(512,\)"),
])
def test_user_errors_are_one_line(pairs, tmp_path, args, message):
    np.save(pairs / "short.npy", np.load(pairs / "image.npy")[:10])
    np.save(pairs / "vector.npy", np.ones(512, dtype=np.float32))
    np.savez(pairs / "two.npz", a=np.ones((2, 2)), b=np.ones((2, 2)))
    out = run(*[a.format(p=pairs, t=tmp_path) for a in args])
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), out.stderr
    assert not (tmp_path / "c.npz").exists()


def test_debug_shows_the_traceback(pairs):
    out = run("--debug", "fit", "--text", "missing.npy", "--image", "missing.npy", "-o", "c.npz")
    assert out.returncode != 0 and "Traceback" in out.stderr
