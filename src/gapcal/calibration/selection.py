"""Choosing a calibrator's stages on held-out groups of its sample, by balanced relevance.

The sample's pairs are joined into groups (shared rows, near-copies, user groups); a hash of each group
puts the whole group in one of K folds, so no held-out item, or a near-copy of it, is seen by a candidate
in training. Every candidate is built on the other folds and ranks the held-out pool; folds are checked
until enough pairs were held out (all K on small samples).

The metric rewards relevant items of both modalities: with siblings in the held-out pools (two captions
of one image, two photos of one product) it is NDCG@10 where the pair and its siblings are relevant;
without, the mixed-pool reciprocal rank of the pair. Both query modalities weigh equally. A stage is kept
only when it beats the simplest choice by more than two standard errors (several candidates are tried)
and no guard (the metric for each query modality, own-pair@1 and @5 with siblings, the medium bias among
unrelated items) gets worse by more than one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import metrics
from . import model as model_lib
from .stats import _mix

_SALT = np.uint64(0x2545F4914F6CDD1D)
SELECTION_SCORE_ROWS = 500
MIN_HOLDOUT = 20
MIN_TRAIN = 8
MIN_GROUPS = 3  # a training part needs unrelated pairs of every type: items of at least three groups
ENOUGH_HELD_OUT = 1000
POOL_PAIRS = 500  # a fold ranks at most this many of its pairs (whole groups): the cost grows with its square
KEEP_SE = 2.0


def folds(group: np.ndarray, key: np.ndarray, count: int) -> np.ndarray:
    """A fold number in [0, count) per sample pair, the same for a whole group. A group's fold hashes its
    smallest sample key, so it does not depend on chunking, order or the rest of the sample."""
    lowest = np.full(group.max() + 1, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(lowest, group, key)
    draw = (_mix(lowest ^ _SALT) >> np.uint64(11)).astype(np.float64) / 2.0 ** 53
    return np.minimum((draw * count).astype(np.int64), count - 1)[group]


def fold_plan(fold: np.ndarray, group: np.ndarray, count: int) -> list:
    """(training rows, held-out rows) per fold to check: in order, until ``ENOUGH_HELD_OUT`` pairs were
    held out, each fold ranking at most ``POOL_PAIRS`` of its pairs (its first groups in sample order);
    only folds leaving ``MIN_TRAIN`` pairs of ``MIN_GROUPS`` groups to train on. Empty when fewer than
    ``MIN_HOLDOUT`` could be."""
    plan, held = [], 0
    for f in range(count):
        inside = fold == f
        size = int(inside.sum())
        if not size or len(fold) - size < MIN_TRAIN or len(np.unique(group[~inside])) < MIN_GROUPS:
            continue
        rows = np.flatnonzero(inside)
        if size > POOL_PAIRS:  # whole groups only: cut after the group of the POOL_PAIRS-th pair
            cut = np.isin(group[rows], np.unique(group[rows[:POOL_PAIRS]]))
            rows = rows[cut]
        plan.append((np.flatnonzero(~inside), rows))
        held += len(rows)
        if held >= ENOUGH_HELD_OUT:
            break
    return plan if held >= MIN_HOLDOUT else []


@dataclass
class Outcome:
    """What the held-out check found: the chosen stages, a row per candidate, the reason in words, the
    metric's name, and the chosen candidate's held-out relevant pairs on the surprise scale (unbiased
    input for relevance maps when a fitted projection could have memorised its training pairs)."""

    chosen: tuple
    rows: list
    reason: str
    metric: str
    held_pairs: int
    positive_surprise: dict


def _mean_and_se(diffs: dict) -> tuple[float, float]:
    """Equal weight per query modality: mean of the per-modality means, and its standard error."""
    parts = [d[np.isfinite(d)] for d in diffs.values()]
    parts = [d for d in parts if len(d)]
    mean = float(np.mean([d.mean() for d in parts]))
    se = float(np.sqrt(sum(d.var(ddof=1) / len(d) for d in parts if len(d) > 1)) / len(parts))
    return mean, se


def _fmt(stages) -> str:
    return f"mean_shift={stages[0]}, projection={stages[1]}"


def select(candidates, stats, reference, plan: list, *, hubness, score_norm) -> Outcome:
    """Build each candidate on the training folds, rank each held-out fold's pool, keep the best that is
    clearly better than ``candidates[0]`` and no worse on any guard."""
    found = {c: {"text": {}, "image": {}} for c in candidates}
    positives = {c: {t: [] for t in model_lib.TYPES} for c in candidates}
    siblings = False
    for train_rows, held_rows in plan:
        moments = stats.sample_moments(train_rows)
        train = reference.rows(train_rows)
        pool = reference.rows(held_rows).pool()
        siblings |= (len(pool.text_group) > len(np.unique(pool.text_group))
                     or len(pool.image_group) > len(np.unique(pool.image_group)))
        hub_cache = {}
        for cand in candidates:
            fitted, evidence, _ = model_lib.build(cand, moments, train, hubness=hubness, score_norm=score_norm,
                                                  score_rows=SELECTION_SCORE_ROWS, hub_cache=hub_cache)
            raw = metrics.ScoreBlocks(*fitted.raw_blocks(pool.text, pool.image))
            blocks = metrics.ScoreBlocks(*(fitted.maps[t](b) for t, b in zip(model_lib.TYPES, raw)))
            for m, values in metrics.per_query(blocks, pool, k=10, own_ks=(1, 5)).items():
                for name, v in values.items():
                    found[cand][m].setdefault(name, []).append(v)
            dist = metrics.score_distributions(raw, pool)
            for t in model_lib.TYPES:
                positives[cand][t].append(evidence.surprise[t](dist[f"{t[0]}-{t[1]}"]["positive"]))
    found = {c: {m: {k: np.concatenate(v) for k, v in q.items()} for m, q in per.items()} for c, per in found.items()}
    metric = "NDCG@10" if siblings else "RR"
    label = "NDCG@10" if siblings else "mixed-pool MRR"
    guards = [metric] + (["own@1", "own@5"] if siblings else [])
    base = candidates[0]
    rows, verdicts = [], {}
    for cand in candidates:
        q, b = found[cand], found[base]
        row = {"mean_shift": cand[0], "projection": cand[1]}
        for m in ("text", "image"):
            row[f"{m} {metric}"] = float(np.nanmean(q[m][metric]))
            if siblings:
                row[f"{m} own@5"] = float(q[m]["own@5"].mean())
            row[f"{m} medium bias"] = float(q[m]["medium bias"].mean())
        row["gain"], row["se"] = _mean_and_se({m: q[m][metric] - b[m][metric] for m in ("text", "image")})
        worse = []
        for guard in guards:
            for m in ("text", "image"):
                g, s = _mean_and_se({m: q[m][guard] - b[m][guard]})
                if g < -s:
                    worse.append(f"{guard} of {m} queries {g:+.4f} (SE {s:.4f})")
        for m in ("text", "image"):
            change, s = _mean_and_se({m: q[m]["medium bias"] - b[m]["medium bias"]})
            before = float(b[m]["medium bias"].mean())
            if abs(before + change) - abs(before) > s:
                worse.append(f"the medium bias of {m} queries {abs(before + change) - abs(before):+.4f} further "
                             f"from 0 (SE {s:.4f})")
        verdicts[cand] = worse
        rows.append(row)
    held = int(sum(len(rows) for _, rows in plan))
    where = f"{held} held-out pairs in {len(plan)} fold{'s' if len(plan) > 1 else ''}"
    by_name = dict(zip(candidates, rows))
    passing = [c for c in candidates[1:] if not verdicts[c] and by_name[c]["gain"] > KEEP_SE * by_name[c]["se"]]
    if passing:
        chosen = max(passing, key=lambda c: by_name[c]["gain"])
        r = by_name[chosen]
        reason = (f"{_fmt(chosen)} raised held-out {label} by {r['gain']:+.4f} (SE {r['se']:.4f}, more than "
                  f"{KEEP_SE:g} SE) over the simplest choice ({_fmt(base)}) on {where}, and no guard got worse")
    elif len(candidates) == 1:
        chosen = base
        reason = f"stages fixed by the options; held-out {label} measured on {where}"
    else:
        chosen = base
        best = max(candidates[1:], key=lambda c: by_name[c]["gain"])
        r = by_name[best]
        if r["gain"] > KEEP_SE * r["se"]:
            why = f"it raised {label} by {r['gain']:+.4f} (SE {r['se']:.4f}) but made " + "; ".join(verdicts[best])
        else:
            why = f"it changed {label} by {r['gain']:+.4f} (SE {r['se']:.4f}; keeping needs more than {KEEP_SE:g} SE)"
        reason = (f"kept the simplest choice ({_fmt(base)}): the best alternative, {_fmt(best)}, was not clearly "
                  f"better on {where}: {why}")
    return Outcome(chosen, rows, reason, label, held, {t: np.concatenate(v) for t, v in positives[chosen].items()})
