"""jina-clip-v1 (``trust_remote_code``): load, and wrap its towers for ``torch.onnx.export``.

The model's code lives on the Hugging Face hub (jinaai/jina-clip-implementation, with its text tower's
from jinaai/jina-bert-flash-implementation); transformers fetches it into its modules cache. What this
module relies on is the documented interface of ``JinaCLIPModel``: ``get_text_features(input_ids)``
(the text tower derives its attention mask as input_ids != ``text_model.config.pad_token_id``, mean-pools
and projects), ``get_image_features(pixel_values)`` (EVA-02 vision tower whose 2-D RoPE tables are built
for ``config.vision_config.image_size``), and ``text_model.config`` (the BERT config: pad id,
``max_position_embeddings``, vocabulary size).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .graphs import Towers


class JinaText(torch.nn.Module):
    """input_ids -> text_embeds (not normalised); the mask is input_ids != pad id, derived in the graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.get_text_features(input_ids)


class JinaVision(torch.nn.Module):
    """pixel_values (batch, 3, image_size, image_size) -> image_embeds (not normalised)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values)


def load(folder: Path):
    """JinaCLIPModel from ``folder`` in float32, eval mode, with plain PyTorch attention.

    Flash attention (text) and xFormers (vision) kernels cannot be exported; the model code picks them
    from these config values when CUDA and the libraries are present, so they are switched off.
    """
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        config.use_text_flash_attn = False
        config.use_vision_xformers = False
        config.vision_config.x_attention = False
        if isinstance(getattr(config.text_config, "hf_model_config_kwargs", None), dict):
            config.text_config.hf_model_config_kwargs["use_flash_attn"] = False
        model = AutoModel.from_pretrained(folder, config=config, trust_remote_code=True, torch_dtype=torch.float32)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load the jina-clip model code for {str(folder)!r}: transformers fetches it from the Hugging "
            "Face hub (jinaai/jina-clip-implementation, jinaai/jina-bert-flash-implementation) and it is neither "
            "reachable nor in the modules cache (HF_MODULES_CACHE). Load the model once with "
            f"AutoModel.from_pretrained(..., trust_remote_code=True) where there is network. ({error})"
        ) from error
    return model.float().eval()


def towers(model) -> Towers:
    text = model.text_model.config
    return Towers(text=JinaText(model), vision=JinaVision(model), text_inputs=("input_ids",),
                  image_size=model.config.vision_config.image_size, position_limit=text.max_position_embeddings,
                  vocab_size=text.vocab_size, pad_id=text.pad_token_id)
