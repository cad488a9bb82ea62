"""transformers CLIP checkpoints: load, wrap the towers, export through optimum-onnx.

optimum exports CLIPModel only as one joint graph; its MetaCLIP-2 ONNX config, variant "split", writes
one graph per tower (its patcher calls ``get_text_features`` / ``get_image_features``, which CLIPModel
has too): ``text_model.onnx`` (input_ids, attention_mask -> text_embeds) and ``vision_model.onnx``
(pixel_values -> image_embeds), not normalised. Where optimum-onnx is missing or refuses the installed
transformers, the towers below go through ``torch.onnx.export`` instead (:mod:`gapcal.export.graphs`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPModel

from .graphs import Towers


class CLIPText(torch.nn.Module):
    """(input_ids, attention_mask) -> text_embeds, as CLIPTextModelWithProjection computes them.

    Written out rather than calling ``get_text_features``, which returns a model output instead of a
    tensor from transformers 5 on.
    """

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        pooled = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.model.text_projection(pooled)


class CLIPVision(torch.nn.Module):
    """pixel_values -> image_embeds, as CLIPVisionModelWithProjection computes them."""

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixel_values).pooler_output)


def load(folder: Path) -> CLIPModel:
    """The CLIPModel of ``folder`` in float32, eval mode (fp16 graphs are converted after export), with
    transformers' eager attention: the same arithmetic as SDPA, traced as the pattern ONNX Runtime's
    transformer optimizer fuses into its attention kernel (an SDPA trace stays unfused: on an H100, ViT-B/16
    fp16 image graphs ran at 0.63x PyTorch's speed instead of 0.99x, ``bench/encode_speed.py``)."""
    return CLIPModel.from_pretrained(folder, attn_implementation="eager").float().eval()


def towers(model: CLIPModel) -> Towers:
    text, vision = model.config.text_config, model.config.vision_config
    return Towers(text=CLIPText(model), vision=CLIPVision(model), text_inputs=("input_ids", "attention_mask"),
                  image_size=vision.image_size, position_limit=text.max_position_embeddings,
                  vocab_size=text.vocab_size,
                  fusion={"text": (text.num_attention_heads, text.hidden_size),
                          "vision": (vision.num_attention_heads, vision.hidden_size)})


def optimum_unfit_reason() -> str | None:
    """Why optimum-onnx cannot export here (not installed, too old a transformers), or None when it can."""
    try:
        import transformers
        from optimum.exporters.onnx.model_configs import MetaCLIP2OnnxConfig
        from packaging.version import Version
    except ImportError as error:
        return f"optimum-onnx is not installed ({error})"
    if Version(transformers.__version__) < MetaCLIP2OnnxConfig.MIN_TRANSFORMERS_VERSION:
        return (f"optimum-onnx's split CLIP export needs transformers >= "
                f"{MetaCLIP2OnnxConfig.MIN_TRANSFORMERS_VERSION}, found {transformers.__version__}")
    return None


def export_with_optimum(model: CLIPModel, onnx_dir: Path, opset: int, max_length: int) -> None:
    """Write ``text_model.onnx`` and ``vision_model.onnx`` with optimum-onnx, traced at ``max_length`` tokens."""
    from optimum.exporters.onnx.convert import export
    from optimum.exporters.onnx.model_configs import MetaCLIP2OnnxConfig

    for vision_model, name in ((False, "text_model"), (True, "vision_model")):
        config = MetaCLIP2OnnxConfig(model.config, task="feature-extraction", variant="split",
                                     vision_model=vision_model)
        export(model, config, onnx_dir / f"{name}.onnx", opset=opset,
               input_shapes={"sequence_length": max_length})
