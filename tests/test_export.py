"""gapcal export: tiny CLIPs to split ONNX towers, run through OnnxClipEncoder against PyTorch; the
length-parity check; atomic output; every error path. Needs the ``export`` extra (skipped without it).

SOURCE folders are the tiny random CLIPs under models/ (built by models/build_tiny_clip.py; each holds
config.json, model.safetensors, tokenizer.json and preprocessor_config.json as save_pretrained writes
them): ``tiny-clip-masked`` (77 tokens, 64 px, transformers-style preprocessor config) and
``tiny-clip`` (128 tokens, 224 px, jina-style preprocessor config).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402

from gapcal.encoders import OnnxClipEncoder  # noqa: E402
from gapcal.encoders.images import ImagePreprocessor, load_image  # noqa: E402
from gapcal.export import (  # noqa: E402
    ExportError, NotEnoughDiskError, ParityError, UnsupportedModelError, add_export_parser, clip, export_model, graphs,
    jina, read_card,
)

ROOT = Path(__file__).resolve().parents[1]
MASKED = ROOT / "models" / "tiny-clip-masked"
TINY = ROOT / "models" / "tiny-clip"
COCO = ROOT / "tests" / "data" / "coco_images"
COCO_PATHS = sorted(COCO.glob("*.jpg"))
TEXTS = [line.split("\t")[1] for line in (COCO / "captions.tsv").read_text().splitlines()] + [
    "", "x", "a red cat " * 40,  # the last one is truncated at the max length
]
SOURCE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "preprocessor_config.json")


def copy_source(src: Path, dst: Path, **config_changes) -> Path:
    """A copy of a model folder's PyTorch files (not its onnx/), with config.json keys changed."""
    dst.mkdir(parents=True)
    for name in SOURCE_FILES:
        shutil.copyfile(src / name, dst / name)
    if config_changes:
        config = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**config, **config_changes}))
    return dst


def pytorch_embeddings(model, encoder):
    """What the PyTorch CLIPModel gives for TEXTS and COCO_PATHS, tokenised and preprocessed as the encoder does."""
    texts = np.empty((len(TEXTS), model.config.projection_dim), np.float32)
    with torch.no_grad():
        for positions, ids, mask in encoder._load_text()[2].batches(TEXTS, 4):
            out = model.text_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).pooler_output
            texts[positions] = model.text_projection(out).numpy()
        preprocess = ImagePreprocessor.from_config(json.loads(encoder.files.preprocessor_config.read_text()))
        pixels = torch.from_numpy(np.stack([preprocess(load_image(p)) for p in COCO_PATHS]))
        images = model.visual_projection(model.vision_model(pixels).pooler_output).numpy()
    return texts, images


