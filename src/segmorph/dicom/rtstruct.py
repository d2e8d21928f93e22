"""RT Structure Sets (RT-STRUCT): a label map as closed planar contours on its source DICOM series, and back.

Writing (:func:`write_rtstruct`): every foreground label becomes one ROI (ROI Number = label value) whose contours
are traced on each slice of the series with :func:`skimage.measure.find_contours` at level 0.5 on the slice's
binary mask padded with background, so every contour closes and runs through the midpoints between voxel
centres inside and outside the label; a hole gets its own contour. Contour points go from pixel (column, row) to
patient LPS millimetres with the slice's own ImagePositionPatient, ImageOrientationPatient and PixelSpacing, so
oblique series are placed exactly. Each contour references its slice's SOP instance; the structure set references
the study, the series and every instance through the Referenced Frame of Reference Sequence.

Reading (:func:`read_rtstruct`): each ROI's closed planar contours are mapped to the voxel grid of a reference
image and filled with :func:`skimage.draw.polygon` (voxels whose centre lies inside), the contours of one slice
combined by even-odd (XOR), so a contour inside another cuts a hole. Writing then reading gives back the label
map up to the voxels along the label's boundary.
"""

from __future__ import annotations

import colorsys
import datetime as dt
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid
from pydicom.valuerep import format_number_as_ds
from skimage.draw import polygon
from skimage.measure import find_contours

from segmorph.dicom.series import read_series_headers
from segmorph.dicom.structure import check_structure
from segmorph.errors import SegmorphError
from segmorph.image import Image
from segmorph.io import atomic_write_bytes
from segmorph.outputs import Output, check_outputs

__all__ = ["write_rtstruct", "read_rtstruct", "roi_colour", "slice_contours"]

GRID_TOLERANCE_VOXELS = 0.1
"""Farthest (in voxels of the finest spacing) the label map's grid may lie from the series' slice geometry, and a
contour point from a slice centre of the reference grid; DICOM's decimal strings and SimpleITK's slice spacing
keep real series far below it, while any other grid (another series, a resampled map) lies well beyond."""

STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
"""The SOP Class UID that RT Referenced Study Sequence items name (PS3.3 C.8.8.5: Study Component Management)."""

# Source attributes copied unchanged (Patient and General Study modules); the Type 2 ones stay present, empty
# when the source lacks them.
_PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip
_PATIENT_STUDY_OPTIONAL = ("IssuerOfPatientID", "OtherPatientIDsSequence", "PatientAge", "PatientSize",
                           "PatientWeight", "StudyDescription", "PatientIdentityRemoved", "DeidentificationMethod")  # fmt: skip
_MAX_LO = 64  # characters of a LO (long string) value


def write_rtstruct(labels: Image, series_dir: Path, out_path: Path, label_names: Mapping[int, str], *,
                   run_id: str = "") -> Path:  # fmt: skip
    """Write a label map as an RT Structure Set referencing its source DICOM series, atomically.

    Args:
        labels: Label map ``(1, I, J, K)`` of whole non-negative values on the series' grid, as
            :func:`segmorph.io.read_image` reads ``series_dir`` (I = column, J = row, K = slice); 0 is background.
        series_dir: The folder holding the one source series.
        out_path: The ``.dcm`` file to write; it may not lie in ``series_dir``.
        label_names: ROI name per label value; a value without a name is called ``label <value>``. Every named
            foreground value gets an ROI, with no contours when the map does not hold it.
        run_id: Named in SeriesDescription and in each ROI's generation description.

    Returns:
        ``out_path``.

    Raises:
        SegmorphError: The label map is not a 3D single-channel map of whole non-negative values, does not lie on
            the series' grid, the series lacks the geometry or UIDs an RT-STRUCT needs, or the file cannot be
            written.

    Example:
        >>> labels = read_image("masks/case.nii.gz", is_label=True)  # doctest: +SKIP
        >>> write_rtstruct(labels, Path("scans/case"), Path("case_rtstruct.dcm"), {1: "hippocampus"})  # doctest: +SKIP
    """
    series_dir, out_path = Path(series_dir), Path(out_path)
    check_outputs([Output.file(out_path, series_dir)], inputs=[series_dir])
    if out_path.resolve().is_relative_to(series_dir.resolve()):
        raise SegmorphError(f"the RT-STRUCT would join the source series folder {series_dir}; write it elsewhere",
                            out_path)  # fmt: skip
    values = _label_values(labels, out_path)
    headers = read_series_headers(series_dir)
    slice_maps = [_slice_to_world(header, series_dir) for header in headers]
    _check_on_series(labels, slice_maps, series_dir)
    frame_of_reference = _frame_of_reference(headers, series_dir)
    named = {int(value): name for value, name in label_names.items()}
    numbers = sorted({int(v) for v in np.unique(values) if v > 0} | {v for v in named if v > 0})
    if not numbers:
        raise SegmorphError("nothing to write: the label map holds no foreground label and none is named", out_path)
    ds = _structure_set(headers[0], run_id)
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = headers[0].get("PositionReferenceIndicator", "")
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame(headers, frame_of_reference)]
    names = {number: _text(named.get(number, f"label {number}"), _MAX_LO) for number in numbers}
    ds.StructureSetROISequence = [_roi_item(n, names[n], frame_of_reference, run_id) for n in numbers]
    ds.ROIContourSequence = [_roi_contours(values == n, n, headers, slice_maps) for n in numbers]
    ds.RTROIObservationsSequence = [_observation(n) for n in numbers]
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return atomic_write_bytes(out_path, buffer.getvalue())


