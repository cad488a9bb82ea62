"""OnnxClipEncoder at run time: texts, images, bad input, providers, hub. Needs the ``onnx`` extra only.

Uses the tiny random CLIPs committed under models/ (built by models/build_tiny_clip.py):
``tiny-clip`` has jina-clip-v1's layout (text graph takes input_ids only), ``tiny-clip-masked`` the
``gapcal export`` one (input_ids + attention_mask, 64 px images, 77-token context).
"""

import io
import os
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from gapcal.encoders import ImageDecodeError, OnnxClipEncoder  # noqa: E402
from gapcal.encoders.session import OrtSession, resolve_providers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny-clip"
MASKED = ROOT / "models" / "tiny-clip-masked"
COCO = ROOT / "tests" / "data" / "coco_images"
COCO_PATHS = sorted(COCO.glob("*.jpg"))
CAPTIONS = [line.split("\t")[1] for line in (COCO / "captions.tsv").read_text().splitlines()]
MIXED_TEXTS = [
    "a red cat",
    "Two men smile as they ride horses on the beach while a dog runs behind them in the waves.",
    "x",
    "",
    "A group of people posing for a photograph at a black tie event.",
    "zebras",
    "a bunch of pizzas are on display under a case, next to a tall cup and a small plate of food",
]


@pytest.fixture(scope="module", params=["tiny-clip", "tiny-clip-masked"])
def encoder(request):
    return OnnxClipEncoder(ROOT / "models" / request.param, providers="cpu")


@pytest.fixture(scope="module")
def tiny():
    return OnnxClipEncoder(TINY, providers="cpu")


