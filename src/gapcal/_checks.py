"""Input validation shared by every public entry point: convert once, at the edge, and say exactly what is wrong."""

from __future__ import annotations

import re

import numpy as np

MODALITIES = ("text", "image")
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # payload fields: valid in faiss sidecars and Milvus schemas
RESERVED_FIELDS = ("id", "vector", "modality")  # names the stores use themselves


def check_field_name(name: str, value) -> str:
    """A payload field name: an identifier other than the reserved ones."""
    if not isinstance(value, str) or not FIELD_NAME.fullmatch(value) or value in RESERVED_FIELDS:
        raise ValueError(f"{name} must be an identifier (a letter or underscore, then letters, digits or underscores) "
                         f"other than {RESERVED_FIELDS}, got {value!r}")
    return value


class NotFittedError(ValueError, AttributeError):
    """Raised when a calibrator is used before it has seen any pairs."""


def check_modality(name: str, value) -> str:
    """Return ``value`` if it names a known modality, else raise a TypeError/ValueError naming the argument."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {MODALITIES}, got {type(value).__name__} {value!r}")
    if value not in MODALITIES:
        raise ValueError(f"{name} must be one of {MODALITIES}, got {value!r}")
    return value


def as_array(name: str, x, shape: str = "(n, d)") -> np.ndarray:
    """``np.asarray(x)``, with ragged nested lists reported under ``name`` rather than in numpy's words."""
    try:
        return np.asarray(x)
    except ValueError:  # inhomogeneous nested sequences
        raise ValueError(f"{name} must be an array of shape {shape}; got nested sequences of unequal lengths "
                         f"({type(x).__name__} of {len(x) if hasattr(x, '__len__') else '?'} rows)") from None


def check_numeric(name: str, arr: np.ndarray) -> None:
    """Real numbers only: floats, signed or unsigned integers (booleans and complex numbers say nothing
    about direction in the way embeddings do)."""
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array of shape (n, d) (floats or integers), got dtype "
                        f"{arr.dtype}")


def as_matrix(name: str, x, *, dim: int | None = None, dtype=np.float32, allow_empty: bool = True,
              check_rows: bool = True) -> np.ndarray:
    """Validate an (n, d) array of embeddings and return it C-contiguous in ``dtype`` (``None``: as given).

    Rejects non-numeric dtypes, wrong rank, a dimension other than ``dim``, and (unless ``check_rows`` is
    False: callers that go on to ``unit_rows`` get the same checks there) NaN/inf rows, rows whose norm
    float32 cannot hold, and all-zero rows (which have no direction, so no cosine).
    """
    arr = as_array(name, x)
    check_numeric(name, arr)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n, d), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have dimension d={dim} (the fitted dimension), got shape {arr.shape}")
    if arr.shape[0] == 0:
        if not allow_empty:
            raise ValueError(f"{name} must hold at least one row, got shape {arr.shape}")
        return arr if dtype is None else np.ascontiguousarray(arr, dtype=dtype)
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {arr.shape}")
    if dtype is None:
        return arr
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not check_rows:
        return arr
    _check_norms(name, arr, np.einsum("ij,ij->i", arr, arr))
    return arr


def _check_norms(name: str, rows: np.ndarray, squares: np.ndarray, row_offset: int = 0) -> None:
    """Raise, naming the rows, where a squared norm is not a positive finite number: NaN or inf in the
    row, a norm float32 cannot hold, or an all-zero row. One pass (the norms) when all is well."""
    fine = np.isfinite(squares) & (squares > 0)
    if fine.all():
        return
    suspect = np.flatnonzero(~fine)
    bad = suspect[rows[suspect].any(axis=1)]
    if len(bad):
        raise ValueError(f"{name} must be finite: rows {(bad[:5] + row_offset).tolist()} hold NaN or inf (or have "
                         "a norm outside float32's range)")
    raise ValueError(f"{name} must not hold all-zero rows (no direction, no cosine): rows "
                     f"{(suspect[:5] + row_offset).tolist()}")


