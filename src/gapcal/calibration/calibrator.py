"""GapCalibrator: post-hoc calibration that makes CLIP text and image scores comparable."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .._checks import MODALITIES, NotFittedError, as_matrix, check_modality, l2_normalize, unit_rows
from .stats import PairStatistics

# The hubness term treats a query's scores against an item as Gaussian and estimates the level of the
# item's nearest queries at one-sided 5% (z = 1.645); CSLS weighs it by one half.
_NEIGHBOURHOOD_Z = 1.6448536269514722
_HUBNESS_WEIGHT = 0.5
_HUBNESS_RANK = 64
_RIDGE_STRENGTHS = (0.1, 1.0, 10.0)
_MIN_PAIRS = 8
_MIN_HOLDOUT = 20
_SCORE_SAMPLE = 1000
_SELECTION_SAMPLE = 500
_CHUNK = 65536


def _ridge_name(alpha: float) -> str:
    return f"ridge({alpha:g})"


class GapCalibrator:
    """Post-hoc modality-gap calibrator fitted from paired text-image embeddings.

    Three stages, each switchable for ablations:

    1. ``mean_shift``: subtract each modality's mean (from the pairs) and re-normalise.
    2. ``projection``: a linear map fitted on the pairs: ``"ridge"`` maps texts toward their images,
       shrunk toward the identity; ``"procrustes"`` rotates texts onto images. With few pairs a full
       d x d map overfits, so ``"auto"`` (for this stage and for ``mean_shift``) fits every candidate on
       part of the pairs, measures cross-modal retrieval on the rest, and keeps a stage only when it
       beats the simpler choice by more than one standard error; ``fit_report_`` says what won and why.
    3. score normalisation: an item-side hubness correction (``hubness``, CSLS with a Gaussian
       neighbourhood estimate, applied between modalities) and a z-score per (query modality, item
       modality) pair type against unmatched pairs (``score_norm``).

    Score meaning: ``similarity`` returns, for each query and item, how many standard deviations the
    (hubness-corrected) cosine lies above that of a typical *unrelated* item of the same modality for a
    query of the same modality. 0 means "as related as a random unmatched item"; a true image-caption
    pair of CLIP ViT-B/16 on COCO scores about 3. The same scale holds for text and image items, so one
    sorted list of mixed items is ranked by relevance, not by medium.

    Fitting streams: only sums, second moments (float64) and a bounded hash-chosen sample of pairs
    (``sample_size``) are kept, so memory is O(d^2 + sample_size * d) whatever the number of pairs, and
    ``merge`` combines calibrators fitted on different shards.
    """

    def __init__(self, *, mean_shift="auto", projection="auto", hubness=True, score_norm=True,
                 holdout_fraction=0.2, sample_size=4000):
        self.mean_shift = mean_shift
        self.projection = projection
        self.hubness = hubness
        self.score_norm = score_norm
        self.holdout_fraction = holdout_fraction
        self.sample_size = sample_size

    # ------------------------------------------------------------------ options
    def get_params(self) -> dict:
        return {name: getattr(self, name) for name in
                ("mean_shift", "projection", "hubness", "score_norm", "holdout_fraction", "sample_size")}

    def _check_params(self) -> None:
        if self.mean_shift not in ("auto", True, False):
            raise ValueError(f"mean_shift must be 'auto', True or False, got {self.mean_shift!r}")
        if self.projection not in ("auto", "none", "ridge", "procrustes"):
            raise ValueError("projection must be one of 'auto', 'none', 'ridge', 'procrustes', "
                             f"got {self.projection!r}")
        for name in ("hubness", "score_norm"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.holdout_fraction, (int, float)) and 0 < self.holdout_fraction < 1):
            raise ValueError(f"holdout_fraction must be a number in (0, 1), got {self.holdout_fraction!r}")
        if not (isinstance(self.sample_size, (int, np.integer)) and self.sample_size >= _MIN_PAIRS):
            raise ValueError(f"sample_size must be an integer >= {_MIN_PAIRS}, got {self.sample_size!r}")

    # ------------------------------------------------------------------ fitting
    def fit(self, text, image) -> "GapCalibrator":
        """Fit from scratch on paired rows (``text[i]`` pairs with ``image[i]``); arrays or memory-maps."""
        self._check_params()
        self._finalize(self._accumulate(None, text, image))
        return self

    def partial_fit(self, text, image) -> "GapCalibrator":
        """Add a chunk of pairs and refresh the fitted state; ``fit`` equals ``partial_fit`` over chunks.

        Each call re-selects the stages (about a second at d=768): feed large chunks, or use ``fit``
        on a memory-map, or ``merge`` calibrators fitted per shard.
        """
        self._check_params()
        stats = getattr(self, "_stats", None)
        if stats is None and hasattr(self, "dim_"):
            raise ValueError("partial_fit cannot continue a calibrator loaded from a file: its pair "
                             "statistics are not saved; fit a new calibrator on all pairs instead")
        self._finalize(self._accumulate(stats, text, image))
        return self

    def merge(self, other: "GapCalibrator") -> "GapCalibrator":
        """Add the pairs another calibrator was fitted on (e.g. one per worker) and refit; returns self."""
        if not isinstance(other, GapCalibrator):
            raise TypeError(f"other must be a GapCalibrator, got {type(other).__name__}")
        mine, theirs = getattr(self, "_stats", None), getattr(other, "_stats", None)
        if mine is None or theirs is None:
            raise NotFittedError("merge needs two calibrators fitted in this process (loaded ones carry "
                                 "no pair statistics)")
        if other.get_params() != self.get_params():
            raise ValueError(f"other must have the same options, got {other.get_params()} vs {self.get_params()}")
        if theirs.dim != mine.dim:
            raise ValueError(f"other must have dimension {mine.dim}, got {theirs.dim}")
        self._finalize(mine.merged(theirs))
        return self

    def _accumulate(self, stats, text, image) -> PairStatistics:
        """New statistics with these pairs added, chunk by chunk; ``stats`` itself is never modified,
        so a bad row anywhere leaves the calibrator as it was."""
        text_arr = text if isinstance(text, np.ndarray) else np.asarray(text)
        image_arr = image if isinstance(image, np.ndarray) else np.asarray(image)
        for name, arr in (("text", text_arr), ("image", image_arr)):
            if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                raise TypeError(f"{name} must be a numeric array of shape (n, d), got dtype {arr.dtype}")
            if arr.ndim != 2:
                raise ValueError(f"{name} must be a 2-D array of shape (n, d), got shape {arr.shape}")
        if text_arr.shape[0] != image_arr.shape[0]:
            raise ValueError("text and image must have the same number of rows (row i of each is a pair), "
                             f"got {text_arr.shape[0]} and {image_arr.shape[0]}")
        if text_arr.shape[1] != image_arr.shape[1]:
            raise ValueError(f"text and image must have the same dimension, got {text_arr.shape[1]} "
                             f"and {image_arr.shape[1]}")
        if stats is not None and text_arr.shape[1] != stats.dim:
            raise ValueError(f"text and image must have dimension d={stats.dim} (the fitted dimension), "
                             f"got {text_arr.shape[1]}")
        if text_arr.shape[0] == 0 or text_arr.shape[1] == 0:
            raise ValueError(f"text and image must hold at least one pair of non-empty rows, got shape {text_arr.shape}")
        rows = min(_CHUNK, len(text_arr))
        buffers = np.empty((rows, text_arr.shape[1]), np.float32), np.empty((rows, text_arr.shape[1]), np.float32)
        for start in range(0, len(text_arr), _CHUNK):
            stop = start + _CHUNK
            chunk = PairStatistics.of(unit_rows("text", text_arr[start:stop], start, buffers[0]),
                                      unit_rows("image", image_arr[start:stop], start, buffers[1]),
                                      int(self.sample_size))
            stats = chunk if stats is None else stats.merged(chunk)
        return stats

    # ------------------------------------------------------------------ stage parameters
    @staticmethod
    def _stage_params(mean_shift: bool, projection: str, moments):
        """Means (when shifting) and per-modality projections of one configuration, from ``moments``."""
        count, text_mean, image_mean, text_gram, cross_gram = moments
        dim = len(text_mean)
        if mean_shift:  # centred moments: the map then acts on mean-shifted vectors
            c_tt = text_gram - np.outer(text_mean, text_mean)
            c_ti = cross_gram - np.outer(text_mean, image_mean)
            shift = (text_mean, image_mean)
        else:
            c_tt, c_ti, shift = text_gram, cross_gram, (None, None)
        if projection == "none":
            return shift, (None, None)
        if projection == "procrustes":
            u, _, vt = np.linalg.svd(c_ti)
            return shift, (u @ vt, None)
        alpha = float(projection[len("ridge("):-1])
        lam = alpha * np.trace(c_tt) / dim
        eye = np.eye(dim)
        return shift, (np.linalg.solve(c_tt + lam * eye, c_ti + lam * eye), None)

    @staticmethod
    def _embed_with(x, mean, proj):
        """Unit vectors after mean shift and projection (x: unit-normalised float32 rows)."""
        if mean is None and proj is None:
            return x
        y = x if proj is None else x @ proj.astype(np.float32)
        if mean is not None:
            offset = mean if proj is None else mean @ proj
            y = y - offset.astype(np.float32)
        return l2_normalize(np.ascontiguousarray(y, dtype=np.float32))

    @staticmethod
    def _hub_params(reference: np.ndarray, rank: int | None = _HUBNESS_RANK):
        """Mean of the reference vectors (the population of queries an item competes for) and a basis B
        with ||e @ B||^2 = e^T C e for their covariance C: exact when ``rank`` is None, else its leading
        ``rank`` principal directions scaled by their standard deviations."""
        ref = reference.astype(np.float64)
        mean = ref.mean(axis=0)
        centred = (ref - mean) / np.sqrt(len(ref))
        if rank is None or rank >= min(centred.shape):
            basis = centred.T
        elif len(centred) <= centred.shape[1]:  # eigen-decompose the smaller Gram matrix
            evals, u = np.linalg.eigh(centred @ centred.T)
            basis = centred.T @ u[:, ::-1][:, :rank]
        else:
            evals, v = np.linalg.eigh(centred.T @ centred)
            basis = v[:, ::-1][:, :rank] * np.sqrt(np.clip(evals[::-1][:rank], 0, None))
        return mean.astype(np.float32), np.ascontiguousarray(basis, dtype=np.float32)

    @staticmethod
    def _hub_term(e, hub_mean, hub_basis):
        """CSLS-style level of the queries nearest to each item: mean + z * std of their scores."""
        components = e @ hub_basis
        spread = np.sqrt(np.einsum("ij,ij->i", components, components))
        return _HUBNESS_WEIGHT * (e @ hub_mean + _NEIGHBOURHOOD_Z * spread)

    # ------------------------------------------------------------------ finalisation
    def _candidates(self):
        shifts = [False, True] if self.mean_shift == "auto" else [bool(self.mean_shift)]
        if self.projection == "auto":
            projections = ["none", *(_ridge_name(a) for a in _RIDGE_STRENGTHS), "procrustes"]
        elif self.projection == "ridge":
            projections = [_ridge_name(1.0)]
        else:
            projections = [self.projection]
        return [(s, p) for s in shifts for p in projections]

    def _finalize(self, stats: PairStatistics) -> None:
        dim, n = stats.dim, stats.count
        if n < _MIN_PAIRS:
            raise ValueError(f"text and image must hold at least {_MIN_PAIRS} pairs in total to fit, got {n}")
        sample_t, sample_i = stats.sample_text, stats.sample_image
        m = len(sample_t)
        n_holdout = int(round(self.holdout_fraction * m))
        candidates = self._candidates()
        report = {"n_pairs": n, "sample_pairs": m, "holdout_pairs": 0, "candidates": []}
        if len(candidates) == 1:
            chosen = candidates[0]
            report["reason"] = "stages fixed by the options; no held-out selection needed"
        elif n_holdout < _MIN_HOLDOUT or m - n_holdout < _MIN_PAIRS:
            chosen = candidates[0]  # the simplest: 'auto' stages off, fixed ones as given
            report["reason"] = (f"only {m} pairs: too few to hold out {_MIN_HOLDOUT} for checking the "
                                "optional stages, so the 'auto' ones are off")
        else:
            chosen = self._select(stats, candidates, n_holdout, report)
        mean_shift, projection = chosen
        moments = stats.moments()
        self._install(dim, *self._stage_params(mean_shift, projection, moments), sample_t, sample_i)
        self._stats = stats
        self.n_pairs_ = n
        self.text_mean_, self.image_mean_ = moments[1], moments[2]
        self.mean_shift_, self.projection_ = mean_shift, projection
        report["chosen"] = {"mean_shift": mean_shift, "projection": projection,
                            "hubness": bool(self.hubness), "score_norm": bool(self.score_norm)}
        report["score_mean"] = self.score_mean_.tolist()
        report["score_std"] = self.score_std_.tolist()
        self.fit_report_ = report
        self.fingerprint_ = self._fingerprint()

    def _select(self, stats, candidates, n_holdout, report):
        """Pick the stages by mixed-pool reciprocal rank on held-out pairs (stages fitted on the rest)."""
        from ..metrics import ScoreBlocks, _pair_ranks

        hold_t, hold_i = stats.sample_text[:n_holdout], stats.sample_image[:n_holdout]
        ref_t, ref_i = stats.sample_text[n_holdout:], stats.sample_image[n_holdout:]
        train = stats.moments(exclude=n_holdout)
        report["holdout_pairs"] = n_holdout
        rr = {}
        for cand in candidates:
            scratch = GapCalibrator(**self.get_params())
            scratch._install(stats.dim, *self._stage_params(*cand, train), ref_t, ref_i, _SELECTION_SAMPLE, None)
            blocks = ScoreBlocks(*scratch._score_blocks(hold_t, hold_i))
            ranks = _pair_ranks(blocks)
            rr[cand] = 1.0 / ranks
            cross = np.concatenate([(b > np.diag(b)[:, None]).sum(1) == 0 for b in (blocks.ti, blocks.it)])
            report["candidates"].append({"mean_shift": cand[0], "projection": cand[1],
                                         "holdout_mixed_mrr": float(rr[cand].mean()),
                                         "holdout_mixed_r1": float((ranks == 1).mean()),
                                         "holdout_cross_modal_r1": float(cross.mean())})
        base = candidates[0]
        best = max(candidates, key=lambda c: rr[c].mean())
        diff = rr[best] - rr[base]
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        if best != base and diff.mean() > se:
            report["reason"] = (f"mean_shift={best[0]}, projection={best[1]} raised held-out mixed-pool MRR "
                                f"by {diff.mean():.4f} (> one standard error, {se:.4f}) over the simplest "
                                f"choice on {n_holdout} held-out pairs")
            return best
        report["reason"] = (f"no optional stage beat the simplest choice (mean_shift={base[0]}, "
                            f"projection={base[1]}) by more than one standard error on {n_holdout} held-out "
                            f"pairs (best gain {diff.mean():+.4f}, SE {se:.4f}), so it is kept")
        return base

    def _install(self, dim, shift, proj, sample_t, sample_i, sample_rows=None, hub_rank=_HUBNESS_RANK):
        """Set the fitted stage parameters, then measure the score parameters on (up to ``sample_rows`` of)
        the sample of pairs."""
        self.dim_ = dim
        self._shift = {"text": shift[0], "image": shift[1]}
        self._proj = {"text": proj[0], "image": proj[1]}
        self._set_score_params(sample_t[:sample_rows], sample_i[:sample_rows], hub_rank)

    def _set_score_params(self, sample_t, sample_i, hub_rank):
        """Hubness terms (from the whole sample) and per-pair-type statistics of unmatched-pair scores
        (from its first ``_SCORE_SAMPLE`` pairs: a million unmatched pairs per type is plenty)."""
        emb = {"text": self._embed(sample_t, "text"), "image": self._embed(sample_i, "image")}
        self._hub = {}
        if self.hubness:  # stats of modality a = the population of queries that hit items of the other one
            for a in MODALITIES:
                self._hub[a] = self._hub_params(emb[a], hub_rank)
        self.score_mean_ = np.zeros((2, 2))
        self.score_std_ = np.ones((2, 2))
        if not self.score_norm:
            return
        n = min(len(sample_t), _SCORE_SAMPLE)
        for qa, a in enumerate(MODALITIES):
            for qb, b in enumerate(MODALITIES):
                s = self._query_vectors(emb[a][:n], a, b, scaled=False) @ self._item_vectors(emb[b][:n], b).T
                diag = np.diag(s).astype(np.float64)
                count = n * (n - 1)  # unmatched pairs: everything off the diagonal
                mean = (s.sum(dtype=np.float64) - diag.sum()) / count
                square = (np.einsum("ij,ij->", s, s, dtype=np.float64) - (diag ** 2).sum()) / count
                self.score_mean_[qa, qb] = mean
                self.score_std_[qa, qb] = max(np.sqrt(max(square - mean ** 2, 0.0)), 1e-12)

    # ------------------------------------------------------------------ transforms
    def _check_fitted(self):
        if not hasattr(self, "dim_"):
            raise NotFittedError("this GapCalibrator is not fitted yet: call fit(text, image) first")

    def _embed(self, x, modality):
        return self._embed_with(x, self._shift[modality], self._proj[modality])

    def _item_vectors(self, e, modality):
        if not self.hubness:
            return e
        other = "image" if modality == "text" else "text"
        hub = self._hub_term(e, *self._hub[other])
        return np.concatenate([e, hub[:, None].astype(np.float32)], axis=1)

    def _query_vectors(self, e, query_modality, item_modality, scaled=True):
        if self.hubness:
            weight = -1.0 if query_modality != item_modality else 0.0
            e = np.concatenate([e, np.full((len(e), 1), weight, dtype=np.float32)], axis=1)
        if scaled:
            e = e / np.float32(self.score_std_[MODALITIES.index(query_modality), MODALITIES.index(item_modality)])
        return np.ascontiguousarray(e, dtype=np.float32)

    def _prepared(self, name, x):
        """Validated rows of ``x`` scaled to unit length, in a new float32 array."""
        self._check_fitted()
        return unit_rows(name, as_matrix(name, x, dim=self.dim_, check_rows=False))

    @property
    def output_dim_(self) -> int:
        """Width of ``transform`` output: d, plus one column for the hubness term."""
        self._check_fitted()
        return self.dim_ + int(bool(self.hubness))

    def projection_matrix(self, modality="text"):
        """The fitted map of this modality's (unit, mean-shifted) rows, a (d, d) array used as ``x @ P``,
        or None where the projection stage is off. Lets callers move the linear part to the query side."""
        check_modality("modality", modality)
        self._check_fitted()
        return self._proj[modality]

    def embed(self, x, modality="text") -> np.ndarray:
        """Unit vectors after the fitted mean shift and projection, before scoring (for geometry and plots)."""
        check_modality("modality", modality)
        return self._embed(self._prepared("x", x), modality)

    def transform(self, x, modality="text") -> np.ndarray:
        """Item vectors to store in an index: float32 (n, output_dim_).

        Inner products with ``transform_query`` vectors plus ``score_offset`` give ``similarity``.
        """
        return self._item_vectors(self.embed(x, modality), modality)

    def transform_query(self, queries, query_modality="text", item_modality="image") -> np.ndarray:
        """Query vectors for searching items of ``item_modality``: float32 (n, output_dim_)."""
        check_modality("item_modality", item_modality)
        return self.transform_queries(queries, query_modality, (item_modality,))[0]

    def transform_queries(self, queries, query_modality="text", item_modalities=MODALITIES) -> list:
        """``transform_query`` for each of ``item_modalities``, validating and embedding the queries once
        (a mixed search needs one query vector per item modality)."""
        check_modality("query_modality", query_modality)
        for item_modality in item_modalities:
            check_modality("item_modalities", item_modality)
        e = self._embed(self._prepared("queries", queries), query_modality)
        return [self._query_vectors(e, query_modality, m) for m in item_modalities]

    def score_offset(self, query_modality="text", item_modality="image") -> float:
        """Constant added to ``transform_query @ transform.T`` to give the calibrated score."""
        check_modality("query_modality", query_modality)
        check_modality("item_modality", item_modality)
        self._check_fitted()
        qa, qb = MODALITIES.index(query_modality), MODALITIES.index(item_modality)
        return float(-self.score_mean_[qa, qb] / self.score_std_[qa, qb])

    def _score_blocks(self, text_units, image_units):
        """The four calibrated score blocks (tt, ti, it, ii) of unit-normalised pairs, each embedded once."""
        emb = {"text": self._embed(text_units, "text"), "image": self._embed(image_units, "image")}
        items = {m: self._item_vectors(emb[m], m) for m in MODALITIES}
        return [self._query_vectors(emb[a], a, b) @ items[b].T + np.float32(self.score_offset(a, b))
                for a, b in (("text", "text"), ("text", "image"), ("image", "text"), ("image", "image"))]

    def similarity(self, queries, items, query_modality="text", item_modality="image") -> np.ndarray:
        """Calibrated scores (nq, ni), comparable across item modalities for one query (see class doc)."""
        u = self.transform_query(queries, query_modality, item_modality)
        v = self.transform(items, item_modality)
        return u @ v.T + np.float32(self.score_offset(query_modality, item_modality))

    # ------------------------------------------------------------------ reporting and persistence
    def summary(self) -> str:
        """The fit report as readable text: what was kept and why."""
        self._check_fitted()
        r = self.fit_report_
        lines = [f"GapCalibrator fitted on {r['n_pairs']} pairs (d={self.dim_}, sample {r['sample_pairs']} pairs)",
                 f"  mean shift: {'on' if self.mean_shift_ else 'off'}; projection: {self.projection_}; "
                 f"hubness correction: {'on' if self.hubness else 'off'}; "
                 f"score normalisation: {'on' if self.score_norm else 'off'}",
                 f"  decision: {r['reason']}"]
        if r["candidates"]:
            lines.append(f"  held-out check on {r['holdout_pairs']} pairs "
                         "(mixed-pool MRR / mixed-pool R@1 / cross-modal R@1):")
            for c in r["candidates"]:
                lines.append(f"    mean_shift={str(c['mean_shift']):5s} projection={c['projection']:11s} "
                             f"{c['holdout_mixed_mrr']:.4f} / {c['holdout_mixed_r1']:.4f} / "
                             f"{c['holdout_cross_modal_r1']:.4f}")
        return "\n".join(lines)

    def _state_arrays(self) -> dict:
        arrays = {"text_mean": self.text_mean_, "image_mean": self.image_mean_,
                  "score_mean": self.score_mean_, "score_std": self.score_std_}
        for m in MODALITIES:
            if self._shift[m] is not None:
                arrays[f"{m}_shift"] = self._shift[m]
            if self._proj[m] is not None:
                arrays[f"{m}_projection"] = self._proj[m]
            if m in self._hub:
                arrays[f"{m}_hub_mean"], arrays[f"{m}_hub_basis"] = self._hub[m]
        return arrays

    def _fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(self.get_params(), sort_keys=True, default=str).encode())
        for name, arr in sorted(self._state_arrays().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def save(self, path) -> None:
        """Write the calibrator atomically as an .npz of arrays plus a JSON header (no pickle)."""
        from .io import save_calibrator
        save_calibrator(self, path)

    @classmethod
    def load(cls, path) -> "GapCalibrator":
        """Read a file written by ``save``; refuses truncated, corrupt, foreign or newer-format files."""
        from .io import load_calibrator
        return load_calibrator(cls, path)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"GapCalibrator({args})"
