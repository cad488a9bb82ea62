"""Calibrated stores: raw text and image embeddings in, one list ranked by calibrated score out.

``core`` (numpy only) holds what every store shares; engines plug in below it:
``gapcal.stores.faiss.MixedIndex`` (extra ``faiss``) and ``gapcal.stores.milvus.MilvusStore`` (extra
``milvus``). Importing this package imports neither engine; the names below load them on first use.
"""

from importlib import import_module

from .core import CalibratedStore, Hit, SearchResult

__all__ = ["CalibratedStore", "Hit", "SearchResult", "MixedIndex", "MilvusStore"]

_ENGINES = {"MixedIndex": "gapcal.stores.faiss", "MilvusStore": "gapcal.stores.milvus"}


def __getattr__(name):
    if name in _ENGINES:
        return getattr(import_module(_ENGINES[name]), name)
    raise AttributeError(f"module 'gapcal.stores' has no attribute {name!r}")