def centred_cosine(a, b):
    """Row-wise cosine after removing each set's mean (random CLIPs put all embeddings in a narrow cone)."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary folders an export may have left beside OUT_DIR."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def masked_model():
    return transformers.CLIPModel.from_pretrained(MASKED).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """tiny-clip-masked exported with the defaults (optimum-onnx, fp32)."""
    return export_model(MASKED, tmp_path_factory.mktemp("export") / "clip")


# ---------------------------------------------------------------------------------------------- exports
def test_export_runs_in_the_encoder_like_pytorch(exported, masked_model):
    assert sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()) == [
        "gapcal_export.json", "onnx/text_model.onnx", "onnx/vision_model.onnx", "preprocessor_config.json",
        "tokenizer.json", "tokenizer_config.json"]
    encoder = OnnxClipEncoder(exported, providers="cpu")
    assert encoder.max_length == 77  # from the tokenizer_config.json the export writes
    texts, images = pytorch_embeddings(masked_model, encoder)
    np.testing.assert_allclose(encoder.encode_text(TEXTS, batch_size=5, normalize=False), texts, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_image(COCO_PATHS, batch_size=3, normalize=False), images, atol=1e-5)


def test_export_card(exported):
    card = read_card(exported)
    assert card["source"] == {"name": str(MASKED), "repo_id": None, "revision": None}
    assert (card["family"], card["precision"], card["opset"], card["normalized"]) == ("clip", "fp32", 17, False)
    assert card["exporter"].startswith("optimum-onnx")
    assert card["text"] == {"graph": "onnx/text_model.onnx", "inputs": ["input_ids", "attention_mask"],
                            "output": "text_embeds", "dim": 24, "max_length": 77, "pad_id": 0}
    assert card["vision"]["dim"] == 24 and card["vision"]["image_size"] == [64, 64]
    check = card["verification"]
    assert list(check["text_by_length"]) == ["1", "16", "17", "77"] and check["batch_sizes"] == [1, 7]
    assert max(check["text_by_length"].values()) <= 1e-4 and check["vision"] <= 1e-4
    assert card["tools"]["torch"] == torch.__version__ and card["tools"]["optimum-onnx"] == "0.1.0"
    assert (exported / "tokenizer.json").read_bytes() == (MASKED / "tokenizer.json").read_bytes()
    assert json.loads((exported / "tokenizer_config.json").read_text())["model_max_length"] == 77


def test_torch_exporter_with_longer_context_and_fixed_image_size(tmp_path):
    out = export_model(TINY, tmp_path / "tiny", exporter="torch")
    card = read_card(out)
    assert card["exporter"] == "torch.onnx.export (TorchScript)"
    assert list(card["verification"]["text_by_length"]) == ["1", "16", "17", "77", "128"]
    pixel_values = onnx.load(str(out / "onnx/vision_model.onnx")).graph.input[0]
    assert [d.dim_value or d.dim_param for d in pixel_values.type.tensor_type.shape.dim] == ["batch", 3, 224, 224]
    encoder = OnnxClipEncoder(out, providers="cpu")
    model = transformers.CLIPModel.from_pretrained(TINY).eval()
    texts, images = pytorch_embeddings(model, encoder)
    np.testing.assert_allclose(encoder.encode_text(TEXTS, normalize=False), texts, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_image(COCO_PATHS, normalize=False), images, atol=1e-5)


def test_fp16_export(tmp_path, masked_model):
    out = export_model(MASKED, tmp_path / "half", precision="fp16", max_length=40)
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["text_model_fp16.onnx", "vision_model_fp16.onnx"]
    card = read_card(out)
    assert card["precision"] == "fp16" and card["text"]["graph"] == "onnx/text_model_fp16.onnx"
    # the GPU graphs run ONNX Runtime's fused kernels: every vision attention layer, LayerNorm + residual
    vision_ops = {node.op_type for node in onnx.load(str(out / "onnx/vision_model_fp16.onnx")).graph.node}
    layers = masked_model.config.vision_config.num_hidden_layers
    assert card["fused_operators"]["vision"]["Attention"] == layers and "Attention" in vision_ops
    assert card["fused_operators"]["text"]["SkipLayerNormalization"] > 0
    check = card["verification"]
    assert check["metric"] == "min_cosine" and list(check["text_by_length"]) == ["1", "16", "17", "40"]
    assert min(check["text_by_length"].values()) >= 0.999 and check["vision"] >= 0.999
    encoder = OnnxClipEncoder(out, providers="cpu", precision="fp16")
    assert encoder.max_length == 40
    texts, images = pytorch_embeddings(masked_model, encoder)
    half_texts, half_images = encoder.encode_text(TEXTS), encoder.encode_image(COCO_PATHS)
    for half, full in ((half_texts, texts), (half_images, images)):
        full = full / np.linalg.norm(full, axis=1, keepdims=True)
        assert (half * full).sum(1).min() >= 0.999  # the contract: cosine to fp32 PyTorch
        assert centred_cosine(half, full).min() > 0.98  # and not only along the direction all embeddings share


# ---------------------------------------------------------------------------------------------- length parity
class LengthFrozenText(torch.nn.Module):
    """A CLIP text tower that reads the sequence length as a Python int and masks tokens past it.

    Eager PyTorch is right at every length; a graph traced at 16 tokens keeps 16 as a constant and masks
    every later token, like the first jina-clip-v1 text graphs, whose ALiBi bias was frozen at the
    traced length.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        seen = int(input_ids.shape[1])  # a constant in a traced graph
        keep = (torch.arange(input_ids.shape[1]) < seen).to(attention_mask.dtype)
        out = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask * keep).pooler_output
        return self.model.text_projection(out)


