"""Published and simple baselines with the calibrator's ``fit`` / ``embed`` / ``similarity`` interface.

- ``RawCosine``: the model's own cosine.
- ``GRClip``: per-modality mean centring then re-normalisation (Li et al., 2025, "Closing the Modality
  Gap for Mixed Modality Search").
- ``I0TStandardize``: post-hoc per-modality, per-dimension standardisation then re-normalisation
  (I0T, An et al., ACL 2025).
- ``PerTypeZ``: raw cosine z-scored per (query modality, item modality) pair type against unrelated pairs
  (pairs of different groups): the simplest score that makes the types comparable.

``fit`` takes ``groups`` like ``GapCalibrator.fit`` does; only ``PerTypeZ`` uses it (to know which pairs
are unrelated).
"""

from __future__ import annotations

import numpy as np

from ._checks import MODALITIES, NotFittedError, as_matrix, check_modality, check_pairs, l2_normalize

_TYPES = (("text", "text"), ("text", "image"), ("image", "text"), ("image", "image"))


class RawCosine:
    """Cosine similarity of the raw embeddings; ``fit`` only records the dimension."""

    def fit(self, text, image, *, groups=None):
        self._check_pairs(text, image)
        self.dim_ = np.shape(text)[1]
        return self

    def _check_pairs(self, text, image):
        return check_pairs(text, image)

    def _map(self, x, modality):
        return x

    def embed(self, x, *, modality) -> np.ndarray:
        """Unit vectors after this baseline's per-modality correction."""
        check_modality("modality", modality)
        if not hasattr(self, "dim_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(text, image) first")
        x = as_matrix("x", x, dim=self.dim_).copy()
        return l2_normalize(self._map(l2_normalize(x), modality))

    def similarity(self, queries, items, *, query_modality, item_modality) -> np.ndarray:
        return self.embed(queries, modality=query_modality) @ self.embed(items, modality=item_modality).T


class GRClip(RawCosine):
    """Subtract each modality's mean (of unit vectors), then re-normalise."""

    def fit(self, text, image, *, groups=None):
        t, i = self._check_pairs(text, image)
        self.dim_ = t.shape[1]
        self.means_ = {m: l2_normalize(x.copy()).mean(0) for m, x in zip(MODALITIES, (t, i))}
        return self

    def _map(self, x, modality):
        return x - self.means_[modality]


class I0TStandardize(RawCosine):
    """Standardise each dimension with the modality's mean and standard deviation, then re-normalise."""

    def fit(self, text, image, *, groups=None):
        t, i = self._check_pairs(text, image)
        self.dim_ = t.shape[1]
        units = {m: l2_normalize(x.copy()) for m, x in zip(MODALITIES, (t, i))}
        self.means_ = {m: u.mean(0) for m, u in units.items()}
        self.stds_ = {m: np.maximum(u.std(0), 1e-12) for m, u in units.items()}
        return self

    def _map(self, x, modality):
        return (x - self.means_[modality]) / self.stds_[modality]


class PerTypeZ(RawCosine):
    """Raw cosine, z-scored per pair type against unrelated pairs of the fitted set (distinct items of
    different groups)."""

    def fit(self, text, image, *, groups=None):
        from . import metrics

        self._check_pairs(text, image)
        self.dim_ = np.shape(text)[1]
        pool = metrics.relevance_pool(text, image, groups)
        dist = metrics.score_distributions(metrics.pool_blocks(RawCosine().fit(text, image), pool), pool)
        self.null_ = {t: (float(dist[f"{t[0]}-{t[1]}"]["null"].mean()), float(dist[f"{t[0]}-{t[1]}"]["null"].std()))
                      for t in _TYPES}
        return self

    def similarity(self, queries, items, *, query_modality, item_modality) -> np.ndarray:
        mean, std = self.null_[(query_modality, item_modality)]
        raw = super().similarity(queries, items, query_modality=query_modality, item_modality=item_modality)
        return (raw - mean) / std