def unit_rows(name: str, x, row_offset: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """A C-contiguous float32 copy of the (n, d) rows of ``x`` scaled to unit length, for any real dtype.

    float64 rows are scaled in float64, so directions of rows too large or too small for float32 survive;
    float16 and integer rows are converted to float32 first, so they never overflow. One pass finds the
    norms; a row whose norm is zero or not finite is redone on its largest entry's scale before an error
    names it (rows counted from ``row_offset``). ``out``, a float32 buffer of at least n rows, is reused
    when given (fresh pages cost more than the arithmetic on large chunks).
    """
    rows = as_array(name, x)
    check_numeric(name, rows)
    target = np.empty(rows.shape, dtype=np.float32) if out is None else out[: len(rows)]
    if rows.dtype.kind == "f" and rows.dtype.itemsize > 8:
        rows = rows.astype(np.float64)  # long double: float64 keeps every direction BLAS can handle
    elif rows.dtype.kind != "f" or rows.dtype.itemsize < 4:
        np.copyto(target, rows, casting="unsafe")
        rows = target
    squares = np.einsum("ij,ij->i", rows, rows)
    # NaN fails every comparison: checked below; one row (a single query) is tested without two reductions
    if (0.0 < float(squares[0]) < np.inf) if len(squares) == 1 else \
            (not squares.size or (squares.min() > 0 and squares.max() < np.inf)):
        np.divide(rows, np.sqrt(squares)[:, None], out=target, casting="unsafe")
        return target
    fine = np.isfinite(squares) & (squares > 0)
    redo = np.flatnonzero(~fine)
    wide = rows[redo].astype(np.float64)
    peak = np.abs(wide).max(axis=1)
    nonfinite = ~np.isfinite(wide).all(axis=1)
    if nonfinite.any():
        raise ValueError(f"{name} must be finite: rows {(redo[nonfinite][:5] + row_offset).tolist()} hold NaN or inf")
    if (peak == 0).any():
        raise ValueError(f"{name} must not hold all-zero rows (no direction, no cosine): rows "
                         f"{(redo[peak == 0][:5] + row_offset).tolist()}")
    wide /= peak[:, None]
    wide /= np.sqrt(np.einsum("ij,ij->i", wide, wide))[:, None]
    scale = np.where(fine, 1.0 / np.sqrt(np.where(fine, squares, 1.0)), 0.0)
    np.multiply(rows, scale[:, None], out=target, casting="unsafe")
    target[redo] = wide
    return target


def l2_normalize(x: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Rows of an array the caller owns scaled to unit length, in place (no checks: for vectors gapcal
    computed itself; ``unit_rows`` checks user input). ``floor`` bounds the norms divided by from below."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.maximum(norms, floor)[:, None] if floor else norms[:, None]
    return x


def check_pairs(text, image, *, dtype=np.float32):
    """Validated paired arrays (row i of each is a pair), C-contiguous in ``dtype`` (None: as given)."""
    t = as_matrix("text", text, dtype=dtype, allow_empty=False, check_rows=dtype is not None)
    i = as_matrix("image", image, dtype=dtype, allow_empty=False, check_rows=dtype is not None)
    if len(t) != len(i):
        raise ValueError(f"text and image must have the same number of rows (row i of each is a pair), got "
                         f"{len(t)} and {len(i)}")
    if t.shape[1] != i.shape[1]:
        raise ValueError(f"text and image must have the same dimension, got {t.shape[1]} and {i.shape[1]}")
    return t, i


def check_groups(groups, n: int) -> np.ndarray | None:
    """None, or ``groups`` (one integer or string label per pair) as int64 codes 0..g-1 in first-seen order."""
    if groups is None:
        return None
    arr = as_array("groups", groups, "(n,), one label per pair")
    if arr.ndim != 1:
        raise ValueError(f"groups must be a 1-D array with one label per pair, got shape {arr.shape}")
    if len(arr) != n:
        raise ValueError(f"groups must hold one label per pair ({n} pairs), got {len(arr)} labels")
    if arr.dtype.kind not in "iuUS":
        raise TypeError(f"groups must hold integer or string labels, got dtype {arr.dtype}")
    _, first, codes = np.unique(arr, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[codes.ravel()].astype(np.int64)


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool) within [minimum, maximum], else a clear error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "" if minimum is None else f" >= {minimum}"
        high = "" if maximum is None else f" <= {maximum}"
        raise ValueError(f"{name} must be an integer{low}{' and' if low and high else ''}{high}, got {value}")
    return int(value)


def check_rows(name: str, x, chunk: int = 65536) -> None:
    """Raise, naming the rows, if any row of ``x`` is not finite or is all zero (chunk by chunk, no copy kept)."""
    buffer = np.empty((min(chunk, len(x)), x.shape[1]), dtype=np.float32)
    for start in range(0, len(x), chunk):
        unit_rows(name, x[start:start + chunk], start, buffer)
