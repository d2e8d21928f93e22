"""The checks that guard reading an image, run on headers and paths before anything is decompressed or allocated.

* the memory budget: :func:`max_voxels` values (voxels x components) per image or array, from
  ``SEGMORPH_MAX_VOXELS`` or the usable memory, enforced by :func:`check_voxel_budget`;
* the input path (:func:`check_input_path`): no FIFO, device or socket is opened;
* degenerate geometry (:func:`check_geometry`): spacing, origin, direction cosines;
* the raw NIfTI-1 header (:func:`check_nifti`): declared size against the file and the budget, qform/sform,
  pixdim, the gzip trailer; the MetaImage header's geometry fields and data length
  (:func:`check_metaimage_header`); the detached data files an NRRD header names (:func:`check_nrrd_data_files`:
  regular files, as for the input path); the end of JPEG and BMP files (:func:`check_picture_complete`);
* a DICOM series (:func:`slice_facts`, :func:`check_series`): PixelSpacing, orientations, slice gaps, gantry tilt.

Pure checks on bytes, numbers and tag values: :mod:`segmorph.io` reads the files and the tags with SimpleITK
(the only module that talks to it) and calls these.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import math
import os
import stat
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from segmorph.errors import SegmorphError

MAX_VOXELS = 2**31  # the largest default voxel budget, whatever the memory (SEGMORPH_MAX_VOXELS may go beyond)
MAX_VOXELS_ENV = "SEGMORPH_MAX_VOXELS"  # overrides the voxel budget (a positive whole number of values)
BUDGET_BYTES_PER_VOXEL = 32  # the default budget: usable memory / 32 bytes (a value held a few times over)
DEFLATE_MAX_RATIO = 1032  # deflate inflates n bytes to at most ~1032 n: a bound on what a .nii.gz can hold
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64 voxels
SLICE_GAP_TOLERANCE = 0.01  # relative; DICOM slice gaps differing more than this from the median are refused
SPACING_LIMITS_MM = (1e-6, 1e6)  # a spacing outside this range (or not finite) is refused as degenerate geometry
DIRECTION_TOLERANCE = 1e-3  # direction cosines: the largest entry of |D^T D - I| accepted
QFORM_SFORM_TOLERANCE_MM = 0.01  # a NIfTI's qform and sform may place a grid corner this far apart (float32 rounding)
GANTRY_TILT_TOLERANCE = 1e-3  # DICOM: drift across the slice plane accepted, per mm along the normal (0.06 degrees)
NIFTI_COMPONENTS = {128: 3, 2304: 4, 32: 2, 1792: 2, 2048: 2}  # NIfTI datatype codes holding several values a voxel
# MetaImage header lines holding geometry (synonyms included)
META_GEOMETRY_FIELDS = frozenset(b"Offset Origin Position ElementSpacing TransformMatrix Rotation Orientation".split())
# Bytes per element of the MetaIO element types whose size does not depend on the platform (MET_LONG does).
META_ELEMENT_BYTES = {
    b"MET_CHAR": 1, b"MET_UCHAR": 1, b"MET_SHORT": 2, b"MET_USHORT": 2, b"MET_INT": 4, b"MET_UINT": 4,
    b"MET_LONG_LONG": 8, b"MET_ULONG_LONG": 8, b"MET_FLOAT": 4, b"MET_DOUBLE": 8,
}  # fmt: skip
NRRD_HEADER_BYTES = 1 << 20  # the most of an NRRD header read to find its data files (a LIST of names included)
NRRD_MAX_DATA_FILES = 100_000  # an NRRD header naming more detached data files than this is refused
NRRD_DATA_KEYS = ("data file", "datafile")  # the NRRD field naming detached data, in both spellings
# DICOM tags a slice's checks read: Modality, ImageOrientationPatient, ImagePositionPatient, PixelSpacing
SLICE_TAGS = ("0008|0060", "0020|0037", "0020|0032", "0028|0030")
# a DICOM slice's modality, unit normal and position (None without position tags), and its values
SliceFacts = tuple[str, np.ndarray | None, np.ndarray | None, int]


def usable_memory_bytes() -> int:
    """Memory this process may use: the least of physical memory, the cgroup limit and RLIMIT_AS (bytes)."""
    limits = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    for name in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    except (ImportError, ValueError, OSError):
        pass
    positive = [limit for limit in limits if limit > 0]
    return min(positive) if positive else 16 << 30


def max_voxels() -> int:
    """The voxel budget: how many values (voxels x components) one image or array may hold.

    ``SEGMORPH_MAX_VOXELS`` (a positive whole number) when set; otherwise the usable memory (physical
    memory, a cgroup limit or RLIMIT_AS, whichever is least) divided by ``BUDGET_BYTES_PER_VOXEL``,
    at most ``MAX_VOXELS``.

    Raises:
        SegmorphError: ``SEGMORPH_MAX_VOXELS`` is not a positive whole number.
    """
    text = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if text:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            value = 0
        if value <= 0:
            raise SegmorphError(f"{MAX_VOXELS_ENV}={text!r}: expected a positive whole number of voxels")
        return value
    return max(1, min(MAX_VOXELS, usable_memory_bytes() // BUDGET_BYTES_PER_VOXEL))


def check_voxel_budget(voxels: int | float, what: str, path: str | Path | None, budget: int | None = None) -> None:
    """Refuse an allocation of ``voxels`` values (voxels x components) beyond the voxel budget.

    Called on declared sizes before anything is decompressed or allocated: image headers here, a run
    folder's plan (patch and batch sizes) elsewhere.

    Args:
        voxels: Number of values the allocation would hold (may be a float: products of header fields).
        what: What is being allocated, in words ("declared size 512x512x300", "patch of batch 2").
        path: The file that asks for it (named in the error).
        budget: The budget in values; :func:`max_voxels` when None.

    Raises:
        SegmorphError: ``voxels`` is not finite or exceeds the budget.

    Example:
        >>> check_voxel_budget(256**3, "declared size 256x256x256", "scan.nii.gz")
    """
    limit = max_voxels() if budget is None else budget
    if not np.isfinite(voxels) or voxels > limit:
        shown = f"{voxels:,.0f}" if np.isfinite(voxels) else str(voxels)
        raise SegmorphError(f"{what} ({shown} values) is too large to load: more than the memory budget of "
                            f"{limit:,} values (set {MAX_VOXELS_ENV} to change it)", path)  # fmt: skip


def check_input_path(path: str | Path) -> os.stat_result:
    """Refuse a missing input, a name the system cannot take, or anything but a regular file or a folder.

    Runs before a file is opened: a FIFO would block the reader forever and a device (``/dev/zero``)
    never ends. Symbolic links are followed.

    Raises:
        SegmorphError: The path is missing, too long, not accessible, or a device, FIFO or socket.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise SegmorphError(f"broken symbolic link (to {os.readlink(path)}, which does not exist)", path) from None
        raise SegmorphError("no such file or folder", path) from None
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise SegmorphError("file name too long (over 255 bytes in one name or 4096 in the path)", path) from None
        raise SegmorphError(f"cannot access ({err.strerror or err})", path) from None
    except ValueError as err:  # an embedded NUL byte
        raise SegmorphError(f"invalid file name ({err})", path) from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        kinds = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISFIFO: "a FIFO (named pipe)",
                 stat.S_ISSOCK: "a socket"}  # fmt: skip
        kind = next((words for test, words in kinds.items() if test(info.st_mode)), "a special file")
        raise SegmorphError(f"not a regular file or folder: {kind}", path)
    return info


