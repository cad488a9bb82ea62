"""GapCalibrator: post-hoc calibration that makes CLIP text and image scores comparable."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import NamedTuple

import numpy as np

from .._checks import MODALITIES, NotFittedError, as_matrix, check_groups, check_modality, check_pairs, unit_rows
from .._groups import components, label_edges, near_copy_edges, row_ids
from . import model as model_lib
from .model import TYPES, Reference, positive_sources, ridge_name
from .scoremap import KINDS, MIN_POSITIVES
from .selection import MIN_HOLDOUT, fold_plan, folds, select
from .stats import SKETCH, PairStatistics, distinct_estimate, label_hashes

_MIN_PAIRS = 8
_MIN_GROUPS = 3
_SCORE_SAMPLE = 1000
_CHUNK = 65536
_PARAMS = ("mean_shift", "projection", "hubness", "score_norm", "holdout_fraction", "sample_size")
_FINALIZE = threading.Lock()  # one finalisation at a time (it is the expensive part)
_SWAP = threading.Lock()  # held only to read or replace a calibrator's statistics and state together


class QueryPlan(NamedTuple):
    """One search's queries, prepared from one fitted state (see ``GapCalibrator.plan_queries``)."""

    fingerprint: str
    vectors: list
    maps: list


class GapCalibrator:
    """Post-hoc modality-gap calibrator fitted from paired text-image embeddings.

    Stages, each switchable for ablations:

    1. ``mean_shift``: subtract each modality's mean (from the pairs) and re-normalise.
    2. ``projection``: a linear map fitted on the pairs: ``"ridge"`` maps texts toward their images,
       shrunk toward the identity; ``"procrustes"`` rotates texts onto images; ``"soft"`` (or
       ``"soft(T)"``, temperature T, default 0.01) is trained contrastively with false-negative-aware soft
       targets (``gapcal.calibration.contrastive``).
    3. ``hubness``: an item-side correction between modalities (CSLS with a Gaussian neighbourhood
       estimate).
    4. ``score_norm``: a monotone map per (query modality, item modality) pair type (see
       ``gapcal.calibration.scoremap``). The default, ``"relevance"``, scores the log-likelihood ratio that
       an item is relevant rather than unrelated: equal scores mean equal odds of relevance whatever the
       media, and inside one pair type the order of items never changes (so one faiss index per modality
       stays exact).

    ``"auto"`` stages are chosen on held-out *groups* of the fitted pairs: pairs sharing an item (an image
    with five captions), near-copies of one another, and pairs with the same ``groups`` label are held out
    together, so a stage cannot win by memorising repeated items. Each candidate is fitted on the other
    folds and ranks the held-out items of both modalities; a stage is kept only when it beats the simplest
    choice by more than two standard errors and no guard gets worse (``summary()`` says what won).

    Fitting streams: per-modality sums (float64), a bounded sample of pairs chosen by content hash so that
    groups arrive whole (``sample_size``; projections, hubness terms and score maps are fitted on it) and
    small hash sketches, so memory is O(sample_size * d) whatever the number of pairs. ``partial_fit`` only
    adds to them (the stages are chosen once, on first use or ``finalize()``); ``merge`` combines
    calibrators fitted on different shards. Options are frozen once fitting starts: changing one makes
    every use raise until ``fit`` runs again.

    Attributes
    ----------
    dim_ : int
        Embedding dimension.
    n_pairs_ : int
        Pairs fitted on.
    mean_shift_, projection_ : bool, str
        The stages kept.
    text_mean_, image_mean_ : ndarray of shape (dim_,)
        Mean unit vector of each modality over all pairs.
    output_dim_ : int
        Width of ``transform`` and ``transform_query`` vectors.
    fit_report_ : dict
        What the fit saw (pairs, groups, duplicates, siblings), the held-out table, the decision, and per
        pair type where its relevant pairs came from and their typical score.
    fingerprint_ : str
        Hash of the options and fitted arrays; indexes and stores refuse any other calibrator.
    """

    def __init__(self, *, mean_shift="auto", projection="auto", hubness=True, score_norm="relevance",
                 holdout_fraction=0.2, sample_size=4000):
        self.mean_shift = mean_shift
        self.projection = projection
        self.hubness = hubness
        self.score_norm = score_norm
        self.holdout_fraction = holdout_fraction
        self.sample_size = sample_size

    # ------------------------------------------------------------------ options
    def get_params(self, deep: bool = True) -> dict:
        """The options (scikit-learn's estimator contract; ``deep`` is accepted and has nothing to recurse into)."""
        return {name: getattr(self, name) for name in _PARAMS}

    def set_params(self, **params) -> "GapCalibrator":
        """Set options by name; a fitted calibrator then refuses use until it is fitted again."""
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for GapCalibrator; valid: {list(_PARAMS)}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def _check_params(self) -> None:
        if self.mean_shift not in ("auto", True, False) or isinstance(self.mean_shift, (int, float)) and not \
                isinstance(self.mean_shift, (bool, np.bool_)):
            raise ValueError(f"mean_shift must be 'auto', True or False, got {self.mean_shift!r}")
        if model_lib.projection_name(self.projection) is None:
            raise ValueError("projection must be one of 'auto', 'none', 'ridge', 'procrustes', 'soft' or "
                             f"'soft(T)' with a temperature T from 0.001 to 10, got {self.projection!r}")
        if not isinstance(self.hubness, (bool, np.bool_)):
            raise TypeError(f"hubness must be True or False, got {self.hubness!r}")
        if not isinstance(self.score_norm, str) or self.score_norm not in KINDS:
            raise ValueError(f"score_norm must be one of {KINDS}, got {self.score_norm!r}")
        if not (isinstance(self.holdout_fraction, (int, float)) and not isinstance(self.holdout_fraction, bool)
                and 0 < self.holdout_fraction < 1):
            raise ValueError(f"holdout_fraction must be a number in (0, 1), got {self.holdout_fraction!r}")
        if not (isinstance(self.sample_size, (int, np.integer)) and not isinstance(self.sample_size, bool)
                and self.sample_size >= 2 * _MIN_PAIRS):
            raise ValueError(f"sample_size must be an integer >= {2 * _MIN_PAIRS}, got {self.sample_size!r}")

    def _check_unchanged(self) -> None:
        fitted = self.__dict__.get("_fit_params")
        if fitted is None:
            return
        for name, before in fitted.items():  # runs on every use: the identity test settles most options at once
            value = getattr(self, name)
            if value is not before and (type(value) is not type(before) or value != before):
                raise ValueError(f"option {name} was changed from {before!r} to {value!r} after fitting: the fitted "
                                 f"state belongs to {name}={before!r}; call fit again (or set it back)")

    # ------------------------------------------------------------------ fitting
    def fit(self, text, image, *, groups=None) -> "GapCalibrator":
        """Fit from scratch on paired rows (``text[i]`` pairs with ``image[i]``); arrays or memory-maps.

        ``groups`` (optional, one integer or string label per pair): pairs with the same label belong
        together (an image's captions; a product's photos and titles in every colour): they are held out
        together, and their items count as relevant to each other. Pairs that share an exact row, or are
        near-copies, are grouped in any case.
        """
        self._check_params()
        stats = self._accumulate(None, text, image, groups)
        if stats.count < _MIN_PAIRS:
            raise ValueError(f"text and image must hold at least {_MIN_PAIRS} pairs in total to fit, got {stats.count}")
        state = self._finalized(stats, self.get_params())
        with _SWAP:
            self.__dict__.update(state)
        return self

    def partial_fit(self, text, image, *, groups=None) -> "GapCalibrator":
        """Add a chunk of pairs (see ``fit`` for ``groups``); ``fit`` equals ``partial_fit`` over chunks.

        Only the statistics are updated; the stages are chosen once, on first use or ``finalize()``.
        """
        self._check_params()
        self._check_continuable()
        before = self.__dict__.get("_stats")
        chunk = self._accumulate(None, text, image, groups, dim=None if before is None else before.dim)
        with _SWAP:  # another thread may have added pairs meanwhile: merge into whatever is there now
            self._check_continuable()
            current = self.__dict__.get("_stats")
            if current is not None and current.dim != chunk.dim:
                raise ValueError(f"text and image must have dimension d={current.dim} (the fitted dimension), "
                                 f"got {chunk.dim}")
            stats = chunk if current is None else current.merged(chunk)
            self.__dict__.update({"_stats": stats, "_fit_params": self.get_params(), "_state": None})
        return self

    def _check_continuable(self) -> None:
        if "_fit_params" in self.__dict__ and self.__dict__.get("_stats") is None:
            raise ValueError("partial_fit cannot continue a calibrator loaded from a file: its pair "
                             "statistics are not saved; fit a new calibrator on all pairs instead")
        self._check_unchanged()

    def merge(self, other: "GapCalibrator") -> "GapCalibrator":
        """Add the pairs another calibrator was fitted on (e.g. one per worker); returns self."""
        if not isinstance(other, GapCalibrator):
            raise TypeError(f"other must be a GapCalibrator, got {type(other).__name__}")
        mine, theirs = self.__dict__.get("_stats"), other.__dict__.get("_stats")
        if mine is None or theirs is None:
            raise NotFittedError("merge needs two calibrators fitted in this process (loaded ones carry "
                                 "no pair statistics)")
        if other.get_params() != self.get_params():
            raise ValueError(f"other must have the same options, got {other.get_params()} vs {self.get_params()}")
        self._check_unchanged()
        other._check_unchanged()
        if theirs.dim != mine.dim:
            raise ValueError(f"other must have dimension {mine.dim}, got {theirs.dim}")
        with _SWAP:
            self.__dict__.update({"_stats": self.__dict__["_stats"].merged(theirs), "_state": None})
        return self

    def finalize(self) -> "GapCalibrator":
        """Choose the stages and measure the score maps now (otherwise done on first use after partial_fit)."""
        self._fitted()
        return self

    def _accumulate(self, stats, text, image, groups, dim=None) -> PairStatistics:
        """New statistics with these pairs added, chunk by chunk; ``stats`` itself is never modified,
        so a bad row anywhere leaves the calibrator as it was."""
        text_arr, image_arr = check_pairs(text, image, dtype=None)  # rows are checked chunk by chunk below
        dim = stats.dim if stats is not None else dim
        if dim is not None and text_arr.shape[1] != dim:
            raise ValueError(f"text and image must have dimension d={dim} (the fitted dimension), "
                             f"got {text_arr.shape[1]}")
        group_hash = None
        if groups is not None:
            check_groups(groups, len(text_arr))
            group_hash = label_hashes(np.asarray(groups))
        rows = min(_CHUNK, len(text_arr))
        buffers = np.empty((rows, text_arr.shape[1]), np.float32), np.empty((rows, text_arr.shape[1]), np.float32)
        for start in range(0, len(text_arr), _CHUNK):
            stop = start + _CHUNK
            chunk = PairStatistics.of(unit_rows("text", text_arr[start:stop], start, buffers[0]),
                                      unit_rows("image", image_arr[start:stop], start, buffers[1]),
                                      int(self.sample_size), None if group_hash is None else group_hash[start:stop])
            stats = chunk if stats is None else stats.merged(chunk)
        return stats

    # ------------------------------------------------------------------ finalisation
    def _candidates(self):
        """Stage configurations to compare, simplest first. With both stages 'auto', ridge maps are fitted to
        mean-shifted vectors only: on raw CLIP vectors a regression spends itself on the modality offset,
        which the shift removes exactly (it lost every held-out check on COCO-500 and the simulated sets).
        The contrastive map is tried on the simplest shift setting only (one training per fold: it is the
        costly candidate): its loss compares the mapped vectors after normalising them, and unshifted it
        beat its shifted variant in every held-out check measured (COCO-500, the tiny test CLIP)."""
        shifts = [False, True] if self.mean_shift == "auto" else [bool(self.mean_shift)]
        if self.projection == "auto":
            return ([(s, "none") for s in shifts] + [(shifts[-1], ridge_name(a)) for a in model_lib.RIDGE_STRENGTHS]
                    + [(shifts[0], model_lib.projection_name("soft"))])
        projection = ridge_name(1.0) if self.projection == "ridge" else model_lib.projection_name(self.projection)
        return [(s, projection) for s in shifts]

    def _fitted(self) -> model_lib.Model:
        """The fitted model (see ``_snapshot``)."""
        return self._snapshot()["model"]

    def _snapshot(self) -> dict:
        """The fitted state, finalised first when pairs were added since. Thread-safe: a caller that takes
        one snapshot and uses only it sees the old or the new fit, never parts of both, even while another
        thread runs ``partial_fit``."""
        if "_fit_params" not in self.__dict__:
            raise NotFittedError("this GapCalibrator is not fitted yet: call fit(text, image) first")
        self._check_unchanged()
        state = self.__dict__.get("_state")
        if state is not None:
            return state
        with _FINALIZE:
            with _SWAP:
                stats, state, params = self.__dict__["_stats"], self.__dict__["_state"], self.__dict__["_fit_params"]
            if state is not None:  # finalised by another thread while this one waited
                return state
            if stats.count < _MIN_PAIRS:
                raise ValueError(f"text and image must hold at least {_MIN_PAIRS} pairs in total to fit, "
                                 f"got {stats.count}")
            new = self._finalized(stats, params)
            with _SWAP:
                if self.__dict__["_stats"] is stats:  # else pairs came in meanwhile: this caller gets the fit it asked for
                    self.__dict__.update(new)
        return new["_state"]

    def _finalized(self, stats: PairStatistics, params: dict) -> dict:
        """The whole fitted state for these statistics (nothing is assigned here)."""
        reference, counts = _sample_reference(stats)
        if counts["sample_groups"] < _MIN_GROUPS:
            raise ValueError(f"text and image must hold pairs of at least {_MIN_GROUPS} groups to tell relevant from "
                             f"unrelated pairs (pairs sharing a row, a near-copy or a groups label are one group), "
                             f"got {counts['sample_groups']} group(s) in {stats.count} pairs")
        candidates = self._candidates()
        count = max(2, int(round(1 / params["holdout_fraction"])))
        fold = folds(reference.group, stats.sample_key, count)
        plan = fold_plan(fold, reference.group, count)
        report = {"n_pairs": stats.count, "sample_pairs": len(reference.group), **counts,
                  "holdout_pairs": 0, "candidates": [], "metric": None}
        outcome = None
        if plan:
            outcome = select(candidates, stats, reference, plan, hubness=bool(params["hubness"]),
                             score_norm=params["score_norm"])
            chosen, report["reason"] = outcome.chosen, outcome.reason
            report.update(holdout_pairs=outcome.held_pairs, holdout_folds=len(plan), candidates=outcome.rows,
                          metric=outcome.metric)
        else:
            chosen = candidates[0]  # the simplest: 'auto' stages off, fixed ones as given
            report["reason"] = (f"only {len(fold)} sample pairs in {counts['sample_groups']} groups: too few to hold "
                                f"out {MIN_HOLDOUT} pairs by group for checking the stages, so the 'auto' ones are off")
        # a fitted projection can memorise its pairs: then measure relevant pairs' scores on held-out ones
        positive = outcome.positive_surprise if outcome is not None and chosen[1] != "none" else None
        moments = stats.moments()
        fitted, evidence, kind = model_lib.build(chosen, moments, reference, hubness=bool(params["hubness"]),
                                                 score_norm=params["score_norm"], score_rows=_SCORE_SAMPLE,
                                                 positive_surprise=positive)
        report["chosen"] = {"mean_shift": chosen[0], "projection": chosen[1], "hubness": bool(params["hubness"]),
                            "score_norm": kind}
        report["scores"] = _score_report(fitted, evidence, kind, params["score_norm"], positive)
        if fitted.training is not None:
            report["projection_training"] = fitted.training
        state = {"model": fitted, "mean_shift": chosen[0], "projection": chosen[1], "report": report,
                 "n_pairs": stats.count, "text_mean": moments.text_mean, "image_mean": moments.image_mean}
        state["fingerprint"] = _fingerprint(params, state)
        return {"_stats": stats, "_fit_params": dict(params), "_state": state}

    # ------------------------------------------------------------------ fitted attributes
    def _state_value(self, key):
        return self._snapshot()[key]

    @property
    def dim_(self) -> int:
        """Embedding dimension the calibrator was fitted on."""
        return self._fitted().dim

    @property
    def n_pairs_(self) -> int:
        return self._state_value("n_pairs")

    @property
    def mean_shift_(self) -> bool:
        return self._state_value("mean_shift")

    @property
    def projection_(self) -> str:
        return self._state_value("projection")

    @property
    def text_mean_(self) -> np.ndarray:
        return self._state_value("text_mean")

    @property
    def image_mean_(self) -> np.ndarray:
        return self._state_value("image_mean")

    @property
    def fit_report_(self) -> dict:
        """What the fit saw (pairs, groups, duplicates), what it held out, what won and why, and the scores."""
        return self._state_value("report")

    @property
    def fingerprint_(self) -> str:
        """A hash of the options and fitted arrays: indexes refuse a calibrator other than their own."""
        return self._state_value("fingerprint")

    @property
    def output_dim_(self) -> int:
        """Width of ``transform`` output: d, plus one column for the hubness term."""
        return self._fitted().output_dim

    # ------------------------------------------------------------------ transforms
    @staticmethod
    def _units(name, x, fitted):
        """Validated rows of ``x`` scaled to unit length, in a new float32 array."""
        return unit_rows(name, as_matrix(name, x, dim=fitted.dim, dtype=None))

    def projection_matrix(self, *, modality):
        """The fitted map of this modality's (unit, mean-shifted) rows, a (d, d) array used as ``x @ P``,
        or None where the projection stage is off. Lets callers move the linear part to the query side."""
        check_modality("modality", modality)
        return self._fitted().proj[modality]

    def embed(self, x, *, modality) -> np.ndarray:
        """Unit vectors after the fitted mean shift and projection, before scoring (for geometry and plots)."""
        check_modality("modality", modality)
        fitted = self._fitted()
        return fitted.embed(self._units("x", x, fitted), modality)

    def transform(self, x, *, modality) -> np.ndarray:
        """Item vectors to store in an index: float32 (n, output_dim_).

        ``map_scores`` of their inner products with ``transform_query`` vectors gives ``similarity``.
        """
        check_modality("modality", modality)
        return self._item_vectors(self._fitted(), x, modality)

    def _item_vectors(self, fitted, x, modality):
        return fitted.item_vectors(fitted.embed(self._units("x", x, fitted), modality), modality)

    def transform_query(self, queries, *, query_modality, item_modality) -> np.ndarray:
        """Query vectors for searching items of ``item_modality``: float32 (n, output_dim_)."""
        check_modality("item_modality", item_modality)
        return self.plan_queries(queries, query_modality=query_modality, item_modalities=(item_modality,)).vectors[0]

    def plan_queries(self, queries, *, query_modality, item_modalities=MODALITIES) -> "QueryPlan":
        """What a store needs to search ``item_modalities`` for these queries, all from one fitted state (so a
        concurrent refit cannot mix two): its fingerprint, one ``transform_query`` array per item modality, and
        the pair types' score maps. The queries are validated and embedded once."""
        check_modality("query_modality", query_modality)
        for item_modality in item_modalities:
            check_modality("item_modalities", item_modality)
        state = self._snapshot()
        fitted = state["model"]
        return QueryPlan(state["fingerprint"], self._query_vectors(fitted, queries, query_modality, item_modalities),
                         [fitted.maps[(query_modality, m)] for m in item_modalities])

    def _query_vectors(self, fitted, queries, query_modality, item_modalities) -> list:
        e = fitted.embed(self._units("queries", queries, fitted), query_modality)
        return [np.ascontiguousarray(fitted.query_vectors(e, query_modality, m)) for m in item_modalities]

    def map_scores(self, inner, *, query_modality, item_modality) -> np.ndarray:
        """Calibrated scores (float32, same shape) from inner products of ``transform_query`` vectors of
        ``query_modality`` with ``transform`` vectors of ``item_modality``: the pair type's monotone map."""
        check_modality("query_modality", query_modality)
        check_modality("item_modality", item_modality)
        return self._fitted().maps[(query_modality, item_modality)](inner).astype(np.float32)

    def score_map(self, *, query_modality, item_modality):
        """The pair type's monotone map itself (a ``ScoreMap``: callable on raw inner products, with
        ``inverse``), for stores that compare raw bounds across modalities."""
        check_modality("query_modality", query_modality)
        check_modality("item_modality", item_modality)
        return self._fitted().maps[(query_modality, item_modality)]

    def similarity(self, queries, items, *, query_modality, item_modality) -> np.ndarray:
        """Calibrated scores (nq, ni), comparable across item modalities for one query (see class doc)."""
        check_modality("query_modality", query_modality)
        check_modality("item_modality", item_modality)
        fitted = self._fitted()  # one snapshot for every step, so a concurrent partial_fit cannot mix two fits
        u = self._query_vectors(fitted, queries, query_modality, (item_modality,))[0]
        v = self._item_vectors(fitted, items, item_modality)
        return fitted.maps[(query_modality, item_modality)](u @ v.T).astype(np.float32)

    # ------------------------------------------------------------------ reporting and persistence
    def summary(self) -> str:
        """The fit report as readable text: what the fit saw, what was kept and why, what scores mean."""
        state = self._snapshot()
        return _summary(state["report"], state["model"].dim, state["mean_shift"], state["projection"])

    def save(self, path) -> None:
        """Write the calibrator atomically as an .npz of arrays plus a JSON header (no pickle)."""
        from .io import save_calibrator

        self._check_params()
        if "_fit_params" not in self.__dict__:
            save_calibrator(path, self.get_params(), None, {})
            return
        state = self._snapshot()
        header = {"dim": state["model"].dim, "n_pairs": state["n_pairs"], "mean_shift": bool(state["mean_shift"]),
                  "projection": state["projection"], "fit_report": state["report"], "fingerprint": state["fingerprint"]}
        arrays = {"text_mean": state["text_mean"], "image_mean": state["image_mean"], **state["model"].to_arrays()}
        save_calibrator(path, self.__dict__["_fit_params"], header, arrays)

    @classmethod
    def load(cls, path) -> "GapCalibrator":
        """Read a file written by ``save``; refuses truncated, corrupt, foreign or newer-format files."""
        from .io import load_calibrator

        params, header, arrays, where = load_calibrator(path)
        try:
            cal = cls(**params)
            cal._check_params()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where} holds invalid calibrator options: {exc}") from None
        if header is None:
            return cal
        try:
            dim = int(header["dim"])
            fitted = model_lib.Model.from_arrays(dim, arrays, bool(cal.hubness))
            state = {"model": fitted, "mean_shift": bool(header["mean_shift"]), "projection": str(header["projection"]),
                     "report": header["fit_report"], "n_pairs": int(header["n_pairs"]),
                     "text_mean": np.asarray(arrays["text_mean"], dtype=np.float64),
                     "image_mean": np.asarray(arrays["image_mean"], dtype=np.float64)}
            if state["text_mean"].shape != (dim,) or state["image_mean"].shape != (dim,):
                raise ValueError("the modality means do not match the dimension")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where} is corrupt: {exc}") from None
        params = cal.get_params()
        if _fingerprint(params, state) != header.get("fingerprint"):
            raise ValueError(f"{where} is corrupt: its arrays do not match the fingerprint in its header")
        state["fingerprint"] = header["fingerprint"]
        cal.__dict__.update({"_stats": None, "_fit_params": params, "_state": state})
        return cal

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"GapCalibrator({args})"


