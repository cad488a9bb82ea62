"""The quality protocol: 2-fold cross-fit on paired embeddings and one side-by-side table of methods."""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import metrics
from .baselines import GRClip, I0TStandardize, RawCosine
from .calibration import GapCalibrator

COLUMNS = (("mixed R@1", "R@1"), ("mixed R@10", "R@10"), ("mixed MRR", "MRR"), ("x-modal R@1", "cross R@1"),
           ("pooled AUC", "AUC"), ("centroid dist", "centroid"), ("own-medium@10", "share"),
           ("dup parity", "parity"))


def default_methods() -> list[tuple[str, Callable[[], object]]]:
    """Baselines, the gapcal defaults and its ablations, as (name, factory) pairs."""
    return [
        ("raw cosine", RawCosine),
        ("GR-CLIP", GRClip),
        ("I0T", I0TStandardize),
        ("gapcal", GapCalibrator),
        ("gapcal - hubness", lambda: GapCalibrator(hubness=False)),
        ("gapcal - score norm", lambda: GapCalibrator(score_norm=False)),
        ("gapcal + mean shift", lambda: GapCalibrator(mean_shift=True)),
        ("gapcal + ridge", lambda: GapCalibrator(projection="ridge")),
        ("gapcal + procrustes", lambda: GapCalibrator(projection="procrustes")),
    ]


def evaluate(scorer, text, image) -> dict[str, float]:
    """Every table metric of a fitted scorer on held-out pairs."""
    blocks = metrics.score_blocks(scorer, text, image)
    return {**metrics.mixed_pool_retrieval(blocks, ks=(1, 10)),
            "cross R@1": metrics.cross_modal_recall(blocks, k=1),
            "AUC": metrics.pooled_auc(blocks),
            "centroid": metrics.centroid_distance(scorer.embed(text, "text"), scorer.embed(image, "image")),
            "share": metrics.same_modality_share(blocks, k=10),
            "parity": metrics.duplicate_parity(blocks, text, image)}


def cross_fit(text, image, methods=None, *, seed: int = 0) -> list[tuple[str, dict[str, float]]]:
    """2-fold cross-fit: fit on one half of a seeded permutation, evaluate on the other, swap, average."""
    text, image = np.asarray(text), np.asarray(image)
    order = np.random.default_rng(seed).permutation(len(text))
    half = len(order) // 2
    folds = [(order[:half], order[half:]), (order[half:], order[:half])]
    rows = []
    for name, factory in methods or default_methods():
        results = [evaluate(factory().fit(text[fit], image[fit]), text[held], image[held]) for fit, held in folds]
        rows.append((name, {k: float(np.mean([r[k] for r in results])) for k in results[0]}))
    return rows


def format_table(rows) -> str:
    """Fixed-width text table of ``cross_fit`` rows."""
    width = max(len(name) for name, _ in rows) + 2
    head = "method".ljust(width) + "".join(f"{label:>14s}" for label, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, values in rows:
        lines.append(name.ljust(width) + "".join(f"{values[key]:14.3f}" for _, key in COLUMNS))
    return "\n".join(lines)