def check_geometry(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float],
                   path: str | Path | None) -> None:  # fmt: skip
    """Refuse degenerate geometry: spacing not finite or outside ``SPACING_LIMITS_MM``, an origin that is
    not finite, or direction cosines that are not finite or not orthonormal (within ``DIRECTION_TOLERANCE``).

    Args:
        spacing: Voxel size along each axis in mm, length ``n``.
        origin: World position of voxel 0 in mm, length ``n``.
        direction: ``n * n`` direction cosines (row-major, as ITK gives them) or an ``(n, n)`` matrix.
        path: The file the geometry comes from (named in the error).

    Raises:
        SegmorphError: One line starting ``degenerate geometry:``.

    Example:
        >>> check_geometry((0.8, 0.8, 2.5), (0.0, 0.0, 0.0), np.eye(3).ravel(), "scan.nii.gz")
    """
    spacing_arr = np.asarray(spacing, dtype=np.float64).ravel()
    origin_arr = np.asarray(origin, dtype=np.float64).ravel()
    low, high = SPACING_LIMITS_MM
    shown = lambda values: "(" + ", ".join(f"{v:.6g}" for v in values) + ")"  # noqa: E731
    if not np.isfinite(spacing_arr).all() or (spacing_arr < low).any() or (spacing_arr > high).any():
        raise SegmorphError(f"degenerate geometry: spacing {shown(spacing_arr)} mm is outside [{low:g}, {high:g}] mm",
                            path)  # fmt: skip
    if not np.isfinite(origin_arr).all():
        raise SegmorphError(f"degenerate geometry: origin {shown(origin_arr)} is not finite", path)
    n = spacing_arr.size
    matrix = np.asarray(direction, dtype=np.float64).reshape(n, n)
    if not np.isfinite(matrix).all():
        raise SegmorphError("degenerate geometry: direction cosines hold NaN or infinite values", path)
    if np.abs(matrix.T @ matrix - np.eye(n)).max() > DIRECTION_TOLERANCE:
        raise SegmorphError(f"degenerate geometry: direction cosines are not orthonormal "
                            f"(determinant {np.linalg.det(matrix):.4g})", path)  # fmt: skip