def read_rtstruct(path: Path, reference: Image) -> Image:
    """Rasterise an RT Structure Set's closed planar contours onto a reference grid.

    Args:
        path: An RT-STRUCT file.
        reference: An image on the grid to fill, usually the series the structure set references; data
            ``(C, I, J, K)``, only its grid is used.

    Returns:
        A label map ``(1, I, J, K)`` int64 on ``reference``'s grid: each voxel whose centre lies inside an ROI's
        contours (even-odd over the contours of its slice) holds that ROI's number, 0 elsewhere; where ROIs
        overlap the higher number wins. Point and open contours are skipped (they enclose nothing).

    Raises:
        SegmorphError: The file is not a readable RT-STRUCT, holds malformed contours, or a contour does not lie
            on one of the reference's slices.

    Example:
        >>> scan = read_image("scans/case")  # doctest: +SKIP
        >>> labels = read_rtstruct(Path("case_rtstruct.dcm"), scan)  # doctest: +SKIP
    """
    path = Path(path)
    if reference.ndim != 3:
        raise SegmorphError(f"reference must be a 3D image to rasterise contours on, got {reference.ndim}D", path)
    ds = _read_structure_set(path)
    shape = reference.spatial_shape
    labels = np.zeros(shape, dtype=np.int64)
    declared = {_roi_number(item, "ROINumber", path) for item in ds.get("StructureSetROISequence", [])}
    rois = [(_roi_number(item, "ReferencedROINumber", path), item) for item in ds.get("ROIContourSequence", [])]
    for number, item in sorted(rois, key=lambda pair: pair[0]):
        if number not in declared:
            raise SegmorphError(f"ROI Contour Sequence refers to ROI {number}, not in the Structure Set ROI Sequence",
                                path)  # fmt: skip
        inside = np.zeros(shape, dtype=bool)
        for contour in item.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "") == "CLOSED_PLANAR":
                _toggle_polygon(inside, _contour_voxels(contour, reference, number, path))
        labels[inside] = number
    return Image(torch.from_numpy(labels[None]), reference.affine, is_label=True)


def roi_colour(number: int) -> tuple[int, int, int]:
    """A display colour (R, G, B in 0..255) for an ROI: hues a golden angle apart, so every ROI differs.

    Example:
        >>> roi_colour(1) != roi_colour(2)
        True
    """
    hue = (0.0 + number * 0.6180339887498949) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


# -- writing --------------------------------------------------------------------------------------------------


def _label_values(labels: Image, path: Path) -> np.ndarray:
    """The label map's values ``(I, J, K)`` int64, after checking shape and values."""
    if labels.ndim != 3 or labels.num_channels != 1:
        raise SegmorphError(f"labels: expected a 3D label map (1, I, J, K), got shape {tuple(labels.data.shape)}",
                            path)  # fmt: skip
    values = labels.numpy()[0]
    if values.dtype.kind == "f" and not (np.isfinite(values).all() and np.array_equal(values, np.round(values))):
        raise SegmorphError("labels: the label map holds values that are not whole numbers", path)
    if values.dtype.kind not in "fiub":
        raise SegmorphError(f"labels: expected integer label values, got {values.dtype}", path)
    if values.size and values.min() < 0:
        raise SegmorphError(f"labels: the label map holds negative value {values.min()}", path)
    return values.astype(np.int64)


