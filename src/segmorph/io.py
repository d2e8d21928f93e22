"""Reading and writing images with their geometry; the only module that knows SimpleITK.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd),
DICOM series (a folder of slices), PNG/JPEG/BMP/TIFF (2D; RGB becomes 3 channels).
SimpleITK arrays are ``(K, J, I)`` (z, y, x); segmorph tensors are ``(C, I, J, K)``;
the transposition happens here and nowhere else.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import shutil
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
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
COMPLEX_PIXEL_IDS = frozenset(getattr(sitk, name) for name in ("sitkComplexFloat32", "sitkComplexFloat64"))

# ITK prints warnings (missing slices, no DICOM series found) straight to the process's stderr, outside
# the one-line error contract; the conditions that matter are checked here and reported as SegmorphError.
sitk.ProcessObject.SetGlobalWarningDisplay(False)


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


def image_suffix(path: str | Path) -> str:
    """The file's image suffix (``.nii.gz`` counts as one), lower case, or '' if not an image."""
    name = str(path).lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), "")


def strip_suffix(path: str | Path) -> str:
    """File name without its image suffix: ``case_001.nii.gz`` -> ``case_001``."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def mask_file_name(source: str | Path, suffix: str | None = None) -> str:
    """File name of the mask written for a scan: its case id plus ``suffix``.

    The case id is the file name without its image suffix and without nnU-Net's ``_0000`` channel
    suffix (a DICOM series folder: the folder name). Without ``suffix``: ``.png`` for picture inputs
    (never JPEG, which would blur labels), else ``.nii.gz``.
    """
    source = Path(source)
    case = strip_suffix(source) if image_suffix(source) else source.name
    if case.endswith("_0000"):
        case = case[: -len("_0000")]
    if suffix is None:
        suffix = ".png" if image_suffix(source) in PICTURE_SUFFIXES else ".nii.gz"
    return case + suffix


def _sitk_name(path: str | Path) -> str:
    """``path`` as SimpleITK takes it; SimpleITK aborts the process on names that are not valid UTF-8."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise SegmorphError("path is not valid UTF-8 (SimpleITK cannot open it); rename it", path) from None
    return name


def is_dicom_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding at least one DICOM series."""
    path = Path(path)
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(_sitk_name(path)))


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


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files, folders of image files and DICOM series folders into a sorted list of inputs.

    Raises:
        SegmorphError: A path is missing or not a regular file or folder (:func:`check_input_path`), or a
            folder holds no images.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        check_input_path(path)
        if path.is_file() or is_dicom_folder(path):
            found.append(path)
        else:
            # names starting with '.' are hidden files, among them a killed writer's temporary files
            inside = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and image_suffix(p))
            subseries = sorted(p for p in path.iterdir() if p.is_dir() and is_dicom_folder(p))
            if not inside and not subseries:
                raise SegmorphError("folder holds no images or DICOM series", path)
            found.extend(inside + subseries)
    return found


def _read_sitk(path: Path, check_finite: bool = False, budget: int | None = None) -> sitk.Image:
    """Read with SimpleITK after checking the header: size against the voxel budget, geometry, pixel type."""
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(_sitk_name(path))
        if not series:
            raise SegmorphError("folder holds no DICOM series", path)
        if len(series) > 1:
            raise SegmorphError(f"folder holds {len(series)} DICOM series; give one series per folder", path)
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
        _check_series(files, path, budget)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        itk = reader.Execute()
        check_geometry(itk.GetSpacing(), itk.GetOrigin(), itk.GetDirection(), path)
        return itk
    if image_suffix(path) in (".nii", ".nii.gz"):
        _check_nifti(path, check_finite, budget)
    if image_suffix(path) in (".mha", ".mhd"):
        _check_metaimage_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(_sitk_name(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    if any(s <= 0 for s in size):
        raise SegmorphError(f"zero-size dimension in header, size {size}", path)
    components = max(1, reader.GetNumberOfComponents())
    shown = "x".join(map(str, size)) + (f" x {components} components" if components > 1 else "")
    check_voxel_budget(float(np.prod(size, dtype=np.float64)) * components, f"declared size {shown}", path, budget)
    if reader.GetPixelID() in COMPLEX_PIXEL_IDS:
        raise SegmorphError(f"complex-valued image ({sitk.GetPixelIDValueAsString(reader.GetPixelID())}): "
                            "segmorph reads real values only; save the magnitude or the real part", path)  # fmt: skip
    check_geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), path)
    return reader.Execute()


def _check_metaimage_header(path: Path) -> None:
    """Refuse a MetaImage header whose geometry fields are not finite numbers: ITK's MetaIO reads ``nan``
    and ``inf`` (and any text) as 0, silently moving the image or giving it zero spacing."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError as err:
        raise SegmorphError(f"cannot read image ({err.strerror or err})", path) from None
    for line in head.split(b"\n"):
        key, _, value = (part.strip() for part in line.partition(b"="))
        if key == b"ElementDataFile":
            return
        if key in META_GEOMETRY_FIELDS:
            try:
                numbers = [float(v) for v in value.split()]
            except ValueError:
                numbers = []
            if not numbers or not np.isfinite(numbers).all():
                shown = value.decode("ascii", "backslashreplace")[:80]
                raise SegmorphError(f"degenerate geometry: {key.decode()} = {shown!r} in the MetaImage header is not "
                                    "finite numbers", path)  # fmt: skip