def test_length_frozen_export_is_caught_and_discarded(tmp_path, monkeypatch):
    export_text = graphs.export_text

    def traced_at_16_tokens(towers, path, ids, mask, opset):
        export_text(towers, path, ids[:, :16], mask[:, :16], opset)

    monkeypatch.setattr(clip, "CLIPText", LengthFrozenText)
    monkeypatch.setattr(graphs, "export_text", traced_at_16_tokens)
    out = tmp_path / "new" / "clip"
    with pytest.raises(ParityError, match=r"text graph does not match PyTorch at sequence lengths 17, 77 "
                                          r"\(length 17, batch 1: max abs diff .*was not written") as caught:
        export_model(MASKED, out, exporter="torch")
    assert {check.length for check in caught.value.failures} == {17, 77}  # 1 and 16 passed
    assert not (tmp_path / "new").exists()  # no OUT_DIR, no temporary folder, no created parent


def test_tracing_at_the_max_length_fixes_the_length_frozen_tower(tmp_path, monkeypatch):
    """The same tower exported as gapcal does (traced at the max length) is right at every length."""
    monkeypatch.setattr(clip, "CLIPText", LengthFrozenText)
    out = export_model(MASKED, tmp_path / "clip", exporter="torch")
    assert max(read_card(out)["verification"]["text_by_length"].values()) <= 1e-4


# ---------------------------------------------------------------------------------------------- jina-clip-v1
class JinaInterface(torch.nn.Module):
    """jina-clip-v1's documented interface over a tiny CLIP: ``get_text_features(input_ids)`` derives the
    mask as input_ids != pad id, ``get_image_features(pixel_values)``, ``text_model.config``,
    ``config.vision_config.image_size``. The real model code comes from the hub, unreachable in tests."""

    def __init__(self, model, pad_id=0):
        super().__init__()
        self.clip = model
        text = model.config.text_config
        self.text_model = SimpleNamespace(config=SimpleNamespace(
            pad_token_id=pad_id, max_position_embeddings=text.max_position_embeddings, vocab_size=text.vocab_size))
        self.config = SimpleNamespace(vision_config=model.config.vision_config)

    def get_text_features(self, input_ids):
        mask = (input_ids != self.text_model.config.pad_token_id).to(torch.int64)
        out = self.clip.text_model(input_ids=input_ids, attention_mask=mask).pooler_output
        return self.clip.text_projection(out)

    def get_image_features(self, pixel_values):
        return self.clip.visual_projection(self.clip.vision_model(pixel_values=pixel_values).pooler_output)


@pytest.fixture
def jina_source(tmp_path, monkeypatch, masked_model):
    monkeypatch.setattr(jina, "load", lambda folder: JinaInterface(masked_model))
    return copy_source(MASKED, tmp_path / "jina", model_type="jina_clip", architectures=["JinaCLIPModel"])