def _slice_to_world(header: Dataset, series_dir: Path) -> np.ndarray:
    """The ``(3, 3)`` map of one slice: ``world = [column, row, 1] @ map`` in LPS mm."""
    try:
        position = np.array([float(v) for v in header.ImagePositionPatient], dtype=np.float64)
        orientation = np.array([float(v) for v in header.ImageOrientationPatient], dtype=np.float64)
        row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        where = getattr(header, "filename", None) or series_dir
        raise SegmorphError("slice lacks a valid ImagePositionPatient, ImageOrientationPatient or PixelSpacing",
                            where) from None  # fmt: skip
    if position.shape != (3,) or orientation.shape != (6,):
        raise SegmorphError("slice has a malformed ImagePositionPatient or ImageOrientationPatient", series_dir)
    # ImageOrientationPatient: the direction along a row (column index grows), then along a column (row index
    # grows); PixelSpacing: the distance between rows, then between columns.
    return np.stack([orientation[:3] * column_spacing, orientation[3:] * row_spacing, position])


def _pixels_to_world(points: np.ndarray, slice_map: np.ndarray) -> np.ndarray:
    """Pixel positions ``(n, 2)`` as (column, row) -> LPS mm ``(n, 3)`` on the slice of ``slice_map``."""
    return points @ slice_map[:2] + slice_map[2]


def _check_on_series(labels: Image, slice_maps: Sequence[np.ndarray], series_dir: Path) -> None:
    """Refuse a label map whose grid is not the series' grid (shape, then each slice's corners)."""
    columns, rows, slices = labels.spatial_shape
    if slices != len(slice_maps):
        raise SegmorphError(f"label map has {slices} slices, the series {len(slice_maps)}", series_dir)
    corners = np.array([[0, 0], [columns - 1, 0], [0, rows - 1], [columns - 1, rows - 1]], dtype=np.float64)
    tolerance = GRID_TOLERANCE_VOXELS * float(labels.spacing.min())
    for k, slice_map in enumerate(slice_maps):
        expected = labels.affine.voxel_to_world(np.column_stack([corners, np.full(4, k)]))
        distance = float(np.linalg.norm(_pixels_to_world(corners, slice_map) - expected, axis=1).max())
        if distance > tolerance:
            raise SegmorphError(f"label map does not lie on the series grid (slice {k} is {distance:.3g} mm away; "
                                f"shape {labels.spatial_shape})", series_dir)  # fmt: skip


def _frame_of_reference(headers: Sequence[Dataset], series_dir: Path) -> str:
    uids = {str(h.get("FrameOfReferenceUID", "")) for h in headers}
    if len(uids) != 1 or not next(iter(uids)):
        shown = "no FrameOfReferenceUID" if uids == {""} else f"{len(uids)} FrameOfReferenceUIDs"
        raise SegmorphError(f"series has {shown}; an RT-STRUCT needs one to place its contours", series_dir)
    return next(iter(uids))


def _text(value: object, limit: int) -> str:
    """``value`` as one DICOM text value: printable, no backslash (the value separator), at most ``limit`` long."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value)).replace("\\", "/").strip()
    return text[:limit].rstrip()


def _structure_set(source: Dataset, run_id: str) -> Dataset:
    """The data set with file meta, patient and study (copied), series, equipment, structure set and SOP common."""
    from segmorph import __version__

    now = dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    instance_uid = generate_uid(prefix=None)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: copied names and label names may be in any script
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for keyword in _PATIENT_STUDY_TYPE2:
        setattr(ds, keyword, source.get(keyword, ""))
    for keyword in _PATIENT_STUDY_OPTIONAL:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid(prefix=None)
    ds.SeriesNumber = _series_number(source)
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = _text(f"segmorph contours {run_id}".strip(), _MAX_LO)
    ds.OperatorsName = ""
    ds.Manufacturer = "segmorph"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "segmorph"
    ds.StructureSetName = _text(run_id, _MAX_LO) if run_id else "segmorph"
    ds.StructureSetDate, ds.StructureSetTime = date, time
    return ds


def _series_number(source: Dataset) -> int | str:
    """The source series' number + 1000 (listed after it by viewers that sort by number), or empty."""
    try:
        number = int(source.get("SeriesNumber", "")) + 1000
    except (TypeError, ValueError):
        return ""
    return number if 0 <= number < 2**31 else ""