def check_metaimage_header(path: Path) -> None:
    """Refuse a MetaImage header whose geometry fields are not finite numbers (ITK's MetaIO reads ``nan`` and
    ``inf``, and any text, as 0, silently moving the image or giving it zero spacing), or whose uncompressed data
    is shorter than it declares (MetaIO prints its complaint on stderr and fails without words). The data is
    checked where it lies in one file (``LOCAL``, after the header, or one detached file) and its element type
    has a fixed size; other layouts are left to MetaIO."""
    fields, offset = _metaimage_fields(path)
    for key, value in fields.items():
        if key in META_GEOMETRY_FIELDS:
            try:
                numbers = [float(v) for v in value.split()]
            except ValueError:
                numbers = []
            if not numbers or not np.isfinite(numbers).all():
                shown = value.decode("ascii", "backslashreplace")[:80]
                raise SegmorphError(f"degenerate geometry: {key.decode()} = {shown!r} in the MetaImage header is not "
                                    "finite numbers", path)  # fmt: skip
    if b"ElementDataFile" in fields:
        _check_metaimage_data(path, fields, offset)


def _metaimage_fields(path: Path) -> tuple[dict[bytes, bytes], int]:
    """The header's ``key = value`` fields up to ``ElementDataFile`` (the last) and the bytes they take."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError as err:
        raise SegmorphError(f"cannot read image ({err.strerror or err})", path) from None
    fields: dict[bytes, bytes] = {}
    offset = 0
    for line in head.split(b"\n"):
        offset += len(line) + 1
        key, _, value = (part.strip() for part in line.partition(b"="))
        fields[key] = value
        if key == b"ElementDataFile":
            break
    return fields, offset


def _check_metaimage_data(path: Path, fields: dict[bytes, bytes], offset: int) -> None:
    """The data's bytes against the header's ``DimSize`` x ``ElementNumberOfChannels`` x the element size."""
    element_bytes = META_ELEMENT_BYTES.get(fields.get(b"ElementType", b""))
    source = fields[b"ElementDataFile"]
    compressed = fields.get(b"CompressedData", b"False").lower() == b"true"
    if element_bytes is None or compressed or b"HeaderSize" in fields or source in (b"LIST", b"") or b" " in source:
        return
    try:
        sizes = [int(v) for v in fields.get(b"DimSize", b"").split()]
        channels = int(fields.get(b"ElementNumberOfChannels", b"1"))
    except ValueError:
        return  # MetaIO's own error
    declared = math.prod(sizes) * channels * element_bytes
    if source == b"LOCAL":
        available = path.stat().st_size - offset
    else:
        available = _check_data_file(source.decode("utf-8", "replace"), path, "MetaImage").st_size
    if available < declared:
        shape = "x".join(map(str, sizes))
        raise SegmorphError(f"MetaImage data holds {max(available, 0):,} bytes; the header declares {shape} x "
                            f"{channels} channel(s) of {element_bytes} bytes ({declared:,} bytes)", path)  # fmt: skip


def check_nrrd_data_files(path: Path) -> None:
    """Refuse an NRRD header whose detached data (``data file:`` one name, a ``%d`` pattern with its range, or
    ``LIST`` and the names after it) is missing or not a regular file: the NRRD reader opens a FIFO and waits
    forever, reads a device without end and names neither. Relative names are taken from the header's folder.

    Raises:
        SegmorphError: A data file is missing, a folder or a special file, or the header names more than
            :data:`NRRD_MAX_DATA_FILES`; naming the header and the data file.
    """
    value, rest = _nrrd_data_field(path)
    for name in [] if value is None else _nrrd_data_names(value, rest, path):
        _check_data_file(name, path, "NRRD")


def _nrrd_header_lines(path: Path) -> list[str]:
    """The header's lines: up to its blank line (attached data follows), else the whole file up to
    :data:`NRRD_HEADER_BYTES` (a detached header); read in 64 KiB blocks until the header ends."""
    raw = b""
    try:
        with open(path, "rb") as handle:
            while len(raw) < NRRD_HEADER_BYTES and b"\n\n" not in raw and b"\n\r\n" not in raw:
                block = handle.read(1 << 16)
                if not block:
                    break
                raw += block
    except OSError as err:
        raise SegmorphError(f"cannot read image ({err.strerror or err})", path) from None
    head = raw.replace(b"\r\n", b"\n")
    end = head.find(b"\n\n")
    lines = (head if end < 0 else head[:end]).decode("latin-1").splitlines()
    return lines[:-1] if end < 0 and len(raw) >= NRRD_HEADER_BYTES else lines  # the last line may be cut


def _nrrd_data_field(path: Path) -> tuple[str | None, list[str]]:
    """The value of the header's data file field (None without one) and the lines after it (a LIST's names)."""
    lines = _nrrd_header_lines(path)
    if not lines or not lines[0].startswith("NRRD"):
        return None, []  # not NRRD: the reader says so
    for index, line in enumerate(lines[1:], start=1):
        if not line.strip():
            break
        key, colon, value = line.partition(":")
        if line.startswith("#") or not colon or value.startswith("="):  # comments and key:=value pairs
            continue
        if key.strip().lower() in NRRD_DATA_KEYS:
            return value.strip(), lines[index + 1 :]
    return None, []


def _nrrd_data_names(value: str, rest: list[str], path: Path) -> list[str]:
    """The data file names of a ``data file`` field; none where the reader itself refuses the field."""
    parts = value.split()
    if parts and parts[0] == "LIST":
        names = [line.strip() for line in rest if line.strip()]
        _check_data_file_count(len(names), path)
        return names
    if len(parts) not in (4, 5) or "%" not in parts[0]:
        return [value]
    try:
        first, last, step = (int(part) for part in parts[1:4])
    except ValueError:
        return []
    if step == 0 or (last - first) * step < 0:
        return []
    _check_data_file_count((last - first) // step + 1, path)
    try:
        return [parts[0] % number for number in range(first, last + (1 if step > 0 else -1), step)]
    except (TypeError, ValueError):
        return []


def _check_data_file_count(count: int, path: Path) -> None:
    if count > NRRD_MAX_DATA_FILES:
        raise SegmorphError(f"the NRRD header names {count:,} data files (at most {NRRD_MAX_DATA_FILES:,})", path)


def _check_data_file(name: str, header: Path, kind: str) -> os.stat_result:
    """A detached data file named in ``header`` (relative to its folder) must be a regular file; its stat."""
    data = header.parent / name
    try:
        info = check_input_path(data)
    except SegmorphError as err:
        raise SegmorphError(f"{kind} data file {name!r}: {err.problem}", header) from None
    if stat.S_ISDIR(info.st_mode):
        raise SegmorphError(f"{kind} data file {name!r} is a folder, not a file", header)
    return info


def check_picture_complete(path: Path) -> None:
    """Refuse a JPEG or BMP file (recognised by its first bytes, whatever its suffix) that ends before its image
    data does: libjpeg and ITK's BMP reader decode a truncated file with grey or black in place of the missing
    rows (libjpeg prints a warning, the BMP reader nothing). PNG and TIFF readers refuse truncation themselves.

    JPEG: the end-of-image marker must follow the start of the scan (entropy-coded data escapes its 0xFF bytes,
    so the marker cannot appear inside it). BMP, uncompressed: the pixel rows (padded to 4 bytes) must fit
    between the pixel data offset and the end of the file.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(34)
            if head.startswith(b"\xff\xd8\xff"):  # a JPEG: the whole file (other pictures are not read twice)
                _check_jpeg_end(head + handle.read(), path)
            elif head.startswith(b"BM") and len(head) == 34:
                _check_bmp_length(head, os.fstat(handle.fileno()).st_size, path)
    except OSError as err:
        raise SegmorphError(f"cannot read image ({err.strerror or err})", path) from None


