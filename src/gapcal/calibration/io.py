"""Calibrator files: one .npz of float arrays plus a JSON header; written atomically, read without pickle."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .._files import atomic_write
from .._format import check_header, new_header

FORMAT = "gapcal.GapCalibrator"
FORMAT_VERSION = 2


def save_calibrator(path, params: dict, fitted: dict | None, arrays: dict) -> None:
    """Options always; ``fitted`` (header fields of the fitted state) and its arrays when there is one."""
    header = new_header(FORMAT, FORMAT_VERSION, params=params, fitted=fitted is not None, **(fitted or {}))
    out = {k: np.asarray(v) for k, v in arrays.items()}
    out["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda fh: np.savez(fh, **out))


def load_calibrator(path):
    """(params, header of the fitted state or None, arrays, a name for messages); no pickle is ever read."""
    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"path does not name a calibrator file: {where} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{where} is not a gapcal calibrator file (not an .npz archive; truncated or corrupt?)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{where} is not a readable gapcal calibrator file (truncated or corrupt): {exc}") from None
    if "header" not in arrays:
        raise ValueError(f"{where} is not a gapcal calibrator file: it has no header")
    try:
        header = json.loads(arrays.pop("header").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where} has a corrupt header: {exc}") from None
    check_header(header, format=FORMAT, version=FORMAT_VERSION, oldest=FORMAT_VERSION, where=where,
                 what="gapcal calibrator file", remedy="its scores were z-scores; fit the calibrator again")
    params = header.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"{where} has a corrupt header: no options")
    return params, (header if header.get("fitted") else None), arrays, where
