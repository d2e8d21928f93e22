"""A bounded check of a DICOM Part 10 file's element structure, made before pydicom parses it.

pydicom parses sequences recursively and copies every defined-length sequence value once per nesting level,
so a small file of a few thousand nested sequences exhausts the stack or the memory before it can be refused.
:func:`check_structure` walks the encoded bytes once, iteratively (an explicit stack, no recursion), and
refuses a file that:

- nests sequences deeper than :data:`MAX_SEQUENCE_DEPTH` levels (checked before descending),
- holds more than :data:`MAX_ELEMENTS` data elements and sequence items,
- declares a value, item or sequence longer than what remains of the file or of its enclosing item,
- ends inside an undefined-length sequence or item, or has an undefined-length value without its delimiter,
- has a misplaced item or delimiter tag, or a deflated data set that inflates beyond :data:`MAX_INFLATED_BYTES`.

It reads elements the way pydicom does (explicit/implicit VR detection per data set, the same rules for deciding
that an undefined-length or ``UN`` element is a sequence), so it descends into every sequence pydicom would parse.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from segmorph.errors import SegmorphError

MAX_SEQUENCE_DEPTH = 64
"""Deepest sequence nesting accepted (a sequence inside an item of a sequence counts 2)."""
MAX_ELEMENTS = 1_000_000
"""Most data elements (items included, at every level) accepted in one file."""
MAX_INFLATED_BYTES = 1 << 30
"""Largest inflated size of a deflated data set (transfer syntax 1.2.840.10008.1.2.1.99)."""

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_IMPLICIT_LE, _EXPLICIT_BE, _DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"


@dataclass
class _Frame:
    """An open sequence (holds items) or data set (holds elements); ``end`` None: ends at a delimiter."""

    is_sequence: bool
    end: int | None
    implicit: bool


class _Corrupt(Exception):
    """The structure is broken (reported as a corrupt file)."""


class _OverLimit(Exception):
    """The structure is valid but beyond a limit."""


def check_structure(path: str | Path) -> None:
    """Refuse a DICOM Part 10 file whose structure is broken or beyond the limits above, without parsing values.

    Args:
        path: A file starting with a 128-byte preamble and ``DICM``.

    Raises:
        SegmorphError: Naming ``path``: unreadable, no ``DICM`` prefix, corrupt structure, or over a limit.

    Example:
        >>> check_structure("slice_001.dcm")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SegmorphError(f"cannot read file ({err.strerror or err})", path) from None
    if len(data) < 132 or data[128:132] != b"DICM":
        raise SegmorphError("not a DICOM Part 10 file (no DICM prefix after a 128-byte preamble)", path)
    try:
        position, syntax = _scan_meta(data)
        if syntax == _DEFLATED:
            data, position = _inflate(data[position:]), 0
        _scan(data, position, implicit=syntax == _IMPLICIT_LE, little=syntax != _EXPLICIT_BE)
    except _Corrupt as err:
        raise SegmorphError(f"corrupt DICOM file ({err})", path) from None
    except _OverLimit as err:
        raise SegmorphError(str(err), path) from None


def _scan_meta(data: bytes) -> tuple[int, str]:
    """Skip the group 0002 file meta elements (explicit VR little endian); return the end and the syntax."""
    position, syntax = 132, ""
    while position + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, position)
        if group != 0x0002:
            break
        start, length, header = _header(data, position, len(data), implicit=False, little=True)[1:]
        if length == _UNDEFINED or start + length > len(data):
            raise _Corrupt(f"file meta element (0002,{element:04X}) runs past the end of the file")
        if element == 0x0010:
            syntax = data[start : start + length].decode("ascii", "replace").strip("\0 ")
        position = start + length
    return position, syntax


def _inflate(deflated: bytes) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(deflated, MAX_INFLATED_BYTES + 1)
    except zlib.error as err:
        raise _Corrupt(f"deflated data set: {err}") from None
    if len(data) > MAX_INFLATED_BYTES:
        raise _OverLimit(f"deflated data set inflates beyond {MAX_INFLATED_BYTES} bytes; refused")
    return data


def _header(data: bytes, position: int, limit: int, implicit: bool, little: bool) -> tuple[str | None, int, int, int]:
    """(VR or None, value start, value length, header size) of the element at ``position`` (pydicom's rules)."""
    order = "<" if little else ">"
    vr_bytes = data[position + 4 : position + 6]
    if not implicit and vr_bytes in _LONG_VRS:
        if position + 12 > limit:
            raise _Corrupt(f"truncated: element header at byte {position} runs past the end")
        return vr_bytes.decode(), position + 12, struct.unpack_from(order + "L", data, position + 8)[0], 12
    if not implicit and b"AA" <= vr_bytes <= b"ZZ":
        return vr_bytes.decode(), position + 8, struct.unpack_from(order + "H", data, position + 6)[0], 8
    return None, position + 8, struct.unpack_from(order + "L", data, position + 4)[0], 8  # implicit VR


def _looks_implicit(data: bytes, position: int, limit: int) -> bool:
    """pydicom's test on a data set's first element: a VR must be two capital letters."""
    vr = data[position + 4 : position + 6] if position + 6 <= limit else b""
    return len(vr) == 2 and not (0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)


