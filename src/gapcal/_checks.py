"""Input validation shared by every public entry point: convert once, at the edge, and say exactly what is wrong."""

from __future__ import annotations

import numpy as np

MODALITIES = ("text", "image")


class NotFittedError(ValueError, AttributeError):
    """Raised when a calibrator is used before it has seen any pairs."""


def check_modality(name: str, value) -> str:
    """Return ``value`` if it names a known modality, else raise a ValueError naming the argument."""
    if value not in MODALITIES:
        raise ValueError(f"{name} must be one of {MODALITIES}, got {value!r}")
    return value


def as_matrix(name: str, x, *, dim: int | None = None, dtype=np.float32, allow_empty: bool = True) -> np.ndarray:
    """Validate an (n, d) array of embeddings and return it C-contiguous in ``dtype``.

    Rejects non-numeric dtypes, wrong rank, a dimension other than ``dim``, NaN/inf rows, rows whose norm
    float32 cannot hold, and all-zero rows (which have no direction, so no cosine).
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array of shape (n, d), got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n, d), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have dimension d={dim} (the fitted dimension), got shape {arr.shape}")
    if arr.shape[0] == 0:
        if not allow_empty:
            raise ValueError(f"{name} must hold at least one row, got shape {arr.shape}")
        return np.ascontiguousarray(arr, dtype=dtype)
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    squares = np.einsum("ij,ij->i", arr, arr)  # one pass: NaN, inf and all-zero rows all show here
    fine = np.isfinite(squares) & (squares > 0)
    if not fine.all():
        suspect = np.flatnonzero(~fine)
        zero = ~arr[suspect].any(axis=1)
        bad = suspect[~zero]
        if len(bad):
            raise ValueError(f"{name} must be finite: rows {bad[:5].tolist()} hold NaN or inf (or have a norm "
                             "outside float32's range)")
        raise ValueError(f"{name} must not hold all-zero rows (no direction, no cosine): rows "
                         f"{suspect[:5].tolist()}")
    return arr


def unit_rows(name: str, x, row_offset: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """A C-contiguous float32 copy of the (n, d) rows of ``x`` scaled to unit length.

    One pass finds the norms; only when one is zero or not finite is the chunk checked in detail, so the
    error can name the rows (counted from ``row_offset``). ``out``, a float32 buffer of at least n rows,
    is reused when given (fresh pages cost more than the arithmetic on large chunks).
    """
    rows = np.asarray(x)
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    bad = ~(np.isfinite(norms) & (norms > 0))
    if bad.any():
        where = (np.flatnonzero(bad)[:5] + row_offset).tolist()
        if not np.isfinite(rows[bad]).all():
            raise ValueError(f"{name} must be finite: rows {where} hold NaN or inf (or overflow float32)")
        raise ValueError(f"{name} must not hold all-zero rows (no direction, no cosine): rows {where}")
    target = np.empty(rows.shape, dtype=np.float32) if out is None else out[: len(rows)]
    np.multiply(rows, (1.0 / norms)[:, None], out=target, casting="unsafe")
    return target


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (in place when ``x`` is writable float, which callers own)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= norms[:, None]
    return x
