"""Reading and writing images with their geometry; the only module that knows SimpleITK.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd),
DICOM series (a folder of slices), PNG/JPEG/BMP/TIFF (2D; RGB becomes 3 channels).
SimpleITK arrays are ``(K, J, I)`` (z, y, x); segmorph tensors are ``(C, I, J, K)``;
the transposition happens here and nowhere else.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_VOXELS = 2**31  # refuse absurd declared sizes before allocating


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


def is_dicom_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding at least one DICOM series."""
    path = Path(path)
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files, folders of image files and DICOM series folders into a sorted list of inputs."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise SegmorphError("no such file or folder", path)
        if path.is_file() or is_dicom_folder(path):
            found.append(path)
        else:
            inside = sorted(p for p in path.iterdir() if p.is_file() and image_suffix(p))
            subseries = sorted(p for p in path.iterdir() if p.is_dir() and is_dicom_folder(p))
            if not inside and not subseries:
                raise SegmorphError("folder holds no images or DICOM series", path)
            found.extend(inside + subseries)
    return found


def _read_sitk(path: Path) -> sitk.Image:
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise SegmorphError("folder holds no DICOM series", path)
        if len(series) > 1:
            raise SegmorphError(f"folder holds {len(series)} DICOM series; give one series per folder", path)
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        return reader.Execute()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    if any(s <= 0 for s in size):
        raise SegmorphError(f"zero-size dimension in header, size {size}", path)
    if int(np.prod(size, dtype=np.float64)) * max(1, reader.GetNumberOfComponents()) > MAX_VOXELS:
        raise SegmorphError(f"declared size {size} is too large to load", path)
    return reader.Execute()


def read_image(path: str | Path, is_label: bool = False, check_finite: bool = True) -> Image:
    """Read an image file or a DICOM series folder with its geometry.

    Args:
        path: A file (NIfTI, NRRD, MHA/MHD, PNG, JPEG, ...) or a DICOM series folder.
        is_label: Read as an integer label map (values must be whole numbers).
        check_finite: Refuse images holding NaN or infinite voxels.

    Returns:
        An :class:`Image` with data ``(C, I, J[, K])``: float32 for images, int64 for labels.
        A 3D volume with one slice along K stays 3D; a PNG is 2D with 1 or 3 channels.

    Raises:
        SegmorphError: The file is missing, unreadable, 4D, or holds bad values.
    """
    path = Path(path)
    if not path.exists():
        raise SegmorphError("no such file or folder", path)
    try:
        itk = _read_sitk(path)
    except SegmorphError:
        raise
    except RuntimeError as err:
        raise SegmorphError(f"cannot read image ({_first_line(err)})", path) from None
    return _from_sitk(itk, path, is_label, check_finite)


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Description:" in ln] or lines or ["unknown error"]
    return useful[0].replace("Description:", "").strip()[:200]


def _from_sitk(itk: sitk.Image, path: Path, is_label: bool, check_finite: bool) -> Image:
    ndim = itk.GetDimension()
    if ndim not in (2, 3):
        raise SegmorphError(f"expected a 2D or 3D image, got {ndim}D", path)
    array = sitk.GetArrayFromImage(itk)  # (K, J, I[, C])
    if itk.GetNumberOfComponentsPerPixel() == 1:
        array = array[..., None]
    array = np.moveaxis(array, -1, 0)  # (C, K, J, I)
    array = np.ascontiguousarray(array.transpose(0, *range(ndim, 0, -1)))  # (C, I, J, K)
    affine = Affine.from_geometry(itk.GetSpacing(), itk.GetOrigin(), itk.GetDirection())
    if is_label:
        return Image(torch.from_numpy(_as_labels(array, path)), affine, is_label=True)
    data = torch.from_numpy(array.astype(np.float32, copy=False))
    if check_finite and not torch.isfinite(data).all():
        bad = int((~torch.isfinite(data)).sum())
        raise SegmorphError(f"image holds {bad} NaN or infinite voxels", path)
    return Image(data, affine)


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
    return _write_with_sitk(path, suffix, lambda name: sitk.WriteImage(itk, name, useCompression=compress), "image")


def _write_with_sitk(path: Path, suffix: str, write: Callable[[str], None], what: str) -> Path:
    """Let SimpleITK write a temporary file beside ``path`` (it picks the format by suffix), fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp_name)
        _fsync(tmp_name)
        os.replace(tmp_name, path)
    except (RuntimeError, OSError) as err:
        Path(tmp_name).unlink(missing_ok=True)
        raise SegmorphError(f"cannot write {what} ({_first_line(err)})", path) from None
    return path


def _fsync(name: str) -> None:
    with open(name, "rb+") as handle:
        os.fsync(handle.fileno())


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    """Write bytes atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as err:
        Path(tmp_name).unlink(missing_ok=True)
        raise SegmorphError(f"cannot write file ({err.strerror or err})", path) from None
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
        transform = sitk.ReadTransform(str(path))
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
