"""Per pair type monotone score maps: raw (stage- and hubness-corrected) cosine -> calibrated score.

Each (query modality, item modality) pair type gets its own strictly increasing, piecewise-linear map, so
the order of items inside one pair type never changes (a faiss search of one modality stays exact) while
scores of different pair types become comparable. Kinds (the calibrator's ``score_norm``):

- ``"relevance"``: the log-likelihood ratio of relevance, ``log p(score | relevant) - log p(score |
  unrelated)`` for this pair type, built on the ``"pvalue"`` surprise (below). Positives are matched pairs
  for text-image types and, for text-text and image-image, sibling pairs (two captions of one image, two
  photos of one product) where groups reveal them.
- ``"pvalue"``: ``-ln`` of the fraction of unrelated pairs of this type that score higher (the null's
  empirical upper tail, extended by an exponential fit): among unrelated items, neither medium is favoured
  at any depth of the list.
- ``"tail"``: an affine map standardising the top 1% of unrelated scores (location and mean excess).
- ``"zscore"``: an affine z-score against all unrelated pairs (mean and standard deviation).
- ``"none"``: the raw score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("relevance", "pvalue", "tail", "zscore", "none")
_LOW_LEVELS = (0.999, 0.99, 0.95, 0.9, 0.8, 0.7, 0.6)
_TAIL_LEVELS = 40
_MIN_EXCEEDANCES = 50
_DEEPEST = 1e-5
_TAIL_FRACTION = 0.01
_GRID = 256
_TIE_SLOPE = 1e-3  # keeps the relevance map strictly increasing where the positives' density dips
MIN_POSITIVES = 50  # relevant pairs a pair type needs for its own density of positives
_FAR = 1e3  # distance of ScoreMap's extra end knots beyond its last ones (see ScoreMap.__post_init__)


@dataclass(frozen=True)
class ScoreMap:
    """A strictly increasing piecewise-linear map through knots ``(x, y)``, extended linearly beyond them."""

    x: np.ndarray
    y: np.ndarray
    low_slope: float
    high_slope: float

    def __post_init__(self):
        # two far knots on the end slopes make one np.interp the whole map for any raw score a unit-vector
        # inner product can give (|raw| is a few units at most); beyond them __call__ extends exactly
        far = _FAR + np.abs(self.x).max()
        x = np.concatenate([[self.x[0] - far], self.x, [self.x[-1] + far]])
        y = np.concatenate([[self.y[0] - far * self.low_slope], self.y, [self.y[-1] + far * self.high_slope]])
        object.__setattr__(self, "_knots", (x, y))

    def __call__(self, raw) -> np.ndarray:
        x, y = self._knots
        raw = np.asarray(raw)
        out = np.interp(raw, x, y)
        if raw.size and not (x[0] <= raw.min() and raw.max() <= x[-1]):  # NaN lands here too
            below, above = raw < self.x[0], raw > self.x[-1]
            out[below] = self.y[0] + (raw[below] - self.x[0]) * self.low_slope
            out[above] = self.y[-1] + (raw[above] - self.x[-1]) * self.high_slope
        return out

    def inverse(self, scores) -> np.ndarray:
        """Raw scores that map to ``scores`` (the map is strictly increasing)."""
        s = np.asarray(scores, dtype=np.float64)
        out = np.interp(s, self.y, self.x)
        below, above = s < self.y[0], s > self.y[-1]
        out[below] = self.x[0] + (s[below] - self.y[0]) / self.low_slope
        out[above] = self.x[-1] + (s[above] - self.y[-1]) / self.high_slope
        return out

    def to_array(self) -> np.ndarray:
        """One float64 array: [low_slope, high_slope, x..., y...] (for saving)."""
        return np.concatenate([[self.low_slope, self.high_slope], self.x, self.y])

    @classmethod
    def from_array(cls, arr: np.ndarray) -> "ScoreMap":
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim != 1 or len(arr) < 6 or len(arr) % 2:
            raise ValueError(f"a score map is a 1-D array of 2 + 2K values (K >= 2 knots), got shape {arr.shape}")
        k = (len(arr) - 2) // 2
        made = cls(arr[2:2 + k], arr[2 + k:], float(arr[0]), float(arr[1]))
        made.check()
        return made

    def check(self) -> None:
        if not (np.isfinite(self.x).all() and np.isfinite(self.y).all() and np.all(np.diff(self.x) > 0)
                and np.all(np.diff(self.y) > 0) and self.low_slope > 0 and self.high_slope > 0
                and np.isfinite([self.low_slope, self.high_slope]).all()):
            raise ValueError("a score map must be finite and strictly increasing")


def _affine(location: float, scale: float) -> ScoreMap:
    scale = max(float(scale), 1e-12)
    return ScoreMap(np.array([location, location + scale]), np.array([0.0, 1.0]), 1.0 / scale, 1.0 / scale)


def identity_map() -> ScoreMap:
    return _affine(0.0, 1.0)


def zscore_map(null: np.ndarray) -> ScoreMap:
    """(s - mean) / std of the unrelated pairs' scores."""
    return _affine(float(null.mean()), float(null.std()))


