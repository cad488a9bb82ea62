"""Before/after rankings for ``gapcal demo``: raw CLIP cosine versus a calibrated MixedIndex."""

from __future__ import annotations

import faiss
import numpy as np

from ..._checks import MODALITIES, check_pairs, l2_normalize
from .index import MixedIndex


def demo_rows(text, image, calibrator, query_rows=(0, 1, 2), k=5) -> list:
    """Top-k of a pool of all ``text`` and ``image`` rows, by raw cosine and by calibrated score.

    Row i of ``text`` pairs with row i of ``image``. Each of ``query_rows`` queries once as a caption and
    once as an image; the query's own item is left out of its results. Returns one dict per query:
    ``{"modality", "row", "before", "after"}``, each ranking a list of ``(modality, row, score, is_pair)``.
    """
    text, image = check_pairs(text, image)
    n = len(text)
    rows = np.asarray(query_rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or ((rows < 0) | (rows >= n)).any():
        raise ValueError(f"query_rows must be row numbers in [0, {n}), got {list(query_rows)}")
    data = {"text": text, "image": image}
    raw = faiss.IndexFlatIP(text.shape[1])
    raw.add(l2_normalize(np.concatenate([text, image])))
    calibrated = MixedIndex(calibrator, "Flat")
    calibrated.add(text, modality="text", ids=np.arange(n))
    calibrated.add(image, modality="image", ids=np.arange(n, 2 * n))

    def ranking(ids, scores, query_modality, row):
        out = []
        for item, score in zip(ids, scores):
            modality, item_row = MODALITIES[item // n], int(item % n)
            if (modality, item_row) != (query_modality, row):
                out.append((modality, item_row, float(score), modality != query_modality and item_row == row))
        return out[:k]

    result = []
    for modality in MODALITIES:
        queries = data[modality][rows]
        raw_scores, raw_ids = raw.search(l2_normalize(queries.copy()), k + 1)
        after = calibrated.search(queries, k + 1, query_modality=modality)
        for i, row in enumerate(rows.tolist()):
            result.append({"modality": modality, "row": row,
                           "before": ranking(raw_ids[i], raw_scores[i], modality, row),
                           "after": ranking(after.ids[i], after.scores[i], modality, row)})
    return result


def format_demo_rows(rows, captions=None) -> str:
    """``demo_rows`` output as text; ``captions`` (a sequence of strings by row) labels text items."""

    def label(modality, row):
        if modality == "text" and captions is not None:
            return f"text  #{row:<4d} {captions[row][:48]!r}"
        return f"{modality:5s} #{row}"

    def cell(modality, row, score, pair):
        return f"{label(modality, row)}{' *' if pair else ''} {score:6.3f}"

    width = max([len(cell(*item)) for entry in rows for item in entry["before"]] + [len("before (raw cosine)")]) + 2
    lines = []
    for entry in rows:
        lines.append(f"query: {label(entry['modality'], entry['row'])}")
        lines.append(f"  {'before (raw cosine)':<{width}s}after (calibrated score)")
        for before, after in zip(entry["before"], entry["after"]):
            lines.append(f"  {cell(*before):<{width}s}{cell(*after)}")
    lines.append("* = the query's own pair (the caption's image, or the image's caption)")
    return "\n".join(lines)
