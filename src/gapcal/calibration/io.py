"""Calibrator files: one .npz of float arrays plus a JSON header; written atomically, read without pickle."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .. import __version__
from .._checks import MODALITIES
from .._files import atomic_write

FORMAT = "gapcal.GapCalibrator"
FORMAT_VERSION = 1


def save_calibrator(cal, path) -> None:
    """Options always; the fitted state too when there is one (an unfitted calibrator round-trips as such)."""
    cal._check_params()
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "gapcal_version": __version__,
              "params": cal.get_params(), "fitted": hasattr(cal, "dim_")}
    arrays = {}
    if header["fitted"]:
        header.update({"dim": cal.dim_, "n_pairs": cal.n_pairs_, "mean_shift": bool(cal.mean_shift_),
                       "projection": cal.projection_, "fit_report": cal.fit_report_,
                       "fingerprint": cal.fingerprint_})
        arrays = {k: np.asarray(v) for k, v in cal._state_arrays().items()}
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_calibrator(cls, path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path does not name a calibrator file: {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{str(path)!r} is not a gapcal calibrator file (not an .npz archive; truncated or corrupt?)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable gapcal calibrator file (truncated or corrupt): {exc}") from None
    if "header" not in arrays:
        raise ValueError(f"{str(path)!r} is not a gapcal calibrator file: it has no header")
    try:
        header = json.loads(arrays.pop("header").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r} has a corrupt header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a gapcal calibrator file (format {header.get('format') if isinstance(header, dict) else None!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} uses calibrator format version {version!r}; this gapcal "
                         f"({__version__}) reads versions up to {FORMAT_VERSION}: upgrade gapcal")
    try:
        cal = cls(**header["params"])
        cal._check_params()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{str(path)!r} holds invalid calibrator options: {exc}") from None
    if not header.get("fitted"):
        return cal
    try:
        dim = int(header["dim"])
        cal.dim_, cal.n_pairs_ = dim, int(header["n_pairs"])
        cal.mean_shift_, cal.projection_ = bool(header["mean_shift"]), header["projection"]
        cal.text_mean_, cal.image_mean_ = arrays["text_mean"], arrays["image_mean"]
        cal.score_mean_, cal.score_std_ = arrays["score_mean"], arrays["score_std"]
        cal._shift = {m: arrays.get(f"{m}_shift") for m in MODALITIES}
        cal._proj = {m: arrays.get(f"{m}_projection") for m in MODALITIES}
        cal._hub = {m: (arrays[f"{m}_hub_mean"], arrays[f"{m}_hub_basis"])
                    for m in MODALITIES if f"{m}_hub_mean" in arrays}
        cal.fit_report_ = header["fit_report"]
    except KeyError as exc:
        raise ValueError(f"{str(path)!r} is missing the calibrator entry {exc}") from None
    cal._stats = None
    shapes_ok = (cal.text_mean_.shape == (dim,) and cal.score_std_.shape == (2, 2)
                 and all(p is None or p.shape == (dim, dim) for p in cal._proj.values())
                 and (len(cal._hub) == 2) == bool(cal.hubness))
    if not shapes_ok or cal._fingerprint() != header.get("fingerprint"):
        raise ValueError(f"{str(path)!r} is corrupt: its arrays do not match the fingerprint in its header")
    cal.fingerprint_ = header["fingerprint"]
    return cal
