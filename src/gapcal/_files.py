"""Atomic file writes: a reader never sees a half-written file, a failed write leaves the old one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path must be a file path, got the directory {str(path)!r}")
    if not path.parent.exists():
        raise ValueError(f"path's folder does not exist: {str(path.parent)!r}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
