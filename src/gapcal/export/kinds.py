"""The model families ``gapcal export`` supports, as small frozen dataclasses (torch-free).

A family is recognised from the SOURCE folder's ``config.json`` (``model_type``, ``architectures``); its
module in this package (imported only when exporting, it needs torch) loads the PyTorch model and
wraps its two towers as the modules the ONNX graphs are made from.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class ModelKind:
    """One supported model family.

    Attributes
    ----------
    name : short name, written to the export card.
    summary : what it covers, for the list of supported families in error messages.
    model_types, architectures : the ``config.json`` values that identify it (an absent
        ``architectures`` list is accepted).
    module : the module of this package that loads and wraps it (``load(folder)``, ``towers(model)``).
    text_inputs : the inputs of its text graph: with ``attention_mask``, or ``input_ids`` alone when the
        model derives the mask itself (input_ids != pad id).
    remote_code : its PyTorch code lives on the Hugging Face hub (``trust_remote_code``).
    optimum : optimum-onnx can export it (else its towers go through ``torch.onnx.export``).
    default_max_length : text length exported and verified when none is asked for; None: the model's
        position limit.
    """

    name: str
    summary: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    module: str
    text_inputs: tuple[str, ...]
    remote_code: bool = False
    optimum: bool = False
    default_max_length: int | None = None

    def matches(self, config: dict) -> bool:
        architectures = config.get("architectures") or []
        return config.get("model_type") in self.model_types and (
            not architectures or any(name in self.architectures for name in architectures))

    def describe(self) -> str:
        return (f"{self.name} (model_type {', '.join(map(repr, self.model_types))}, "
                f"architectures {', '.join(self.architectures)}): {self.summary}")


CLIP = ModelKind(
    name="clip",
    summary="transformers CLIP checkpoints (openai/clip-vit-*, laion/CLIP-*, fine-tunes); the graphs compute "
            "what CLIPTextModelWithProjection and CLIPVisionModelWithProjection compute",
    model_types=("clip",),
    architectures=("CLIPModel",),
    module="clip",
    text_inputs=("input_ids", "attention_mask"),
    optimum=True,
)

JINA_CLIP_V1 = ModelKind(
    name="jina-clip-v1",
    summary="jinaai/jina-clip-v1 and its fine-tunes (code from the hub: needs trust_remote_code)",
    model_types=("jina_clip",),
    architectures=("JinaCLIPModel",),
    module="jina",
    text_inputs=("input_ids",),
    remote_code=True,
    default_max_length=512,  # jina-clip-v1's own encode_text truncates at 512 (the model allows 8192)
)

KINDS: tuple[ModelKind, ...] = (CLIP, JINA_CLIP_V1)


def detect(config: dict, source: str) -> ModelKind:
    """The family of a model from its ``config.json`` contents; UnsupportedModelError lists the known ones."""
    for kind in KINDS:
        if kind.matches(config):
            return kind
    raise UnsupportedModelError(
        f"SOURCE {source!r} is a model gapcal export does not support: its config.json says "
        f"model_type={config.get('model_type')!r}, architectures={config.get('architectures')}. "
        "Supported: " + "; ".join(kind.describe() for kind in KINDS) + "."
    )
