"""The committed ONNX test models compute what their PyTorch CLIPModel computes (needs torch and
transformers, the ``export`` extra; skipped without them)."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gapcal.encoders import OnnxClipEncoder  # noqa: E402
from gapcal.encoders.images import ImagePreprocessor, load_image  # noqa: E402
from gapcal.encoders.text import TextBatcher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "tests" / "data" / "coco_images"
COCO_PATHS = sorted(COCO.glob("*.jpg"))
TEXTS = [line.split("\t")[1] for line in (COCO / "captions.tsv").read_text().splitlines()] + [
    "", "x", "a red cat " * 40,
]


@pytest.fixture(scope="module", params=["tiny-clip", "tiny-clip-masked"])
def pair(request):
    folder = ROOT / "models" / request.param
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    return OnnxClipEncoder(folder, providers="cpu"), model


def test_text_embeddings_match_pytorch(pair):
    encoder, model = pair
    batcher = TextBatcher(encoder.files.tokenizer, encoder.max_length)
    expected = np.empty((len(TEXTS), model.config.projection_dim), np.float32)
    with torch.no_grad():
        for positions, ids, mask in batcher.batches(TEXTS, 4):
            out = model.text_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).pooler_output
            expected[positions] = model.text_projection(out).numpy()
    np.testing.assert_allclose(encoder.encode_text(TEXTS, batch_size=5, normalize=False), expected, atol=1e-5)


def test_image_embeddings_match_pytorch(pair):
    encoder, model = pair
    config = json.loads(encoder.files.preprocessor_config.read_text())
    preprocess = ImagePreprocessor.from_config(config)
    pixels = torch.from_numpy(np.stack([preprocess(load_image(p)) for p in COCO_PATHS]))
    with torch.no_grad():
        expected = model.visual_projection(model.vision_model(pixels).pooler_output).numpy()
    np.testing.assert_allclose(encoder.encode_image(COCO_PATHS, batch_size=3, normalize=False), expected, atol=1e-5)


def test_text_tower_pools_at_the_tokenizer_eos(pair):
    """eos_token_id must be the tokenizer's [SEP]: with 2, CLIP pools at argmax(input_ids) instead."""
    encoder, model = pair
    sep = TextBatcher(encoder.files.tokenizer, encoder.max_length).tokenizer.token_to_id("[SEP]")
    assert model.config.text_config.eos_token_id == sep != 2
