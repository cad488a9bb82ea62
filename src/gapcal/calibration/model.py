"""The fitted state of a calibrator and how one is built from pair statistics (numpy only).

A model = per-modality mean shift and projection (the stages), an item-side hubness term, and four score
maps (one per query modality x item modality). ``build`` makes one from moments and a reference set of
pairs: ``GapCalibrator`` builds candidates on part of its sample to choose the stages, then the final one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .._checks import MODALITIES, l2_normalize
from .. import metrics
from . import contrastive, scoremap

TYPES = (("text", "text"), ("text", "image"), ("image", "text"), ("image", "image"))
# The hubness term treats a query's scores against an item as Gaussian and estimates the level of the
# item's nearest queries at one-sided 5% (z = 1.645); CSLS weighs it by one half.
_NEIGHBOURHOOD_Z = 1.6448536269514722
_HUBNESS_WEIGHT = 0.5
HUBNESS_RANK = 64
RIDGE_STRENGTHS = (1.0, 10.0)  # 'auto' candidates; ridge(0.1) and Procrustes never won a held-out check


def ridge_name(alpha: float) -> str:
    return f"ridge({alpha:g})"


_SOFT = re.compile(r"soft(?:\((?P<t>[0-9.eE+-]+)\))?")


def projection_name(value) -> str | None:
    """The canonical name of a ``projection`` option (``"soft"`` -> ``"soft(0.05)"``), or None if invalid."""
    if value in ("auto", "none", "ridge", "procrustes"):
        return value
    match = _SOFT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    try:
        temperature = float(match["t"]) if match["t"] else contrastive.DEFAULT_TEMPERATURE
    except ValueError:
        return None
    return contrastive.soft_name(temperature) if 0.001 <= temperature <= 10 else None


def other(modality: str) -> str:
    return "image" if modality == "text" else "text"


@dataclass(frozen=True)
class Reference:
    """Pairs a model measures its hubness terms and score maps on: unit rows with exact-duplicate ids and a
    group id per pair (pairs of one group are relevant to each other)."""

    text: np.ndarray
    image: np.ndarray
    text_ids: np.ndarray
    image_ids: np.ndarray
    group: np.ndarray

    def rows(self, rows) -> "Reference":
        return Reference(self.text[rows], self.image[rows], self.text_ids[rows], self.image_ids[rows], self.group[rows])

    def pool(self) -> metrics.RelevancePool:
        return metrics.pool_of(self.text, self.image, self.text_ids, self.image_ids, self.group)


class Model:
    """Stages, hubness terms and score maps; scores are ``maps[(a, b)](query_vector . item_vector)``."""

    def __init__(self, dim, shift, proj, hub, maps):
        self.dim = dim
        self.shift = shift  # {modality: mean or None}
        self.proj = proj  # {modality: (d, d) or None}
        self.hub = hub  # {modality whose rows are the queries: (mean, basis)}; empty when hubness is off
        self.maps = maps  # {(query modality, item modality): ScoreMap}
        self.training = None  # what training a contrastive projection did (report only, not saved)
        self._proj32 = {m: None if p is None else p.astype(np.float32) for m, p in proj.items()}
        self._offset32 = {m: None if shift[m] is None else
                          (shift[m] if proj[m] is None else shift[m] @ proj[m]).astype(np.float32) for m in MODALITIES}

    @property
    def output_dim(self) -> int:
        return self.dim + int(bool(self.hub))

    def embed(self, units: np.ndarray, modality: str) -> np.ndarray:
        """Unit vectors after mean shift and projection (``units``: unit-normalised float32 rows)."""
        proj, offset = self._proj32[modality], self._offset32[modality]
        if proj is None and offset is None:
            return units
        y = units if proj is None else units @ proj
        if offset is not None:
            y = y - offset
        return l2_normalize(np.ascontiguousarray(y, dtype=np.float32))

    def item_vectors(self, e: np.ndarray, modality: str) -> np.ndarray:
        if not self.hub:
            return e
        mean, basis = self.hub[other(modality)]
        components = e @ basis
        level = _HUBNESS_WEIGHT * (e @ mean + _NEIGHBOURHOOD_Z * np.sqrt(np.einsum("ij,ij->i", components, components)))
        return np.concatenate([e, level[:, None].astype(np.float32)], axis=1)

    def query_vectors(self, e: np.ndarray, query_modality: str, item_modality: str) -> np.ndarray:
        if not self.hub:
            return e
        out = np.empty((len(e), e.shape[1] + 1), dtype=np.float32)
        out[:, :-1] = e
        out[:, -1] = -1.0 if query_modality != item_modality else 0.0
        return out

    def raw_blocks(self, text_units: np.ndarray, image_units: np.ndarray) -> list:
        """Raw inner products of the four pair types (tt, ti, it, ii), each side embedded once."""
        emb = {"text": self.embed(text_units, "text"), "image": self.embed(image_units, "image")}
        items = {m: self.item_vectors(emb[m], m) for m in MODALITIES}
        return [self.query_vectors(emb[a], a, b) @ items[b].T for a, b in TYPES]

    def blocks(self, text_units: np.ndarray, image_units: np.ndarray) -> metrics.ScoreBlocks:
        raw = self.raw_blocks(text_units, image_units)
        return metrics.ScoreBlocks(*(self.maps[t](block) for t, block in zip(TYPES, raw, strict=True)))

    # ---------------------------------------------------------------- persistence
    def to_arrays(self) -> dict:
        arrays = {}
        for m in MODALITIES:
            if self.shift[m] is not None:
                arrays[f"{m}_shift"] = self.shift[m]
            if self.proj[m] is not None:
                arrays[f"{m}_projection"] = self.proj[m]
            if m in self.hub:
                arrays[f"{m}_hub_mean"], arrays[f"{m}_hub_basis"] = self.hub[m]
        for a, b in TYPES:
            arrays[f"map_{a}_{b}"] = self.maps[(a, b)].to_array()
        return arrays

    @classmethod
    def from_arrays(cls, dim: int, arrays: dict, hubness: bool) -> "Model":
        """A model from ``to_arrays`` output; raises ValueError naming what is missing or malformed."""
        def get(name, shape=None):
            value = np.asarray(arrays[name])
            if shape is not None and value.shape != shape:
                raise ValueError(f"entry {name!r} has shape {value.shape}, expected {shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"entry {name!r} holds NaN or inf")
            return value

        try:
            shift = {m: get(f"{m}_shift", (dim,)) if f"{m}_shift" in arrays else None for m in MODALITIES}
            proj = {m: get(f"{m}_projection", (dim, dim)) if f"{m}_projection" in arrays else None for m in MODALITIES}
            hub = {m: (get(f"{m}_hub_mean", (dim,)).astype(np.float32),
                       np.ascontiguousarray(get(f"{m}_hub_basis"), dtype=np.float32))
                   for m in (MODALITIES if hubness else ())}
            if any(basis.ndim != 2 or basis.shape[0] != dim for _, basis in hub.values()):
                raise ValueError(f"a hubness basis must have {dim} rows")
            maps = {(a, b): scoremap.ScoreMap.from_array(get(f"map_{a}_{b}")) for a, b in TYPES}
        except KeyError as exc:
            raise ValueError(f"entry {exc} is missing") from None
        return cls(dim, shift, proj, hub, maps)


# -------------------------------------------------------------------- building
def stage_params(mean_shift: bool, projection: str, moments, group=None):
    """Means (when shifting), per-modality projections of one configuration, from ``moments``, and what
    training did (contrastive projections; else None). ``group`` (one id per moments row) marks relevant
    pairs for the contrastive projection."""
    text_mean, image_mean = moments.text_mean, moments.image_mean
    shift = {"text": text_mean, "image": image_mean} if mean_shift else {"text": None, "image": None}
    if projection == "none":
        return shift, {"text": None, "image": None}, None
    if projection.startswith("soft("):
        text_rows, image_rows = moments.rows
        labels = np.arange(len(text_rows)) if group is None else group
        proj, info = contrastive.soft_projection(text_rows, image_rows, shift["text"], shift["image"], labels,
                                                 temperature=float(projection[len("soft("):-1]))
        return shift, {"text": proj, "image": None}, info
    text_gram, cross_gram = moments.grams
    if mean_shift:  # centred moments: the map then acts on mean-shifted vectors
        c_tt = text_gram - np.outer(text_mean, text_mean)
        c_ti = cross_gram - np.outer(text_mean, image_mean)
    else:
        c_tt, c_ti = text_gram, cross_gram
    dim = len(text_mean)
    if projection == "procrustes":
        u, _, vt = np.linalg.svd(c_ti)
        return shift, {"text": u @ vt, "image": None}, None
    alpha = float(projection[len("ridge("):-1])
    lam = alpha * np.trace(c_tt) / dim
    eye = np.eye(dim)
    # float32 is enough: the ridge term bounds the condition number by about d + 1
    solved = np.linalg.solve((c_tt + lam * eye).astype(np.float32), (c_ti + lam * eye).astype(np.float32))
    return shift, {"text": solved.astype(np.float64), "image": None}, None


def hub_params(reference: np.ndarray, rank: int = HUBNESS_RANK):
    """Mean of the reference vectors (the population of queries an item competes for) and a basis B with
    ||e @ B||^2 ~ e^T C e for their covariance C: its leading ``rank`` principal directions scaled by their
    standard deviations (a seeded randomised range finder with one power step: O(n d rank))."""
    mean = reference.mean(axis=0, dtype=np.float64)
    centred = (reference - mean.astype(np.float32)) / np.float32(np.sqrt(len(reference)))
    if rank >= min(centred.shape):
        return mean.astype(np.float32), np.ascontiguousarray(centred.T, dtype=np.float32)
    probe = np.random.default_rng(0).standard_normal((centred.shape[1], min(rank + 16, centred.shape[1])))
    y = (centred @ (centred.T @ (centred @ probe.astype(np.float32)))).astype(np.float64)
    w, v = np.linalg.eigh(y.T @ y)
    keep = w > w.max() * 1e-12
    q = (y @ (v[:, keep] / np.sqrt(w[keep]))).astype(np.float32)  # orthonormal columns: the leading directions
    b = (q.T @ centred).astype(np.float64)
    _, u = np.linalg.eigh(b @ b.T)
    basis = b.T @ u[:, ::-1][:, :rank]  # = V S of centred ~ Q U S V^T
    return mean.astype(np.float32), np.ascontiguousarray(basis, dtype=np.float32)


@dataclass(frozen=True)
class Evidence:
    """What the score maps were measured on: per pair type, unrelated and relevant raw scores, and the
    surprise map of the unrelated ones."""

    null: dict
    positive: dict
    surprise: dict


def measure(partial: Model, reference: Reference) -> Evidence:
    """Raw scores of unrelated (different groups) and relevant (same group) pairs of distinct items."""
    pool = reference.pool()
    dist = metrics.score_distributions(metrics.ScoreBlocks(*partial.raw_blocks(pool.text, pool.image)), pool)
    null = {t: dist[f"{t[0]}-{t[1]}"]["null"] for t in TYPES}
    return Evidence(null, {t: dist[f"{t[0]}-{t[1]}"]["positive"] for t in TYPES},
                    {t: scoremap.surprise_map(null[t]) for t in TYPES})


def positive_sources(positive: dict) -> dict:
    """Per pair type, where its relevant pairs' scores come from: measured, or borrowed from the text-image
    type of the same query modality (no siblings: same-modality positives cannot be seen)."""
    return {t: t if len(positive[t]) >= scoremap.MIN_POSITIVES else (t[0], other(t[0])) for t in TYPES}


def build(stages, moments, reference: Reference, *, hubness: bool, score_norm: str, score_rows: int,
          positive_surprise: dict | None = None, hub_cache: dict | None = None):
    """A model with these stages: projections from ``moments``, hubness from all reference pairs, score
    maps from the first ``score_rows`` of them. ``positive_surprise`` (per pair type, surprise values of
    relevant pairs measured elsewhere, e.g. held out) replaces the reference's own positives for the
    ``"relevance"`` maps. ``hub_cache`` (a dict kept per reference) reuses a modality's hubness terms
    between candidates that embed it alike. Returns (model, evidence, the score map kind fitted)."""
    dim = len(moments.text_mean)
    shift, proj, training = stage_params(*stages, moments, reference.group)
    partial = Model(dim, shift, proj, {}, {t: scoremap.identity_map() for t in TYPES})
    if hubness:
        cache = {} if hub_cache is None else hub_cache
        hub = {}
        for m, rows in (("text", reference.text), ("image", reference.image)):
            key = (m, stages[0], stages[1] if proj[m] is not None else None)
            if key not in cache:
                cache[key] = hub_params(partial.embed(rows, m))
            hub[m] = cache[key]
        partial = Model(dim, shift, proj, hub, partial.maps)
    rows = slice(0, score_rows)
    if len(np.unique(reference.group[rows])) < 3:  # too few groups there for unrelated pairs of every type
        rows = slice(None)
    evidence = measure(partial, reference.rows(rows))
    maps, kind = fit_maps(evidence, score_norm, positive_surprise)
    fitted = Model(dim, shift, proj, partial.hub, maps)
    fitted.training = training
    return fitted, evidence, kind


def fit_maps(evidence: Evidence, score_norm: str, positive_surprise: dict | None = None):
    """The four score maps of ``score_norm`` and the kind actually fitted: "relevance" falls back to "pvalue"
    when fewer than ``MIN_POSITIVES`` matched pairs were measured."""
    null = evidence.null
    if score_norm == "none":
        return {t: scoremap.identity_map() for t in TYPES}, score_norm
    if score_norm == "zscore":
        return {t: scoremap.zscore_map(null[t]) for t in TYPES}, score_norm
    if score_norm == "tail":
        return {t: scoremap.tail_map(null[t]) for t in TYPES}, score_norm
    surprise = evidence.surprise
    if positive_surprise is None:
        positive_surprise = {t: surprise[t](evidence.positive[t]) for t in TYPES}
    source = positive_sources(positive_surprise)
    if score_norm == "pvalue" or any(len(positive_surprise[source[t]]) < scoremap.MIN_POSITIVES for t in TYPES):
        return surprise, "pvalue"
    return {t: scoremap.relevance_map(surprise[t], positive_surprise[source[t]]) for t in TYPES}, score_norm