def _check_jpeg_end(data: bytes, path: Path) -> None:
    scan = data.find(b"\xff\xda")  # start of scan
    if scan < 0 or data.rfind(b"\xff\xd9") < scan:
        raise SegmorphError("truncated JPEG file: the image data ends without the end-of-image marker", path)


def _check_bmp_length(head: bytes, size: int, path: Path) -> None:
    offset, _, width, height, _, bits, compression = struct.unpack_from("<IIiiHHI", head, 10)
    if compression in (0, 3) and width > 0 and bits > 0:  # BI_RGB, BI_BITFIELDS: rows stored as they are
        needed = offset + (width * bits + 31) // 32 * 4 * abs(height)
        if size < needed:
            raise SegmorphError(f"truncated BMP file: {size:,} bytes, its header declares {width}x{abs(height)} "
                                f"pixels of {bits} bits ending at byte {needed:,}", path)  # fmt: skip


def _nifti_header(path: Path) -> tuple[bytes, str | None]:
    """The first 348 bytes of a .nii or .nii.gz and their byte order (``<`` or ``>``), or None for the order
    when they are no NIfTI-1 header."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(348)
    except (OSError, EOFError, zlib.error) as err:
        raise SegmorphError(f"cannot read image (corrupt or truncated: {err})", path) from None
    endian = next((e for e in "<>" if len(header) == 348 and struct.unpack(e + "i", header[:4])[0] == 348), None)
    return header, endian


def check_nifti(path: Path, check_finite: bool = False, budget: int | None = None) -> None:
    """Refuse a NIfTI-1 file whose header declares no voxels, more than the voxel budget, more than the
    file holds, or degenerate or ambiguous geometry (:func:`_check_nifti_geometry`).

    Runs on the 348-byte header before SimpleITK allocates anything: ITK reads a zero dimension as 1 and
    fills a truncated .nii.gz with zeros without complaint. A .nii.gz is inflated once more only when its
    gzip trailer does not already say it holds exactly the declared bytes (a multi-member or damaged file).
    With ``check_finite``, float voxels are scanned here too, since ITK's NIfTI reader silently turns NaN
    and infinite values into 0.
    """
    header, endian = _nifti_header(path)
    if endian is None:
        return  # not NIfTI-1 (NIfTI-2 or garbage): SimpleITK decides
    if header[344:348] != b"n+1\0":  # ITK would read it as Analyze 7.5 and drop the orientation
        raise SegmorphError(f"wrong magic bytes {bytes(header[344:348])!r} in the NIfTI header (expected n+1)", path)
    dim = struct.unpack(endian + "8h", header[40:56])
    rank = dim[0]
    if not 1 <= rank <= 7:
        raise SegmorphError(f"invalid number of dimensions {rank} in header", path)
    if any(d <= 0 for d in dim[1 : rank + 1]):
        raise SegmorphError(f"zero-size dimension in header, dim {list(dim[1 : rank + 1])}", path)
    voxels = int(np.prod(dim[1 : rank + 1], dtype=np.float64))
    bitpix = struct.unpack(endian + "h", header[72:74])[0]
    offset = struct.unpack(endian + "f", header[108:112])[0]
    if not 0 <= offset < 2**31:  # also NaN
        raise SegmorphError(f"invalid vox_offset {offset} in header", path)
    vox_offset = int(offset)
    data_bytes = (voxels * max(bitpix, 0) + 7) // 8
    datatype = struct.unpack(endian + "h", header[70:72])[0]
    components = NIFTI_COMPONENTS.get(datatype, 1)
    shown = "x".join(map(str, dim[1 : rank + 1])) + (f" x {components} components" if components > 1 else "")
    values, limit = float(voxels) * components, max_voxels() if budget is None else budget
    if values > MAX_VOXELS:  # beyond every default budget: refused as such before the file-size check
        check_voxel_budget(values, f"declared size {shown}", path, limit)
    _check_nifti_length(path, vox_offset + data_bytes, data_bytes)  # from the file size: nothing inflated yet
    check_voxel_budget(values, f"declared size {shown}", path, limit)
    _check_nifti_geometry(header, endian, dim[1 : rank + 1], path)
    _check_nifti_payload(path, vox_offset + data_bytes)
    if check_finite and datatype in NIFTI_FLOAT_TYPES:
        bad = _count_non_finite(path, np.dtype(endian + NIFTI_FLOAT_TYPES[datatype]), vox_offset, data_bytes)
        if bad:
            raise SegmorphError(f"image holds {bad} NaN or infinite voxels", path)


def _check_nifti_geometry(header: bytes, endian: str, shape: Sequence[int], path: Path) -> None:
    """Refuse NIfTI geometry that ITK would silently replace or choose between.

    ITK turns a zero or NaN pixdim into 1 mm and a NaN qoffset into 0, and falls back from a NaN or
    singular sform to the qform; these are refused here. When both forms are set ITK (like nibabel) uses
    the sform; a file whose two forms place a grid corner more than ``QFORM_SFORM_TOLERANCE_MM`` apart is
    ambiguous (other tools use the qform) and refused.
    """
    pixdim = np.array(struct.unpack(endian + "8f", header[76:108]), dtype=np.float64)
    qform_code, sform_code = struct.unpack(endian + "2h", header[252:256])
    quatern = np.array(struct.unpack(endian + "6f", header[256:280]), dtype=np.float64)
    srow = np.array(struct.unpack(endian + "12f", header[280:328]), dtype=np.float64).reshape(3, 4)
    spatial = min(len(shape), 3)
    check_geometry(pixdim[1 : spatial + 1], np.zeros(spatial), np.eye(spatial).ravel(), path)
    if qform_code > 0 and not np.isfinite(quatern).all():
        raise SegmorphError("degenerate geometry: the qform (quatern_b/c/d, qoffset) holds NaN or infinite values",
                            path)  # fmt: skip
    if sform_code > 0:
        if not np.isfinite(srow).all():
            raise SegmorphError("degenerate geometry: the sform (srow_x/y/z) holds NaN or infinite values", path)
        norms = np.linalg.norm(srow[:, :3], axis=0)
        if abs(np.linalg.det(srow[:, :3])) <= 1e-6 * max(float(np.prod(norms)), 1e-300):
            raise SegmorphError("degenerate geometry: the sform is singular (determinant 0)", path)
        check_geometry(norms[:spatial], srow[:spatial, 3], np.eye(spatial).ravel(), path)
    problem = _forms_disagreement(header, endian, shape)
    if problem:
        raise SegmorphError(problem, path)


def qform_sform_disagreement(path: str | Path) -> str | None:
    """Why a NIfTI-1 file's qform and sform disagree, in one line starting ``qform and sform disagree:``,
    or None when they agree, one of them is unset, or the file is not NIfTI-1.

    Reads the 348-byte header only: two forms placing a grid corner more than ``QFORM_SFORM_TOLERANCE_MM``
    apart make the file ambiguous, and :func:`check_nifti` refuses it.

    Raises:
        SegmorphError: The path is missing or not a regular file (:func:`check_input_path`), or the header
            cannot be read.
    """
    path = Path(path)
    check_input_path(path)  # before opening: a FIFO would block here
    header, endian = _nifti_header(path)
    if endian is None:
        return None
    dim = struct.unpack(endian + "8h", header[40:56])
    if not 1 <= dim[0] <= 7:
        return None
    return _forms_disagreement(header, endian, dim[1 : dim[0] + 1])


def _forms_disagreement(header: bytes, endian: str, shape: Sequence[int]) -> str | None:
    """The disagreement of a NIfTI-1 header's qform and sform (see :func:`qform_sform_disagreement`)."""
    qform_code, sform_code = struct.unpack(endian + "2h", header[252:256])
    if qform_code <= 0 or sform_code <= 0:
        return None
    pixdim = np.array(struct.unpack(endian + "8f", header[76:108]), dtype=np.float64)
    quatern = np.array(struct.unpack(endian + "6f", header[256:280]), dtype=np.float64)
    srow = np.array(struct.unpack(endian + "12f", header[280:328]), dtype=np.float64).reshape(3, 4)
    corners = np.array(np.meshgrid(*[[0, max(size - 1, 0)] for size in (*shape[:3], 1, 1)[:3]], indexing="ij"))
    points = np.vstack([corners.reshape(3, -1), np.ones((1, corners[0].size))])
    with np.errstate(invalid="ignore", over="ignore"):
        apart = float(np.linalg.norm(_nifti_qform(pixdim, quatern) @ points - srow @ points, axis=0).max())
    if not apart > QFORM_SFORM_TOLERANCE_MM:  # also NaN: non-finite forms are refused as degenerate geometry
        return None
    return (f"qform and sform disagree: they place the grid up to {apart:.4g} mm apart (tolerance "
            f"{QFORM_SFORM_TOLERANCE_MM} mm); set one of them (qform_code or sform_code 0) or make them "
            "agree")  # fmt: skip


