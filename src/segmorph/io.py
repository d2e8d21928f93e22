"""Reading and writing images with their geometry; the only module that knows SimpleITK.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd),
DICOM series (a folder of slices), PNG/JPEG/BMP/TIFF (2D; RGB becomes 3 channels, an alpha channel is dropped).
SimpleITK arrays are ``(K, J, I)`` (z, y, x); segmorph tensors are ``(C, I, J, K)``;
the transposition happens here and nowhere else.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.readchecks import (
    SLICE_TAGS,
    SliceFacts,
    check_geometry,
    check_input_path,
    check_metaimage_header,
    check_nifti,
    check_nrrd_data_files,
    check_picture_complete,
    check_series,
    check_voxel_budget,
    slice_facts,
)

NRRD_SUFFIXES = (".nrrd", ".nhdr")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_ROWS_KEY = "0028|0010"  # a tag GDCM reports for every DICOM image it reads
DICOM_SUFFIX = ".dcm"  # DICOM files; a DICOM-SEG label map is read by read_image(path, is_label=True)
MAX_LABEL_VALUES = 1024  # distinct values of a label map, background included: more, and it is refused as a scan
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
COMPLEX_PIXEL_IDS = frozenset(getattr(sitk, name) for name in ("sitkComplexFloat32", "sitkComplexFloat64"))
# NIfTI-1 datatype codes -> numpy name of one stored value (RGB24 and RGBA32 store uint8 components)
NIFTI_DATATYPE_NAMES = {2: "uint8", 4: "int16", 8: "int32", 16: "float32", 32: "complex64", 64: "float64",
                        128: "uint8", 256: "int8", 512: "uint16", 768: "uint32", 1024: "int64", 1280: "uint64",
                        1536: "float128", 1792: "complex128", 2304: "uint8"}  # fmt: skip
_SITK_COMPONENT_NAMES = {getattr(sitk, f"sitk{vector}{kind}"): kind.lower() for vector in ("", "Vector")
                         for kind in ("UInt8", "Int8", "UInt16", "Int16", "UInt32", "Int32", "UInt64", "Int64",
                                      "Float32", "Float64")}  # fmt: skip

# ITK prints warnings (missing slices, no DICOM series found) straight to the process's stderr, outside
# the one-line error contract; the conditions that matter are checked here and reported as SegmorphError.
sitk.ProcessObject.SetGlobalWarningDisplay(False)


def image_suffix(path: str | Path) -> str:
    """The file's image suffix (``.nii.gz`` counts as one), lower case, or '' if not an image."""
    name = str(path).lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), "")


def strip_suffix(path: str | Path) -> str:
    """File name without its image suffix: ``case_001.nii.gz`` -> ``case_001``; ``.dcm`` (a DICOM file, e.g. a
    DICOM-SEG label map) counts as one: ``case_001.dcm`` -> ``case_001``."""
    name = Path(path).name
    suffix = image_suffix(name) or (DICOM_SUFFIX if name.lower().endswith(DICOM_SUFFIX) else "")
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


def case_name(source: str | Path) -> str:
    """The case id of a scan, mask or DICOM series folder, as ``evaluate``, ``predict``, ``baseline`` and ``view``
    match files: the name without its image suffix and without nnU-Net's ``_0000`` channel suffix."""
    return strip_suffix(mask_file_name(source, ""))


def has_physical_spacing(path: str | Path) -> bool:
    """Whether an image file's pixel size is a length in the scene: False for pictures (:data:`PICTURE_SUFFIXES`).

    A picture stores no pixel size, or a print resolution (dots per inch) that measures nothing in the scene;
    distances measured in it are counted in pixels (see :func:`distance_unit`). Scans (NIfTI, NRRD, MetaImage,
    DICOM series folders) give their spacing in mm.
    """
    return image_suffix(path) not in PICTURE_SUFFIXES


