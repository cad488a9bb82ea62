"""Calibrated mixed-modality search inside vector databases (needs the ``milvus`` extra).

``MilvusStore`` gives a Milvus collection (Milvus Lite on a local file, Standalone or Distributed on a
server) the ``MixedIndex`` contract: raw embeddings in, one list ranked by a ``GapCalibrator``'s
comparable score out. Importing ``gapcal`` alone never imports pymilvus; importing this package does.
"""

from .milvus import MilvusStore, StoreResult

__all__ = ["MilvusStore", "StoreResult"]