def _referenced_frame(headers: Sequence[Dataset], frame_of_reference: str) -> Dataset:
    """Referenced Frame of Reference item: the study, the series and every instance of it."""
    images = [_image_reference(h) for h in headers]
    series = Dataset()
    series.SeriesInstanceUID = headers[0].SeriesInstanceUID
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    study.ReferencedSOPInstanceUID = headers[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_of_reference
    frame.RTReferencedStudySequence = [study]
    return frame


def _image_reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item


def _roi_item(number: int, name: str, frame_of_reference: str, run_id: str) -> Dataset:
    from segmorph import __version__

    item = Dataset()
    item.ROINumber = number
    item.ReferencedFrameOfReferenceUID = frame_of_reference
    item.ROIName = name
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = _text(f"segmorph {__version__} {run_id}".strip(), _MAX_LO)
    return item


def _observation(number: int) -> Dataset:
    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = number
    item.RTROIInterpretedType = ""  # Type 2: the label map does not say whether a label is an organ, a target...
    item.ROIInterpreter = ""
    return item


def _roi_contours(
    mask: np.ndarray, number: int, headers: Sequence[Dataset], slice_maps: Sequence[np.ndarray]
) -> Dataset:
    """ROI Contour item of one label: its colour and a closed planar contour per boundary per slice."""
    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = list(roi_colour(number))
    contours = DicomSequence()
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        for points in slice_contours(mask[:, :, k]):
            contour = Dataset()
            contour.ContourImageSequence = [_image_reference(headers[k])]
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourNumber = len(contours) + 1
            world = _pixels_to_world(points, slice_maps[k])
            contour.ContourData = [format_number_as_ds(round(float(v), 4) + 0.0) for v in world.ravel()]
            contours.append(contour)
    if contours:
        item.ContourSequence = contours
    return item


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The closed boundaries of a 2D binary mask ``(I, J)`` as polygons of (i, j) pixel positions.

    Each polygon ``(n, 2)`` runs through the midpoints between pixels inside and outside the mask (level 0.5 of
    the mask padded with background, so boundaries on the image edge close too), its first point not repeated at
    the end and points on straight runs dropped. Outer boundaries and holes alike are returned, one polygon each.

    Example:
        >>> square = np.zeros((4, 4), bool); square[1:3, 1:3] = True
        >>> len(slice_contours(square)), len(slice_contours(square)[0])
        (1, 8)
    """
    padded = np.pad(np.asarray(mask, dtype=np.float64), 1)
    polygons = []
    for contour in find_contours(padded, 0.5):
        points = _drop_straight_runs(contour[:-1] - 1.0)  # find_contours repeats the first point at the end
        if len(points) >= 3:
            polygons.append(points)
    return polygons


def _drop_straight_runs(points: np.ndarray) -> np.ndarray:
    """A closed polygon without the points that lie on the straight line between their neighbours."""
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return points[np.abs(turn) > 1e-9]


# -- reading --------------------------------------------------------------------------------------------------


def _read_structure_set(path: Path) -> Dataset:
    """The parsed RT-STRUCT, after its structure is checked and its SOP class confirmed."""
    if not path.is_file():
        raise SegmorphError("no such RT-STRUCT file", path)
    check_structure(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # noqa: BLE001 -- pydicom raises several unrelated types for damaged files
        raise SegmorphError(f"cannot read DICOM file ({str(err).splitlines()[0][:200]})", path) from None
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != RTStructureSetStorage:
        shown = f"{sop_class} ({pydicom.uid.UID(sop_class).name})" if sop_class else "none"
        raise SegmorphError(f"not an RT Structure Set (SOP Class UID {shown})", path)
    return ds


def _roi_number(item: Dataset, keyword: str, path: Path) -> int:
    """The ROI number an item holds under ``keyword`` (a positive whole number)."""
    try:
        number = int(item.get(keyword))
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise SegmorphError(f"an item lacks a positive {keyword} ({item.get(keyword)!r})", path)
    return number


def _contour_voxels(contour: Dataset, reference: Image, number: int, path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """A closed planar contour as fractional (i, j) vertices on the reference's slice k."""
    try:
        world = np.array([float(v) for v in contour.ContourData], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        raise SegmorphError(f"ROI {number}: a contour has missing or non-numeric Contour Data", path) from None
    if world.size < 9 or world.size % 3:
        raise SegmorphError(f"ROI {number}: a contour has {world.size} coordinates, not 3 per point for 3+ points",
                            path)  # fmt: skip
    index = reference.affine.world_to_voxel(world.reshape(-1, 3))
    slices = reference.spatial_shape[2]
    k = int(np.round(np.median(index[:, 2])))
    off = float(np.abs(index[:, 2] - k).max())
    if off > GRID_TOLERANCE_VOXELS or not 0 <= k < slices:
        where = f"{off:.3g} slices off the nearest slice" if off > GRID_TOLERANCE_VOXELS else f"at slice {k}"
        raise SegmorphError(f"ROI {number}: a contour does not lie on the reference's slices ({where}; the reference "
                            f"has {slices} slices along K)", path)  # fmt: skip
    return index[:, 0], index[:, 1], k


def _toggle_polygon(inside: np.ndarray, vertices: tuple[np.ndarray, np.ndarray, int]) -> None:
    """Flip the voxels of slice k whose centres lie inside the polygon (even-odd rule across contours)."""
    i, j, k = vertices
    rows, columns = polygon(i, j, shape=inside.shape[:2])
    inside[rows, columns, k] ^= True