# ---------------------------------------------------------------------- helpers
def _sample_reference(stats: PairStatistics):
    """The sample as a Reference and the counts the fit report gives. A near-copy of a row counts as the
    same item (it is no sibling); groups join pairs sharing an item or a user label."""
    text, image = stats.sample_text, stats.sample_image
    ids, near = [], 0
    for rows in (text, image):
        exact = row_ids(rows)
        first, position = np.unique(exact, return_index=True)[1], np.unique(exact, return_inverse=True)[1].ravel()
        copies = near_copy_edges(rows[first])
        merged = components(len(first), copies)
        near += len(first) - int(merged.max() + 1 if len(merged) else 0)
        ids.append(merged[position])
    tid, iid = ids
    labels = np.where(stats.sample_grouped, np.unique(stats.sample_group_hash, return_inverse=True)[1].ravel(), -1)
    group = components(len(tid), label_edges(tid), label_edges(iid), label_edges(labels))
    texts, images = distinct_estimate(stats.text_sketch), distinct_estimate(stats.image_sketch)
    counts = {"sample_groups": int(group.max() + 1) if len(group) else 0,
              "distinct_texts": int(round(texts)), "distinct_images": int(round(images)),
              "duplicate_text_rows": int(stats.count - round(texts)),
              "duplicate_image_rows": int(stats.count - round(images)),
              "near_copies_in_sample": int(near),
              "counts_exact": bool(len(stats.text_sketch) < SKETCH and len(stats.image_sketch) < SKETCH),
              "pairs_with_groups": int(stats.grouped),
              "label_groups": int(round(distinct_estimate(stats.group_sketch))) if stats.grouped else 0,
              "sibling_texts_in_sample": _siblings(tid, group), "sibling_images_in_sample": _siblings(iid, group)}
    return Reference(text, image, tid, iid, group), counts


