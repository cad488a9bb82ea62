"""Image decoding and preprocessing: every input kind and mode to RGB, and pixel values equal to
transformers' CLIPImageProcessor on real COCO photos (the vendored 8 always; all 100 of
../shared/data/coco100-images when that folder is there)."""

import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from gapcal.encoders.images import ImagePreprocessor, load_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENDORED = sorted((ROOT / "tests/data/coco_images").glob("*.jpg"))
SHARED = ROOT.parent / "shared" / "data" / "coco100-images" / "images"
JINA_CONFIG = json.loads((ROOT / "models/tiny-clip/preprocessor_config.json").read_text())
HF_CONFIG = json.loads((ROOT / "models/tiny-clip-masked/preprocessor_config.json").read_text())


def _clip_processor(**kwargs):
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPImageProcessor(**kwargs)


def _reference(processor, image):
    return processor(images=image, return_tensors="np")["pixel_values"][0]


# ---------------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("paths", [VENDORED, sorted(SHARED.glob("*.jpg"))], ids=["vendored-8", "shared-100"])
def test_preprocessing_matches_clip_image_processor_on_coco(paths):
    if not paths:
        pytest.skip(f"{SHARED} is not here")
    processor = _clip_processor()  # OpenAI CLIP defaults: shortest edge 224 bicubic, crop 224
    resize_only = _clip_processor(do_center_crop=False)
    ours_hf = ImagePreprocessor.from_config(processor.to_dict())
    ours_jina = ImagePreprocessor.from_config(JINA_CONFIG)  # jina-clip-v1's own keys, same 224 pipeline
    for path in paths:
        image = load_image(path)
        expected = _reference(processor, image)
        assert expected.shape == (3, 224, 224)
        np.testing.assert_allclose(ours_hf(image), expected, atol=1e-4, err_msg=str(path))
        # jina-clip-v1 crops like torchvision (offset rounded half to even, not floored): same resize,
        # same normalisation, a crop window one pixel further where the margin is odd
        resized = _reference(resize_only, image)
        top, left = (int(round((size - 224) / 2.0)) for size in resized.shape[1:])
        np.testing.assert_allclose(ours_jina(image), resized[:, top:top + 224, left:left + 224], atol=1e-4,
                                   err_msg=str(path))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # the folder's own 64 px config
        {"size": {"shortest_edge": 80}, "crop_size": {"height": 64, "width": 48}},  # non-square crop
        {"size": {"shortest_edge": 50}, "crop_size": {"height": 64, "width": 64}},  # crop larger: zero padding
        {"size": {"height": 70, "width": 90}, "do_center_crop": False},  # exact resize, no crop
        {"do_normalize": False, "resample": 2},  # bilinear, [0, 1] output
    ],
)
def test_preprocessing_matches_clip_image_processor_variants(kwargs):
    config = {**HF_CONFIG, **kwargs}
    processor = _clip_processor(**{k: v for k, v in config.items() if k != "image_processor_type"})
    ours = ImagePreprocessor.from_config(config)
    for path in VENDORED[:4]:
        image = load_image(path)
        np.testing.assert_allclose(ours(image), _reference(processor, image), atol=1e-4, err_msg=str(path))


def test_open_clip_configs_round_the_crop_offset_like_torchvision():
    """Jina/open_clip configs crop like torchvision (round half to even), transformers floors."""
    image = Image.fromarray(np.arange(224 * 399 * 3, dtype=np.uint32).reshape(224, 399, 3).astype(np.uint8))
    jina = ImagePreprocessor.from_config({**JINA_CONFIG, "mean": [0, 0, 0], "std": [1, 1, 1]})
    pixels = np.asarray(image, dtype=np.float32) / 255  # 224 px high already: the resize is the identity
    np.testing.assert_allclose(jina(image), pixels[:, 88:312].transpose(2, 0, 1), atol=1e-6)  # round(87.5) = 88
    hf = ImagePreprocessor.from_config({**HF_CONFIG, "size": {"shortest_edge": 224},
                                        "crop_size": {"height": 224, "width": 224},
                                        "image_mean": [0, 0, 0], "image_std": [1, 1, 1]})
    np.testing.assert_allclose(hf(image), pixels[:, 87:311].transpose(2, 0, 1), atol=1e-6)  # 175 // 2 = 87


