"""Choosing a MixedIndex's stored search settings: the cheapest efSearch / nprobe that reach a target recall.

Recall is measured against exact calibrated search on sample queries, and a setting counts as reaching the
target only when its mean recall minus MARGIN_SE standard errors (over the queries) does: the cheapest rung
whose sample mean just clears the target is, on other queries, more often below it than above (measured in
``bench/index_speed.py``, HNSW32 200k: 0.938 on other queries for settings that gave 0.95 on the tuning
ones; with one standard error of margin the quick run's 0.95 target measured 0.957, with two 0.969).

Settings are per (query modality, item modality): a cross-modal search (a text query in the image graph or
among the image lists) is out of distribution and needs a wider beam or more lists than a same-modal one,
so one shared setting would overpay on the easy side. Starting from the cheapest, the side that misses
most of the merged top k is widened until the merged list reaches the target. HNSW gets an efSearch per
walk. IVF also has the shared budget that ``params={"nprobe": n}`` gives (lists of both modalities ranked
together by estimated reach, so each query spends its lists where its own top k lies), and keeps whichever
of the two reaches the target scanning fewer items: the shared budget wins where the reach estimate is
good, per-modality lists where it misjudges one side (``bench/index_speed.py`` with ``--data mixtures`` and
``--data gaussian``).
"""

from __future__ import annotations

import faiss
import numpy as np

from ..._checks import MODALITIES
from ..core import merge_ranked
from . import plumbing
from .backends import SHARED

NPROBE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)  # below k, faiss uses k
MARGIN_SE = 1.0  # standard errors of the mean recall a setting must clear the target by


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean share of each row's true ids (ignoring -1) that ``found`` holds, and its standard error."""
    shares = []
    for got, want in zip(found, truth):
        want = want[want >= 0]
        if len(want):
            shares.append(np.isin(want, got).mean())
    if not shares:
        return 1.0, 0.0
    return float(np.mean(shares)), float(np.std(shares, ddof=1) / np.sqrt(len(shares))) if len(shares) > 1 else 0.0


def _clears(recall: tuple[float, float], target: float) -> bool:
    mean, error = recall
    return mean - MARGIN_SE * error >= target