def _check_nifti(path: Path, check_finite: bool = False, budget: int | None = None) -> None:
    """Refuse a NIfTI-1 file whose header declares no voxels, more than the voxel budget, more than the
    file holds, or degenerate or ambiguous geometry (:func:`_check_nifti_geometry`).

    Runs on the 348-byte header before SimpleITK allocates anything: ITK reads a zero dimension as 1 and
    fills a truncated .nii.gz with zeros without complaint. A .nii.gz is inflated once more only when its
    gzip trailer does not already say it holds exactly the declared bytes (a multi-member or damaged file).
    With ``check_finite``, float voxels are scanned here too, since ITK's NIfTI reader silently turns NaN
    and infinite values into 0.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(348)
    except (OSError, EOFError, zlib.error) as err:
        raise SegmorphError(f"cannot read image (corrupt or truncated: {err})", path) from None
    endian = next((e for e in "<>" if len(header) == 348 and struct.unpack(e + "i", header[:4])[0] == 348), None)
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
    if qform_code > 0 and sform_code > 0:
        corners = np.array(np.meshgrid(*[[0, max(size - 1, 0)] for size in (*shape[:3], 1, 1)[:3]], indexing="ij"))
        points = np.vstack([corners.reshape(3, -1), np.ones((1, corners[0].size))])
        apart = float(np.linalg.norm(_nifti_qform(pixdim, quatern) @ points - srow @ points, axis=0).max())
        if apart > QFORM_SFORM_TOLERANCE_MM:
            raise SegmorphError(f"qform and sform disagree: they place the grid up to {apart:.4g} mm apart "
                                f"(tolerance {QFORM_SFORM_TOLERANCE_MM} mm); set one of them (qform_code or "
                                "sform_code 0) or make them agree", path)  # fmt: skip


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


def _check_series(files: Sequence[str], folder: Path, budget: int | None = None) -> None:
    """Refuse a DICOM series beyond the voxel budget, mixing modalities or orientations, whose slices are
    unevenly spaced (a missing slice), or whose slice positions do not run along the slice normal (gantry tilt).

    ITK only warns about uneven spacing and then gives the volume one average spacing, which puts
    every slice after a gap at the wrong place; a tilted series it reads as an orthogonal grid, unsheared.
    """
    slices = [_slice_facts(name) for name in files]
    check_voxel_budget(float(sum(values for _, _, _, values in slices)), f"a series of {len(files)} slices", folder,
                       budget)  # fmt: skip
    modalities = sorted({modality for modality, _, _, _ in slices} - {""})
    if len(modalities) > 1:
        raise SegmorphError(f"series mixes modalities {', '.join(modalities)}", folder)
    placed = [(normal, position) for _, normal, position, _ in slices if position is not None]
    if len(placed) != len(files) or len(files) < 2:
        return  # no usable positions: ITK's ordering stands
    normals = np.array([normal for normal, _ in placed])
    if np.abs(normals - normals[0]).max() > DIRECTION_TOLERANCE:
        raise SegmorphError("slices of the DICOM series have different orientations (ImageOrientationPatient)", folder)
    positions = np.array([position for _, position in placed])
    along = positions @ normals[0]
    _check_gantry_tilt(positions[np.argsort(along)], normals[0], folder)
    if len(files) > 2:
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


def _slice_facts(name: str) -> tuple[str, np.ndarray | None, np.ndarray | None, int]:
    """A DICOM slice's modality, unit normal and position (mm; None without position tags) and its values.

    Refuses a PixelSpacing that is not two finite numbers within ``SPACING_LIMITS_MM`` (GDCM reads 0 or an
    unparsable value as 1 mm) and degenerate geometry.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise SegmorphError(f"cannot read DICOM slice ({_first_line(err)})", name) from None
    tags = {key: reader.GetMetaData(key).strip() for key in ("0008|0060", "0020|0037", "0020|0032", "0028|0030")
            if reader.HasMetaDataKey(key)}  # fmt: skip
    if "0028|0030" in tags:
        try:
            pixel_spacing = [float(v) for v in tags["0028|0030"].split("\\")]
        except ValueError:
            pixel_spacing = []
        if len(pixel_spacing) != 2:
            raise SegmorphError(f"degenerate geometry: PixelSpacing {tags['0028|0030']!r} is not two numbers", name)
        check_geometry(pixel_spacing, (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), name)
    check_geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), name)
    values = int(np.prod(reader.GetSize(), dtype=np.float64)) * max(1, reader.GetNumberOfComponents())
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


