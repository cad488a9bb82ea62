"""PyTorch towers to ONNX graph files: ``torch.onnx.export`` (TorchScript exporter), fp16, weights over 2 GB.

Imports torch: only :func:`gapcal.export.export_model` imports this module, when it runs.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

#: Graphs whose weights exceed this keep them in one ``<graph file>_data`` file beside the graph
#: (protobuf files cannot exceed 2 GB; the name is optimum's, and what OnnxClipEncoder.from_pretrained fetches).
EXTERNAL_DATA_OVER = 1_900_000_000


@dataclass(frozen=True)
class Towers:
    """The two PyTorch modules an export turns into graphs, and what the export needs to know about them.

    Attributes
    ----------
    text : ``(input_ids[, attention_mask]) -> text embeddings``: the computation the text graph must match.
    vision : ``pixel_values -> image embeddings``.
    text_inputs : the text graph's input names: ``("input_ids", "attention_mask")``, or ``("input_ids",)``
        when the tower derives the mask itself as input_ids != ``pad_id``.
    image_size : height and width of the images the vision tower takes (fixed in the graph).
    position_limit : the longest token sequence the text tower takes.
    vocab_size : number of token ids the text tower embeds.
    pad_id : the id an ids-only text tower treats as padding; None when the graph takes a mask.
    fusion : per tower (``"text"``, ``"vision"``), the (attention heads, width) ONNX Runtime's transformer
        optimizer needs to fuse its CLIP layers (attention, LayerNorm + residual, QuickGelu) in the fp16
        graphs, the GPU ones; None: fp16 graphs are converted as exported.
    """

    text: torch.nn.Module
    vision: torch.nn.Module
    text_inputs: tuple[str, ...]
    image_size: int
    position_limit: int
    vocab_size: int
    pad_id: int | None = None
    fusion: dict | None = None


def export_text(towers: Towers, path: Path, ids: np.ndarray, mask: np.ndarray, opset: int) -> None:
    """Export the text tower, traced on ``ids`` (and ``mask``); batch and sequence axes stay dynamic.

    Trace on the longest sequence the export promises: code that sizes a table from the traced length
    (jina-clip-v1's first text graphs froze their ALiBi bias at 16 tokens) then covers every length.
    """
    args = (torch.from_numpy(ids),) if towers.text_inputs == ("input_ids",) else (
        torch.from_numpy(ids), torch.from_numpy(mask))
    axes = {name: {0: "batch", 1: "sequence"} for name in towers.text_inputs} | {"text_embeds": {0: "batch"}}
    export_graph(towers.text, args, path, list(towers.text_inputs), "text_embeds", axes, opset)


def export_vision(towers: Towers, path: Path, opset: int) -> None:
    """Export the vision tower for ``towers.image_size`` square images; only the batch axis is dynamic."""
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal(
        (2, 3, towers.image_size, towers.image_size), dtype=np.float32))
    export_graph(towers.vision, (pixels,), path, ["pixel_values"], "image_embeds",
                 {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}, opset)


def export_graph(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], output_name: str,
                 dynamic_axes: dict, opset: int) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``: the dynamo exporter needs
    onnxscript); weights over :data:`EXTERNAL_DATA_OVER` end up in one ``<name>_data`` file."""
    work = path.with_name(path.name + ".work")
    work.mkdir()
    try:
        traced = work / path.name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # exporter deprecation notice, tracer warnings about Python values
            torch.onnx.export(module, args, str(traced), input_names=input_names, output_names=[output_name],
                              dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
                              dynamo=False)
        if [p.name for p in work.iterdir()] == [path.name]:
            traced.replace(path)
        else:  # the exporter wrote large weights as loose files: gather them into one
            save_graph(onnx.load(str(traced)), path)
    finally:
        shutil.rmtree(work)


def to_fp16(source: Path, target: Path, fusion: tuple[int, int] | None = None) -> dict:
    """Write an fp16 copy of a graph: float16 weights and compute, float32 inputs and outputs (as
    jina-clip-v1's ``*_fp16.onnx``), then delete the float32 graph. With ``fusion`` = (attention heads, width)
    of a CLIP tower, ONNX Runtime's transformer optimizer first fuses its layers into the contrib kernels
    ONNX Runtime runs fastest on GPU (measured in ``bench/encode_speed.py``). Returns the fused operator counts."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the model contains values out of fp16 range, clamped" and the like
        if fusion is None:
            model = onnx.load(str(source))
            half = convert_float_to_float16(model, keep_io_types=True,
                                            disable_shape_infer=_weight_bytes(model) > EXTERNAL_DATA_OVER)
            fused = {}
        else:  # the optimizer's own conversion knows the shapes of the fused (contrib) operators
            from onnxruntime.transformers import optimizer

            optimized = optimizer.optimize_model(str(source), model_type="clip", num_heads=fusion[0],
                                                 hidden_size=fusion[1], opt_level=0, use_gpu=True)
            fused = {name: count for name, count in optimized.get_fused_operator_statistics().items() if count}
            optimized.convert_float_to_float16(keep_io_types=True)
            half = optimized.model
    save_graph(half, target)
    remove_graph(source)
    return fused


def save_graph(model: onnx.ModelProto, path: Path, external_over: int = EXTERNAL_DATA_OVER) -> None:
    """Save ``model`` to ``path``; weights over ``external_over`` bytes go to ``<path name>_data``."""
    if _weight_bytes(model) > external_over:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + "_data", size_threshold=1024)
    else:
        onnx.save(model, str(path))


def remove_graph(path: Path) -> None:
    """Delete a graph file and its external weights file, if any."""
    path.unlink()
    path.with_name(path.name + "_data").unlink(missing_ok=True)


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or 4 * int(np.prod(t.dims)) for t in model.graph.initializer)