def _siblings(ids: np.ndarray, group: np.ndarray) -> int:
    """Distinct rows of one modality that share their group with another distinct row of that modality."""
    first = np.unique(ids, return_index=True)[1]
    per_group = np.bincount(group[first], minlength=group.max() + 1 if len(group) else 0)
    return int(per_group[per_group > 1].sum())


def _score_report(fitted, evidence, kind: str, asked: str, held_out=None) -> dict:
    """Per pair type: where its relevant pairs came from and their median score; unrelated pairs' top 1%.
    ``held_out``: the positives' surprise measured on held-out pairs, when the maps used those."""
    surprise = held_out if held_out is not None else {t: evidence.surprise[t](evidence.positive[t]) for t in TYPES}
    sources = positive_sources(surprise)
    out = {"kind": kind, "asked": asked, "held_out_positives": held_out is not None, "types": {}}
    for t in TYPES:
        source = sources[t]
        borrowed = source != t
        measured = surprise[source]
        # the typical relevant pair: the median surprise, as a raw score of this type (borrowed: same rarity)
        median_raw = float(evidence.surprise[t].inverse(np.array([np.median(measured)]))[0]) if len(measured) \
            else float("nan")
        null_top = float(np.quantile(evidence.null[t], 0.99))
        out["types"][f"{t[0]}-{t[1]}"] = {
            "positives": "assumed" if borrowed else ("matched pairs" if t[0] != t[1] else "siblings"),
            "n_positive": int(len(surprise[t])),
            "positive_median": float(fitted.maps[t](np.array([median_raw]))[0]) if np.isfinite(median_raw) else None,
            "null_top1pct": float(fitted.maps[t](np.array([null_top]))[0])}
    return out


