"""Calibrator files: one .npz of float arrays plus a JSON header; written atomically, read without pickle."""

from __future__ import annotations

import json
import zipfile

import numpy as np

from .._files import atomic_write, check_path, read_npz
from .._format import check_header, new_header

FORMAT = "gapcal.GapCalibrator"
FORMAT_VERSION = 2


def save_calibrator(path, params: dict, fitted: dict | None, arrays: dict) -> None:
    """Options always; ``fitted`` (header fields of the fitted state) and its arrays when there is one."""
    header = new_header(FORMAT, FORMAT_VERSION, params=params, fitted=fitted is not None, **(fitted or {}))
    out = {k: np.asarray(v) for k, v in arrays.items()}
    out["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda fh: np.savez(fh, **out))


_HEADER_BYTES = 1 << 22  # the JSON header (options, fit report) is a few kB
_MAX_DIM = 1 << 16
_MAP_BYTES = 1 << 20


def member_limits(dim: int) -> dict:
    """The most bytes each array of a fitted calibrator of dimension ``dim`` can take (float64 at most)."""
    vector, square = 8 * dim, 8 * dim * dim
    limits = {"text_mean": vector, "image_mean": vector}
    for m in ("text", "image"):
        limits.update({f"{m}_shift": vector, f"{m}_projection": square, f"{m}_hub_mean": vector,
                       f"{m}_hub_basis": square})
    for a in ("text", "image"):
        for b in ("text", "image"):
            limits[f"map_{a}_{b}"] = _MAP_BYTES
    return limits


def load_calibrator(path):
    """(params, header of the fitted state or None, arrays, a name for messages); no pickle is ever read, and
    only the arrays a calibrator has, each no larger than its dimension allows, are decompressed."""
    path = check_path("path", path)
    where = repr(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"path does not name a calibrator file: {where} does not exist")
    with open(path, "rb") as fh:  # an unreadable file raises its PermissionError here, not "corrupt" below
        is_zip = zipfile.is_zipfile(fh)
    if not is_zip:
        raise ValueError(f"{where} is not a gapcal calibrator file (not an .npz archive; truncated or corrupt?)")
    raw = read_npz(path, {"header": _HEADER_BYTES}, where).get("header")
    if raw is None:
        raise ValueError(f"{where} is not a gapcal calibrator file: it has no header")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where} has a corrupt header: {exc}") from None
    check_header(header, format=FORMAT, version=FORMAT_VERSION, oldest=FORMAT_VERSION, where=where,
                 what="gapcal calibrator file", remedy="its scores were z-scores; fit the calibrator again")
    params = header.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"{where} has a corrupt header: no options")
    if not header.get("fitted"):
        return params, None, {}, where
    dim = header.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= _MAX_DIM:
        raise ValueError(f"{where} has a corrupt header: dim must be an integer in [1, {_MAX_DIM}], got {dim!r}")
    return params, header, read_npz(path, member_limits(dim), where), where
