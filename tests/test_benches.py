"""The index benchmark runs end to end at toy size on both data generators and prints every reference it
promises (CI runs no benchmark otherwise; the figures themselves are not checked here)."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("data", ["mixtures", "gaussian"])
def test_index_speed_prints_bare_cross_modal_and_mixed_rows(data, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import index_speed

    index_speed.main(["--n", "4000", "--hnsw-n", "4000", "--queries", "60", "--repeats", "1", "--only", "flat",
                      "--only", "hnsw", "--data", data])
    out = capsys.readouterr().out
    assert f"data: {data}" in out and "Flat  (4,000 vectors" in out and "HNSW32  (4,000 vectors" in out
    for target in ("0.90", "0.95", "0.99"):
        assert f"    {target}: bare efSearch=" in out
    for row in ("bare cross-modal efSearch=", "bare + cross", "mixed, one efSearch=", "mixed, tuned efSearch=t->t",
                "mixed, linked + tuned efSearch=", "floor: at the ladder's cheapest setting",
                "bare cross-modal walk alone (text query, image-only index, same setting)"):
        assert row in out