def test_jina_clip_export_takes_input_ids_only(jina_source, tmp_path, masked_model):
    out = export_model(jina_source, tmp_path / "out", trust_remote_code=True)
    card = read_card(out)
    assert card["family"] == "jina-clip-v1" and card["exporter"] == "torch.onnx.export (TorchScript)"
    assert card["text"]["inputs"] == ["input_ids"] and card["text"]["max_length"] == 77  # 512 capped by the model
    session = ort.InferenceSession(str(out / "onnx/text_model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids"]
    encoder = OnnxClipEncoder(out, providers="cpu")
    texts, images = pytorch_embeddings(masked_model, encoder)
    np.testing.assert_allclose(encoder.encode_text(TEXTS, batch_size=5, normalize=False), texts, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_image(COCO_PATHS[:4], normalize=False), images[:4], atol=1e-5)


def test_jina_clip_errors(jina_source, tmp_path, monkeypatch, masked_model):
    with pytest.raises(ExportError, match=r"jina-clip-v1 model whose PyTorch code comes from the Hugging Face hub.*"
                                          r"trust_remote_code=True \(--trust-remote-code\)"):
        export_model(jina_source, tmp_path / "out")
    with pytest.raises(ValueError, match=r"exporter='optimum' cannot export jina-clip-v1 models"):
        export_model(jina_source, tmp_path / "out", trust_remote_code=True, exporter="optimum")
    monkeypatch.setattr(jina, "load", lambda folder: JinaInterface(masked_model, pad_id=1))
    with pytest.raises(ExportError, match=r"tokenizer pads with id 0 but the text tower treats id 1 as padding"):
        export_model(jina_source, tmp_path / "out", trust_remote_code=True)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- bad input
def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    source = copy_source(MASKED, tmp_path / "siglip", model_type="siglip", architectures=["SiglipModel"])
    with pytest.raises(UnsupportedModelError, match=r"model_type='siglip', architectures=\['SiglipModel'\]\. "
                                                    r"Supported: clip \(model_type 'clip', architectures CLIPModel\)"
                                                    r".*; jina-clip-v1 \(model_type 'jina_clip'"):
        export_model(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing, message", [
    ("tokenizer.json", r"has no tokenizer\.json, the fast-tokenizer file.*save_pretrained\(SOURCE\)"),
    ("preprocessor_config.json", r"has no preprocessor_config\.json"),
    ("config.json", r"has no config\.json; expected a Hugging Face model folder"),
    ("model.safetensors", r"has no weights: expected model\.safetensors"),
])
def test_missing_source_files(tmp_path, missing, message):
    source = copy_source(MASKED, tmp_path / "model")
    (source / missing).unlink()
    with pytest.raises(FileNotFoundError, match=message):
        export_model(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_source_that_is_neither_a_folder_nor_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"SOURCE '\./no/such/model' is not a folder, and not a Hugging "
                                                r"Face hub id"):
        export_model("./no/such/model", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"SOURCE '.*config\.json' is a file"):
        export_model(MASKED / "config.json", tmp_path / "out")
    with pytest.raises(ValueError, match=r"revision applies to hub ids only; SOURCE '.*' is a local folder"):
        export_model(MASKED, tmp_path / "out", revision="main")


