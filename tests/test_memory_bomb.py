"""Memory bombs: small files declaring huge images are refused from their headers, under an address-space limit.

Each bomb is a valid file of about 1 MB (a deflate stream of zeros, built from repeated independent segments so
that no gigabyte is ever compressed here): a 1024^3-voxel .nii.gz and a 30000 x 30000 PNG. ``segmorph info``
runs in a child process limited to 1.5 GiB of address space (``RLIMIT_AS``), so the default voxel budget
(tied to the memory the process may use) is far below what they declare; it must exit 1 with one line.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

resource = pytest.importorskip("resource")

ADDRESS_SPACE_LIMIT = 1536 << 20
SEGMENT = 1 << 20  # bytes of zeros per independent deflate segment


def _raw_deflate_of_zeros(length: int, prefix: bytes = b"") -> bytes:
    """A raw deflate stream of ``prefix`` followed by zeros, ``length`` bytes in all.

    Every segment ends with a full flush, so it refers to nothing before it and one compressed segment of
    zeros can be repeated.
    """
    first = min(length, SEGMENT)
    pieces = [_segment(prefix + bytes(first - len(prefix)))]
    left = length - first
    whole = _segment(bytes(SEGMENT))
    pieces.append(whole * (left // SEGMENT))
    if left % SEGMENT:
        pieces.append(_segment(bytes(left % SEGMENT)))
    pieces.append(zlib.compressobj(9, zlib.DEFLATED, -15).flush())  # the final, empty block
    return b"".join(pieces)


def _segment(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush(zlib.Z_FULL_FLUSH)


def _checksum_of_zeros(length: int, prefix: bytes, checksum) -> int:
    value = checksum(prefix, 1 if checksum is zlib.adler32 else 0)
    block, left = bytes(SEGMENT), length - len(prefix)
    while left > 0:
        value = checksum(block[: min(left, SEGMENT)], value)
        left -= SEGMENT
    return value


def nifti_bomb(path: Path, side: int = 1024) -> Path:
    """A .nii.gz of ``side^3`` uint8 zeros with a valid header, gzip stream and trailer."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, side, side, side, 1, 1, 1, 1)
    struct.pack_into("<2h", header, 70, 2, 8)  # uint8
    struct.pack_into("<8f", header, 76, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<h", header, 252, 1)  # qform_code: the identity quaternion
    header[344:348] = b"n+1\0"
    length = 352 + side**3
    crc = _checksum_of_zeros(length, bytes(header), zlib.crc32)
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    body = _raw_deflate_of_zeros(length, bytes(header))
    path.write_bytes(gzip_header + body + struct.pack("<II", crc, length % 2**32))
    return path


def png_bomb(path: Path, side: int = 30000) -> Path:
    """A ``side x side`` greyscale PNG of zeros (every row filter 0), valid to its last byte."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    length = side * (side + 1)
    adler = _checksum_of_zeros(length, b"", zlib.adler32)
    stream = b"\x78\xda" + _raw_deflate_of_zeros(length) + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream) + chunk(b"IEND", b""))
    return path


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


@pytest.mark.parametrize("build", [nifti_bomb, png_bomb], ids=["nifti_1024_cubed", "png_30000_squared"])
def test_bomb_is_refused_in_one_line_under_an_address_space_limit(tmp_path, build):
    bomb = build(tmp_path / ("bomb.nii.gz" if build is nifti_bomb else "bomb.png"))
    assert bomb.stat().st_size < 2 << 20
    env = {key: value for key, value in os.environ.items() if key != "SEGMORPH_MAX_VOXELS"}
    child = subprocess.run(
        [sys.executable, "-m", "segmorph", "info", str(bomb)],
        preexec_fn=_limit_address_space, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = child.stderr.splitlines()
    assert child.returncode == 1, child.stderr
    assert lines == [lines[0]] and lines[0].startswith(f"error: {bomb}: "), lines
    assert "too large to load: more than the memory budget" in lines[0], lines
    assert "MemoryError" not in child.stderr and "Traceback" not in child.stderr


@pytest.mark.parametrize("build", [nifti_bomb, png_bomb], ids=["nifti", "png"])
def test_bomb_files_are_what_they_declare(tmp_path, build):
    """The bombs are real files: a small one built the same way reads back as zeros of the declared size."""
    from segmorph.io import read_image

    side = 40
    image = read_image(build(tmp_path / ("small.nii.gz" if build is nifti_bomb else "small.png"), side))
    assert image.spatial_shape == ((side,) * 3 if build is nifti_bomb else (side, side))
    assert not np.any(image.numpy())