def _nifti_qform(pixdim: np.ndarray, quatern: np.ndarray) -> np.ndarray:
    """The qform's ``(3, 4)`` voxel -> RAS mm map, as in the NIfTI-1 standard (nifti1_io, nibabel)."""
    b, c, d = quatern[:3]
    norm = b * b + c * c + d * d
    if norm > 1.0:  # nifti1_io: a 180-degree rotation with (b, c, d) normalised
        b, c, d = np.array([b, c, d]) / np.sqrt(norm)
        a = 0.0
    else:
        a = float(np.sqrt(1.0 - norm))
    rotation = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])  # fmt: skip
    zooms = np.where(pixdim[1:4] > 0, pixdim[1:4], 1.0)
    zooms[2] *= -1.0 if pixdim[0] < 0 else 1.0
    return np.hstack([rotation * zooms[None, :], quatern[3:6, None]])


def _count_non_finite(path: Path, dtype: np.dtype, offset: int, data_bytes: int) -> int:
    """NaN and infinite values among the voxels of a NIfTI file, read in bounded chunks."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    bad, left = 0, data_bytes
    try:
        with opener(path, "rb") as handle:
            handle.seek(offset)
            while left > 0:
                chunk = handle.read(min(left, 1 << 24))  # a multiple of the item size, as data_bytes is
                if not chunk:
                    break
                bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(chunk, dtype))))
                left -= len(chunk)
    except EOFError:
        left = max(left, 1)
    except (OSError, zlib.error) as err:  # a gzip trailer that lied about the stream
        raise SegmorphError(f"cannot read image (corrupt gzip stream: {err})", path) from None
    if left > 0:
        raise SegmorphError(f"file is truncated: the voxel data ends {left:,} bytes early", path)
    return bad


def _check_nifti_length(path: Path, needed: int, data_bytes: int) -> None:
    """Refuse a NIfTI file too short for ``needed`` bytes (header, extensions and voxel data), judged by its
    size on disk (a .nii.gz: the most deflate can inflate it to)."""
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        if size < needed:
            raise SegmorphError(f"file is truncated: {size:,} bytes, the header declares {needed:,}", path)
    elif needed > size * DEFLATE_MAX_RATIO:
        raise SegmorphError(f"header declares {data_bytes:,} bytes of voxel data, more than a "
                            f"{size:,}-byte .nii.gz can hold", path)  # fmt: skip


def _check_nifti_payload(path: Path, needed: int) -> None:
    """Refuse a .nii.gz whose gzip stream holds fewer than ``needed`` bytes or is corrupt (after
    :func:`_check_nifti_length`)."""
    if not path.name.lower().endswith(".gz"):
        return
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        if struct.unpack("<I", handle.read(4))[0] == needed % 2**32:
            return
    inflated = _inflated_size(path, needed)
    if inflated is None:
        raise SegmorphError(f"file is truncated: the gzip stream ends before the {needed:,} bytes the header "
                            "declares", path)  # fmt: skip
    if inflated < needed:
        raise SegmorphError(f"file is truncated: {inflated:,} bytes after decompression, "
                            f"the header declares {needed:,}", path)  # fmt: skip


def _inflated_size(path: Path, limit: int) -> int | None:
    """Bytes a gzip file inflates to, counting up to ``limit`` (nothing is kept); None when the stream
    breaks off before its end."""
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while total < limit:
                chunk = handle.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
    except EOFError:
        return None
    except (OSError, zlib.error) as err:
        raise SegmorphError(f"cannot read image (corrupt gzip stream: {err})", path) from None
    return total


def check_series(slices: Sequence[SliceFacts], folder: Path, budget: int | None = None) -> None:
    """Refuse a DICOM series beyond the voxel budget, mixing modalities or orientations, whose slices are
    unevenly spaced (a missing slice), or whose slice positions do not run along the slice normal (gantry tilt).

    ITK only warns about uneven spacing and then gives the volume one average spacing, which puts
    every slice after a gap at the wrong place; a tilted series it reads as an orthogonal grid, unsheared.

    Args:
        slices: The :func:`slice_facts` of every file of the series, in ITK's order.
        folder: The series folder (named in the error).
        budget: The budget in values; :func:`max_voxels` when None.
    """
    check_voxel_budget(float(sum(values for _, _, _, values in slices)), f"a series of {len(slices)} slices", folder,
                       budget)  # fmt: skip
    modalities = sorted({modality for modality, _, _, _ in slices} - {""})
    if len(modalities) > 1:
        raise SegmorphError(f"series mixes modalities {', '.join(modalities)}", folder)
    placed = [(normal, position) for _, normal, position, _ in slices if position is not None]
    if len(placed) != len(slices) or len(slices) < 2:
        return  # no usable positions: ITK's ordering stands
    normals = np.array([normal for normal, _ in placed])
    if np.abs(normals - normals[0]).max() > DIRECTION_TOLERANCE:
        raise SegmorphError("slices of the DICOM series have different orientations (ImageOrientationPatient)", folder)
    positions = np.array([position for _, position in placed])
    along = positions @ normals[0]
    _check_gantry_tilt(positions[np.argsort(along)], normals[0], folder)
    if len(slices) > 2:
        _check_slice_gaps(sorted(along.tolist()), folder)


def _check_gantry_tilt(positions: np.ndarray, normal: np.ndarray, folder: Path) -> None:
    """Refuse slices (sorted ``(n, 3)`` positions, mm) that step across the slice plane: a sheared series."""
    steps = positions - positions[0]
    along = steps @ normal
    drift = float(np.linalg.norm(steps - along[:, None] * normal[None, :], axis=1).max())
    extent = float(along[-1] - along[0])
    if drift > GANTRY_TILT_TOLERANCE * extent + 1e-3:  # 1 micrometre: rounding of the decimal position strings
        angle = float(np.degrees(np.arctan2(drift, extent)))
        raise SegmorphError(f"gantry tilt: slice positions drift {drift:.4g} mm across the slice plane over "
                            f"{extent:.4g} mm ({angle:.3g} degrees), so the series is sheared; resample it onto an "
                            "orthogonal grid first", folder)  # fmt: skip


def slice_facts(tags: Mapping[str, str], spacing: Sequence[float], origin: Sequence[float],
                direction: Sequence[float], values: int, name: str | Path) -> SliceFacts:  # fmt: skip
    """A DICOM slice's modality, unit normal and position (mm; None without position tags) and its values.

    Refuses a PixelSpacing that is not two finite numbers within ``SPACING_LIMITS_MM`` (GDCM reads 0 or an
    unparsable value as 1 mm) and degenerate geometry.

    Args:
        tags: The slice's values of ``SLICE_TAGS`` (stripped; absent tags left out).
        spacing: The slice's spacing as the reader gives it.
        origin: The slice's origin as the reader gives it.
        direction: The slice's direction cosines as the reader gives them.
        values: Values the slice holds (voxels x components).
        name: The slice's file (named in the error).
    """
    if "0028|0030" in tags:
        try:
            pixel_spacing = [float(v) for v in tags["0028|0030"].split("\\")]
        except ValueError:
            pixel_spacing = []
        if len(pixel_spacing) != 2:
            raise SegmorphError(f"degenerate geometry: PixelSpacing {tags['0028|0030']!r} is not two numbers", name)
        check_geometry(pixel_spacing, (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), name)
    check_geometry(spacing, origin, direction, name)
    modality = tags.get("0008|0060", "")
    try:
        row_col = np.array([float(v) for v in tags.get("0020|0037", "").split("\\")]).reshape(2, 3)
        position = np.array([float(v) for v in tags.get("0020|0032", "").split("\\")]).reshape(3)
    except ValueError:
        return modality, None, None, values
    normal = np.cross(row_col[0], row_col[1])
    if not (np.isfinite(normal).all() and np.isfinite(position).all()) or np.linalg.norm(normal) < 0.5:
        raise SegmorphError("degenerate geometry: ImageOrientationPatient or ImagePositionPatient is not usable", name)
    return modality, normal / np.linalg.norm(normal), position, values


def _check_slice_gaps(positions: list[float], folder: Path) -> None:
    gaps = np.diff(positions)
    typical = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - typical)))
    if typical > 0 and abs(gaps[worst] - typical) <= SLICE_GAP_TOLERANCE * typical:
        return
    where = f"gap of {gaps[worst]:.4g} mm after slice {worst + 1} of {len(positions)}, others {typical:.4g} mm"
    ratio = gaps[worst] / typical if typical > 0 else 0.0
    if ratio > 1.5 and abs(ratio - round(ratio)) <= SLICE_GAP_TOLERANCE:
        raise SegmorphError(f"missing slice(s) in the DICOM series: {where}", folder)
    raise SegmorphError(f"uneven slice spacing in the DICOM series: {where}", folder)