def read_image(path: str | Path, is_label: bool = False, check_finite: bool = True,
               voxel_budget: int | None = None) -> Image:  # fmt: skip
    """Read an image file or a DICOM series folder with its geometry.

    Before anything is decompressed or allocated the header is checked: the declared size against the
    voxel budget (:func:`check_voxel_budget`), the geometry (:func:`check_geometry`; for NIfTI also the raw
    qform/sform), the pixel type (complex images are refused); a path that is not a regular file or
    folder is refused before it is opened (:func:`check_input_path`).

    Args:
        path: A file (NIfTI, NRRD, MHA/MHD, PNG, JPEG, ...) or a DICOM series folder.
        is_label: Read as an integer label map (values must be whole numbers).
        check_finite: Refuse images holding NaN or infinite voxels (values that overflow float32 when
            cast are refused either way).
        voxel_budget: Most values (voxels x components) to load; :func:`max_voxels` when None.

    Returns:
        An :class:`Image` with data ``(C, I, J[, K])``: float32 for images, int64 for labels.
        A 3D volume with one slice along K stays 3D; a PNG is 2D with 1 or 3 channels.

    Raises:
        SegmorphError: The file is missing, unreadable, 4D, or holds bad values.
    """
    path = Path(path)
    check_input_path(path)
    if not os.access(path, os.R_OK):
        raise SegmorphError("permission denied: cannot read", path)
    try:
        itk = _read_sitk(path, check_finite, voxel_budget)
    except SegmorphError:
        raise
    except RuntimeError as err:
        raise SegmorphError(f"cannot read image ({_first_line(err)})", path) from None
    return _from_sitk(itk, path, is_label, check_finite)


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    errors = [ln.split("ERROR:", 1)[1] for ln in lines if "ERROR:" in ln]
    useful = [ln for ln in lines if "Description:" in ln] or errors or lines or ["unknown error"]
    text = useful[0].replace("Description:", "").strip()
    if text.startswith("Unable to determine ImageIO reader"):
        return "unknown format or corrupt file: no reader recognises it"
    return text[:200]


