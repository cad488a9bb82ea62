"""One reader for the headers of every file gapcal writes: format name, version, checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import __version__


def new_header(format: str, version: int, **fields) -> dict:
    return {"format": format, "format_version": version, "gapcal_version": __version__, **fields}


def check_header(header, *, format: str, version: int, oldest: int = 1, where: str, what: str,
                 remedy: str = "write it again with this gapcal") -> dict:
    """``header`` if it is one of ours, of a version this gapcal reads, else a ValueError saying which (and,
    for an old version, ``remedy``)."""
    if not isinstance(header, dict) or header.get("format") != format:
        found = header.get("format") if isinstance(header, dict) else None
        raise ValueError(f"{where} is not a {what} (format {found!r})")
    found = header.get("format_version")
    if isinstance(found, bool) or not isinstance(found, int) or found > version:
        raise ValueError(f"{where} uses {what} format version {found!r}; this gapcal ({__version__}) reads "
                         f"versions up to {version}: upgrade gapcal")
    if found < oldest:
        raise ValueError(f"{where} uses {what} format version {found}, which this gapcal ({__version__}) no "
                         f"longer reads: {remedy}")
    return header


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def sealed(header: dict) -> dict:
    """``header`` with a sha256 of its own canonical JSON: a value changed in it (a list spread, a count) is
    noticed on load, like a change in the files it lists."""
    body = {key: value for key, value in header.items() if key != "sha256"}
    return {**body, "sha256": _digest(body)}


def check_sealed(header: dict, where: str) -> None:
    """Refuse a header written by ``sealed`` whose values changed since."""
    if header.get("sha256") != sealed(header)["sha256"]:
        raise ValueError(f"{where} does not match the checksum recorded in it (corrupt or edited)")


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checksum(path, expected, where: str) -> None:
    """Refuse a file whose bytes changed since it was written (bit rot, an interrupted copy, tampering)."""
    if not isinstance(expected, str) or sha256_of(path) != expected:
        raise ValueError(f"{where}: {Path(path).name} does not match the checksum recorded when it was written "
                         "(corrupt, truncated or replaced)")
