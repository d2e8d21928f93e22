"""A DICOM image file's native pixel data checked against the header that describes it, before it is decoded.

GDCM (SimpleITK's DICOM reader) allocates what the header declares (rows x columns x frames x samples per pixel x
bits allocated) and fills it from the pixel data element whatever its length: a file whose pixel data is shorter
(truncated, or with a frame count or samples per pixel that do not match it) reads as an image of the declared
size whose missing part is whatever memory held. :func:`check_pixel_data` refuses such a file by name.

Only native (uncompressed) transfer syntaxes are checked; encapsulated (compressed) pixel data has no length to
compare and is left to the decoder. The file's structure is checked first
(:func:`segmorph.dicom.structure.check_structure`), so pydicom only parses a file that is safe to parse; values
longer than a few KiB (the pixel data) are not read.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from segmorph.dicom.structure import check_structure
from segmorph.errors import SegmorphError

NATIVE_SYNTAXES = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
)
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float Pixel Data, Double Float Pixel Data
_UNDEFINED_LENGTH = 0xFFFFFFFF
_DEFER_BYTES = 4096  # values longer than this stay on disk


def check_pixel_data(path: str | Path) -> None:
    """Refuse a DICOM file whose native pixel data is shorter than its header declares (see the module docstring).

    A file without the ``DICM`` prefix (read by GDCM all the same), without pixel data, or with compressed pixel
    data passes unchecked.

    Raises:
        SegmorphError: Naming ``path``: a broken structure, a size field that is not a positive number, bits
            allocated that are neither 1 nor a multiple of 8, or pixel data shorter than declared.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        prefix = handle.read(132)
    if prefix[128:132] != b"DICM":
        return
    check_structure(path)
    dataset = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
    tag = next((tag for tag in PIXEL_DATA_TAGS if tag in dataset), None)
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if tag is None or syntax not in NATIVE_SYNTAXES:
        return
    length = _value_length(dataset, tag)
    if length is None:
        return
    rows, columns, frames, samples, bits = (
        _size_field(dataset, keyword, default, path)
        for keyword, default in (
            ("Rows", None), ("Columns", None), ("NumberOfFrames", 1), ("SamplesPerPixel", 1), ("BitsAllocated", None)
        )
    )  # fmt: skip
    if bits != 1 and bits % 8:
        raise SegmorphError(f"bits allocated {bits}: DICOM pixels take 1 bit or a whole number of bytes", path)
    declared = (rows * columns * frames * samples * bits + 7) // 8
    if length < declared:
        raise SegmorphError(f"pixel data holds {length:,} bytes; the header declares {rows}x{columns} pixels x "
                            f"{frames} frame(s) x {samples} sample(s) of {bits} bits ({declared:,} bytes)", path)  # fmt: skip


def _value_length(dataset: pydicom.Dataset, tag: int) -> int | None:
    """Bytes of the element's value (None: undefined length); read from the header while the element is raw,
    from the value where pydicom already converted it (an ambiguous VR is resolved on reading)."""
    element = dataset.get_item(tag)
    length = getattr(element, "length", None)
    if length is None:
        value = element.value
        length = len(value) if isinstance(value, (bytes, bytearray)) else _UNDEFINED_LENGTH
    return None if length == _UNDEFINED_LENGTH else int(length)


def _size_field(dataset: pydicom.Dataset, keyword: str, default: int | None, path: Path) -> int:
    """A positive whole-number header field (``default`` when absent or empty and a default exists)."""
    value = dataset.get(keyword)
    if value in (None, "") and default is not None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise SegmorphError(f"{keyword} {value!r} is not a positive whole number", path)
    return number
