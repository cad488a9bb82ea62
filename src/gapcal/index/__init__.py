"""Calibrated mixed-modality search over FAISS indexes (needs the ``faiss`` extra).

``MixedIndex`` keeps text and image embeddings searchable as one list ranked by a ``GapCalibrator``'s
comparable score, in new faiss indexes or in an existing index of raw embeddings (``MixedIndex.wrap``).
"""

from .demo import demo_rows, format_demo_rows
from .mixed import MixedIndex, SearchResult

__all__ = ["MixedIndex", "SearchResult", "demo_rows", "format_demo_rows"]
