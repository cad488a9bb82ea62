"""The quick reliability sweep of bench/reliability.py in CI: hostile files of every artefact type, bad input
at every entry point, the CLI, kill -9 during saves, concurrent use, Milvus filters. Each area must give only
clear errors or correct answers (the bench's long sweep runs more of each)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import reliability  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def setup(cal, coco):
    return cal, *coco


def assert_clean(tally, least):
    assert not tally.failures(), tally.table()
    for area, counts in tally.counts.items():
        assert counts["tried"] >= least, (area, counts)


def test_hostile_calibrator_files(setup, tmp_path):
    tally = reliability.Tally()
    reliability.calibrator_files(tally, *setup, 8, np.random.default_rng(1), tmp_path)
    assert_clean(tally, 15)
    assert tally.counts["calibrator file"]["clear error"] >= 10


def test_hostile_index_folders(setup, tmp_path):
    tally = reliability.Tally()
    reliability.index_folders(tally, *setup, 4, np.random.default_rng(2), tmp_path)
    assert_clean(tally, 50)
    assert sorted(tally.counts) == ["index folder Flat", "index folder HNSW16", "index folder IVF8,Flat"]


def test_bad_input_at_the_entry_points(setup, tmp_path):
    tally = reliability.Tally()
    reliability.entry_points(tally, *setup, 1, np.random.default_rng(3), tmp_path)
    assert_clean(tally, 15)
    assert tally.counts["index search input"]["accepted"] == len(reliability.GOOD_ARRAYS)


def test_cli_errors_are_one_line(setup, tmp_path):
    tally = reliability.Tally()
    reliability.cli(tally, *setup, tmp_path)
    assert_clean(tally, 15)


def test_kill_9_during_saves_leaves_the_old_or_the_new_version(setup, tmp_path):
    tally = reliability.Tally()
    reliability.kill_during_save(tally, *setup, 2, np.random.default_rng(4), tmp_path)
    assert_clean(tally, 2)


def test_concurrent_use(setup):
    tally = reliability.Tally()
    reliability.concurrency(tally, *setup, 1, np.random.default_rng(5))
    assert_clean(tally, 4)


def test_milvus_filters_cannot_escape_and_bad_params_are_named(setup, tmp_path):
    pytest.importorskip("pymilvus")
    tally = reliability.Tally()
    reliability.milvus(tally, *setup, tmp_path)
    assert_clean(tally, 16)
