"""Calibrated mixed-modality search in FAISS (needs the ``faiss`` extra).

``MixedIndex`` keeps text and image embeddings searchable as one list ranked by a ``GapCalibrator``'s
comparable score, in new faiss indexes or in an existing index of raw embeddings (``MixedIndex.wrap``).
"""

from .demo import demo_rows, format_demo_rows
from .index import MixedIndex

__all__ = ["MixedIndex", "demo_rows", "format_demo_rows"]
