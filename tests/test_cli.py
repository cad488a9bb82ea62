"""The gapcal command, driven as a user would: a subprocess."""

import subprocess
import sys


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
