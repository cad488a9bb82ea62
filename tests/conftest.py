"""Fixtures shared by the test files."""

import pytest

from gapcal.data import load_coco500


@pytest.fixture(scope="session")
def coco():
    """The bundled real pairs: (text, image) float32 (500, 512) CLIP ViT-B/16 embeddings of MSCOCO."""
    return load_coco500()


@pytest.fixture(scope="module")
def one_faiss_thread():
    """Test indexes are tiny: one faiss thread avoids OpenMP spin-waits when the cores are busy."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def cal(coco):
    """The default calibrator fitted on all 500 real pairs."""
    from gapcal import GapCalibrator

    return GapCalibrator().fit(*coco)


@pytest.fixture(scope="module")
def flat_index(cal, coco):
    """A Flat MixedIndex of the 500 captions (ids 0..499) and 500 images (ids 500..999)."""
    import numpy as np

    from gapcal.stores.faiss import MixedIndex

    text, image = coco
    index = MixedIndex(cal, "Flat")
    index.add(text, modality="text", ids=np.arange(len(text)))
    index.add(image, modality="image", ids=np.arange(len(text), 2 * len(text)))
    return index