def _is_sequence(tag: int, vr: str | None, length: int, next_tag: int | None) -> bool:
    """Whether pydicom reads this element's value as a sequence (mirrors ``filereader`` and ``hooks``)."""
    if vr == "SQ":
        return True
    if vr not in (None, "UN"):
        return False
    if length == _UNDEFINED and vr == "UN":
        return True  # PS3.5 6.2.2: undefined-length UN is a sequence in implicit VR
    if length != _UNDEFINED and vr == "UN" and length >= 0xFFFF:
        return False  # pydicom keeps a long UN value as bytes
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return length == _UNDEFINED and next_tag == _ITEM


def _scan(data: bytes, position: int, implicit: bool, little: bool) -> None:
    """Walk every element and item from ``position`` to the end of ``data`` with an explicit stack."""
    order = "<" if little else ">"
    size = len(data)
    implicit = implicit or _looks_implicit(data, position, size)
    stack = [_Frame(is_sequence=False, end=size, implicit=implicit)]
    depth = count = 0
    while stack:
        frame = stack[-1]
        limit = size if frame.end is None else frame.end
        if position >= limit:
            if frame.end is None:
                kind = "sequence" if frame.is_sequence else "sequence item"
                raise _Corrupt(f"truncated: the file ends inside an undefined-length {kind} (no delimiter)")
            depth -= frame.is_sequence
            stack.pop()
            continue
        if position + 8 > limit:
            if len(stack) == 1:
                break  # fewer than 8 trailing bytes: pydicom stops there too
            raise _Corrupt(f"truncated: {limit - position} stray bytes at byte {position} inside a sequence")
        group, element = struct.unpack_from(order + "HH", data, position)
        tag = group << 16 | element
        count += 1
        if count > MAX_ELEMENTS:
            raise _OverLimit(f"holds more than {MAX_ELEMENTS} data elements; refused")
        if frame.is_sequence:
            open_frames = len(stack)
            position = _enter_item(data, position, tag, frame, stack, order)
            depth -= len(stack) < open_frames  # the sequence ended at its delimiter
            continue
        if tag == _ITEM_END and frame.end is None and len(stack) > 1:
            position += 8
            stack.pop()
            continue
        if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
            raise _Corrupt(f"unexpected item or delimiter tag ({group:04X},{element:04X}) at byte {position}")
        vr, start, length, _ = _header(data, position, limit, frame.implicit, little)
        where = f"element ({group:04X},{element:04X}) at byte {position}"
        if length != _UNDEFINED and start + length > limit:
            raise _Corrupt(f"truncated: {where} declares {length} bytes, only {max(0, limit - start)} remain")
        next_tag = _tag_at(data, start, limit, order)
        if _is_sequence(tag, vr, length, next_tag):
            if depth + 1 > MAX_SEQUENCE_DEPTH:
                raise _OverLimit(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels ({where}); refused")
            depth += 1
            stack.append(_Frame(True, None if length == _UNDEFINED else start + length, frame.implicit))
            position = start
        elif length == _UNDEFINED:
            position = _skip_encapsulated(data, start, limit, order)
            if position < 0:
                raise _Corrupt(f"truncated: undefined-length {where} has no sequence delimiter")
        else:
            position = start + length


def _skip_encapsulated(data: bytes, position: int, limit: int, order: str) -> int:
    """The end of an undefined-length value (pixel data fragments), or -1 without a delimiter.

    Like pydicom: walk the fragment items to the sequence delimiter; when they do not chain, search the bytes.
    """
    start = position
    while position + 8 <= limit:
        tag, length = _tag_at(data, position, limit, order), struct.unpack_from(order + "L", data, position + 4)[0]
        if tag == _SEQUENCE_END:
            return position + 8
        if tag != _ITEM or length == _UNDEFINED or position + 8 + length > limit:
            break
        position += 8 + length
    found = data.find(struct.pack(order + "HH", 0xFFFE, 0xE0DD), start, limit)
    return -1 if found < 0 else found + 8


def _tag_at(data: bytes, position: int, limit: int, order: str) -> int | None:
    if position + 4 > limit:
        return None
    group, element = struct.unpack_from(order + "HH", data, position)
    return group << 16 | element


def _enter_item(data: bytes, position: int, tag: int, frame: _Frame, stack: list[_Frame], order: str) -> int:
    """At ``position`` inside a sequence: open an item, or close the sequence at its delimiter."""
    if tag == _SEQUENCE_END:
        stack.pop()
        return frame.end if frame.end is not None else position + 8
    if tag != _ITEM:
        raise _Corrupt(f"expected a sequence item at byte {position}, found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
    length = struct.unpack_from(order + "L", data, position + 4)[0]
    start = position + 8
    limit = len(data) if frame.end is None else frame.end
    if length != _UNDEFINED and start + length > limit:
        raise _Corrupt(f"truncated: sequence item at byte {position} declares {length} bytes, only "
                       f"{max(0, limit - start)} remain")  # fmt: skip
    item_limit = limit if length == _UNDEFINED else start + length
    implicit = frame.implicit or _looks_implicit(data, start, item_limit)
    stack.append(_Frame(False, None if length == _UNDEFINED else start + length, implicit))
    return start
