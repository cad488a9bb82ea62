"""The gap report's layouts and argument checks (the end-to-end command is in test_cli.py)."""

import numpy as np
import pytest

from gapcal import report


def test_classical_mds_of_a_gram_matrix_is_pca(coco):
    text = coco[0][:60].astype(np.float64)
    xy = report.classical_mds(text @ text.T)
    centred = text - text.mean(0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    pca = centred @ vt[:2].T
    np.testing.assert_allclose(np.abs(xy), np.abs(pca), atol=1e-8)  # equal up to the sign of each axis


def test_umap_layout_keeps_pairs_of_a_similarity_matrix_together():
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 8))
    points = np.repeat(centres, 25, axis=0) + 0.05 * rng.standard_normal((100, 8))
    xy = report.umap_layout(points @ points.T)
    groups = np.repeat(np.arange(4), 25)
    within = np.mean([np.linalg.norm(xy[groups == g] - xy[groups == g].mean(0), axis=1).mean() for g in range(4)])
    between = np.linalg.norm(xy[:, None] - xy[None], axis=2).mean()
    assert xy.shape == (100, 2) and within < 0.25 * between


def test_mds_report_and_bad_map_method(coco, tmp_path):
    text, image = (x[:120] for x in coco)
    page = report.write_report(text, image, tmp_path / "r", map_method="mds")
    assert page.name == "report.html" and "gapcal" in page.read_text()
    assert (tmp_path / "r" / "map.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="map_method must be 'auto', 'mds' or 'umap', got 'tsne'"):
        report.write_report(text, image, tmp_path / "bad", map_method="tsne")
    assert not (tmp_path / "bad").exists()