def _from_sitk(itk: sitk.Image, path: Path, is_label: bool, check_finite: bool) -> Image:
    ndim = itk.GetDimension()
    if ndim not in (2, 3):
        raise SegmorphError(f"expected a 2D or 3D image, got {ndim}D", path)
    array = sitk.GetArrayViewFromImage(itk)  # (K, J, I[, C]); a view, valid while ``itk`` lives
    if itk.GetNumberOfComponentsPerPixel() == 1:
        array = array[..., None]
    array = np.moveaxis(array, -1, 0)  # (C, K, J, I)
    array = np.array(array.transpose(0, *range(ndim, 0, -1)), order="C")  # (C, I, J, K): the one copy
    affine = Affine.from_geometry(itk.GetSpacing(), itk.GetOrigin(), itk.GetDirection())
    if is_label:
        return Image(torch.from_numpy(_as_labels(array, path)), affine, is_label=True)
    with np.errstate(over="ignore"):  # overflow is counted below, not warned about on stderr
        values = array.astype(np.float32, copy=False)
    if not np.isfinite(values).all():  # checked after the cast: float64 values beyond 3.4e38 become infinite
        bad = int(np.count_nonzero(~np.isfinite(values)))
        overflow = bad - int(np.count_nonzero(~np.isfinite(array))) if values is not array else 0
        if overflow:
            raise SegmorphError(f"image holds {overflow} voxel(s) beyond the float32 range (|value| > 3.4e38)", path)
        if check_finite:
            raise SegmorphError(f"image holds {bad} NaN or infinite voxels", path)
    return Image(torch.from_numpy(values), affine)


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.shape[0] != 1:
        raise SegmorphError(f"label map must have one channel, got {array.shape[0]}", path)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise SegmorphError("label map holds NaN or infinite values", path)
        if not np.array_equal(array, np.round(array)):
            raise SegmorphError("label map holds non-integer values", path)
    if array.min() < 0:
        raise SegmorphError(f"label map holds negative value {array.min()}", path)
    if array.max() >= 2**63:  # uint64 or float values that int64 cannot hold (the cast would wrap)
        raise SegmorphError(f"label map holds value {array.max():.6g}, beyond the int64 range", path)
    return array.astype(np.int64)


def to_sitk(image: Image) -> sitk.Image:
    """Convert an Image to a SimpleITK image (labels as the smallest unsigned integer type)."""
    array = image.numpy()
    if image.is_label:
        top = int(array.max()) if array.size else 0
        array = array.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    ndim = image.ndim
    array = array.transpose(0, *range(ndim, 0, -1))  # (C, K, J, I)
    if array.shape[0] == 1:
        itk = sitk.GetImageFromArray(np.ascontiguousarray(array[0]))
    else:
        itk = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(array, 0, -1)), isVector=True)
    itk.SetSpacing([float(v) for v in image.affine.spacing])
    itk.SetOrigin([float(v) for v in image.affine.origin])
    itk.SetDirection([float(v) for v in image.affine.direction.ravel()])
    return itk


def from_sitk(itk: sitk.Image, is_label: bool = False) -> Image:
    """Convert a SimpleITK image to an Image (see :func:`read_image` for axes)."""
    return _from_sitk(itk, Path("<memory>"), is_label, check_finite=False)


def write_image(image: Image, path: str | Path) -> Path:
    """Write an Image atomically: a temporary file in the same folder, fsync, then rename.

    PNG/JPEG need 2D data with uint8-range values (labels or 0..255 images).
    A crash or full disk leaves either the old file or none, never half a file.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if not suffix:
        raise SegmorphError(f"unknown image format (use one of {', '.join(IMAGE_SUFFIXES)})", path)
    itk = to_sitk(image)
    if suffix in PICTURE_SUFFIXES:
        itk = sitk.Cast(itk, sitk.sitkUInt8) if itk.GetNumberOfComponentsPerPixel() == 1 else itk
    compress = suffix in (".nii.gz", ".nrrd", ".mha")
    _sitk_name(path)
    return _write_with_sitk(path, suffix, lambda name: sitk.WriteImage(itk, name, useCompression=compress), "image")


def file_mode() -> int:
    """The mode a new file gets under the process's umask (``0o666 & ~umask``), read once.

    Atomic writes create their temporary file with :func:`tempfile.mkstemp`, which makes it 0600; the file is
    given this mode before the rename. The umask is read from ``/proc/self/status`` where the kernel shows it
    (no change to the process state); elsewhere it is set and restored once, the first time.
    """
    global _FILE_MODE
    if _FILE_MODE is None:
        umask = None
        try:
            with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
                umask = next((int(line.split()[1], 8) for line in handle if line.startswith("Umask:")), None)
        except (OSError, ValueError, IndexError):
            umask = None
        if umask is None:
            umask = os.umask(0o022)
            os.umask(umask)
        _FILE_MODE = 0o666 & ~umask
    return _FILE_MODE


_FILE_MODE: int | None = None


def _write_with_sitk(path: Path, suffix: str, write: Callable[[str], None], what: str) -> Path:
    """Let SimpleITK write a temporary file beside ``path`` (it picks the format by suffix), fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp_name)
        _check_written(Path(tmp_name), suffix)
        _fsync(tmp_name)
        os.chmod(tmp_name, file_mode())
        os.replace(tmp_name, path)
    except (RuntimeError, OSError) as err:
        problem = _write_problem(err, path.parent)  # before the unlink frees the space
        Path(tmp_name).unlink(missing_ok=True)
        raise SegmorphError(f"cannot write {what} ({problem})", path) from None
    return path


