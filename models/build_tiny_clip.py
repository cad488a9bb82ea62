"""Build the tiny random CLIP test models under ``models/``, offline and seeded.

Two folders, both in the jina-clip-v1 layout that :class:`gapcal.OnnxClipEncoder` reads::

    tiny-clip/         like jinaai/jina-clip-v1: text graph takes ``input_ids`` only (mask = ids != 0),
                       224 px images, jina-style preprocessor_config.json, fp32 and fp16 graphs. Traced with
                       the exporter's graph functions (``gapcal export`` writes this layout only from jina's
                       own model code, which lives on the hub).
    tiny-clip-masked/  a ``gapcal export`` folder, written by the exporter itself: text graph takes
                       ``input_ids`` and ``attention_mask``, 64 px images, transformers-style
                       preprocessor_config.json, 77-token context, gapcal_export.json.

Each holds ``onnx/text_model.onnx`` -> ``text_embeds`` and ``onnx/vision_model.onnx`` -> ``image_embeds``
(not normalised), ``tokenizer.json`` (a small lower-case BERT WordPiece written here, pad id 0),
``tokenizer_config.json``, ``preprocessor_config.json`` and ``model.safetensors`` (the PyTorch weights
the tests compare the graphs against). The built files are committed, so the runtime tests need no torch.

Needs the ``export`` extra (torch, transformers, onnx)::

    python models/build_tiny_clip.py            # rebuilds models/tiny-clip and models/tiny-clip-masked

``bench/encode_speed.py`` imports :func:`build_model` and :func:`export_with_gapcal` to build a
real-size random CLIP in a temporary folder and export it with ``gapcal export``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import CLIPConfig, CLIPModel

from gapcal.export.clip import CLIPText, CLIPVision

HERE = Path(__file__).resolve().parent
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, as in BERT: pad id 0
# Whole words of the vocabulary: common words of COCO captions. Everything else falls back to
# single characters and ##-continuations, so any English text tokenizes without [UNK].
WORDS = """
a an the of on in at to with and or is are was be been being has have it its this that these those
there their they he she his her him man men woman women person people child children boy girl group
two three four several many some one other different various small large big tall little old young
red blue green yellow black white brown orange pink grey gray dark bright colorful
sitting standing walking riding playing holding eating looking laying lying parked flying running
posing smile smiles waiting painted serviced attached submerged fighting display
cat cats dog dogs horse horses zebra zebras bear giraffe elephant bird birds cow sheep animal
car cars bus truck train tracks plane airplane boat bike motorcycle taxi cab street road side
city building buildings house room kitchen table chair bed couch window door wall floor sign
water beach ocean sky field grass tree trees snow mountain park area event tie photograph image
pizza pizzas food plate cake sandwich bowl cup phone cell laptop mouse computer tv clock case
fire hydrant hydrants frisbee ball game tennis ski skis surf board umbrella bench bunch colors
up down under below above near next front top over out outside inside into through
""".split()


def build_tokenizer(model_max_length: int, pad_to_longest: bool = False) -> Tokenizer:
    """A lower-case BERT WordPiece tokenizer ([CLS] text [SEP], pad id 0) from a fixed vocabulary.

    ``pad_to_longest`` stores a padding setting in tokenizer.json, as many exported tokenizers do
    (jina-clip-v1's has none).
    """
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS + chars + pieces + sorted(set(WORDS)):
        vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.enable_truncation(model_max_length)
    if pad_to_longest:
        tokenizer.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]")
    return tokenizer


def build_model(
    *,
    seed: int,
    vocab_size: int,
    eos_token_id: int,
    text_hidden: int,
    text_layers: int,
    text_heads: int,
    text_positions: int,
    vision_hidden: int,
    vision_layers: int,
    vision_heads: int,
    image_size: int,
    patch_size: int,
    projection_dim: int,
    mlp_ratio: int = 2,
) -> CLIPModel:
    """A randomly initialised CLIPModel (eval mode) whose text tower pools at ``eos_token_id``.

    ``mlp_ratio``: MLP width over hidden width; 2 keeps the test models small, real CLIPs use 4.
    """
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=text_hidden,
            intermediate_size=mlp_ratio * text_hidden,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            max_position_embeddings=text_positions,
            pad_token_id=0,
            bos_token_id=SPECIAL_TOKENS.index("[CLS]"),
            eos_token_id=eos_token_id,  # not 2, else CLIP pools at argmax(input_ids) (legacy rule)
        ),
        vision_config=dict(
            hidden_size=vision_hidden,
            intermediate_size=mlp_ratio * vision_hidden,
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            image_size=image_size,
            patch_size=patch_size,
        ),
        projection_dim=projection_dim,
    )
    return CLIPModel(config).eval()


class TextIdsOnly(torch.nn.Module):
    """input_ids -> text_embeds, the mask derived inside the graph as input_ids != 0, as jina-clip-v1's text
    graph does. ``gapcal export`` writes this layout only from jina's own model code (on the hub), so the
    jina-like test folder traces this tower with the exporter's graph functions instead."""

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        mask = (input_ids != 0).to(torch.int64)
        return CLIPText(self.model)(input_ids, mask)


def write_source(model: CLIPModel, tokenizer: Tokenizer, out: Path, preprocessor: str) -> Path:
    """A Hugging Face model folder: config.json, model.safetensors, tokenizer and preprocessor configs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = model.config.vision_config.image_size
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizerFast", "do_lower_case": True,
        "model_max_length": model.config.text_config.max_position_embeddings, "pad_token": "[PAD]",
        "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
    })
    if preprocessor == "jina":  # jina-clip-v1's own (open_clip style) keys
        _write_json(out / "preprocessor_config.json", {
            "image_processor_type": "JinaCLIPImageProcessor", "size": size, "resize_mode": "shortest",
            "interpolation": "bicubic", "fill_color": 0, "mean": CLIP_MEAN, "std": CLIP_STD,
        })
    elif preprocessor == "transformers":  # CLIPImageProcessor keys, as transformers/optimum write them
        _write_json(out / "preprocessor_config.json", {
            "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": size, "width": size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "do_convert_rgb": True,
        })
    else:
        raise ValueError(f"preprocessor must be 'jina' or 'transformers', got {preprocessor!r}")
    model.save_pretrained(out, safe_serialization=True)  # config.json + model.safetensors
    return out


def export_jina_like(model: CLIPModel, tokenizer: Tokenizer, out: Path, fp16: bool = False) -> Path:
    """The jina-clip-v1 folder layout (text graph on input_ids only) from a CLIPModel, through the
    exporter's own graph functions (``gapcal.export.graphs``)."""
    from gapcal.export.graphs import Towers, export_text, export_vision, to_fp16

    out = write_source(model, tokenizer, out, preprocessor="jina")
    (out / "onnx").mkdir(exist_ok=True)
    text = model.config.text_config
    towers = Towers(text=TextIdsOnly(model), vision=CLIPVision(model), text_inputs=("input_ids",),
                    image_size=model.config.vision_config.image_size, position_limit=text.max_position_embeddings,
                    vocab_size=text.vocab_size, pad_id=0)
    long, short = tokenizer.encode("a red cat on a mat").ids, tokenizer.encode("two dogs").ids
    ids = np.array([long, short + [0] * (len(long) - len(short))], dtype=np.int64)  # a padded row in the trace
    export_text(towers, out / "onnx/text_model.onnx", ids, (ids != 0).astype(np.int64), opset=17)
    export_vision(towers, out / "onnx/vision_model.onnx", opset=17)
    if fp16:
        for name in ("text_model", "vision_model"):
            fp32 = out / f"onnx/{name}.onnx"
            keep = fp32.read_bytes()
            to_fp16(fp32, out / f"onnx/{name}_fp16.onnx")  # removes the fp32 graph: put it back
            fp32.write_bytes(keep)
    return out


def export_with_gapcal(model: CLIPModel, tokenizer: Tokenizer, out: Path, precision: str = "fp32") -> Path:
    """A ``gapcal export`` folder of the CLIPModel (exported and verified by the project's exporter), plus
    the PyTorch weights the tests compare the graphs against."""
    from gapcal.export import export_model

    with tempfile.TemporaryDirectory() as source:
        write_source(model, tokenizer, Path(source) / "model", preprocessor="transformers")
        export_model(Path(source) / "model", out, precision=precision, exporter="torch", overwrite=True)
    model.save_pretrained(out, safe_serialization=True)
    return Path(out)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def build_test_models(root: Path = HERE) -> list[Path]:
    """Build the two committed test folders under ``root``."""
    jina_like = build_tokenizer(model_max_length=128)
    eos = jina_like.token_to_id("[SEP]")
    tiny = build_model(
        seed=0, vocab_size=jina_like.get_vocab_size(), eos_token_id=eos,
        text_hidden=32, text_layers=2, text_heads=2, text_positions=128,
        vision_hidden=32, vision_layers=2, vision_heads=2, image_size=224, patch_size=16,
        projection_dim=32,
    )
    masked_tok = build_tokenizer(model_max_length=77, pad_to_longest=True)
    masked = build_model(
        seed=1, vocab_size=masked_tok.get_vocab_size(), eos_token_id=eos,
        text_hidden=32, text_layers=2, text_heads=2, text_positions=77,
        vision_hidden=32, vision_layers=2, vision_heads=2, image_size=64, patch_size=16,
        projection_dim=24,
    )
    return [export_jina_like(tiny, jina_like, root / "tiny-clip", fp16=True),
            export_with_gapcal(masked, masked_tok, root / "tiny-clip-masked")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write the two models into")
    args = parser.parse_args(argv)
    for folder in build_test_models(args.out):
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"{folder}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