def test_hub_id_offline_says_how_to_use_a_local_folder(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"SOURCE 'org/model' is not a local folder, so it was taken as a "
                                                r"Hugging Face hub id.*HF_HUB_OFFLINE=1.*`hf download org/model "
                                                r"--local-dir DIR`.*`gapcal export DIR OUT_DIR`"):
        export_model("org/model", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out_dir", [None, "", 3, "nul\0byte"])
def test_out_dir_must_be_a_path(out_dir):
    with pytest.raises((TypeError, ValueError), match=r"out_dir must (be a file system path|not contain a NUL)"):
        export_model(MASKED, out_dir)


def test_out_dir_exists(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"OUT_DIR '.*out' already exists; pass overwrite=True \(--overwrite\)"):
        export_model(MASKED, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match=r"OUT_DIR '.*file' exists and is not a folder"):
        export_model(MASKED, tmp_path / "file", overwrite=True)
    with pytest.raises(ExportError, match=r"OUT_DIR '.*file/out' cannot be created: '.*file' is a file"):
        export_model(MASKED, tmp_path / "file" / "out")


def test_overwrite_refuses_to_delete_the_source(tmp_path):
    source = copy_source(MASKED, tmp_path / "models" / "clip")
    for out in (source, tmp_path / "models"):
        with pytest.raises(ExportError, match=r"OUT_DIR '.*' holds SOURCE .*overwriting it would delete the model"):
            export_model(source, out, overwrite=True)
    assert sorted(p.name for p in source.iterdir()) == sorted(SOURCE_FILES)


def test_not_enough_disk(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5 * 10**6, 5 * 10**6))
    with pytest.raises(NotEnoughDiskError, match=r"not enough disk space for OUT_DIR '.*out': the export needs "
                                                 r"about 17 MB, '.*' has 5 MB free"):
        export_model(MASKED, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, error, message", [
    ({"precision": "int8"}, ValueError, r"precision must be one of 'fp32', 'fp16', got 'int8'"),
    ({"opset": 9}, ValueError, r"opset must be an integer >= 14 and <= 20, got 9"),
    ({"opset": "17"}, TypeError, r"opset must be an integer, got '17'"),
    ({"max_length": 0}, ValueError, r"max_length must be an integer >= 1, got 0"),
    ({"exporter": "tf2onnx"}, ValueError, r"exporter must be one of 'auto', 'optimum', 'torch', got 'tf2onnx'"),
    ({"overwrite": "yes"}, TypeError, r"overwrite must be True or False, got str 'yes'"),
])
def test_bad_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        export_model(MASKED, tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_checks_after_loading_the_model(tmp_path):
    with pytest.raises(ValueError, match=r"max_length must be <= 77, the text tower's position limit "
                                         r"\(max_position_embeddings\), got 78"):
        export_model(MASKED, tmp_path / "out", max_length=78)
    with pytest.raises(ValueError, match=r"max_length must be >= 2, the special tokens the tokenizer puts around "
                                         r"every text, got 1"):
        export_model(MASKED, tmp_path / "out", max_length=1)
    source = copy_source(MASKED, tmp_path / "model")
    config = json.loads((source / "preprocessor_config.json").read_text())
    config["crop_size"] = {"height": 32, "width": 32}
    (source / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"preprocessor_config\.json makes 32x32 images but the vision tower "
                                          r"takes 64x64"):
        export_model(source, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ---------------------------------------------------------------------------------------------- graphs, CLI
def test_large_graphs_keep_their_weights_in_one_data_file(exported, tmp_path):
    model = onnx.load(str(exported / "onnx/text_model.onnx"))
    path = tmp_path / "text_model.onnx"
    graphs.save_graph(model, path, external_over=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text_model.onnx", "text_model.onnx_data"]
    ids = np.array([[2, 40, 41, 3]])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            for p in (exported / "onnx/text_model.onnx", path)]
    np.testing.assert_array_equal(*runs)
    graphs.remove_graph(path)
    assert list(tmp_path.iterdir()) == []


def _parser():
    parser = argparse.ArgumentParser(prog="gapcal")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_export_overwrites(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = _parser().parse_args(["export", str(MASKED), str(out), "--overwrite", "--max-length", "20"])
    assert args.func(args) == 0
    printed = capsys.readouterr()
    assert f"wrote {out} (clip, fp32, opset 17, optimum-onnx" in printed.out
    assert "max abs diff vs PyTorch by sequence length: 1: " in printed.out and ", 20: " in printed.out
    assert "gapcal export: verifying against PyTorch at sequence lengths (1, 16, 17, 20)" in printed.err
    assert not (out / "old.txt").exists() and read_card(out)["text"]["max_length"] == 20
    assert leftovers(tmp_path) == []


def test_cli_errors_are_value_errors(tmp_path):
    args = _parser().parse_args(["export", str(MASKED), str(tmp_path / "out"), "--opset", "9"])
    with pytest.raises(ValueError, match="opset must be an integer >= 14"):
        args.func(args)
    with pytest.raises(SystemExit):
        _parser().parse_args(["export", str(MASKED), str(tmp_path / "out"), "--precision", "int8"])


def test_cli_reports_os_errors_as_export_errors(tmp_path, monkeypatch):
    def full_disk(**kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", full_disk)
    args = _parser().parse_args(["export", str(MASKED), str(tmp_path / "new" / "out")])
    with pytest.raises(ExportError, match=r"^OSError: \[Errno 28\] No space left on device$"):
        args.func(args)
    assert list(tmp_path.iterdir()) == []  # the parent folder it had created is gone again


def test_importing_the_export_package_does_not_import_torch():
    code = ("import sys, argparse, gapcal.export as e\n"
            "e.add_export_parser(argparse.ArgumentParser().add_subparsers())\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum')))")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