def _fingerprint(params: dict, state: dict) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    arrays = {"text_mean": state["text_mean"], "image_mean": state["image_mean"], **state["model"].to_arrays()}
    for name, arr in sorted(arrays.items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    h.update(f"{bool(state['mean_shift'])}|{state['projection']}".encode())
    return h.hexdigest()[:16]


_MEANINGS = {
    "relevance": "log-likelihood ratio of relevance for the pair type: 0 = as likely relevant as unrelated; "
                 "each +1 multiplies the odds by e; equal scores mean equal odds whatever the media",
    "pvalue": "-ln of the fraction of unrelated items of that modality scoring higher (2.3 = top 10%, "
              "4.6 = top 1%, 6.9 = top 0.1%)",
    "tail": "distance above the top 1% of unrelated pairs, in units of their mean excess",
    "zscore": "standard deviations above the mean of unrelated pairs of that type",
    "none": "raw (hubness-corrected) cosine",
}


def _summary(r: dict, dim: int, mean_shift: bool, projection: str) -> str:
    chosen = r["chosen"]
    exact = "" if r.get("counts_exact") else "about "
    lines = [f"GapCalibrator fitted on {r['n_pairs']} pairs (d={dim}; sample {r['sample_pairs']} pairs in "
             f"{r['sample_groups']} groups)",
             f"  items: {exact}{r['distinct_texts']} distinct texts, {exact}{r['distinct_images']} distinct images "
             f"({r['duplicate_text_rows']} repeated text rows, {r['duplicate_image_rows']} repeated image rows); "
             f"{r['near_copies_in_sample']} near-copies in the sample"
             + (f"; {r['pairs_with_groups']} pairs labelled in {r['label_groups']} groups"
                if r["pairs_with_groups"] else ""),
             f"  siblings in the sample: {r['sibling_texts_in_sample']} texts and {r['sibling_images_in_sample']} "
             "images share a group with another of their modality",
             f"  mean shift: {'on' if mean_shift else 'off'}; projection: {projection}; hubness correction: "
             f"{'on' if chosen['hubness'] else 'off'}; score: {chosen['score_norm']}",
             f"  decision: {r['reason']}"]
    if r["candidates"]:
        metric = r["metric"]
        key = "NDCG@10" if metric == "NDCG@10" else "RR"
        own = any("text own@5" in c for c in r["candidates"])
        lines.append(f"  held-out check on {r['holdout_pairs']} pairs ({r['holdout_folds']} folds by group) "
                     f"({metric} for text / image queries" + (", own-pair@5" if own else "")
                     + ", medium bias among unrelated items; gain over the first row +- SE):")
        for c in r["candidates"]:
            extra = f"  own@5 {c['text own@5']:.3f} / {c['image own@5']:.3f}" if own else ""
            lines.append(f"    mean_shift={str(c['mean_shift']):5s} projection={c['projection']:11s} "
                         f"{c[f'text {key}']:.4f} / {c[f'image {key}']:.4f}{extra}  bias "
                         f"{c['text medium bias']:+.3f} / {c['image medium bias']:+.3f}  gain {c['gain']:+.4f} +- "
                         f"{c['se']:.4f}")
    training = r.get("projection_training")
    if training:
        lines.append(f"  contrastive projection (soft targets, temperature {training['temperature']:g}): "
                     f"{training['steps']} training steps, kept step {training['best_step']} by early stopping on "
                     f"{training['validation_pairs']} held-out pairs, ||P - I||_F = "
                     f"{training['distance_from_identity']:.3f}")
    s = r["scores"]
    if s["kind"] != s["asked"]:
        lines.append(f"  score: asked for {s['asked']}, fitted {s['kind']} (fewer than {MIN_POSITIVES} matched "
                     "pairs measured)")
    lines.append(f"  score meaning: {_MEANINGS[s['kind']]}")
    for name, t in s["types"].items():
        level = "n/a" if t["positive_median"] is None else f"{t['positive_median']:+.2f}"
        held = ", held out" if s.get("held_out_positives") else ""
        why = {"assumed": "assumed: no siblings, so as rare among unrelated pairs as a matched pair",
               "matched pairs": f"{t['n_positive']} matched pairs{held}",
               "siblings": f"{t['n_positive']} sibling pairs{held}"}
        lines.append(f"    {name:11s} typical relevant pair {level} ({why[t['positives']]}); "
                     f"top 1% of unrelated {t['null_top1pct']:+.2f}")
    return "\n".join(lines)
