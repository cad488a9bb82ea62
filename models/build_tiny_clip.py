"""Build the tiny random CLIP test models under ``models/``, offline and seeded.

Two folders, both in the jina-clip-v1 layout that :class:`gapcal.OnnxClipEncoder` reads::

    tiny-clip/         like jinaai/jina-clip-v1: text graph takes ``input_ids`` only (mask = ids != 0),
                       224 px images, jina-style preprocessor_config.json, fp32 and fp16 graphs.
    tiny-clip-masked/  like a ``gapcal export`` folder: text graph takes ``input_ids`` and
                       ``attention_mask``, 64 px images, transformers-style preprocessor_config.json,
                       77-token context.

Each holds ``onnx/text_model.onnx`` -> ``text_embeds`` and ``onnx/vision_model.onnx`` -> ``image_embeds``
(not normalised), ``tokenizer.json`` (a small lower-case BERT WordPiece written here, pad id 0),
``tokenizer_config.json``, ``preprocessor_config.json`` and ``model.safetensors`` (the PyTorch weights
the tests compare the graphs against). The built files are committed, so the runtime tests need no torch.

Needs the ``export`` extra (torch, transformers, onnx)::

    python models/build_tiny_clip.py            # rebuilds models/tiny-clip and models/tiny-clip-masked

``bench/encode_speed.py`` imports :func:`build_model` and :func:`export_folder` to build a
real-size random CLIP in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import CLIPConfig, CLIPModel

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
    """input_ids -> text_embeds, the mask derived inside the graph as input_ids != 0 (jina-clip-v1)."""

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        mask = (input_ids != 0).to(torch.int64)
        return self.model.text_projection(self.model.text_model(input_ids, attention_mask=mask).pooler_output)


class TextWithMask(torch.nn.Module):
    """(input_ids, attention_mask) -> text_embeds, the layout optimum's split CLIP export writes."""

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        out = self.model.text_model(input_ids, attention_mask=attention_mask).pooler_output
        return self.model.text_projection(out)


class Vision(torch.nn.Module):
    """pixel_values -> image_embeds (not normalised)."""

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.visual_projection(self.model.vision_model(pixel_values).pooler_output)


def _export(module: torch.nn.Module, args: tuple, names: list[str], output: str, path: Path) -> None:
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names if name != "pixel_values"}
    dynamic.update({name: {0: "batch"} for name in names if name == "pixel_values"})
    dynamic[output] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer warnings
        torch.onnx.export(
            module, args, str(path), input_names=names, output_names=[output],
            dynamic_axes=dynamic, opset_version=17, do_constant_folding=True, dynamo=False,
        )


def _to_fp16(src: Path, dst: Path) -> None:
    """Write an fp16 copy of a graph (float16 weights and compute, float32 inputs and outputs kept)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def export_folder(
    model: CLIPModel,
    tokenizer: Tokenizer,
    out: Path,
    *,
    text_inputs: tuple[str, ...] = ("input_ids",),
    preprocessor: str = "jina",
    fp16: bool = False,
    save_weights: bool = True,
) -> Path:
    """Export ``model`` and ``tokenizer`` to ``out`` in the jina-clip-v1 folder layout."""
    out = Path(out)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    text_cfg, vision_cfg = model.config.text_config, model.config.vision_config
    model_max_length = text_cfg.max_position_embeddings

    long, short = tokenizer.encode("a red cat on a mat").ids, tokenizer.encode("two dogs").ids
    ids = torch.tensor([long, short + [0] * (len(long) - len(short))])  # a padded row in the trace
    if text_inputs == ("input_ids",):
        _export(TextIdsOnly(model), (ids,), ["input_ids"], "text_embeds", out / "onnx/text_model.onnx")
    elif text_inputs == ("input_ids", "attention_mask"):
        args = (ids, (ids != 0).to(torch.int64))
        _export(TextWithMask(model), args, list(text_inputs), "text_embeds", out / "onnx/text_model.onnx")
    else:
        raise ValueError(f"text_inputs must be ('input_ids',) or ('input_ids', 'attention_mask'), got {text_inputs}")
    size = vision_cfg.image_size
    pixels = torch.randn(2, 3, size, size)
    _export(Vision(model), (pixels,), ["pixel_values"], "image_embeds", out / "onnx/vision_model.onnx")
    if fp16:
        for name in ("text_model", "vision_model"):
            _to_fp16(out / f"onnx/{name}.onnx", out / f"onnx/{name}_fp16.onnx")

    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizerFast", "do_lower_case": True, "model_max_length": model_max_length,
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "mask_token": "[MASK]",
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
    if save_weights:
        model.save_pretrained(out, safe_serialization=True)  # config.json + model.safetensors
    return out


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
    return [
        export_folder(tiny, jina_like, root / "tiny-clip", preprocessor="jina", fp16=True),
        export_folder(masked, masked_tok, root / "tiny-clip-masked",
                      text_inputs=("input_ids", "attention_mask"), preprocessor="transformers"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write the two models into")
    args = parser.parse_args(argv)
    for folder in build_test_models(args.out):
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"{folder}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
