"""Prove an export faithful: ONNX Runtime vs PyTorch on the same random inputs.

Text graphs are checked at sequence lengths 1, 16, 17, 77 and the export's max length (lengths above
it skipped), vision graphs on random images, each at batch sizes 1 and 7; in a batch of 7 the first row
fills the length and the others are shorter, right-padded. fp32 graphs must match within a max abs diff
of 1e-4, fp16 graphs within a cosine of 0.999 (the worst row). 16 and 17 straddle the length the first
jina-clip-v1 text graphs were traced at (their ALiBi bias was frozen there); 77 is CLIP's context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..encoders.session import OrtSession
from ..encoders.spec import TextGraphSpec, VisionGraphSpec
from .errors import ParityError
from .graphs import Towers

LENGTHS = (1, 16, 17, 77)
BATCH_SIZES = (1, 7)
FP32_MAX_ABS_DIFF = 1e-4
FP16_MIN_COSINE = 0.999


def sequence_lengths(max_length: int) -> tuple[int, ...]:
    """The text lengths an export up to ``max_length`` tokens is checked at."""
    return tuple(sorted({n for n in LENGTHS if n <= max_length} | {max_length}))


@dataclass(frozen=True)
class TokenSampler:
    """Random well-formed token rows: [bos] random ids [eos], right-padded with the tokenizer's pad id.

    ``bos_id`` / ``eos_id`` are the special tokens the tokenizer puts around a text (None when it puts
    none); ``ids`` the ids to draw from (the vocabulary without special tokens).
    """

    ids: np.ndarray
    pad_id: int
    bos_id: int | None
    eos_id: int | None

    @classmethod
    def from_tokenizer(cls, tokenizer, pad_id: int, vocab_size: int) -> TokenSampler:
        """From a ``tokenizers.Tokenizer``, drawing only ids below ``vocab_size`` (the model's embedding rows)."""
        special = set(tokenizer.get_added_tokens_decoder()) | {pad_id}
        ids = np.array([i for i in range(min(tokenizer.get_vocab_size(), vocab_size)) if i not in special])
        if ids.size == 0:
            raise ValueError("the tokenizer has no ordinary tokens below the model's vocabulary size "
                             f"{vocab_size}: tokenizer.json does not belong to this model")
        around = tokenizer.encode("").ids
        return cls(ids, pad_id, around[0] if len(around) >= 2 else None, around[-1] if around else None)

    def batch(self, length: int, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """int64 (input_ids, attention_mask) of shape (batch, length); row 0 is ``length`` tokens long."""
        ids = np.full((batch, length), self.pad_id, dtype=np.int64)
        mask = np.zeros((batch, length), dtype=np.int64)
        for row, n in enumerate([length, *rng.integers(1, length + 1, batch - 1)]):
            tokens = rng.choice(self.ids, n)
            if self.bos_id is not None and n >= 2:
                tokens[0] = self.bos_id
            if self.eos_id is not None:
                tokens[-1] = self.eos_id
            ids[row, :n], mask[row, :n] = tokens, 1
        return ids, mask


@dataclass(frozen=True)
class Check:
    """One comparison: tower, sequence length (None for images), batch size, the metric, pass or fail."""

    tower: str
    length: int | None
    batch: int
    value: float
    passed: bool
    error: str | None = None
    dim: int | None = None

    def describe(self, metric: str) -> str:
        where = f"batch {self.batch}"
        if self.error:
            return f"{where}: ONNX Runtime failed: {self.error}"
        return f"{where}: {metric} {self.value:.3g}"


@dataclass(frozen=True)
class Verification:
    """All checks of one export, and their thresholds."""

    precision: str
    checks: tuple[Check, ...]

    @property
    def metric(self) -> str:
        return "max abs diff" if self.precision == "fp32" else "min cosine"

    @property
    def threshold(self) -> float:
        return FP32_MAX_ABS_DIFF if self.precision == "fp32" else FP16_MIN_COSINE

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def worst(self, tower: str, length: int | None = None) -> float:
        """The worst value over batch sizes (largest diff or smallest cosine)."""
        values = [c.value for c in self.checks if c.tower == tower and c.length == length]
        return max(values) if self.precision == "fp32" else min(values)

    def dim(self, tower: str) -> int:
        """Embedding size of ``tower``, as PyTorch computed it."""
        return next(c.dim for c in self.checks if c.tower == tower)

    def summary(self) -> dict:
        """What the export card records."""
        lengths = sorted({c.length for c in self.checks if c.tower == "text"})
        return {
            "metric": self.metric.replace(" ", "_"),
            "threshold": self.threshold,
            "batch_sizes": list(BATCH_SIZES),
            "text_by_length": {str(n): self.worst("text", n) for n in lengths},
            "vision": self.worst("vision"),
        }


def verify(text_graph: Path, vision_graph: Path, towers: Towers, sampler: TokenSampler, *, precision: str,
           max_length: int, seed: int = 0) -> Verification:
    """Compare both graphs with ``towers`` in PyTorch; ParityError names every length that failed.

    The graphs are also read the way :class:`gapcal.OnnxClipEncoder` reads them (input and output names,
    dtypes), so an export that passes here is one the encoder can run. All PyTorch outputs are computed
    before ONNX Runtime runs: interleaving the two runtimes' thread pools slows both several-fold.
    """
    rng = np.random.default_rng(seed)
    text_cases = [(length, batch, *sampler.batch(length, batch, rng))
                  for length in sequence_lengths(max_length) for batch in BATCH_SIZES]
    image_cases = [(batch, rng.standard_normal((batch, 3, towers.image_size, towers.image_size), dtype=np.float32))
                   for batch in BATCH_SIZES]
    ids_only = towers.text_inputs == ("input_ids",)
    with torch.no_grad():
        text_expected = [towers.text(*(torch.from_numpy(a) for a in ((ids,) if ids_only else (ids, mask)))).numpy()
                         for _, _, ids, mask in text_cases]
        image_expected = [towers.vision(torch.from_numpy(pixels)).numpy() for _, pixels in image_cases]

    checks = []
    session = OrtSession(text_graph, "cpu")
    spec = TextGraphSpec.from_session(session.session, text_graph)
    for (length, batch, ids, mask), expected in zip(text_cases, text_expected):
        feeds = {spec.input_ids.name: ids}
        if spec.attention_mask is not None:
            feeds[spec.attention_mask.name] = mask
        checks.append(_compare("text", length, batch, session, feeds, spec.output.name, expected, precision))
    session = OrtSession(vision_graph, "cpu")
    spec = VisionGraphSpec.from_session(session.session, vision_graph)
    for (batch, pixels), expected in zip(image_cases, image_expected):
        checks.append(_compare("vision", None, batch, session, {spec.pixel_values.name: pixels}, spec.output.name,
                               expected, precision))

    result = Verification(precision, tuple(checks))
    if result.failures:
        raise ParityError(_failure_message(result), result.failures)
    return result


def _compare(tower: str, length: int | None, batch: int, session: OrtSession, feeds: dict, output: str,
             expected: np.ndarray, precision: str) -> Check:
    try:
        got = session.run(feeds, output)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types (shape errors...)
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        return Check(tower, length, batch, float("nan"), False, message)
    if got.shape != expected.shape:
        return Check(tower, length, batch, float("nan"), False,
                     f"output shape {got.shape}, PyTorch gives {expected.shape}")
    dim = expected.shape[1]
    if precision == "fp32":
        value = float(np.max(np.abs(got.astype(np.float64) - expected)))
        return Check(tower, length, batch, value, value <= FP32_MAX_ABS_DIFF, dim=dim)
    got, expected = got.astype(np.float64), expected.astype(np.float64)
    cosine = np.sum(got * expected, 1) / np.maximum(
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1), 1e-30)
    value = float(np.min(cosine))
    return Check(tower, length, batch, value, value >= FP16_MIN_COSINE, dim=dim)


def _failure_message(result: Verification) -> str:
    limit = f"{'<=' if result.precision == 'fp32' else '>='} {result.threshold:g}"
    parts = []
    text = [c for c in result.failures if c.tower == "text"]
    if text:
        lengths = sorted({c.length for c in text})
        detail = "; ".join(f"length {c.length}, {c.describe(result.metric)}" for c in text)
        parts.append(f"the text graph does not match PyTorch at sequence length{'s' if len(lengths) > 1 else ''} "
                     f"{', '.join(map(str, lengths))} ({detail}; needed {result.metric} {limit})")
    vision = [c for c in result.failures if c.tower == "vision"]
    if vision:
        detail = "; ".join(c.describe(result.metric) for c in vision)
        parts.append(f"the vision graph does not match PyTorch ({detail}; needed {result.metric} {limit})")
    return "; ".join(parts)