def centred_cosine(a, b):
    """Row-wise cosine after removing each set's mean (random CLIPs put all embeddings in a narrow cone)."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ---------------------------------------------------------------------------------------------- texts
def test_text_output_contract(encoder):
    out = encoder.encode_text(MIXED_TEXTS)
    assert out.shape == (len(MIXED_TEXTS), encoder.dim)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_text_order_restored_and_padding_free(encoder):
    """Length-sorted, padded batches give each text the embedding it gets alone, in input order."""
    batched = encoder.encode_text(MIXED_TEXTS, batch_size=3, normalize=False)
    alone = np.stack([encoder.encode_text([t], normalize=False)[0] for t in MIXED_TEXTS])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_text_batch_size_invariance(tiny, batch_size):
    reference = tiny.encode_text(CAPTIONS + MIXED_TEXTS, batch_size=7)
    np.testing.assert_allclose(tiny.encode_text(CAPTIONS + MIXED_TEXTS, batch_size=batch_size), reference, atol=1e-5)


def test_text_accepts_any_iterable(tiny):
    np.testing.assert_allclose(tiny.encode_text(t for t in CAPTIONS), tiny.encode_text(CAPTIONS), atol=1e-6)


def test_empty_list_gives_zero_rows(encoder):
    assert encoder.encode_text([]).shape == (0, encoder.dim)
    images = encoder.encode_image([])
    assert images.shape == (0, encoder.dim) and images.dtype == np.float32
    embeddings, mask = encoder.encode_image([], on_error="skip")
    assert embeddings.shape == (0, encoder.dim) and mask.shape == (0,)


def test_empty_string_is_the_special_tokens_alone(tiny):
    """'' tokenises to [CLS] [SEP], like whitespace-only text: a finite, ordinary embedding."""
    empty, blank, word = tiny.encode_text(["", "   \n\t", "cat"])
    assert np.isfinite(empty).all()
    np.testing.assert_allclose(empty, blank, atol=1e-6)
    assert not np.allclose(empty, word, atol=1e-3)


def test_long_text_is_truncated_to_max_length(encoder):
    """A 100k-character text keeps its first max_length tokens (special tokens included)."""
    words = ["cat", "dog", "red", "bus"] * 12_500
    text = " ".join(words)[:100_000]
    prefix = " ".join(words[: encoder.max_length - 2])  # one token per word, plus [CLS] and [SEP]
    np.testing.assert_allclose(encoder.encode_text([text]), encoder.encode_text([prefix]), atol=1e-5)


def test_max_length_defaults_and_override():
    assert OnnxClipEncoder(TINY).max_length == 128  # tokenizer_config model_max_length < 512
    assert OnnxClipEncoder(MASKED).max_length == 77
    short = OnnxClipEncoder(TINY, max_length=6)
    np.testing.assert_allclose(
        short.encode_text(["a red cat on the beach with a dog"]), short.encode_text(["a red cat on"]), atol=1e-6
    )


def test_normalize_false_returns_raw_embeddings(tiny):
    raw = tiny.encode_text(CAPTIONS, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), tiny.encode_text(CAPTIONS), atol=1e-6)


@pytest.mark.parametrize(
    "texts, error, match",
    [
        ("a red cat", TypeError, r"single str: use encode_text\(\[text\]\)"),
        (42, TypeError, "texts must be a list of strings, got int"),
        (["ok", None], TypeError, r"texts\[1\] must be a str, got NoneType"),
        (["ok", b"bytes"], TypeError, r"texts\[1\] must be a str, got bytes"),
        (["ok", "bad \ud800 half"], ValueError, r"texts\[1\] must be valid Unicode text, got a lone surrogate "
                                                r"'\\ud800' at character 4"),
    ],
)
def test_text_bad_input(tiny, texts, error, match):
    with pytest.raises(error, match=match):
        tiny.encode_text(texts)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an integer, got 2.5"),
        ({"batch_size": True}, TypeError, "batch_size must be an integer, got True"),
        ({"normalize": "yes"}, TypeError, "normalize must be True or False, got str"),
        ({"show_progress": 1}, TypeError, "show_progress must be None, True or False, got int"),
    ],
)
def test_encode_bad_arguments(tiny, kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny.encode_text(["a"], **kwargs)
    with pytest.raises(error, match=match):
        tiny.encode_image([COCO_PATHS[0]], **kwargs)


# ---------------------------------------------------------------------------------------------- images
def test_image_output_contract_and_input_kinds(encoder):
    path = COCO_PATHS[0]
    pil = Image.open(path)
    kinds = [path, str(path), path.read_bytes(), pil, np.asarray(pil.convert("RGB"))]
    out = encoder.encode_image(kinds)
    assert out.shape == (len(kinds), encoder.dim) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, np.repeat(out[:1], len(kinds), axis=0), atol=1e-6)


def test_image_batch_size_and_order(encoder):
    reference = np.stack([encoder.encode_image([p])[0] for p in COCO_PATHS])
    for batch_size in (1, 3, 32):
        np.testing.assert_allclose(encoder.encode_image(COCO_PATHS, batch_size=batch_size), reference, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_image(COCO_PATHS, num_workers=1), reference, atol=1e-5)


def test_image_bad_items_name_index_and_path(tiny, tmp_path):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(COCO_PATHS[0].read_bytes()[:5000])
    missing = tmp_path / "missing.jpg"
    cases = [
        (not_image, r"image 1 \('.*notes\.txt'\) could not be read: UnidentifiedImageError"),
        (truncated, r"image 1 \('.*truncated\.jpg'\) could not be read: OSError: image file is truncated"),
        (missing, r"image 1 \('.*missing\.jpg'\) could not be read: FileNotFoundError"),
        (b"\x89PNG garbage", r"image 1 \(12 bytes\) could not be read: UnidentifiedImageError: not an image format"),
        (np.zeros((8, 8, 3), np.float32), r"image 1 \(array float32 \(8, 8, 3\)\) could not be read: .*uint8 or uint"),
        (np.zeros((8, 8, 2), np.uint8), r"image 1 \(array uint8 \(8, 8, 2\)\) could not be read: .*shape"),
    ]
    for bad, match in cases:
        with pytest.raises(ImageDecodeError, match=match) as caught:
            tiny.encode_image([COCO_PATHS[0], bad, COCO_PATHS[1]])
        assert caught.value.index == 1 and isinstance(caught.value, ValueError)


def test_image_on_error_skip_returns_ok_rows_and_mask(tiny, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    items = [COCO_PATHS[0], bad, COCO_PATHS[1], b"", COCO_PATHS[2]]
    embeddings, mask = tiny.encode_image(items, batch_size=2, on_error="skip")
    assert mask.tolist() == [True, False, True, False, True]
    np.testing.assert_allclose(embeddings, tiny.encode_image([COCO_PATHS[0], COCO_PATHS[1], COCO_PATHS[2]]), atol=1e-5)
    embeddings, mask = tiny.encode_image([bad], on_error="skip")
    assert embeddings.shape == (0, tiny.dim) and mask.tolist() == [False]


@pytest.mark.parametrize(
    "images, kwargs, error, match",
    [
        (str(COCO_PATHS[0]), {}, TypeError, r"got a single str: use encode_image\(\[image\]\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), {}, TypeError, r"single ndarray.*list\(array\)"),
        (3, {}, TypeError, "images must be a list .* got int"),
        ([COCO_PATHS[0], 3], {}, TypeError,
         r"images\[1\] must be a file path, bytes, a PIL image or a numpy array; got int"),
        ([COCO_PATHS[0]], {"on_error": "ignore"}, ValueError, "on_error must be 'raise' or 'skip', got 'ignore'"),
        ([COCO_PATHS[0]], {"num_workers": 0}, ValueError, "num_workers must be an integer >= 1, got 0"),
    ],
)
def test_image_bad_arguments(tiny, images, kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny.encode_image(images, **kwargs)


def test_image_stream_is_read_batch_by_batch(tiny):
    """A generator is consumed lazily: an error at item 5 stops reading within two batches of it."""
    consumed = []

    def stream():
        for i in range(1000):
            consumed.append(i)
            yield b"broken" if i == 5 else np.full((40, 60, 3), i % 256, np.uint8)

    with pytest.raises(ImageDecodeError, match="image 5 "):
        tiny.encode_image(stream(), batch_size=4)
    assert len(consumed) <= 12  # the batch holding item 5 and the one decoded ahead of it


def test_image_stream_memory_stays_flat(tiny):
    """Peak Python-side memory does not grow with the number of images streamed from a generator."""

    def peak_for(n):
        def stream():
            rng = np.random.default_rng(0)
            for _ in range(n):
                yield rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)

        tracemalloc.start()
        try:
            out = tiny.encode_image(stream(), batch_size=8, num_workers=2)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert out.shape == (n, tiny.dim)
        return peak

    small, large = peak_for(40), peak_for(320)
    per_image = 3 * 224 * 224 * 4  # one preprocessed float32 image; 320 of them held would be 190 MB
    assert large < small + 8 * per_image, f"peaks {small / 1e6:.1f} MB (40 images), {large / 1e6:.1f} MB (320)"


def test_progress_bar(tiny, capsys):
    tiny.encode_text(CAPTIONS, batch_size=2, show_progress=True)
    assert "8/8" in capsys.readouterr().err
    tiny.encode_image(COCO_PATHS[:2], show_progress=None)  # pytest's stderr is not a terminal: no bar
    tiny.encode_text(CAPTIONS, show_progress=False)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------- model folder
def test_graph_names_are_read_from_the_graphs():
    jina_like, masked = OnnxClipEncoder(TINY), OnnxClipEncoder(MASKED)
    jina_like.encode_text(["a"]), masked.encode_text(["a"])
    assert jina_like._text[1].attention_mask is None and jina_like._text[1].input_ids.name == "input_ids"
    assert masked._text[1].attention_mask.name == "attention_mask"
    assert (jina_like.dim, masked.dim) == (32, 24)


def test_fp16_graphs_close_to_fp32(tiny):
    half = OnnxClipEncoder(TINY, providers="cpu", precision="fp16")
    texts = CAPTIONS + MIXED_TEXTS
    assert centred_cosine(half.encode_text(texts), tiny.encode_text(texts)).min() > 0.99
    assert centred_cosine(half.encode_image(COCO_PATHS), tiny.encode_image(COCO_PATHS)).min() > 0.99
    assert half.encode_text(texts).dtype == np.float32


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        OnnxClipEncoder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError,
                       match=r"lacks onnx/text_model\.onnx, onnx/vision_model\.onnx, tokenizer\.json"):
        OnnxClipEncoder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"lacks onnx/text_model_fp16\.onnx, onnx/vision_model_fp16\.onnx "):
        OnnxClipEncoder(MASKED, precision="fp16")
    with pytest.raises(ValueError, match=r"precision must be one of \['fp16', 'fp32'\], got 'int8'"):
        OnnxClipEncoder(TINY, precision="int8")
    with pytest.raises(ValueError, match="max_length must be an integer >= 1, got 0"):
        OnnxClipEncoder(TINY, max_length=0)
    with pytest.raises(TypeError, match="threads must be an integer, got '2'"):
        OnnxClipEncoder(TINY, threads="2")


@pytest.mark.parametrize("name, content, match", [
    ("tokenizer.json", b"{not json", r"tokenizer\.json is not a tokenizers tokenizer\.json \(key must be a string"),
    ("tokenizer_config.json", b"[1, 2]", r"tokenizer_config\.json must hold a JSON object, got list"),
    ("tokenizer_config.json", b"\xff\xfe", r"tokenizer_config\.json is not valid UTF-8 JSON"),
    ("preprocessor_config.json", b"{", r"preprocessor_config\.json is not valid UTF-8 JSON"),
    ("preprocessor_config.json", b'{"size": {"longest": 3}}',
     r"preprocessor_config\.json: not a usable preprocessor config \(.*size must have shortest_edge"),
    ("onnx/text_model.onnx", None, r"text_model\.onnx is not a loadable ONNX graph \(InvalidProtobuf"),
    ("onnx/vision_model.onnx", b"junk" * 10, r"vision_model\.onnx is not a loadable ONNX graph \(InvalidProtobuf"),
])
def test_corrupt_model_files_are_named(tmp_path, name, content, match):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(TINY, folder)
    target = folder / name
    target.write_bytes(target.read_bytes()[:500] if content is None else content)
    with pytest.raises(ValueError, match=match):
        encoder = OnnxClipEncoder(folder)
        encoder.encode_text(["a cat"])
        encoder.encode_image([np.zeros((32, 32, 3), np.uint8)])


def test_preprocessor_size_must_match_the_graph(tmp_path):
    for path in TINY.rglob("*"):
        if path.is_file() and "fp16" not in path.name:
            target = tmp_path / path.relative_to(TINY)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    config = (tmp_path / "preprocessor_config.json")
    config.write_text(config.read_text().replace('"size": 224', '"size": 256'))
    with pytest.raises(ValueError, match=r"makes \(256, 256\) images but vision_model\.onnx takes \(224, 224\)"):
        OnnxClipEncoder(tmp_path).encode_image([COCO_PATHS[0]])


# ---------------------------------------------------------------------------------------------- providers
def _cuda_really_works() -> bool:
    return "CUDAExecutionProvider" in OrtSession(TINY / "onnx/text_model.onnx", "auto").providers


def test_auto_providers_tell_the_truth_quietly(capfd):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc = OnnxClipEncoder(TINY)  # providers="auto"
        enc.encode_text(["a"])
    assert enc.providers[-1] == "CPUExecutionProvider"
    assert "Failed to create CUDAExecutionProvider" not in capfd.readouterr().err


@pytest.mark.parametrize("request_", ["cuda", "tensorrt", ["CUDAExecutionProvider"]])
def test_explicit_gpu_request_that_falls_back_warns(request_, capfd):
    if _cuda_really_works():
        pytest.skip("a CUDA session is really available here")
    enc = OnnxClipEncoder(TINY, providers=request_)
    head = "TensorrtExecutionProvider" if request_ == "tensorrt" else "CUDAExecutionProvider"
    with pytest.warns(RuntimeWarning, match=rf"{head} was requested for text_model\.onnx but the ONNX Runtime "
                                            r"session runs on CPUExecutionProvider\. Reason: \S"):
        out = enc.encode_text(["a red cat"])
    assert enc.providers == ["CPUExecutionProvider"]
    np.testing.assert_allclose(out, OnnxClipEncoder(TINY, providers="cpu").encode_text(["a red cat"]), atol=1e-6)
    captured = capfd.readouterr()
    assert "Failed to create" not in captured.err and "EP Error" not in captured.out  # moved into the warning


def test_cuda_session_matches_cpu():
    if not _cuda_really_works():
        pytest.skip("no CUDA session can be created here")
    gpu, cpu = OnnxClipEncoder(TINY, providers="cuda"), OnnxClipEncoder(TINY, providers="cpu")
    assert gpu.providers[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu.encode_text(CAPTIONS), cpu.encode_text(CAPTIONS), atol=1e-4)
    np.testing.assert_allclose(gpu.encode_image(COCO_PATHS), cpu.encode_image(COCO_PATHS), atol=1e-4)


def test_failed_session_keeps_its_messages_and_restores_stderr(tmp_path, capfd):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(Exception, match="(?i)protobuf|load model"):
        OrtSession(broken, "cuda")
    os.write(2, b"stderr still works\n")
    assert "stderr still works" in capfd.readouterr().err


@pytest.mark.parametrize(
    "providers, error, match",
    [
        ("gpu", ValueError, "providers must be 'auto', 'cpu', 'cuda', 'tensorrt' or a list"),
        (["FooExecutionProvider"], ValueError, "unknown ONNX Runtime provider 'FooExecutionProvider'"),
        (42, TypeError, "providers must be a string or a non-empty list"),
        ([], TypeError, "providers must be a string or a non-empty list"),
        ([("cuda", "device 0")], TypeError, "providers entries must be names or"),
    ],
)
def test_bad_providers(providers, error, match):
    with pytest.raises(error, match=match):
        OnnxClipEncoder(TINY, providers=providers)


def test_provider_lists():
    assert resolve_providers("auto") == ([("CUDAExecutionProvider", {}), ("CPUExecutionProvider", {})], False)
    assert resolve_providers(["cuda", ("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})])[0] == [
        ("CUDAExecutionProvider", {}), ("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})]
    assert resolve_providers([("CUDAExecutionProvider", {"device_id": 1})]) == (
        [("CUDAExecutionProvider", {"device_id": 1}), ("CPUExecutionProvider", {})], True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert OnnxClipEncoder(TINY, providers=["CPUExecutionProvider"]).providers == ["CPUExecutionProvider"]


# ---------------------------------------------------------------------------------------------- hub, imports
def test_from_pretrained_local_folder():
    enc = OnnxClipEncoder.from_pretrained(str(TINY), providers="cpu", max_length=16)
    assert enc.files.root == TINY and enc.max_length == 16


def test_from_pretrained_offline_says_how_to_use_a_folder(monkeypatch, tmp_path):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"Cannot fetch 'jinaai/jina-clip-v1'.*HF_HUB_OFFLINE=1.*hf download jinaai/"
                                      r"jina-clip-v1 --include 'onnx/text_model\.onnx'.*OnnxClipEncoder\('DIR'\)"):
        OnnxClipEncoder.from_pretrained("jinaai/jina-clip-v1", cache_dir=tmp_path)
    with pytest.raises(OSError, match=r"--include 'onnx/text_model_fp16\.onnx'"):
        OnnxClipEncoder.from_pretrained(cache_dir=tmp_path, precision="fp16", local_files_only=True)


def test_from_pretrained_unreachable_hub_and_partial_cache(monkeypatch, tmp_path):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(OSError, match="Cannot fetch 'org/model'"):
        OnnxClipEncoder.from_pretrained("org/model", cache_dir=tmp_path)
    snapshot = tmp_path / "models--org--model" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.json").write_text("{}")
    (tmp_path / "models--org--model" / "refs").mkdir()
    (tmp_path / "models--org--model" / "refs" / "main").write_text("0" * 40)
    with pytest.raises(OSError, match=r"Cannot fetch 'org/model'.*are not in the local cache"):
        OnnxClipEncoder.from_pretrained("org/model", cache_dir=tmp_path, local_files_only=True)


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT, timeout=120)


def test_runtime_never_imports_torch_or_transformers():
    result = _run_python(f"""
        import sys
        import gapcal
        enc = gapcal.OnnxClipEncoder({str(TINY)!r})
        assert "huggingface_hub" not in sys.modules  # imported only by from_pretrained
        enc.encode_text(["a red cat"]); enc.encode_image([{str(COCO_PATHS[0])!r}])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
        print("heavy:", heavy)
    """)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout


def test_from_pretrained_with_hf_hub_offline_env(tmp_path):
    result = _run_python("""
        import gapcal
        try:
            gapcal.OnnxClipEncoder.from_pretrained("jinaai/jina-clip-v1")
        except OSError as error:
            print("OSError:", error)
    """, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "OSError: Cannot fetch 'jinaai/jina-clip-v1'" in result.stdout
    assert "OnnxClipEncoder('DIR')" in result.stdout


def test_repr(tiny):
    assert repr(OnnxClipEncoder(TINY)).endswith("precision='fp32', providers=not loaded yet)")
    tiny.encode_text(["a"])
    assert "providers=['CPUExecutionProvider']" in repr(tiny)


def test_single_image_kinds_load_identically(tmp_path):
    """A PIL image passed in, its PNG bytes and a PNG file give the same pixels."""
    from gapcal.encoders.images import load_image

    image = Image.open(COCO_PATHS[3]).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (tmp_path / "x.png").write_bytes(buffer.getvalue())
    for item in (buffer.getvalue(), tmp_path / "x.png", image, np.asarray(image)):
        np.testing.assert_array_equal(np.asarray(load_image(item)), np.asarray(image))