@pytest.mark.parametrize(
    "config, match",
    [
        ({**JINA_CONFIG, "resize_mode": "longest"}, "resize_mode 'longest' is not supported"),
        ({**JINA_CONFIG, "interpolation": "sinc"}, "unknown interpolation 'sinc'"),
        ({k: v for k, v in JINA_CONFIG.items() if k != "mean"}, "missing mean or image_mean"),
        ({**HF_CONFIG, "image_std": [0.5, 0.5]}, "image_std must be a list of 3 numbers"),
        ({**HF_CONFIG, "size": {"longest_edge": 64}}, "size must have shortest_edge or height and width"),
        ({**HF_CONFIG, "do_center_crop": False}, "neither a centre crop nor an exact resize fixes the image size"),
    ],
)
def test_bad_preprocessor_configs(config, match):
    with pytest.raises(ValueError, match=match):
        ImagePreprocessor.from_config(config)


# ---------------------------------------------------------------------------------------------- decoding
def _encoded(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    rng = np.random.default_rng(0)
    upright = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    data = _encoded(stored, "PNG", exif=exif)
    loaded = load_image(data)
    assert loaded.size == (50, 30)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(upright))
    np.testing.assert_array_equal(np.asarray(load_image(Image.open(io.BytesIO(data)))), np.asarray(upright))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.new("L", (4, 3), 77), (77, 77, 77)),
        (lambda: Image.new("LA", (4, 3), (77, 10)), (77, 77, 77)),
        (lambda: Image.new("1", (4, 3), 1), (255, 255, 255)),
        (lambda: Image.new("RGBA", (4, 3), (10, 20, 30, 0)), (10, 20, 30)),
        (lambda: Image.new("CMYK", (4, 3), (0, 0, 0, 0)), (255, 255, 255)),
        (lambda: Image.new("CMYK", (4, 3), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("P", (4, 3), 0), (0, 0, 0)),
        (lambda: Image.fromarray(np.full((3, 4), 65535, np.uint16)), (255, 255, 255)),  # I;16
        (lambda: Image.fromarray(np.full((3, 4), 32896, np.uint16)), (128, 128, 128)),
        (lambda: np.full((3, 4), 200, np.uint8), (200, 200, 200)),
        (lambda: np.full((3, 4, 1), 200, np.uint8), (200, 200, 200)),
        (lambda: np.full((3, 4, 4), (1, 2, 3, 4), np.uint8), (1, 2, 3)),
        (lambda: np.full((3, 4, 3), (257 * 1, 257 * 2, 65535), np.uint16), (1, 2, 255)),
    ],
    ids=["L", "LA", "1", "RGBA", "CMYK-white", "CMYK-red", "P", "I16-max", "I16-mid", "array-HW", "array-HW1",
         "array-RGBA", "array-uint16"],
)
def test_modes_become_rgb(make, expected):
    image = load_image(make())
    assert image.mode == "RGB" and image.size == (4, 3)
    assert image.getpixel((1, 1)) == expected


def test_palette_with_transparency_and_16_bit_png_files(tmp_path):
    palette = Image.new("P", (4, 3), 1)
    palette.putpalette([0, 0, 0, 9, 99, 199] + [0] * 762)
    (tmp_path / "p.png").write_bytes(_encoded(palette, "PNG", transparency=0))
    assert load_image(tmp_path / "p.png").getpixel((0, 0)) == (9, 99, 199)
    deep = Image.fromarray(np.full((3, 4), 200 * 257, np.uint16))  # 16-bit greyscale PNG
    (tmp_path / "deep.png").write_bytes(_encoded(deep, "PNG"))
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    assert load_image(tmp_path / "deep.png").getpixel((0, 0)) == (200, 200, 200)  # Pillow alone: 255


def test_load_image_rejects_other_types():
    with pytest.raises(TypeError, match="images must be file paths, bytes, PIL images or numpy arrays; got list"):
        load_image([1, 2, 3])
