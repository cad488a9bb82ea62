"""Tokenisation and length-sorted batching of texts for a text graph.

Texts are sorted by length (longest first, characters as a cheap proxy for tokens, as
sentence-transformers does) so each batch pads to similar lengths; each batch is tokenised on its own
(memory stays proportional to one batch) and padded to its longest member with the tokenizer's pad id.
The caller writes each batch's embeddings back at the returned positions, restoring the input order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .spec import read_json

#: Default truncation, in tokens (jina-clip-v1's own ``encode_text`` truncates at 512).
DEFAULT_MAX_LENGTH = 512
_PAD_TOKENS = ("[PAD]", "<pad>", "<|endoftext|>")


def read_tokenizer_config(path: Path | None) -> dict:
    """The contents of ``tokenizer_config.json``, or {} when the folder has none."""
    return read_json(path) if path else {}


def resolve_max_length(config: dict, max_length: int | None) -> int:
    """``max_length`` if given, else 512 capped by the tokenizer config's ``model_max_length``."""
    if max_length is not None:
        return max_length
    model_max = config.get("model_max_length")
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:  # transformers writes 1e30 for "unset"
        return min(DEFAULT_MAX_LENGTH, model_max)
    return DEFAULT_MAX_LENGTH


class TextBatcher:
    """A ``tokenizers.Tokenizer`` set up to truncate at ``max_length`` and pad batch by batch.

    Parameters
    ----------
    tokenizer_file : ``tokenizer.json``.
    max_length : truncation length in tokens, special tokens included; longer texts keep their first tokens.
    config : the ``tokenizer_config.json`` contents; its ``pad_token`` names the pad token when
        tokenizer.json has no padding setting.
    """

    def __init__(self, tokenizer_file: Path, max_length: int, config: dict | None = None):
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for any unreadable file
            raise ValueError(f"{tokenizer_file} is not a tokenizers tokenizer.json ({exc})") from None
        self.max_length = max_length
        self.pad_id = self._pad_id(config or {})
        self.tokenizer.no_padding()  # padding happens per batch, below
        self.tokenizer.enable_truncation(max_length)

    def _pad_id(self, config: dict) -> int:
        padding = self.tokenizer.padding
        if padding:
            return int(padding["pad_id"])
        pad_token = config.get("pad_token")
        if isinstance(pad_token, dict):  # {"content": "[PAD]", ...} in some configs
            pad_token = pad_token.get("content")
        for token in ([pad_token] if pad_token else []) + list(_PAD_TOKENS):
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        raise ValueError(
            "cannot tell the tokenizer's pad token: tokenizer.json has no padding setting, "
            "tokenizer_config.json no pad_token, and the vocabulary none of " + ", ".join(_PAD_TOKENS)
        )

    def batches(self, texts: Sequence[str], batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (positions in ``texts``, input_ids, attention_mask), int64 arrays of shape (b, longest)."""
        order = np.argsort([-len(text) for text in texts], kind="stable")
        for start in range(0, len(order), batch_size):
            positions = order[start:start + batch_size]
            encodings = self.tokenizer.encode_batch([texts[i] for i in positions])
            longest = max(len(e.ids) for e in encodings)
            ids = np.full((len(encodings), longest), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(encodings), longest), dtype=np.int64)
            for row, encoding in enumerate(encodings):
                ids[row, :len(encoding.ids)] = encoding.ids
                mask[row, :len(encoding.ids)] = 1
            yield positions, ids, mask