def _fsync(name: str) -> None:
    with open(name, "rb+") as handle:
        os.fsync(handle.fileno())


def _check_written(path: Path, suffix: str) -> None:
    """Refuse a NIfTI file shorter than its header declares.

    ITK's NIfTI writer reports a short write (a full disk) on stderr only and returns normally, leaving a
    truncated file that would otherwise be renamed into place.
    """
    if suffix not in (".nii", ".nii.gz"):
        return
    opener = gzip.open if suffix == ".nii.gz" else open
    try:
        with opener(path, "rb") as handle:
            complete = len(handle.read(348)) == 348
        if complete:
            _check_nifti(path, budget=2**63)  # a written image is already in memory: no budget
    except (OSError, EOFError, SegmorphError):
        complete = False
    if not complete:
        raise OSError(errno.EIO, "the file is incomplete after writing")


def _write_problem(err: Exception, folder: Path) -> str:
    """Words for a failed write. ITK's exceptions rarely say why, so a full disk is also recognised by
    the space left (less than 1 MiB: the failed write used the rest)."""
    if isinstance(err, OSError) and err.errno == errno.EDQUOT:
        return "disk quota exceeded"
    try:
        full = shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        full = False
    if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or full:
        return "no space left on device"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return _first_line(err)


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    """Write bytes atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fchmod(handle.fileno(), file_mode())
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as err:
        problem = _write_problem(err, path.parent)  # before the unlink frees the space
        Path(tmp_name).unlink(missing_ok=True)
        raise SegmorphError(f"cannot write file ({problem})", path) from None
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_affine_transform(matrix: np.ndarray, path: str | Path) -> Path:
    """Write a world (LPS mm) affine ``(n+1, n+1)`` as an ITK transform file (.tfm/.txt), atomically.

    ITK's convention, which segmorph shares: the transform maps points of the fixed image's world to
    points of the moving image's world (``p -> M p + t``, centre 0).
    """
    path = Path(path)
    matrix = np.asarray(matrix, dtype=np.float64)
    n = matrix.shape[0] - 1
    transform = sitk.AffineTransform(n)
    transform.SetMatrix([float(v) for v in matrix[:n, :n].ravel()])
    transform.SetTranslation([float(v) for v in matrix[:n, n]])
    _sitk_name(path)
    return _write_with_sitk(path, path.suffix or ".tfm", lambda name: sitk.WriteTransform(transform, name), "transform")


def read_affine_transform(path: str | Path) -> np.ndarray:
    """Read an ITK linear transform file (affine, rigid, Euler, ...) as a world affine ``(n+1, n+1)``.

    The matrix is recovered by mapping the origin and the unit vectors, so any linear ITK transform
    type works; deformable ones are refused.
    """
    path = Path(path)
    if not path.exists():
        raise SegmorphError("no such file", path)
    try:
        transform = sitk.ReadTransform(_sitk_name(path))
        n = transform.GetDimension()
        origin = np.array(transform.TransformPoint([0.0] * n))
        columns = [np.array(transform.TransformPoint(list(np.eye(n)[d]))) - origin for d in range(n)]
    except RuntimeError as err:
        raise SegmorphError(f"cannot read transform ({_first_line(err)})", path) from None
    matrix = np.eye(n + 1)
    matrix[:n, :n] = np.stack(columns, axis=1)
    matrix[:n, n] = origin
    probe = np.array(transform.TransformPoint([7.0, -3.0, 5.0][:n]))
    if not np.allclose(probe, matrix[:n, :n] @ np.array([7.0, -3.0, 5.0][:n]) + origin, atol=1e-4):
        raise SegmorphError("transform is not linear (expected an affine, rigid or Euler transform)", path)
    return matrix
