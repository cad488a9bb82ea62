"""gapcal: fix the modality gap of CLIP-style models inside vector stores.

The numeric core (calibration, metrics, baselines) needs numpy only. Components with heavier
dependencies (ONNX Runtime encoders, FAISS indexes, Milvus stores) are imported lazily on first
attribute access, so ``import gapcal`` stays cheap and works without the optional extras.
"""

from importlib import import_module

__version__ = "0.2.0"

from . import data  # noqa: E402, F401  (gapcal.data.load_coco500 works after a plain `import gapcal`)
from ._checks import NotFittedError  # noqa: E402
from .calibration import GapCalibrator  # noqa: E402

__all__ = ["GapCalibrator", "NotFittedError", "MixedIndex", "MilvusStore", "OnnxClipEncoder", "__version__"]

_LAZY = {
    "OnnxClipEncoder": "gapcal.encoders",
    "MixedIndex": "gapcal.stores.faiss",
    "MilvusStore": "gapcal.stores.milvus",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gapcal' has no attribute {name!r}")
