"""MixedIndex on disk: a directory of faiss index files plus a JSON sidecar; atomic saves, no pickle.

Layout of a saved directory::

    mixed.json               sidecar: format, layout, calibrator fingerprint, file names, item counts
    text-<token>.faiss       faiss.write_index of each faiss index (per-modality layout: text and image;
    image-<token>.faiss      wrapped layout: one shared-<token>.faiss holding the user's raw index)
    calibrator-<token>.npz   the calibrator (GapCalibrator.save)
    ids-<token>.npz          ids per modality: live ones, and hidden ones still stored in faiss

A save writes a new set of files under a fresh token, flushes them to disk, and only then replaces
``mixed.json`` (one atomic rename) to point at them; the previous set is deleted afterwards. A crash
at any point leaves either the old or the new index readable, never a mix.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from pathlib import Path

import faiss
import numpy as np

from .. import __version__
from .._checks import MODALITIES
from ..calibration import GapCalibrator
from ..calibration.io import atomic_write
from . import _faiss

FORMAT = "gapcal.MixedIndex"
FORMAT_VERSION = 1
SIDECAR = "mixed.json"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_sidecar(folder: Path) -> dict:
    path = folder / SIDECAR
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a gapcal MixedIndex sidecar (unreadable JSON: {exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a gapcal MixedIndex sidecar (format "
                         f"{header.get('format') if isinstance(header, dict) else None!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} uses MixedIndex format version {version!r}; this gapcal ({__version__}) "
                         f"reads versions up to {FORMAT_VERSION}: upgrade gapcal")
    return header


def _files(header: dict) -> list:
    return [entry["file"] for entry in header["indexes"].values()] + [header["calibrator"]["file"],
                                                                      header["ids_file"]]


def save_index(mixed, path) -> None:
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"path must be a directory (a MixedIndex is saved as several files), got the file "
                         f"{str(folder)!r}")
    if not folder.parent.exists():
        raise ValueError(f"path's folder does not exist: {str(folder.parent)!r}")
    previous = _read_sidecar(folder) if (folder / SIDECAR).exists() else None
    created = not folder.exists()
    folder.mkdir(exist_ok=True)
    backend, token = mixed._backend, secrets.token_hex(6)
    indexes = dict(backend.subs) if backend.layout == "per-modality" else {"shared": backend.index}
    written = []
    try:
        entries = {}
        for key, index in indexes.items():
            name = f"{key}-{token}.faiss"
            written.append(name)
            faiss.write_index(index, str(folder / name))
            _fsync(folder / name)
            entries[key] = {"file": name, "ntotal": int(index.ntotal), "d": int(index.d)}
        cal_name, ids_name = f"calibrator-{token}.npz", f"ids-{token}.npz"
        written += [cal_name, ids_name]
        mixed._cal.save(folder / cal_name)
        arrays = {f"{kind}_{m}": getattr(mixed, f"_{kind}")[m] for kind in ("live", "hidden") for m in MODALITIES}
        atomic_write(folder / ids_name, lambda fh: np.savez(fh, **arrays))
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "gapcal_version": __version__,
                  "layout": backend.layout, "spec": backend.spec, "dim": mixed._cal.dim_,
                  "calibrator": {"file": cal_name, "fingerprint": mixed._cal.fingerprint_},
                  "indexes": entries, "ids_file": ids_name,
                  "counts": {m: {"live": len(mixed._live[m]), "hidden": len(mixed._hidden[m])} for m in MODALITIES}}
        if backend.layout == "wrapped":
            header["candidates"] = backend.candidates
        else:
            header["list_spread"] = backend.spread
        atomic_write(folder / SIDECAR, lambda fh: fh.write(json.dumps(header, indent=2).encode("utf-8")))
    except BaseException:
        for name in written:
            (folder / name).unlink(missing_ok=True)
        if created:
            folder.rmdir()
        raise
    _fsync(folder)
    for name in set(_files(previous) if previous else []) - set(written):
        (folder / name).unlink(missing_ok=True)


def _read_faiss(path: Path):
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{str(path)!r} is not a readable faiss index (truncated or corrupt): "
                         f"{_faiss.faiss_message(exc)}") from None


def _read_ids(path: Path, header: dict) -> tuple:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable id file (truncated or corrupt): {exc}") from None
    ids = {}
    for kind in ("live", "hidden"):
        ids[kind] = {}
        for m in MODALITIES:
            arr = arrays.get(f"{kind}_{m}")
            want = header["counts"][m][kind]
            if arr is None or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or len(arr) != want:
                raise ValueError(f"{str(path)!r} does not match its sidecar: {kind} {m} ids should be {want}, "
                                 f"got {None if arr is None else arr.shape}")
            ids[kind][m] = arr.astype(np.int64)
    return ids["live"], ids["hidden"]


def _check_stored(index, path, expected: np.ndarray) -> None:
    stored = _faiss.stored_ids(index)
    if len(stored) != len(expected):
        raise ValueError(f"{str(path)!r} does not match its sidecar: the faiss index holds {len(stored)} items, "
                         f"the sidecar lists {len(expected)}")
    unlisted = np.setdiff1d(stored, expected)
    if len(unlisted):
        raise ValueError(f"{str(path)!r} does not match its sidecar: the faiss index holds {len(unlisted)} ids the "
                         f"sidecar does not list, e.g. {unlisted[:5].tolist()}")


def load_index(cls, path, calibrator=None):
    folder = Path(path)
    if not (folder / SIDECAR).is_file():
        raise FileNotFoundError(f"path does not hold a saved MixedIndex: {str(folder / SIDECAR)!r} does not exist")
    header = _read_sidecar(folder)
    try:
        layout, dim, fingerprint = header["layout"], int(header["dim"]), header["calibrator"]["fingerprint"]
        missing = [name for name in _files(header) if not (folder / name).is_file()]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{str(folder / SIDECAR)!r} is missing the sidecar entry {exc}") from None
    if missing:
        raise ValueError(f"{str(folder)!r} is incomplete: its sidecar names files that are not there: {missing}")
    cal = GapCalibrator.load(folder / header["calibrator"]["file"])
    if cal.fingerprint_ != fingerprint:
        raise ValueError(f"{str(folder)!r}: the calibrator file does not match the index (fingerprint "
                         f"{cal.fingerprint_}, the sidecar says {fingerprint})")
    if calibrator is not None:
        if getattr(calibrator, "fingerprint_", None) != fingerprint:
            raise ValueError(f"calibrator must be the one the index was built with (fingerprint {fingerprint}), "
                             f"got fingerprint {getattr(calibrator, 'fingerprint_', None)}")
        cal = calibrator
    if cal.dim_ != dim:
        raise ValueError(f"{str(folder)!r}: the sidecar says d={dim}, its calibrator has d={cal.dim_}")
    indexes = {}
    for key, entry in header["indexes"].items():
        index = _read_faiss(folder / entry["file"])
        if index.d != entry["d"] or index.ntotal != entry["ntotal"]:
            raise ValueError(f"{str(folder / entry['file'])!r} does not match its sidecar: it holds {index.ntotal} "
                             f"vectors of dimension {index.d}, the sidecar says {entry['ntotal']} of dimension "
                             f"{entry['d']}")
        indexes[key] = index
    live, hidden = _read_ids(folder / header["ids_file"], header)
    from .mixed import _Split, _Wrapped

    if layout == "per-modality":
        if set(indexes) != set(MODALITIES):
            raise ValueError(f"{str(folder)!r}: a per-modality index needs text and image files, got {sorted(indexes)}")
        width = indexes["text"].d
        if width < cal.output_dim_ or indexes["image"].d != width:
            raise ValueError(f"{str(folder)!r}: its faiss indexes have dimensions {indexes['text'].d} and "
                             f"{indexes['image'].d}, the calibrator needs {cal.output_dim_}")
        for m in MODALITIES:
            _check_stored(indexes[m], folder / header["indexes"][m]["file"], np.concatenate([live[m], hidden[m]]))
        spread = header.get("list_spread", {})
        for m in MODALITIES:
            ivf, _ = _faiss.inverted_lists(indexes[m])
            if ivf is not None and ivf.ntotal and not isinstance(spread.get(m), (int, float)):
                raise ValueError(f"{str(folder / SIDECAR)!r} is missing the {m} index's list_spread entry, which "
                                 "IVF searches rank lists by: save the index again with this gapcal")
        backend = _Split(cal, indexes, width, header["spec"], {m: spread.get(m) for m in MODALITIES})
    elif layout == "wrapped":
        index = indexes.get("shared")
        if index is None or index.d != dim:
            raise ValueError(f"{str(folder)!r}: a wrapped index needs one faiss index of dimension {dim}")
        _check_stored(index, folder / header["indexes"]["shared"]["file"],
                      np.concatenate([*live.values(), *hidden.values()]))
        backend = _Wrapped(cal, index, int(header["candidates"]))
    else:
        raise ValueError(f"{str(folder / SIDECAR)!r} names an unknown layout {layout!r}")
    mixed = cls.__new__(cls)
    mixed._setup(cal, backend, live, hidden)
    return mixed
