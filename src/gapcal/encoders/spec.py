"""What a model folder holds, and what its ONNX graphs expect, as frozen dataclasses.

A model folder has the jina-clip-v1 layout::

    onnx/text_model.onnx         onnx/vision_model.onnx         (precision="fp32")
    onnx/text_model_fp16.onnx    onnx/vision_model_fp16.onnx    (precision="fp16")
    tokenizer.json  preprocessor_config.json  [tokenizer_config.json]

Input and output names, dtypes and shapes are read from the graphs themselves (through the ONNX Runtime
session), never assumed: jina-clip-v1's text graph takes ``input_ids`` only, ``gapcal export`` writes
graphs that also take ``attention_mask``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Graph file suffix for each supported precision.
PRECISIONS = {"fp32": "", "fp16": "_fp16"}

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class ModelFiles:
    """The files of one model folder for one precision; :meth:`locate` checks they exist."""

    root: Path
    text_graph: Path
    vision_graph: Path
    tokenizer: Path
    preprocessor_config: Path
    tokenizer_config: Path | None

    @classmethod
    def required(cls, precision: str) -> tuple[str, ...]:
        """Relative paths a folder must hold for ``precision`` (also what ``from_pretrained`` fetches)."""
        suffix = PRECISIONS[precision]
        return (f"onnx/text_model{suffix}.onnx", f"onnx/vision_model{suffix}.onnx",
                "tokenizer.json", "preprocessor_config.json")

    @classmethod
    def locate(cls, model_dir: str | Path, precision: str) -> "ModelFiles":
        """Find the files of ``model_dir``; FileNotFoundError lists what is missing."""
        root = Path(model_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"model_dir {str(root)!r} is not a folder. Expected a folder in the jina-clip-v1 layout "
                "(onnx/text_model.onnx, onnx/vision_model.onnx, tokenizer.json, preprocessor_config.json), "
                "or use OnnxClipEncoder.from_pretrained('jinaai/jina-clip-v1')."
            )
        needed = cls.required(precision)
        missing = [name for name in needed if not (root / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"model_dir {str(root)!r} lacks {', '.join(missing)} (needed for precision={precision!r})."
            )
        tokenizer_config = root / "tokenizer_config.json"
        return cls(root, *(root / name for name in needed),
                   tokenizer_config=tokenizer_config if tokenizer_config.is_file() else None)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype, shape (ints for fixed axes, names or None otherwise)."""

    name: str
    dtype: type
    shape: tuple

    @classmethod
    def from_node_arg(cls, arg) -> "TensorSpec":
        if arg.type not in _ORT_TYPES:
            raise ValueError(f"graph tensor {arg.name!r} has unsupported type {arg.type}")
        return cls(arg.name, _ORT_TYPES[arg.type], tuple(arg.shape))

    @property
    def is_integer(self) -> bool:
        return np.issubdtype(self.dtype, np.integer)


@dataclass(frozen=True)
class TextGraphSpec:
    """A text graph: token ids in, optionally an attention mask in, one embedding out."""

    input_ids: TensorSpec
    attention_mask: TensorSpec | None
    output: TensorSpec

    @classmethod
    def from_session(cls, session, path: Path) -> "TextGraphSpec":
        inputs = [TensorSpec.from_node_arg(a) for a in session.get_inputs()]
        if not all(t.is_integer for t in inputs) or len(inputs) not in (1, 2):
            raise ValueError(
                f"{path}: a text graph takes token ids and optionally an attention mask (integer tensors); "
                f"got inputs {[(t.name, t.dtype.__name__) for t in inputs]}"
            )
        masks = [t for t in inputs if "mask" in t.name]
        ids = [t for t in inputs if t not in masks]
        if len(ids) != 1 or len(masks) > 1:
            raise ValueError(f"{path}: cannot tell the ids input from the mask input among {[t.name for t in inputs]}")
        return cls(ids[0], masks[0] if masks else None, _embedding_output(session, path))


@dataclass(frozen=True)
class VisionGraphSpec:
    """A vision graph: one float image tensor (batch, 3, H, W) in, one embedding out."""

    pixel_values: TensorSpec
    output: TensorSpec

    @classmethod
    def from_session(cls, session, path: Path) -> "VisionGraphSpec":
        inputs = [TensorSpec.from_node_arg(a) for a in session.get_inputs()]
        if len(inputs) != 1 or inputs[0].is_integer or len(inputs[0].shape) != 4:
            raise ValueError(
                f"{path}: a vision graph takes one float tensor (batch, 3, height, width); "
                f"got inputs {[(t.name, t.dtype.__name__, t.shape) for t in inputs]}"
            )
        return cls(inputs[0], _embedding_output(session, path))

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) when the graph fixes it, else None."""
        height, width = self.pixel_values.shape[2:]
        return (height, width) if isinstance(height, int) and isinstance(width, int) else None


def _embedding_output(session, path: Path) -> TensorSpec:
    """The graph's embedding output: the only output, else the only 2-D output named ``*embeds*``."""
    outputs = [TensorSpec.from_node_arg(a) for a in session.get_outputs()]
    if len(outputs) == 1:
        return outputs[0]
    named = [t for t in outputs if "embed" in t.name and len(t.shape) == 2]
    if len(named) != 1:
        raise ValueError(f"{path}: cannot tell the embedding output among {[t.name for t in outputs]}")
    return named[0]


def read_json(path: Path) -> dict:
    """A model folder's JSON config as a dict; anything else raises a ValueError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data
