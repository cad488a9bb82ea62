"""Files gapcal writes and reads: atomic writes with the usual permissions, no leftovers, bounded npz reads."""

from __future__ import annotations

import math
import os
import re
import secrets
import zipfile
from pathlib import Path

import numpy as np

TEMP_SUFFIX = ".gapcal-tmp"
_NPY_HEADER = 1 << 16  # an .npy member's own header, on top of its data
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$")


def check_path(name: str, path) -> Path:
    """``path`` as a Path, or a TypeError naming the argument."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"{name} must be a file system path (str or os.PathLike), got {path!r}")
    if "\0" in str(path):
        raise ValueError(f"{name} must not contain a NUL character, got {str(path)!r}")
    return Path(path)


def umask() -> int:
    """The process umask (read without changing it, where the OS tells it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no other portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (ours always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_name(path: Path) -> Path:
    """A temporary file beside ``path`` whose name says who writes it (stale ones are recognised later)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def remove_stale_temps(folder: Path, name: str | None = None) -> None:
    """Delete temporary files in ``folder`` (of ``name`` only, if given) left by processes that died while
    writing them. Files of live writers are kept."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match and (name is None or match["name"] == name) and not alive(int(match["pid"])):
            entry.unlink(missing_ok=True)


def atomic_write(path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The file gets the permissions any new file of this process gets (0666 less the umask). Temporary files of
    earlier writers of ``path`` that died are removed first.
    """
    path = check_path("path", path)
    if path.is_dir():
        raise ValueError(f"path must be a file path, got the directory {str(path)!r}")
    if not path.parent.exists():
        raise ValueError(f"path's folder does not exist: {str(path.parent)!r}")
    remove_stale_temps(path.parent, path.name)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
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


def read_npz(path: Path, limits: dict, where: str) -> dict:
    """The arrays of an .npz written by ``np.savez``, reading only the members named in ``limits`` (name ->
    the most bytes it may decompress to), each checked against its limit before a byte of it is inflated;
    no pickle. Absent members are left out of the result. ValueError naming the file otherwise."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            out = {}
            for name, limit in limits.items():
                info = members.get(f"{name}.npy")
                if info is None:
                    continue
                if info.file_size > limit + _NPY_HEADER:
                    raise ValueError(f"{where}: member {name!r} would decompress to {info.file_size} bytes, more "
                                     f"than the {limit} expected")
                with archive.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise ValueError(f"{where}: member {name!r} has an unknown .npy version {version}")
                    shape, fortran, dtype = read_header(fh)
                    if dtype.hasobject:
                        raise ValueError(f"{where}: member {name!r} holds Python objects, which gapcal never reads")
                    count = math.prod(shape)  # Python ints: a crafted shape cannot overflow
                    if count * dtype.itemsize > limit:
                        raise ValueError(f"{where}: member {name!r} claims {shape} x {dtype}, more than the {limit} "
                                         "bytes expected")
                    data = fh.read(count * dtype.itemsize)
                    if len(data) != count * dtype.itemsize:
                        raise ValueError(f"{where}: member {name!r} is truncated")
                    if fh.read(1):  # reading to the end also makes zipfile check the member's CRC
                        raise ValueError(f"{where}: member {name!r} holds more bytes than its shape {shape}")
                array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
                out[name] = array.copy()
            return out
    except Exception as exc:  # noqa: BLE001 - zipfile and numpy raise a dozen types on hostile bytes
        if isinstance(exc, ValueError) and str(exc).startswith(where):
            raise
        raise ValueError(f"{where} is not a readable file (truncated or corrupt): {type(exc).__name__}: "
                         f"{exc}") from None
