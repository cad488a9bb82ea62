"""The gap report: pictures and tables of the modality gap before and after calibration (needs matplotlib).

- ``histograms.png``: per pair type (text->text, text->image, image->text, image->image), the scores of
  relevant pairs (matched pairs; siblings where groups give them) against unrelated pairs, raw cosine
  (top row) and calibrated (bottom row, one shared axis). Before, each type's relevant and unrelated pairs
  live in its own range; after, relevant pairs of every type stand at comparable heights above unrelated
  ones.
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
from .evaluation import BALANCED_COLUMNS, PAIR_COLUMNS, cross_fit, default_methods, evaluate

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


_TYPE_NAMES = {"text-text": "text query, text items", "text-image": "text query, image items",
               "image-text": "image query, text items", "image-image": "image query, image items"}


def _histograms(axes, blocks, pool, label):
    """One panel per pair type: relevant (filled) against unrelated (line) scores, on one shared axis."""
    dist = metrics.score_distributions(blocks, pool)
    values = np.concatenate([v for d in dist.values() for v in d.values() if len(v)])
    positives = np.concatenate([d["positive"] for d in dist.values()])
    top = max(np.quantile(values, 0.9995), np.quantile(positives, 0.995) if len(positives) else -np.inf)
    bins = np.linspace(np.quantile(values, 0.0005), top, 60)  # the few values beyond sit in the end bins
    for ax, (name, d) in zip(axes, dist.items()):
        ax.hist(np.clip(d["null"], bins[0], bins[-1]), bins=bins, density=True, histtype="step", color="#7f7f7f",
                linewidth=1.6, label=f"unrelated ({len(d['null'])})")
        if len(d["positive"]):
            ax.hist(np.clip(d["positive"], bins[0], bins[-1]), bins=bins, density=True, histtype="stepfilled",
                    alpha=0.5, color="#2ca02c", label=f"relevant ({len(d['positive'])})")
        else:
            ax.text(0.5, 0.6, "no relevant pairs of this type\n(no siblings in these groups)", ha="center",
                    transform=ax.transAxes, fontsize=8)
        ax.set_title(f"{label}: {_TYPE_NAMES[name]}", fontsize=9)
        ax.legend(fontsize=7)


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


def _map(ax, blocks, pairs, title, method):
    """Items of up to ``_MAP_PAIRS`` pairs (``pairs``: rows into the text and image blocks) and their links."""
    t_rows, i_rows = pairs
    sub = metrics.ScoreBlocks(blocks.tt[np.ix_(t_rows, t_rows)], blocks.ti[np.ix_(t_rows, i_rows)],
                              blocks.it[np.ix_(i_rows, t_rows)], blocks.ii[np.ix_(i_rows, i_rows)])
    n = len(t_rows)
    similarity = _mixed_matrix(sub)
    xy = umap_layout(similarity) if method == "umap" else classical_mds(similarity)
    text_xy, image_xy = xy[:n], xy[n:]
    for k in range(n):
        ax.plot([text_xy[k, 0], image_xy[k, 0]], [text_xy[k, 1], image_xy[k, 1]], color="#bbbbbb", linewidth=0.5,
                zorder=1)
    ax.scatter(*text_xy.T, s=12, color=_COLOURS["text"], label="text", zorder=2)
    ax.scatter(*image_xy.T, s=12, color=_COLOURS["image"], label="image", zorder=2)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8)


def _map_pairs(pool):
    """Rows of up to ``_MAP_PAIRS`` pairs whose text and image each appear once (for a readable map)."""
    seen_t, seen_i, t_rows, i_rows = set(), set(), [], []
    for t, i in zip(pool.pair_text.tolist(), pool.pair_image.tolist()):
        if t not in seen_t and i not in seen_i:
            seen_t.add(t)
            seen_i.add(i)
            t_rows.append(t)
            i_rows.append(i)
        if len(t_rows) == _MAP_PAIRS:
            break
    return np.array(t_rows), np.array(i_rows)


def write_report(text, image, out_dir, calibrator: GapCalibrator | None = None, map_method: str = "auto",
                 groups=None) -> Path:
    """Write ``report.html``, ``histograms.png`` and ``map.png`` into ``out_dir``; returns the HTML path.

    Without ``calibrator`` the table comes from the 2-fold cross-fit protocol split by group (fair) and the
    pictures from a calibrator fitted on all pairs; with one, everything evaluates that calibrator on these
    pairs. ``groups`` (one label per pair) marks pairs whose items are relevant to each other.
    """
    method = resolve_map_method(map_method)
    text = np.asarray(text)
    image = np.asarray(image)
    pool = metrics.relevance_pool(text, image, groups)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if calibrator is None:
        methods = [m for m in default_methods() if m[0] in ("raw cosine", "GR-CLIP", "per-type z", "gapcal")]
        rows = cross_fit(text, image, methods, groups=groups)
        calibrator = GapCalibrator().fit(text, image, groups=groups)
        table_note = ("2-fold cross-fit on these pairs, split by group (fit on one half, evaluate on the other, "
                      "swap, average).")
    else:
        rows = [("raw cosine", evaluate(RawCosine().fit(text, image), text, image, groups)),
                ("gapcal (given calibrator)", evaluate(calibrator, text, image, groups))]
        table_note = "The given calibrator evaluated on these pairs."
    raw = metrics.pool_blocks(RawCosine().fit(text, image), pool)
    calibrated = metrics.pool_blocks(calibrator, pool)

    fig, axes = plt.subplots(2, 4, figsize=(16, 6.4))
    _histograms(axes[0], raw, pool, "raw cosine")
    _histograms(axes[1], calibrated, pool, "calibrated")
    fig.tight_layout()
    fig.savefig(out / "histograms.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    name = {"mds": "MDS", "umap": "UMAP"}[method]
    pairs = _map_pairs(pool)
    _map(axes[0], raw, pairs, f"before: texts and images in two regions ({name} of raw cosine)", method)
    _map(axes[1], calibrated, pairs, f"after: modalities mixed, pairs closer ({name} of calibrated scores)", method)
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
    columns = BALANCED_COLUMNS + tuple(c for c in PAIR_COLUMNS if all(c[1] in v for _, v in rows))
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in columns)
    body = "".join("<tr><td>" + html.escape(name) + "</td>" + "".join(f"<td>{vals[key]:.3f}</td>" for _, key in columns)
                   + "</tr>" for name, vals in rows)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gapcal report</title>
<style>body{{font-family:sans-serif;max-width:1250px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>Modality gap report</h1>
<p>{n} text-image pairs, dimension {d}.</p>
<h2>Relevant and unrelated pairs, per pair type, before and after calibration</h2>
<img src="histograms.png" width="100%">
<h2>Where texts and images sit</h2><img src="map.png" width="100%">
<h2>Gap of the raw embeddings</h2><table>{gap_rows}</table>
<h2>Mixed-pool retrieval</h2><p>{html.escape(table_note)} Each item queries all others of both
modalities; its group (pair and siblings) is relevant. own@k: its own pair is in the top k. bias: the share of
its own modality among its top 10 unrelated items minus that share among all of them (0 = fair).</p>
<table><tr><th>method</th>{head}</tr>{body}</table>
<h2>Calibrator</h2><pre>{html.escape(summary)}</pre>
</body></html>
"""
