"""Export Hugging Face CLIP-family models to the split ONNX towers :class:`gapcal.OnnxClipEncoder` runs.

Needs the ``export`` extra (torch, transformers, optimum-onnx, onnx)::

    from gapcal.export import export_model
    export_model("openai/clip-vit-base-patch32", "clip-b32-onnx")      # or a local model folder
    export_model("jinaai/jina-clip-v1", "jina-onnx", precision="fp16", trust_remote_code=True)

Every export is compared with PyTorch before it is written (see :mod:`gapcal.export.verify`). Importing
this package does not import torch: :func:`export_model` does, when called.
"""

from importlib import import_module

from .cli import add_export_parser
from .errors import ExportError, NotEnoughDiskError, ParityError, UnsupportedModelError
from .kinds import KINDS, ModelKind

__all__ = ["KINDS", "ExportError", "ModelKind", "NotEnoughDiskError", "ParityError", "UnsupportedModelError",
           "add_export_parser", "export_model", "read_card"]

_LAZY = {"export_model": ".api", "read_card": ".card"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'gapcal.export' has no attribute {name!r}")
