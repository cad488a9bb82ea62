"""The quality protocol reproduces the issue's reference numbers on the bundled real data."""

import numpy as np
import pytest

from gapcal import GapCalibrator
from gapcal.baselines import GRClip, I0TStandardize, RawCosine
from gapcal.data import load_coco500
from gapcal.evaluation import COLUMNS, cross_fit, default_methods, format_table


@pytest.fixture(scope="module")
def rows():
    text, image = load_coco500()
    methods = [("raw cosine", RawCosine), ("GR-CLIP", GRClip), ("I0T", I0TStandardize), ("gapcal", GapCalibrator)]
    return dict(cross_fit(text, image, methods, seed=0))


def test_bundled_data_is_the_real_set():
    text, image = load_coco500()
    assert text.shape == image.shape == (500, 512) and text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, atol=1e-3)


def test_reference_numbers_of_the_protocol(rows):
    raw, gr = rows["raw cosine"], rows["GR-CLIP"]
    assert raw["R@1"] == 0.0 and raw["AUC"] == pytest.approx(0.506, abs=1e-3)
    assert raw["cross R@1"] == pytest.approx(0.624, abs=1e-3)
    assert gr["R@1"] == pytest.approx(0.062, abs=1e-3) and gr["AUC"] == pytest.approx(0.968, abs=1e-3)
    assert gr["centroid"] < 0.2 < raw["centroid"]


def test_gapcal_beats_baselines_without_favouring_a_medium(rows):
    gap = rows["gapcal"]
    for name in ("raw cosine", "GR-CLIP", "I0T"):
        assert gap["R@1"] > rows[name]["R@1"] + 0.3 and gap["AUC"] > rows[name]["AUC"]
    assert gap["cross R@1"] >= rows["raw cosine"]["cross R@1"]
    assert 0.25 < gap["share"] < 0.75 and 0.25 < gap["parity"] < 0.75  # raw CLIP: 1.0 and 1.0


def test_table_lists_every_method_and_column(rows):
    table = format_table(list(rows.items()))
    assert all(label in table for label, _ in COLUMNS)
    assert all(name in table for name in rows)
    assert [name for name, _ in default_methods()][:4] == ["raw cosine", "GR-CLIP", "I0T", "gapcal"]