def tail_map(null: np.ndarray, fraction: float = _TAIL_FRACTION) -> ScoreMap:
    """(s - q) / mean excess over q, with q the (1 - ``fraction``) quantile of the unrelated scores."""
    top = _upper(null, fraction)
    q = top[0]
    return _affine(q, float((top[1:] - q).mean()) if len(top) > 1 else float(null.std()))


def _upper(null: np.ndarray, fraction: float) -> np.ndarray:
    """The largest ``fraction`` of the values, sorted (at least two)."""
    count = min(len(null), max(2, int(np.ceil(fraction * len(null)))))
    return np.sort(np.partition(null, len(null) - count)[len(null) - count:])


def surprise_map(null: np.ndarray) -> ScoreMap:
    """-ln P(unrelated score > s): empirical quantile knots, an exponential tail beyond the deepest one."""
    n = len(null)
    deepest = min(0.5, max(_DEEPEST, _MIN_EXCEEDANCES / n))
    levels = np.unique(np.concatenate([_LOW_LEVELS, np.geomspace(0.5, deepest, _TAIL_LEVELS)]))[::-1]
    top = _upper(null, 0.05)  # the tail, from every value; the bulk from an evenly spaced subsample
    bulk = np.sort(null[:: max(1, n // 65536)])
    x = np.array([top[min(len(top) - 1, max(0, int(round((1 - p) * (n - 1))) - (n - len(top))))] if p <= 0.05 else
                  bulk[min(len(bulk) - 1, int(round((1 - p) * (len(bulk) - 1))))] for p in levels], dtype=np.float64)
    u = -np.log(levels)
    keep = np.concatenate([[True], np.diff(x) > 0])
    x, u = x[keep], u[keep]
    if len(x) < 2:
        raise ValueError("unrelated pairs must score at least two different values to fit a score map")
    excess = top[top > x[-1]] - x[-1]
    high = 1.0 / excess.mean() if len(excess) else (u[-1] - u[-2]) / (x[-1] - x[-2])
    return ScoreMap(x, u, (u[1] - u[0]) / (x[1] - x[0]), float(high))


def _log_density(grid: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Log of a Gaussian kernel density estimate (Silverman's bandwidth, robust scale) on ``grid``."""
    spread = points.std()
    iqr = np.subtract(*np.quantile(points, [0.75, 0.25]))
    scale = min(spread, iqr / 1.349) if iqr > 0 else spread
    width = max(0.9 * scale * len(points) ** -0.2, 0.05)
    z = (grid[:, None] - points[None, :]) / width
    top = (-0.5 * z * z).max(axis=1)
    return top + np.log(np.exp(-0.5 * z * z - top[:, None]).sum(axis=1) / (len(points) * width * np.sqrt(2 * np.pi)))


def relevance_map(surprise: ScoreMap, positive_surprise: np.ndarray) -> ScoreMap:
    """log LR(u) on the surprise scale u, where unrelated pairs have density e^-u, made non-decreasing and
    composed with ``surprise``. The positives' density g is a kernel estimate held at its peak above the
    mode (a score above the typical positive is no less relevant), mixed with one pseudo-positive that
    scores like an unrelated pair, so LR(u) = ((1 - w) g(u) + w e^-u) / e^-u with w = 1 / (n + 1): the
    log ratio never falls below ln w however far below the positives a score lies."""
    u = np.asarray(positive_surprise, dtype=np.float64)
    weight = 1.0 / (len(u) + 1)
    lo, hi = min(0.0, u.min()), u.max() + 3.0
    grid = np.linspace(lo, hi, _GRID)
    log_g = _log_density(grid, u)
    mode = int(np.argmax(log_g))
    log_g[mode:] = log_g[mode]
    lr = np.logaddexp(np.log1p(-weight) + log_g + grid, np.log(weight))
    lr = np.maximum.accumulate(lr) + _TIE_SLOPE * (grid - lo)
    raw_at_grid = surprise.inverse(grid)
    x = np.union1d(surprise.x, raw_at_grid)
    inside = (x >= raw_at_grid[0]) & (x <= raw_at_grid[-1])
    y = np.empty_like(x)
    y[inside] = np.interp(surprise(x[inside]), grid, lr)
    low_slope = _TIE_SLOPE * surprise.low_slope  # below the grid the ratio sits at its floor
    y[x < raw_at_grid[0]] = lr[0] + (x[x < raw_at_grid[0]] - raw_at_grid[0]) * low_slope
    y[x > raw_at_grid[-1]] = lr[-1] + (surprise(x[x > raw_at_grid[-1]]) - grid[-1]) * (1.0 + _TIE_SLOPE)
    keep = np.concatenate([[True], (np.diff(x) > 0) & (np.diff(y) > 0)])
    return ScoreMap(x[keep], y[keep], low_slope, surprise.high_slope * (1.0 + _TIE_SLOPE))