def _drop(ids: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Each row without its excluded id, cut to ``k`` columns (the excluded item is the query itself)."""
    order = np.argsort(ids == exclude[:, None], axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, 1)


def _exact_one(backend, modality, u: np.ndarray, k: int):
    """Exact top-k inner products among the live items of one modality: the graph's storage scanned in full
    (an HNSW walk with efSearch = ntotal where a transform sits in front of the graph)."""
    sub = backend.subs[modality]
    hidden = backend.hidden[modality]
    wide = min(k + len(hidden), sub.ntotal)
    graph = plumbing.graph_of(sub)
    if graph is not None:
        scores, rows = faiss.downcast_index(graph.storage).search(backend._padded(u), wide)
        id_map = faiss.vector_to_array(sub.id_map)
        ids = np.where(rows >= 0, id_map[np.maximum(rows, 0)], -1)
    else:
        params, keep = plumbing.search_parameters(sub, None, {"efSearch": int(sub.ntotal)})
        scores, ids = sub.search(backend._padded(u), wide, params=params)
        del keep
    if len(hidden):
        gone = np.isin(ids, hidden)
        scores, ids = np.where(gone, -np.inf, scores), np.where(gone, -1, ids)
        order = np.argsort(gone, axis=1, kind="stable")
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    return scores[:, :k], ids[:, :k]


def _widen(backend, pairs, name, ladders, walk, merged, truth, target_recall):
    """Per-modality settings: from the cheapest, widen the search of the modality that misses most of the
    merged top k until the merged list reaches the target (or every ladder ends). Returns (settings, recall)."""
    rung = {m: 0 for m, _ in pairs}
    while True:
        chosen = {m: {name: ladders[m][rung[m]]} for m, _ in pairs}
        found = merged([walk(m, u, chosen[m][name]) for m, u in pairs])
        recall = recall_at_k(found, truth)
        raisable = [m for m in rung if rung[m] + 1 < len(ladders[m])]
        if _clears(recall, target_recall) or not raisable:
            return chosen, recall
        lost = (truth >= 0) & ~(truth[:, :, None] == found[:, None, :]).any(axis=2)  # per query, per true item
        missed = {m: int((lost & np.isin(truth, backend.live[m])).sum()) for m in raisable}
        rung[max(missed, key=missed.get)] += 1


def _shared_budget(backend, pairs, query_modality, wide, merged, truth, target_recall):
    """IVF: the least nprobe, shared out between the modalities' lists by calibrated reach, that reaches the
    target. Returns (settings, recall)."""
    total = sum(backend.lists[m][0].nlist for m, _ in pairs)
    for nprobe in [n for n in NPROBE_LADDER if n < total] + [total]:
        recall = recall_at_k(merged(backend._search_lists(pairs, query_modality, wide, {"nprobe": nprobe})), truth)
        if _clears(recall, target_recall):
            break
    return {"nprobe": nprobe}, recall


def tune(mixed, queries, *, query_modality: str, target_recall: float, k: int, exclude_ids) -> dict:
    """The cheapest settings whose recall@k for these queries reaches ``target_recall``, and what they reached
    (``MixedIndex.tune`` stores them)."""
    backend = mixed._backend
    targets = tuple(m for m in MODALITIES if backend.count(m))
    exclude = np.full(len(queries), -1, dtype=np.int64) if exclude_ids is None else exclude_ids
    report = {"query_modality": query_modality, "queries": len(queries), "k": k, "target": target_recall}
    if not targets or not backend.structures:
        return {**report, "settings": {}, "recall": 1.0, "standard_error": 0.0, "reached": True,
                "note": "exact search: nothing to tune"}
    wide = k + 1  # one more, for the excluded query itself
    plan = mixed.calibrator.plan_queries(queries, query_modality=query_modality, item_modalities=targets)
    pairs = list(zip(targets, plan.vectors))

    def merged(found):
        ranked = merge_ranked(targets, [(f(s), i) for f, (s, i) in zip(plan.maps, found)], wide)[2]
        return _drop(ranked, exclude, k)

    if "ivf" in backend.structures:
        nlist = {m: backend.lists[m][0].nlist for m in targets}
        ladders = {m: [n for n in NPROBE_LADDER if n < nlist[m]] + [nlist[m]] for m in targets}

        def walk(m, u, value):
            return backend._search_lists([(m, u)], query_modality, wide, {"nprobe": value})[0]
        truth = merged([walk(m, u, nlist[m]) for m, u in pairs])  # every list: exact
        chosen, recall = _widen(backend, pairs, "nprobe", ladders, walk, merged, truth, target_recall)
        shared, shared_recall = _shared_budget(backend, pairs, query_modality, wide, merged, truth, target_recall)
        size = {m: backend.count(m) / nlist[m] for m in targets}  # items per list
        cost = sum(chosen[m]["nprobe"] * size[m] for m in targets)
        shared_cost = shared["nprobe"] * sum(backend.count(m) for m in targets) / sum(nlist.values())
        if (_clears(shared_recall, target_recall), -shared_cost) >= (_clears(recall, target_recall), -cost):
            chosen, recall = {SHARED: shared}, shared_recall
    else:
        def walk(m, u, value):
            return backend._search_each([(m, u)], query_modality, wide, {"efSearch": value})[0]
        truth = merged([_exact_one(backend, m, u, wide) for m, u in pairs])
        chosen, recall = _widen(backend, pairs, "efSearch", {m: EF_LADDER for m in targets}, walk, merged, truth,
                                target_recall)
    return {**report, "settings": chosen, "recall": round(recall[0], 4), "standard_error": round(recall[1], 4),
            "reached": _clears(recall, target_recall)}
