"""OnnxClipEncoder: text and image embeddings from a CLIP-style ONNX export, without torch."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .._checks import check_int, l2_normalize
from . import hub
from .images import ImageDecodeError, ImagePreprocessor, describe, load_image
from .session import OrtSession, resolve_providers
from .spec import PRECISIONS, ModelFiles, TextGraphSpec, VisionGraphSpec, read_json
from .text import TextBatcher, read_tokenizer_config, resolve_max_length

_IMAGE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)


class OnnxClipEncoder:
    """Embed texts and images with a CLIP-style model exported to ONNX (the jina-clip-v1 folder layout).

    Produces what the original model produces (same tokenizer, same preprocessing, the model's own
    graphs), through ONNX Runtime: on the GPU when a CUDA session can really be created, else on CPU.
    The graphs are loaded on first use; ``providers`` then tells where they run.

    Parameters
    ----------
    model_dir : folder with ``onnx/text_model.onnx``, ``onnx/vision_model.onnx`` (``*_fp16.onnx`` for
        fp16), ``tokenizer.json``, ``preprocessor_config.json`` and optionally ``tokenizer_config.json``.
    providers : ``"auto"`` (CUDA when ONNX Runtime really gets it, else CPU), ``"cpu"``, ``"cuda"``,
        ``"tensorrt"``, or a list of ONNX Runtime provider names or (name, options) pairs. An explicit GPU
        request that ends up elsewhere raises a RuntimeWarning; ``"auto"`` falls back silently.
    precision : ``"fp32"`` or ``"fp16"`` (the ``*_fp16.onnx`` graphs, meant for GPUs). Outputs are
        float32 either way.
    max_length : text truncation in tokens, special tokens included. Default 512 (as jina-clip-v1's own
        ``encode_text``; the model itself accepts 8192), or the tokenizer's ``model_max_length`` when
        smaller. Longer texts, of any length, keep their first ``max_length`` tokens.
    threads : ONNX Runtime intra-op threads on CPU; None lets ONNX Runtime choose (physical cores).

    Examples
    --------
    >>> enc = OnnxClipEncoder.from_pretrained("jinaai/jina-clip-v1")          # doctest: +SKIP
    >>> enc.encode_text(["a red cat"]).shape                                   # doctest: +SKIP
    (1, 768)
    """

    def __init__(self, model_dir: str | Path, providers="auto", precision: str = "fp32", *,
                 max_length: int | None = None, threads: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if max_length is not None:
            check_int("max_length", max_length, minimum=1)
        if threads is not None:
            check_int("threads", threads, minimum=1)
        resolve_providers(providers)  # reject bad values now, not at the first encode
        self.files = ModelFiles.locate(model_dir, precision)
        self.precision = precision
        self._tokenizer_config = read_tokenizer_config(self.files.tokenizer_config)
        #: Text truncation in tokens, resolved (512, or the tokenizer's model_max_length when smaller).
        self.max_length = resolve_max_length(self._tokenizer_config, max_length)
        self.threads = threads
        self._providers_arg = providers
        self._lock = threading.Lock()
        self._text: tuple[OrtSession, TextGraphSpec, TextBatcher] | None = None
        self._vision: tuple[OrtSession, VisionGraphSpec, ImagePreprocessor] | None = None

    @classmethod
    def from_pretrained(cls, repo_id: str = "jinaai/jina-clip-v1", *, providers="auto", precision: str = "fp32",
                        revision: str | None = None, cache_dir: str | Path | None = None,
                        token: str | bool | None = None, local_files_only: bool = False,
                        **kwargs) -> "OnnxClipEncoder":
        """Load ``repo_id`` from the Hugging Face hub (only the files ``precision`` needs) or a local folder.

        Downloads go to the usual hub cache (or ``cache_dir``). Offline and not cached: OSError that says
        how to point the encoder at a local folder. ``kwargs`` go to the constructor.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if Path(repo_id).expanduser().is_dir():
            folder = Path(repo_id).expanduser()
        else:
            folder = hub.download(repo_id, precision, revision=revision, cache_dir=cache_dir, token=token,
                                  local_files_only=local_files_only)
        return cls(folder, providers=providers, precision=precision, **kwargs)

    # ------------------------------------------------------------------ sessions, loaded on first use
    def _load_text(self) -> tuple[OrtSession, TextGraphSpec, TextBatcher]:
        with self._lock:
            if self._text is None:
                session = OrtSession(self.files.text_graph, self._providers_arg, self.threads)
                spec = TextGraphSpec.from_session(session.session, self.files.text_graph)
                batcher = TextBatcher(self.files.tokenizer, self.max_length, self._tokenizer_config)
                self._text = (session, spec, batcher)
            return self._text

    def _load_vision(self) -> tuple[OrtSession, VisionGraphSpec, ImagePreprocessor]:
        with self._lock:
            if self._vision is None:
                config_file = self.files.preprocessor_config
                config = read_json(config_file)
                try:
                    preprocess = ImagePreprocessor.from_config(config)
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{config_file}: not a usable preprocessor config ({exc!s:.300})") from None
                session = OrtSession(self.files.vision_graph, self._providers_arg, self.threads)
                spec = VisionGraphSpec.from_session(session.session, self.files.vision_graph)
                if spec.image_size is not None and preprocess.output_size != spec.image_size:
                    raise ValueError(
                        f"{self.files.preprocessor_config} makes {preprocess.output_size} images but "
                        f"{self.files.vision_graph.name} takes {spec.image_size}"
                    )
                self._vision = (session, spec, preprocess)
            return self._vision

    @property
    def providers(self) -> list[str]:
        """The ONNX Runtime providers the loaded sessions really run on (from ``session.get_providers()``).

        Loads the text session if no session is loaded yet. Should the text and image sessions differ,
        only the providers both use are listed.
        """
        sessions = [part[0] for part in (self._text, self._vision) if part is not None] or [self._load_text()[0]]
        return [name for name in sessions[0].providers if all(name in s.providers for s in sessions[1:])]

    @property
    def dim(self) -> int:
        """Embedding dimension (read from the text graph's output)."""
        size = self._load_text()[1].output.shape[-1]
        return size if isinstance(size, int) else self.encode_text([""]).shape[1]

    def __repr__(self) -> str:
        loaded = self.providers if (self._text or self._vision) else "not loaded yet"
        return f"OnnxClipEncoder({str(self.files.root)!r}, precision={self.precision!r}, providers={loaded})"

    # ------------------------------------------------------------------ encoding
    def encode_text(self, texts: Iterable[str], batch_size: int = 64, normalize: bool = True,
                    show_progress: bool | None = None) -> np.ndarray:
        """Embed ``texts``; returns a float32 C-contiguous (n, dim) array, rows in input order.

        Texts are sorted by length and batched, each batch padded to its longest text with the
        tokenizer's pad id. Texts longer than ``max_length`` tokens are truncated (first tokens kept);
        an empty string is encoded as the special tokens alone. ``normalize`` L2-normalises the rows.
        ``show_progress``: a tqdm bar; None shows it when stderr is a terminal.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got a single str: use encode_text([text])")
        if not isinstance(texts, Iterable):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}: {text!r:.80}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a bad decode
                raise ValueError(f"texts[{index}] must be valid Unicode text, got a lone surrogate "
                                 f"{text[exc.start]!r} at character {exc.start}") from None
        check_int("batch_size", batch_size, minimum=1)
        _check_flags(normalize=normalize, show_progress=show_progress)
        session, spec, batcher = self._load_text()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)

        out = None
        with _progress(show_progress, len(texts), "text") as bar:
            for positions, ids, mask in batcher.batches(texts, batch_size):
                feeds = {spec.input_ids.name: ids.astype(spec.input_ids.dtype, copy=False)}
                if spec.attention_mask is not None:
                    feeds[spec.attention_mask.name] = mask.astype(spec.attention_mask.dtype, copy=False)
                embeddings = session.run(feeds, spec.output.name)
                if out is None:
                    out = np.empty((len(texts), embeddings.shape[1]), dtype=np.float32)
                out[positions] = embeddings
                bar.update(len(positions))
        return l2_normalize(np.array(out, dtype=np.float32), floor=1e-12) if normalize else out

    def encode_image(self, images: Iterable, batch_size: int = 32, normalize: bool = True,
                     show_progress: bool | None = None, on_error: str = "raise",
                     num_workers: int | None = None):
        """Embed ``images``: file paths, encoded bytes, PIL images or numpy arrays (HWC or HW, uint8/uint16).

        ``images`` may be any iterable, a generator included: it is read and decoded batch by batch
        (``num_workers`` threads, default min(8, CPUs), decoding the next batch while the model runs
        the current one), so memory stays flat however many images there are. EXIF orientation is
        applied; greyscale, palette, RGBA, CMYK and 16-bit images are converted to RGB.

        Returns a float32 C-contiguous (n, dim) array in input order. An image that cannot be read
        raises :class:`ImageDecodeError` (a ValueError naming its index and path) with
        ``on_error="raise"``; with ``on_error="skip"`` the result is ``(embeddings of the readable
        images, mask)``, ``mask[i]`` False where image ``i`` failed.
        """
        if isinstance(images, _IMAGE_TYPES):
            raise TypeError(
                f"images must be a list (or other iterable) of images, got a single {type(images).__name__}: "
                "use encode_image([image]) (or list(array) for a stack of arrays)"
            )
        if not isinstance(images, Iterable):
            raise TypeError(f"images must be a list (or other iterable) of images, got {type(images).__name__}")
        check_int("batch_size", batch_size, minimum=1)
        _check_flags(normalize=normalize, show_progress=show_progress)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1)
        check_int("num_workers", num_workers, minimum=1)
        session, spec, preprocess = self._load_vision()

        chunks, ok = [], []
        total = len(images) if hasattr(images, "__len__") else None
        batches = _decoded_batches(images, batch_size, preprocess, num_workers)
        with _progress(show_progress, total, "image") as bar, contextlib.closing(batches):
            for decoded in batches:
                arrays = []
                for result in decoded:
                    if isinstance(result, ImageDecodeError):
                        if on_error == "raise":
                            raise result
                        ok.append(False)
                    else:
                        arrays.append(result)
                        ok.append(True)
                if arrays:
                    pixels = np.stack(arrays).astype(spec.pixel_values.dtype, copy=False)
                    chunks.append(session.run({spec.pixel_values.name: pixels}, spec.output.name))
                bar.update(len(decoded))
        if chunks:
            embeddings = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
        else:
            size = spec.output.shape[-1]
            embeddings = np.zeros((0, size if isinstance(size, int) else self.dim), dtype=np.float32)
        if normalize:
            embeddings = l2_normalize(np.array(embeddings, dtype=np.float32), floor=1e-12)
        return (embeddings, np.array(ok, dtype=bool)) if on_error == "skip" else embeddings


def _decoded_batches(images: Iterable, batch_size: int, preprocess: ImagePreprocessor,
                     num_workers: int) -> Iterator[list]:
    """Yield batches of preprocessed arrays (or ImageDecodeError), read from ``images`` one batch ahead."""
    items = enumerate(images)
    pool = ThreadPoolExecutor(num_workers, thread_name_prefix="gapcal-decode")

    def submit():
        return [pool.submit(_decode, index, item, preprocess) for index, item in islice(items, batch_size)]

    try:
        pending = submit()
        while pending:
            upcoming = submit()
            yield [future.result() for future in pending]
            pending = upcoming
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode(index: int, item, preprocess: ImagePreprocessor):
    """Preprocess one image; a failure to read it is returned (not raised) as an ImageDecodeError."""
    if not isinstance(item, _IMAGE_TYPES):
        raise TypeError(
            f"images[{index}] must be a file path, bytes, a PIL image or a numpy array; got {type(item).__name__}"
        )
    try:
        return preprocess(load_image(item))
    except Exception as error:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError, EOFError...
        detail = "not an image format Pillow can read" if isinstance(error, UnidentifiedImageError) else error
        failure = ImageDecodeError(index, describe(item), f"{type(error).__name__}: {detail}")
        failure.__cause__ = error
        return failure


def _progress(show: bool | None, total: int | None, unit: str):
    if show is None:
        show = sys.stderr is not None and sys.stderr.isatty()
    return tqdm(total=total, unit=unit, disable=not show, desc=f"encoding {unit}s")


def _check_flags(*, normalize, show_progress) -> None:
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {type(normalize).__name__} {normalize!r}")
    if show_progress is not None and not isinstance(show_progress, bool):
        raise TypeError(f"show_progress must be None, True or False, got {type(show_progress).__name__} "
                        f"{show_progress!r}")
