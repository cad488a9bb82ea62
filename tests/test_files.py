"""gapcal._files: the bounded .npz reader and path checks, on hand-made hostile archives."""

import io
import zipfile

import numpy as np
import pytest

from gapcal._files import check_path, read_npz


def npy_bytes(arr, version=(1, 0)):
    out = io.BytesIO()
    np.lib.format.write_array(out, arr, version=version, allow_pickle=True)
    return out.getvalue()


def archive(tmp_path, **members):
    path = tmp_path / "a.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)
    return path


def test_reads_only_the_members_asked_for_within_their_limits(tmp_path):
    path = archive(tmp_path, a=npy_bytes(np.arange(4.0)), b=npy_bytes(np.zeros((3, 2), order="F")),
                   other=npy_bytes(np.zeros(10)))
    out = read_npz(path, {"a": 32, "b": 48, "absent": 8}, "'a.npz'")
    assert sorted(out) == ["a", "b"]
    np.testing.assert_array_equal(out["a"], np.arange(4.0))
    assert out["b"].shape == (3, 2)
    assert read_npz(path, {"a": 32}, "w")["a"].flags.writeable  # a copy, not a view of the read buffer


@pytest.mark.parametrize("data, limit, match", [
    (npy_bytes(np.zeros(1 << 17)), 64, r"member 'a' would decompress to \d+ bytes, more than the 64 expected"),
    (npy_bytes(np.zeros(16)), 64, r"member 'a' claims \(16,\) x float64, more than the 64 bytes expected"),
    (npy_bytes(np.zeros(4))[:-8], 64, r"member 'a' is truncated"),
    (npy_bytes(np.zeros(4)) + b"\0" * 8, 64, r"member 'a' holds more bytes than its shape \(4,\)"),
    (npy_bytes(np.array([{"x": 1}], dtype=object)), 1 << 10, r"member 'a' holds Python objects"),
    (b"\x93NUMPY\x09\x00" + b"\0" * 40, 64, r"member 'a' has an unknown \.npy version \(9, 0\)"),
    (b"not an npy file at all", 64, r"is not a readable file \(truncated or corrupt\): ValueError"),
])
def test_hostile_members_are_refused_naming_the_file(tmp_path, data, limit, match):
    path = archive(tmp_path, a=data)
    with pytest.raises(ValueError, match=r"^'a\.npz'.*" + match):
        read_npz(path, {"a": limit}, "'a.npz'")


def test_a_changed_data_byte_fails_the_crc(tmp_path):
    path = archive(tmp_path, a=npy_bytes(np.arange(8.0)))
    raw = bytearray(path.read_bytes())
    spot = raw.index(np.arange(8.0).tobytes()) + 20
    raw[spot] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"'a\.npz' is not a readable file \(truncated or corrupt\): BadZipFile: "
                                         r"Bad CRC-32"):
        read_npz(path, {"a": 64}, "'a.npz'")


@pytest.mark.parametrize("path, error, match", [
    (None, TypeError, r"where must be a file system path \(str or os\.PathLike\), got None"),
    ("", TypeError, r"where must be a file system path"),
    (b"bytes", TypeError, r"where must be a file system path"),
    ("a\0b", ValueError, r"where must not contain a NUL character, got 'a\\x00b'"),
])
def test_check_path_names_the_argument(path, error, match):
    with pytest.raises(error, match=match):
        check_path("where", path)
