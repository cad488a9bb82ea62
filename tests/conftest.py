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
