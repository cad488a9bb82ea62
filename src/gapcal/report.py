"""The gap report: pictures and tables of the modality gap before and after calibration (needs matplotlib).

- ``histograms.png``: matched text-image scores against unmatched text-text, image-image and text-image
  scores, raw cosine (before) and calibrated scores (after). Before, unmatched captions sit above
  matched pairs; after, matched pairs stand clear of unmatched pairs of every kind.
- ``map.png``: a 2-D map of both modalities with lines joining pairs, before and after: classical MDS of
  the mixed similarity matrix (for raw cosine this is PCA of the embeddings), or UMAP of the matching
  distances when umap-learn is installed (``map_method``). Before, texts and
  images form two separate clouds; after, the modalities mix and pairs move closer.
- ``report.html``: both pictures plus the gap metrics and mixed-pool retrieval table.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from . import metrics
from .baselines import RawCosine
from .calibration import GapCalibrator
from .evaluation import COLUMNS, cross_fit, evaluate

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError as exc:  # pragma: no cover - exercised by the CLI test without the extra
    raise ImportError("gapcal report needs matplotlib: pip install 'gapcal[report]'") from exc

_COLOURS = {"text": "#1f77b4", "image": "#d62728"}
_MAP_PAIRS = 150


def _mixed_matrix(blocks: metrics.ScoreBlocks) -> np.ndarray:
    """The symmetric (2n, 2n) similarity matrix of texts then images."""
    full = np.block([[blocks.tt, blocks.ti], [blocks.it, blocks.ii]])
    return (full + full.T) / 2


def classical_mds(similarity: np.ndarray, dims: int = 2) -> np.ndarray:
    """Coordinates whose inner products best match the double-centred similarities (PCA for a Gram matrix)."""
    n = len(similarity)
    centring = np.eye(n) - 1.0 / n
    evals, evecs = np.linalg.eigh(centring @ similarity @ centring)
    top = np.argsort(evals)[::-1][:dims]
    return evecs[:, top] * np.sqrt(np.clip(evals[top], 0, None))


def _histograms(ax, blocks, title):
    off = ~np.eye(len(blocks.tt), dtype=bool)
    series = [("unmatched text-text", blocks.tt[off], "#1f77b4"), ("unmatched image-image", blocks.ii[off], "#d62728"),
              ("unmatched text-image", blocks.ti[off], "#7f7f7f"), ("matched text-image", np.diag(blocks.ti), "#2ca02c")]
    lo = min(s.min() for _, s, _ in series)
    hi = max(s.max() for _, s, _ in series)
    bins = np.linspace(lo, hi, 60)
    for label, values, colour in series:
        ax.hist(values, bins=bins, density=True, histtype="stepfilled" if label.startswith("matched") else "step",
                alpha=0.45 if label.startswith("matched") else 1.0, color=colour, linewidth=1.6, label=label)
    ax.set_title(title)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)


def umap_layout(similarity: np.ndarray) -> np.ndarray:
    """UMAP (seeded) of the distances ``max(similarity) - similarity``: keeps neighbourhoods, not scale."""
    import warnings

    import umap

    distance = similarity.max() - similarity
    np.fill_diagonal(distance, 0.0)
    with warnings.catch_warnings():  # notes about precomputed metrics and seeded single-threading
        warnings.simplefilter("ignore", UserWarning)
        return umap.UMAP(metric="precomputed", random_state=0, n_neighbors=15).fit_transform(distance)


def resolve_map_method(method: str) -> str:
    """``"auto"`` means UMAP when umap-learn is installed, else classical MDS."""
    if method not in ("auto", "mds", "umap"):
        raise ValueError(f"map_method must be 'auto', 'mds' or 'umap', got {method!r}")
    if method == "auto":
        try:
            import umap  # noqa: F401
        except ImportError:
            return "mds"
        return "umap"
    return method


def _map(ax, blocks, title, method):
    n = min(len(blocks.tt), _MAP_PAIRS)
    sub = metrics.ScoreBlocks(*(b[:n, :n] for b in blocks))
    similarity = _mixed_matrix(sub)
    xy = umap_layout(similarity) if method == "umap" else classical_mds(similarity)
    text_xy, image_xy = xy[:n], xy[n:]
    for k in range(n):
        ax.plot([text_xy[k, 0], image_xy[k, 0]], [text_xy[k, 1], image_xy[k, 1]], color="#bbbbbb", linewidth=0.5, zorder=1)
    ax.scatter(*text_xy.T, s=12, color=_COLOURS["text"], label="text", zorder=2)
    ax.scatter(*image_xy.T, s=12, color=_COLOURS["image"], label="image", zorder=2)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8)


def write_report(text, image, out_dir, calibrator: GapCalibrator | None = None, map_method: str = "auto") -> Path:
    """Write ``report.html``, ``histograms.png`` and ``map.png`` into ``out_dir``; returns the HTML path.

    Without ``calibrator`` the table comes from the 2-fold cross-fit protocol (fair) and the pictures from
    a calibrator fitted on all pairs; with one, everything evaluates that calibrator on these pairs.
    """
    method = resolve_map_method(map_method)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = np.asarray(text)
    image = np.asarray(image)
    raw = metrics.score_blocks(RawCosine().fit(text, image), text, image)
    if calibrator is None:
        rows = [row for row in cross_fit(text, image) if row[0] in ("raw cosine", "GR-CLIP", "I0T", "gapcal")]
        calibrator = GapCalibrator().fit(text, image)
        table_note = "2-fold cross-fit on these pairs (fit on one half, evaluate on the other, swap, average)."
    else:
        rows = [("raw cosine", evaluate(RawCosine().fit(text, image), text, image)),
                ("gapcal (given calibrator)", evaluate(calibrator, text, image))]
        table_note = "The given calibrator evaluated on these pairs."
    calibrated = metrics.score_blocks(calibrator, text, image)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    _histograms(axes[0], raw, "before: raw cosine")
    _histograms(axes[1], calibrated, "after: calibrated score (z against unmatched pairs)")
    fig.tight_layout()
    fig.savefig(out / "histograms.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    name = {"mds": "MDS", "umap": "UMAP"}[method]
    _map(axes[0], raw, f"before: texts and images in two regions ({name} of raw cosine)", method)
    _map(axes[1], calibrated, f"after: modalities mixed, pairs closer ({name} of calibrated scores)", method)
    fig.tight_layout()
    fig.savefig(out / "map.png", dpi=110)
    plt.close(fig)

    gap = [("centroid distance (Liang et al. 2022)", metrics.centroid_distance(text, image)),
           ("relative modality gap (Schrodi et al. 2025)", metrics.relative_modality_gap(text, image)),
           ("linear separability of the modalities", metrics.linear_separability(text, image))]
    page = _html(len(text), text.shape[1], gap, rows, table_note, calibrator.summary())
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html"


def _html(n, d, gap, rows, table_note, summary) -> str:
    gap_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in gap)
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in COLUMNS)
    body = "".join("<tr><td>" + html.escape(name) + "</td>" + "".join(f"<td>{vals[key]:.3f}</td>" for _, key in COLUMNS)
                   + "</tr>" for name, vals in rows)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gapcal report</title>
<style>body{{font-family:sans-serif;max-width:1250px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>Modality gap report</h1>
<p>{n} text-image pairs, dimension {d}.</p>
<h2>Scores before and after calibration</h2><img src="histograms.png" width="100%">
<h2>Where texts and images sit</h2><img src="map.png" width="100%">
<h2>Gap of the raw embeddings</h2><table>{gap_rows}</table>
<h2>Mixed-pool retrieval</h2><p>{html.escape(table_note)}</p>
<table><tr><th>method</th>{head}</tr>{body}</table>
<h2>Calibrator</h2><pre>{html.escape(summary)}</pre>
</body></html>
"""
