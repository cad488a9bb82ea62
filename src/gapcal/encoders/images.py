"""Image decoding and CLIP preprocessing with numpy and Pillow only.

Matches transformers' ``CLIPImageProcessor`` (and open_clip's transform, which jina-clip-v1 uses):
convert to RGB, resize the shortest edge with Pillow (bicubic), centre crop, scale to [0, 1], normalise
with the channel mean and std, channels first. Before that, :func:`load_image` turns every accepted
input (path, bytes, PIL image, numpy array) into an RGB PIL image, applying the EXIF orientation and
converting greyscale, palette, RGBA, CMYK and 16-bit images.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


class ImageDecodeError(ValueError):
    """An input image that could not be read or converted; names the item's index and source."""

    def __init__(self, index: int, source: str, reason: str):
        super().__init__(f"image {index} ({source}) could not be read: {reason}")
        self.index = index
        self.source = source


@dataclass(frozen=True)
class ImagePreprocessor:
    """Resize, crop and normalise an RGB image into a float32 (3, H, W) array.

    Attributes
    ----------
    resize : target of the resize: ``("shortest_edge", n)`` keeps the aspect ratio,
        ``("exact", (height, width))`` does not; None skips the resize.
    crop : (height, width) of the centre crop, or None for no crop.
    round_crop_offset : where the margin around the crop is odd, round the crop offset half to even
        like torchvision (open_clip and jina-clip-v1 configs) instead of flooring it like transformers.
    """

    resize: tuple | None
    crop: tuple[int, int] | None
    resample: int
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    round_crop_offset: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "ImagePreprocessor":
        """Read a ``preprocessor_config.json``: transformers' CLIPImageProcessor keys or jina/open_clip keys."""
        if isinstance(config.get("size"), int) and "resize_mode" in config:  # jina-clip-v1 / open_clip style
            mode, size = config["resize_mode"], config["size"]
            if mode not in ("shortest", "squash"):
                raise ValueError(f"preprocessor_config: resize_mode {mode!r} is not supported (shortest, squash)")
            interpolation = config.get("interpolation", "bicubic")
            if interpolation not in _RESAMPLE:
                raise ValueError(f"preprocessor_config: unknown interpolation {interpolation!r}")
            return cls(
                resize=("shortest_edge", size) if mode == "shortest" else ("exact", (size, size)),
                crop=(size, size) if mode == "shortest" else None,
                resample=_RESAMPLE[interpolation],
                rescale_factor=1 / 255,
                mean=_triple(config, "mean", "image_mean"),
                std=_triple(config, "std", "image_std"),
                round_crop_offset=True,
            )
        resize = None
        if config.get("do_resize", True):
            size = config.get("size", {"shortest_edge": 224})
            size = {"shortest_edge": size} if isinstance(size, int) else size
            if "shortest_edge" in size:
                resize = ("shortest_edge", int(size["shortest_edge"]))
            elif "height" in size and "width" in size:
                resize = ("exact", (int(size["height"]), int(size["width"])))
            else:
                raise ValueError(f"preprocessor_config: size must have shortest_edge or height and width; got {size}")
        crop = None
        if config.get("do_center_crop", True):
            crop_size = config.get("crop_size", 224)
            crop_size = {"height": crop_size, "width": crop_size} if isinstance(crop_size, int) else crop_size
            crop = (int(crop_size["height"]), int(crop_size["width"]))
        normalize = config.get("do_normalize", True)
        preprocessor = cls(
            resize=resize,
            crop=crop,
            resample=int(config.get("resample", 3)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0,
            mean=_triple(config, "image_mean") if normalize else (0.0, 0.0, 0.0),
            std=_triple(config, "image_std") if normalize else (1.0, 1.0, 1.0),
        )
        if preprocessor.output_size is None:
            raise ValueError("preprocessor_config: neither a centre crop nor an exact resize fixes the image size")
        return preprocessor

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every output, or None when the config leaves it to the input."""
        if self.crop is not None:
            return self.crop
        if self.resize is not None and self.resize[0] == "exact":
            return self.resize[1]
        return None

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Preprocess one RGB PIL image into a float32 (3, H, W) array."""
        if self.resize is not None:
            image = image.resize(self._resized_size(image.width, image.height), resample=self.resample)
        pixels = np.asarray(image)
        if self.crop is not None:
            pixels = self._centre_crop(pixels)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        pixels = (pixels.astype(np.float32) * np.float32(self.rescale_factor) - mean) / std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize, with transformers' and torchvision's integer rule."""
        kind, target = self.resize
        if kind == "exact":
            return target[1], target[0]
        if width <= height:
            return target, int(target * height / width)
        return int(target * width / height), target

    def _centre_crop(self, pixels: np.ndarray) -> np.ndarray:
        crop_h, crop_w = self.crop
        height, width = pixels.shape[:2]
        if height < crop_h or width < crop_w:  # pad with zeros (black) as both reference implementations do
            padded = np.zeros((max(height, crop_h), max(width, crop_w), 3), dtype=pixels.dtype)
            top, left = (padded.shape[0] - height + 1) // 2, (padded.shape[1] - width + 1) // 2
            padded[top:top + height, left:left + width] = pixels
            pixels, height, width = padded, padded.shape[0], padded.shape[1]
        if self.round_crop_offset:
            top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
        else:
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return pixels[top:top + crop_h, left:left + crop_w]


def _triple(config: dict, *keys: str) -> tuple[float, float, float]:
    """The first of ``keys`` present in ``config``, as three floats (per-channel mean or std)."""
    for key in keys:
        if key in config:
            values = config[key]
            if not (isinstance(values, (list, tuple)) and len(values) == 3):
                raise ValueError(f"preprocessor_config: {key} must be a list of 3 numbers, got {values!r}")
            return tuple(float(v) for v in values)
    raise ValueError(f"preprocessor_config: missing {' or '.join(keys)}")


def describe(item) -> str:
    """A short, readable name of an image input for error messages."""
    if isinstance(item, (str, os.PathLike)):
        return repr(os.fspath(item))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"{len(item)} bytes"
    if isinstance(item, Image.Image):
        return f"PIL image, mode {item.mode}, {item.width}x{item.height}"
    if isinstance(item, np.ndarray):
        return f"array {item.dtype} {item.shape}"
    return type(item).__name__


def load_image(item) -> Image.Image:
    """Open any accepted input as an RGB PIL image, EXIF orientation applied.

    Accepts a path (str or os.PathLike), encoded bytes, a PIL image, or a numpy array (uint8 or uint16;
    (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)). Raises TypeError for other types, and OSError or
    ValueError (from Pillow or here) for inputs that cannot be read.
    """
    if isinstance(item, (str, os.PathLike)):
        with Image.open(Path(item)) as image:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(item, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(item)) as image:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(item, Image.Image):
        item.load()
        return _to_rgb(ImageOps.exif_transpose(item))
    if isinstance(item, np.ndarray):
        return _to_rgb(Image.fromarray(_array_to_uint8(item)))
    raise TypeError(
        f"images must be file paths, bytes, PIL images or numpy arrays; got {type(item).__name__}"
    )


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """Check an (H, W[, C]) uint8/uint16 array and return it as uint8 with C in (absent, 3, 4)."""
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"numpy images must be uint8 or uint16, got {array.dtype} (scale floats to 0..255 uint8)")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"numpy images must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {array.shape}")
    if array.dtype == np.uint16:
        array = _uint16_to_uint8(array)
    return np.ascontiguousarray(array)


def _uint16_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map the full 16-bit range onto 8 bits (Pillow's own conversion clips everything above 255)."""
    return np.round(array.astype(np.float32) / 257.0).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: 16-bit greyscale is rescaled, the rest goes through Pillow."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        image = Image.fromarray(_uint16_to_uint8(np.asarray(image)))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # via RGBA, as Pillow asks for palettes with transparency
    return image.convert("RGB")