def distance_unit(path: str | Path) -> str:
    """``"mm"`` for scans, ``"px"`` for pictures: the unit of distances measured in the image at ``path``."""
    return "mm" if has_physical_spacing(path) else "px"


def stored_pixel_type(path: str | Path) -> str:
    """The type of one stored value of an image file or DICOM series folder, as numpy names it (``uint8``,
    ``int16``, ``float32``), read from the header alone.

    NIfTI: the header's datatype (SimpleITK reports integer voxels with a scale factor as float). Other formats:
    the component type SimpleITK reads (a DICOM series: that of its first slice, rescale applied). Channels
    (RGB, vectors) are not counted: an RGB PNG is ``uint8``.

    Raises:
        SegmorphError: The path is not a regular file or folder, or the header cannot be read.
    """
    path = Path(path)
    check_input_path(path)
    name = path
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(_sitk_name(path))
        if not series:
            raise SegmorphError("folder holds no DICOM series", path)
        name = Path(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])[0])
    try:
        reader = _header_reader(name, path)
    except SegmorphError:
        if image_suffix(path) not in PICTURE_SUFFIXES:
            raise
        _picture_information(path)  # a picture Pillow reads (grey and alpha): 8-bit, else the same error
        return "uint8"
    if image_suffix(path) in (".nii", ".nii.gz") and reader.HasMetaDataKey("datatype"):
        stored = NIFTI_DATATYPE_NAMES.get(int(reader.GetMetaData("datatype")))
        if stored:
            return stored
    pixel_id = reader.GetPixelID()
    return _SITK_COMPONENT_NAMES.get(pixel_id) or sitk.GetPixelIDValueAsString(pixel_id)


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """Send what C libraries print on the process's stdout and stderr (file descriptors 1 and 2) to nowhere
    while a file is read or written.

    The image libraries under SimpleITK print there, and no switch turns it off: libpng's "iCCP: too short" and
    MetaIO's complaints on stderr, libjpeg's "Premature end of JPEG file" on stdout; around the one line segmorph
    reports. A failed read's reason comes back in ITK's exception all the same, and the conditions that matter
    are checked before reading (:mod:`segmorph.readchecks`). Python's own streams are flushed first.
    """
    saved: list[tuple[int, int]] = []
    try:
        for stream, descriptor in ((sys.stdout, 1), (sys.stderr, 2)):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
                saved.append((descriptor, os.dup(descriptor)))
        with open(os.devnull, "wb") as null:
            for descriptor, _ in saved:
                os.dup2(null.fileno(), descriptor)
        yield
    finally:
        for descriptor, copy in saved:
            os.dup2(copy, descriptor)
            os.close(copy)


def _header_reader(name: Path, path: Path) -> sitk.ImageFileReader:
    """A SimpleITK reader that has read ``name``'s header; a failure is one error line naming ``path``."""
    if image_suffix(name) in NRRD_SUFFIXES:
        check_nrrd_data_files(name)
    reader = sitk.ImageFileReader()
    reader.SetFileName(_sitk_name(name))
    try:
        with native_output_silenced():
            reader.ReadImageInformation()
    except RuntimeError as err:
        raise SegmorphError(f"cannot read image header ({_first_line(err)})", path) from None
    return reader


def read_image_information(path: str | Path) -> tuple[tuple[int, ...], int, Affine]:
    """An image file's spatial shape ``(I, J[, K])``, channels and geometry (spacing and origin in mm, LPS),
    read from the header alone: no voxel is decompressed and no read check is run but the path's.

    For describing a file that :func:`read_image` refuses (``segmorph info``); never for loading data.

    Raises:
        SegmorphError: The path is not a regular file, the header cannot be read, or its geometry is singular.
    """
    path = Path(path)
    check_input_path(path)
    picture = image_suffix(path) in PICTURE_SUFFIXES
    try:
        reader = _header_reader(path, path)
    except SegmorphError:
        if not picture:
            raise
        return _picture_information(path)
    if reader.GetDimension() not in (2, 3):
        raise SegmorphError(f"expected a 2D or 3D image, got {reader.GetDimension()}D", path)
    try:
        affine = Affine.from_geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    except ValueError as err:  # a singular matrix: zero spacing or degenerate direction cosines
        raise SegmorphError(f"degenerate geometry: {err}", path) from None
    components = max(1, reader.GetNumberOfComponents())
    if picture and components in (2, 4):
        components -= 1  # the alpha channel, which read_image drops
    return tuple(int(s) for s in reader.GetSize()), components, affine


