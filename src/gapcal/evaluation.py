"""The quality protocol: a 2-fold cross-fit split by group, and side-by-side tables of methods.

Balanced relevance (every evaluation): each distinct held-out item queries all others of both modalities;
the items of its group (its pair, and siblings: an image's other captions, a product's other colours) are
relevant. NDCG@10 and own-pair@k per query modality, pooled AUC over all four pair types, and the medium
bias: the share of the query's own modality among its top 10 unrelated items minus its share among all
unrelated items (0: the medium does not decide; raw CLIP: +0.5). Pair retrieval (when every row is a
distinct item, one relevant item per query): mixed-pool R@1/R@10/MRR, cross-modal R@1, pooled AUC,
own-medium share, duplicate parity.
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np

from . import metrics
from ._checks import as_array, check_groups, check_pairs
from .baselines import GRClip, I0TStandardize, PerTypeZ, RawCosine
from .calibration import GapCalibrator

BALANCED_COLUMNS = (("NDCG@10 text", "text NDCG@10"), ("NDCG@10 image", "image NDCG@10"),
                    ("own@1 text", "text own@1"), ("own@5 text", "text own@5"), ("own@1 image", "image own@1"),
                    ("own@5 image", "image own@5"), ("AUC groups", "AUC"), ("bias text", "text medium bias"),
                    ("bias image", "image medium bias"))
PAIR_COLUMNS = (("mixed R@1", "R@1"), ("mixed R@10", "R@10"), ("mixed MRR", "MRR"), ("x-modal R@1", "cross R@1"),
                ("pooled AUC", "pair AUC"), ("own-medium@10", "share"), ("dup parity", "parity"))
# balanced metrics a fair calibrator must not lose against the simple baselines (medium bias: closer to 0)
QUALITY_KEYS = ("text NDCG@10", "image NDCG@10", "text own@1", "text own@5", "image own@1", "image own@5", "AUC")
BASELINES = ("raw cosine", "GR-CLIP", "per-type z")


def default_methods() -> list[tuple[str, Callable[[], object]]]:
    """Baselines, the gapcal defaults and its ablations, as (name, factory) pairs."""
    return [
        ("raw cosine", RawCosine),
        ("GR-CLIP", GRClip),
        ("per-type z", PerTypeZ),
        ("I0T", I0TStandardize),
        ("gapcal", GapCalibrator),
        ("gapcal, score pvalue", lambda: GapCalibrator(score_norm="pvalue")),
        ("gapcal, score tail", lambda: GapCalibrator(score_norm="tail")),
        ("gapcal, score zscore", lambda: GapCalibrator(score_norm="zscore")),
        ("gapcal - hubness", lambda: GapCalibrator(hubness=False)),
        ("gapcal + mean shift", lambda: GapCalibrator(mean_shift=True)),
        ("gapcal + ridge", lambda: GapCalibrator(projection="ridge")),
        ("gapcal + procrustes", lambda: GapCalibrator(projection="procrustes")),
        ("gapcal + soft(0.01)", lambda: GapCalibrator(projection="soft(0.01)")),
        ("gapcal + soft(0.05)", lambda: GapCalibrator(projection="soft(0.05)")),
        ("gapcal + soft(0.1)", lambda: GapCalibrator(projection="soft(0.1)")),
    ]


def _fit(factory, text, image, groups):
    scorer = factory()
    if "groups" in inspect.signature(scorer.fit).parameters:
        return scorer.fit(text, image, groups=groups)
    return scorer.fit(text, image)


def evaluate(scorer, text, image, groups=None) -> dict[str, float]:
    """Every metric of a fitted scorer on held-out pairs (pair retrieval only when all rows are distinct)."""
    pool = metrics.relevance_pool(text, image, groups)
    blocks = metrics.pool_blocks(scorer, pool)
    out = metrics.balanced_relevance(blocks, pool)
    for m, values in metrics.per_query(blocks, pool).items():
        out[f"{m} medium bias"] = float(values["medium bias"].mean())
    n = len(np.asarray(text))
    if len(pool.text) == len(pool.image) == n and groups is None:
        out.update(metrics.mixed_pool_retrieval(blocks, ks=(1, 10)))
        out.update({"cross R@1": metrics.cross_modal_recall(blocks, k=1), "pair AUC": metrics.pooled_auc(blocks),
                    "share": metrics.same_modality_share(blocks, k=10),
                    "parity": metrics.duplicate_parity(blocks, text, image)})
    return out


def group_folds(text, image, groups=None, *, seed: int = 0):
    """Two (fit rows, held-out rows) splits of a seeded permutation of the groups: no group is split."""
    pool = metrics.relevance_pool(text, image, groups)
    group = pool.text_group[pool.pair_text]
    order = np.random.default_rng(seed).permutation(group.max() + 1)
    first = np.isin(group, order[: len(order) // 2])
    return [(np.flatnonzero(first), np.flatnonzero(~first)), (np.flatnonzero(~first), np.flatnonzero(first))]


def cross_fit(text, image, methods=None, *, groups=None, seed: int = 0) -> list[tuple[str, dict[str, float]]]:
    """2-fold cross-fit by group: fit on one half of the groups, evaluate on the other, swap, average.

    Without ``groups`` every pair (with the pairs it shares a row with) is its own group.
    """
    text, image = check_pairs(text, image, dtype=None)
    labels = None if groups is None else as_array("groups", groups, "(n,), one label per pair")
    check_groups(labels, len(text))
    folds = group_folds(text, image, labels, seed=seed)
    rows = []
    for name, factory in methods or default_methods():
        results = []
        for fit, held in folds:
            part = None if labels is None else labels[fit]
            scorer = _fit(factory, text[fit], image[fit], part)
            results.append(evaluate(scorer, text[held], image[held], None if labels is None else labels[held]))
        keys = [k for k in results[0] if all(k in r for r in results)]
        rows.append((name, {k: float(np.mean([r[k] for r in results])) for k in keys}))
    return rows


def format_table(rows, columns=None) -> str:
    """Fixed-width text table of ``cross_fit`` rows; the columns default to those every row has."""
    if columns is None:
        columns = BALANCED_COLUMNS + tuple(c for c in PAIR_COLUMNS if all(c[1] in v for _, v in rows))
    width = max(len(name) for name, _ in rows) + 2
    head = "method".ljust(width) + "".join(f"{label:>15s}" for label, _ in columns)
    lines = [head, "-" * len(head)]
    for name, values in rows:
        lines.append(name.ljust(width) + "".join(f"{values.get(key, float('nan')):15.3f}" for _, key in columns))
    return "\n".join(lines)


def baseline_check(rows, method: str = "gapcal") -> list[tuple[str, float, float, str]]:
    """Per balanced relevance metric: (metric, ``method``'s value, the best baseline's value, its name)."""
    table = dict(rows)
    out = []
    for key in QUALITY_KEYS:
        name = max(BASELINES, key=lambda b: table[b][key])
        out.append((key, table[method][key], table[name][key], name))
    return out