def _picture_information(path: Path) -> tuple[tuple[int, ...], int, Affine]:
    """:func:`read_image_information` of a picture SimpleITK cannot read (grey and alpha), from Pillow."""
    from PIL import Image as Picture

    try:
        with Picture.open(path) as picture:
            (width, height), bands = picture.size, picture.getbands()
    except Exception:  # noqa: BLE001 -- Pillow raises OSError, ValueError, ...
        raise SegmorphError("cannot read image header (unknown format or corrupt file: no reader recognises it)",
                            path) from None  # fmt: skip
    channels = len(bands) - (1 if "A" in bands or "a" in bands else 0)
    return (int(width), int(height)), max(1, channels), Affine.identity(2)


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


def folder_files(folder: Path, wanted: Callable[[Path], bool] | None = None) -> list[Path]:
    """The files directly in ``folder`` that ``wanted`` accepts (default: an image suffix), sorted; hidden names
    (a killed writer's temporary files) left out, sub-folders too.

    Raises:
        SegmorphError: An accepted name that is not a regular file (a broken symbolic link, a FIFO), named: it
            is refused, not silently skipped (:func:`check_input_path`); a folder that cannot be listed.
    """
    accept = wanted if wanted is not None else (lambda p: bool(image_suffix(p)))
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        raise SegmorphError(f"cannot list the folder ({err.strerror or err})", folder) from None
    files = []
    for entry in entries:
        if entry.name.startswith(".") or entry.is_dir() or not accept(entry):
            continue
        check_input_path(entry)
        files.append(entry)
    return files


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
            inside = folder_files(path)
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
        check_series([_slice_facts(name) for name in files], path, budget)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        itk = reader.Execute()
        check_geometry(itk.GetSpacing(), itk.GetOrigin(), itk.GetDirection(), path)
        return itk
    if image_suffix(path) in (".nii", ".nii.gz"):
        check_nifti(path, check_finite, budget)
    if image_suffix(path) in NRRD_SUFFIXES:  # before the header is read: the reader opens its data files
        check_nrrd_data_files(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(_sitk_name(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    if any(s <= 0 for s in size):
        raise SegmorphError(f"zero-size dimension in header, size {size}", path)
    components = max(1, reader.GetNumberOfComponents())
    shown = "x".join(map(str, size)) + (f" x {components} components" if components > 1 else "")
    check_voxel_budget(float(np.prod(size, dtype=np.float64)) * components, f"declared size {shown}", path, budget)
    if image_suffix(path) in (".mha", ".mhd"):  # after the budget: a header declaring a bomb is told so
        check_metaimage_header(path)
    if image_suffix(path) in PICTURE_SUFFIXES:
        check_picture_complete(path)
    if reader.HasMetaDataKey(DICOM_ROWS_KEY):  # read by GDCM: the pixel data must hold what the header declares
        _check_dicom_pixels(path)
    if reader.GetPixelID() in COMPLEX_PIXEL_IDS:
        raise SegmorphError(f"complex-valued image ({sitk.GetPixelIDValueAsString(reader.GetPixelID())}): "
                            "segmorph reads real values only; save the magnitude or the real part", path)  # fmt: skip
    check_geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), path)
    return reader.Execute()


def _check_dicom_pixels(path: Path) -> None:
    from segmorph.dicom.pixels import check_pixel_data  # pydicom only where DICOM is read

    check_pixel_data(path)


def _slice_facts(name: str) -> SliceFacts:
    """Read a DICOM slice's header and tags (:data:`SLICE_TAGS`) and check them (:func:`slice_facts`)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise SegmorphError(f"cannot read DICOM slice ({_first_line(err)})", name) from None
    _check_dicom_pixels(Path(name))
    tags = {key: reader.GetMetaData(key).strip() for key in SLICE_TAGS if reader.HasMetaDataKey(key)}
    values = int(np.prod(reader.GetSize(), dtype=np.float64)) * max(1, reader.GetNumberOfComponents())
    return slice_facts(tags, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), values, name)


def read_image(path: str | Path, is_label: bool = False, check_finite: bool = True,
               voxel_budget: int | None = None) -> Image:  # fmt: skip
    """Read an image file or a DICOM series folder with its geometry.

    Before anything is decompressed or allocated the header is checked: the declared size against the
    voxel budget (:func:`check_voxel_budget`), the geometry (:func:`check_geometry`; for NIfTI also the raw
    qform/sform), the pixel type (complex images are refused); a path that is not a regular file or
    folder is refused before it is opened (:func:`check_input_path`).

    Args:
        path: A file (NIfTI, NRRD, MHA/MHD, PNG, JPEG, ...) or a DICOM series folder; with ``is_label``
            also a DICOM-SEG file, decoded on the grid of the series it segments
            (:func:`segmorph.dicom.seg.read_segmentation`).
        is_label: Read as an integer label map (values must be whole numbers, at most :data:`MAX_LABEL_VALUES`
            distinct ones).
        check_finite: Refuse images holding NaN or infinite voxels (values that overflow float32 when
            cast are refused either way).
        voxel_budget: Most values (voxels x components) to load; :func:`max_voxels` when None.

    Returns:
        An :class:`Image` with data ``(C, I, J[, K])``: float32 for images, int64 for labels.
        A 3D volume with one slice along K stays 3D; a PNG is 2D with 1 or 3 channels (an alpha channel is
        dropped: a transparent picture is laid over black; a palette picture is read as its colours).

    Raises:
        SegmorphError: The file is missing, unreadable, 4D, or holds bad values.
    """
    path = Path(path)
    check_input_path(path)
    if not os.access(path, os.R_OK):
        raise SegmorphError("permission denied: cannot read", path)
    if is_label and is_segmentation_file(path):
        from segmorph.dicom.seg import read_segmentation

        return read_segmentation(path, voxel_budget=voxel_budget)
    try:
        with native_output_silenced():
            itk = _read_sitk(path, check_finite, voxel_budget)
    except SegmorphError:
        raise
    except RuntimeError as err:
        if image_suffix(path) not in PICTURE_SUFFIXES:
            raise SegmorphError(f"cannot read image ({_first_line(err)})", path) from None
        itk = _read_picture_with_pillow(path, voxel_budget, _first_line(err))
    return _from_sitk(itk, path, is_label, check_finite)


def _read_picture_with_pillow(path: Path, budget: int | None, sitk_reason: str) -> sitk.Image:
    """A picture SimpleITK cannot read (a PNG of grey and alpha), read with Pillow: pixels of one unit, the
    size checked against the voxel budget before it is decoded."""
    from PIL import Image as Picture

    try:
        with Picture.open(path) as picture:
            width, height = picture.size
            bands = len(picture.getbands())
            check_voxel_budget(float(width) * height * bands, f"declared size {width}x{height} x {bands}", path,
                               budget)  # fmt: skip
            array = np.asarray(picture.convert("LA" if picture.mode in ("LA", "La", "PA") else picture.mode))
    except SegmorphError:
        raise
    except Exception:  # noqa: BLE001 -- Pillow raises OSError, ValueError, DecompressionBombError, ...
        raise SegmorphError(f"cannot read image ({sitk_reason})", path) from None
    return sitk.GetImageFromArray(array, isVector=array.ndim == 3)


def read_label_map(path: str | Path, like: Image | None = None, voxel_budget: int | None = None) -> Image:
    """Read a label map (:func:`read_image` with ``is_label``); a DICOM-SEG file lands on ``like``'s grid.

    A DICOM-SEG may hold frames for only the slices it segments; with ``like`` (the image or mask it goes with)
    its frames are placed on that grid (:func:`segmorph.dicom.seg.read_segmentation`). Other files are read as
    they are: comparing their grid with ``like``'s is the caller's check.

    Raises:
        SegmorphError: As :func:`read_image`; a DICOM-SEG that does not fit ``like``'s grid.
    """
    if like is not None and is_segmentation_file(path):
        from segmorph.dicom.seg import read_segmentation

        return read_segmentation(path, reference=like, voxel_budget=voxel_budget)
    return read_image(path, is_label=True, voxel_budget=voxel_budget)


def is_segmentation_file(path: str | Path) -> bool:
    """True for a DICOM-SEG file: a regular file without an image suffix (``.dcm`` or none) that
    :func:`segmorph.dicom.seg.is_segmentation` recognises. Image files are never opened."""
    path = Path(path)
    if image_suffix(path) or not path.is_file():
        return False
    from segmorph.dicom.seg import is_segmentation

    return is_segmentation(path)


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    errors = [ln.split("ERROR:", 1)[1] for ln in lines if "ERROR:" in ln]
    useful = [ln for ln in lines if "Description:" in ln] or errors or lines or ["unknown error"]
    text = useful[0].replace("Description:", "").strip()
    text = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", text)  # ITK's "NrrdImageIO(0x55...): ": a memory address
    reasons = [ln.removeprefix("[nrrd]").strip() for ln in lines if ln.startswith("[nrrd]")]
    if text.endswith(":") and reasons:  # the NRRD reader's reason is its innermost (last) line
        text = re.sub(r"^_?\w+:\s*", "", reasons[-1]) or text
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
    if image_suffix(path) in PICTURE_SUFFIXES and array.shape[0] in (2, 4):
        array = _without_alpha(array, is_label)
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


def _without_alpha(array: np.ndarray, is_label: bool) -> np.ndarray:
    """A picture's ``(C, ...)`` grey + alpha or RGBA values without the alpha channel: an opaque picture keeps its
    values exactly; a transparent one is laid over black (a label map just loses the channel)."""
    colour, alpha = array[:-1], array[-1:]
    opaque = np.iinfo(array.dtype).max if np.issubdtype(array.dtype, np.integer) else 1.0
    if is_label or (alpha == opaque).all():
        return np.ascontiguousarray(colour)
    return (colour.astype(np.float32) * (alpha.astype(np.float32) / opaque)).astype(np.float32)


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.shape[0] != 1:
        raise SegmorphError(f"label map must have one channel, got {array.shape[0]}", path)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise SegmorphError("label map holds NaN or infinite values", path)
        if not np.array_equal(array, np.round(array)):
            raise SegmorphError("label map holds non-integer values", path)
    low, high = array.min(), array.max()
    if low < 0:
        raise SegmorphError(f"label map holds negative value {low}", path)
    if high >= 2**63:  # uint64 or float values that int64 cannot hold (the cast would wrap)
        raise SegmorphError(f"label map holds value {high:.6g}, beyond the int64 range", path)
    count = len(np.unique(array)) if high - low >= MAX_LABEL_VALUES else 0  # counted only where the range allows more
    if count > MAX_LABEL_VALUES:
        raise SegmorphError(f"not a label map: holds {count:,} distinct values (a label map holds at most "
                            f"{MAX_LABEL_VALUES:,}, background included); is it a scan?", path)  # fmt: skip
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
        with native_output_silenced():  # the NIfTI writer's complaint on a full disk: _check_written says it
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
            check_nifti(path, budget=2**63)  # a written image is already in memory: no budget
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
