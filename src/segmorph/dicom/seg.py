"""DICOM Segmentation objects (DICOM-SEG) written from and read into label maps, with highdicom.

A SEG written here refers to its source series: the patient and study of the series, the Study, Series and SOP
Instance UIDs of every slice, its Frame of Reference. It holds one segment per foreground label value ``v``
(segment number ``v``, labelled with the label's name) and, for every slice of the series, one frame per segment,
empty frames included, so the SEG covers the whole series grid. Segments are BINARY, or FRACTIONAL (probability,
255 steps) when probabilities are given.

Axes: segmorph images are ``(C, I, J, K)`` with I = DICOM column, J = DICOM row, K = slice (the order of
:func:`segmorph.dicom.series.series_files`); a SEG frame is ``(rows, columns)``, i.e. ``(J, I)``; highdicom's
volumes are ``(slice, row, column)``. World positions are LPS mm in both.

Segment codes: each segment's segmented property category and type are SNOMED-CT concepts. A dataset declares
them in its ``dataset.json`` under ``"segment_codes"``, by label value, each concept as ``[scheme, value, meaning]``::

    "segment_codes": {"1": {"category": ["SCT", "91723000", "Anatomical Structure"],
                            "type": ["SCT", "5366008", "Hippocampus"]}}

A label without declared codes gets the generic ``SCT 85756007 "Tissue"`` for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from segmorph.dicom.series import read_series_headers
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import GRID_TOLERANCE_MM, Image, grid_difference
from segmorph.io import atomic_write_bytes
from segmorph.readchecks import check_input_path, check_voxel_budget
from segmorph.records import read_json, read_json_if_present

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"  # SOP Class UID of DICOM-SEG objects
GENERIC_CONCEPT = ("SCT", "85756007", "Tissue")  # category and type of a label without declared codes
MAX_SEGMENTS = 65535  # Segment Number is an unsigned 16-bit value
LO_CHARS = 64  # longest Long String (segment label, series description)


@dataclass(frozen=True)
class SegmentCodes:
    """The segmented property category and type of one segment, each a coded concept ``(scheme, value, meaning)``.

    Example:
        >>> SegmentCodes(("SCT", "91723000", "Anatomical Structure"), ("SCT", "5366008", "Hippocampus"))
    """

    category: tuple[str, str, str] = GENERIC_CONCEPT
    type: tuple[str, str, str] = GENERIC_CONCEPT


def parse_segment_codes(raw: Any, path: str | Path) -> dict[int, SegmentCodes]:
    """Label value -> :class:`SegmentCodes` from a dataset.json's ``segment_codes`` object (module docstring).

    Raises:
        SegmorphError: An entry that is not a label value with ``category`` and ``type`` concepts of three
            non-empty strings, naming ``path``.
    """
    if not isinstance(raw, dict):
        raise SegmorphError("segment_codes: expected an object of label values", path)
    codes = {}
    for key, entry in raw.items():
        if not str(key).isdigit() or int(key) == 0:
            raise SegmorphError(f"segment_codes: {key!r} is not a foreground label value", path)
        if not isinstance(entry, dict) or set(entry) != {"category", "type"}:
            raise SegmorphError(f"segment_codes[{key!r}]: expected an object with 'category' and 'type'", path)
        concepts = []
        for part in ("category", "type"):
            concept = entry[part]
            if not (isinstance(concept, list) and len(concept) == 3 and all(isinstance(v, str) and v.strip()
                                                                            for v in concept)):  # fmt: skip
                raise SegmorphError(f"segment_codes[{key!r}].{part}: expected [scheme, value, meaning], "
                                    f"got {concept!r}", path)  # fmt: skip
            concepts.append(tuple(v.strip() for v in concept))
        codes[int(key)] = SegmentCodes(*concepts)
    return codes


def run_segment_codes(run_dir: str | Path) -> dict[int, SegmentCodes]:
    """The segment codes a run's dataset declares (``segment_codes`` of its ``dataset.json``): those recorded in the
    run's ``run.json`` at training, else those of the ``dataset.json`` in the dataset folder ``run.json`` names;
    empty (generic codes) when there are none. A cross-validation run answers with its folds' record, an ensemble
    folder (``ensemble.json``) with its first member's.

    Raises:
        SegmorphError: The run record or the dataset.json cannot be read, or its ``segment_codes`` are malformed.
    """
    path, record = _training_record(Path(run_dir))
    if isinstance(record.get("segment_codes"), dict):
        return parse_segment_codes(record["segment_codes"], path)
    dataset = record.get("dataset")
    if not isinstance(dataset, str) or not (Path(dataset) / "dataset.json").is_file():
        return {}
    path = Path(dataset) / "dataset.json"
    meta = read_json(path, "dataset.json")
    return parse_segment_codes(meta["segment_codes"], path) if "segment_codes" in meta else {}


def _training_record(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """``(path, record)`` of the ``run.json`` that describes how ``run_dir``'s model(s) were trained."""
    if (run_dir / "ensemble.json").is_file():
        from segmorph.segmentation.find_best import read_members

        return _training_record(read_members(run_dir)[0])
    for path in [run_dir / "run.json", *sorted(run_dir.glob("fold_*/run.json"))]:
        record = read_json_if_present(path, "run record")
        if record:
            return path, record
    return run_dir / "run.json", {}


def write_segmentation(
    labels: Image, series_dir: Path, out_path: Path, label_names: Mapping[int, str], *,
    probabilities: torch.Tensor | None = None, run_id: str = "", codes: Mapping[int, SegmentCodes] | None = None,
) -> Path:  # fmt: skip
    """Write a label map on a DICOM series' grid as one DICOM-SEG object referring to that series (atomically).

    Segments: one per label value ``1 .. N`` (N the largest foreground value of ``label_names``, or of the map
    when larger), segment number = label value, labelled ``label_names[v]`` (``label_<v>`` when unnamed). Every
    slice of the series gets a frame per segment, empty or not. The algorithm identification names segmorph, its
    version and ``run_id``.

    Args:
        labels: Label map ``(1, I, J, K)`` on the series grid (I = column, J = row, K = slice in the order of
            :func:`segmorph.dicom.series.series_files`), e.g. a prediction for ``read_image(series_dir)``.
        series_dir: The source series folder.
        out_path: The SEG file to write (``.dcm``).
        label_names: Label value -> name (0, background, is not a segment).
        probabilities: Class probabilities ``(classes, I, J, K)`` in [0, 1]: the SEG is then FRACTIONAL, one
            segment per foreground class ``1 .. classes - 1``, instead of BINARY from ``labels``.
        run_id: Identifies the model (e.g. the run folder's name); stored as an algorithm parameter.
        codes: Label value -> segment codes (:func:`run_segment_codes`); generic ``Tissue`` for the others.

    Returns:
        ``out_path``.

    Raises:
        SegmorphError: The series cannot be read, ``labels`` (or ``probabilities``) is not on its grid, there is
            no foreground label, or the file cannot be written.

    Example:
        >>> mask = Segmenter("runs/hippo")(read_image("series/"))
        >>> write_segmentation(mask, Path("series"), Path("out/case.dcm"), {1: "Anterior", 2: "Posterior"})
    """
    series_dir, out_path = Path(series_dir), Path(out_path)
    headers = read_series_headers(series_dir)
    check_on_series_grid(labels, headers, series_dir)
    if probabilities is None:
        count = max([v for v in label_names if v > 0] + [int(labels.data.max()) if labels.data.numel() else 0])
        pixels = _frames(labels.data[0].numpy(), np.uint8 if count < 256 else np.uint16)  # (K, J, I) label values
    else:
        if tuple(probabilities.shape[1:]) != labels.spatial_shape or probabilities.shape[0] < 2:
            raise SegmorphError(f"probabilities: expected (classes >= 2, {', '.join(map(str, labels.spatial_shape))}), "
                                f"got {tuple(probabilities.shape)}", series_dir)  # fmt: skip
        count = probabilities.shape[0] - 1
        pixels = np.stack([_frames(probabilities[c].float().numpy(), np.float32) for c in range(1, count + 1)], -1)
    if count < 1:
        raise SegmorphError("no foreground label to write as a segment", out_path)
    if count > MAX_SEGMENTS:
        raise SegmorphError(f"{count} segments: a DICOM-SEG holds at most {MAX_SEGMENTS}", out_path)
    descriptions = segment_descriptions(count, label_names, run_id, codes or {})
    seg = _build(headers, pixels, descriptions, "FRACTIONAL" if probabilities is not None else "BINARY", run_id,
                 series_dir)  # fmt: skip
    buffer = BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return atomic_write_bytes(out_path, buffer.getvalue())


def _frames(volume: np.ndarray, dtype: type) -> np.ndarray:
    """``(I, J, K)`` -> SEG frames ``(K, J, I)``: one per slice, rows J and columns I."""
    return np.ascontiguousarray(volume.transpose(2, 1, 0).astype(dtype, copy=False))


def series_affine(headers: list[Dataset], path: str | Path) -> Affine:
    """The grid of a series' slices (in the order of K) as an :class:`Affine` (index ``(i, j, k)`` -> LPS mm).

    I runs along a row (ImageOrientationPatient's first direction, spacing PixelSpacing[1]), J down a column
    (second direction, PixelSpacing[0]), K from the first slice's ImagePositionPatient to the last's.

    Raises:
        SegmorphError: A slice lacks its geometry tags (naming ``path``).
    """
    try:
        first, last = (np.array([float(v) for v in h.ImagePositionPatient]) for h in (headers[0], headers[-1]))
        orientation = np.array([float(v) for v in headers[0].ImageOrientationPatient])
        row_spacing, column_spacing = (float(v) for v in headers[0].PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        missing = "a slice lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing"
        raise SegmorphError(missing, path) from None
    matrix = np.eye(4)
    matrix[:3, 0] = orientation[:3] * column_spacing
    matrix[:3, 1] = orientation[3:] * row_spacing
    if len(headers) > 1:
        matrix[:3, 2] = (last - first) / (len(headers) - 1)
    else:
        thickness = float(getattr(headers[0], "SliceThickness", None) or 1.0)
        matrix[:3, 2] = np.cross(orientation[:3], orientation[3:]) * thickness
    matrix[:3, 3] = first
    return Affine(matrix)


def check_on_series_grid(labels: Image, headers: list[Dataset], series_dir: Path) -> None:
    """Refuse a label map that is not ``(1, I, J, K)`` on the grid of the series' slices, naming the series."""
    if labels.ndim != 3 or labels.num_channels != 1:
        raise SegmorphError(f"label map: expected (1, I, J, K), got {tuple(labels.data.shape)}", series_dir)
    shape = (int(headers[0].Columns), int(headers[0].Rows), len(headers))
    grid = Image(torch.zeros(1).expand(1, *shape), series_affine(headers, series_dir))
    difference = grid_difference(labels, grid)
    if difference:
        raise SegmorphError(f"label map is not on the series grid: {difference}", series_dir)


def segment_descriptions(
    count: int, label_names: Mapping[int, str], run_id: str, codes: Mapping[int, SegmentCodes]
) -> list[hd.seg.SegmentDescription]:
    """Descriptions of segments ``1 .. count`` (segment number = label value): label, codes, algorithm, colour."""
    from segmorph import __version__
    from segmorph.plots import LABEL_COLOURS

    algorithm = hd.AlgorithmIdentificationSequence(
        name="segmorph", family=Code("123110", "DCM", "Artificial Intelligence"), version=__version__,
        parameters={"run": run_id} if run_id else None,
    )  # fmt: skip
    descriptions = []
    for value in range(1, count + 1):
        name = str(label_names.get(value) or f"label_{value}").replace("\\", "/")[:LO_CHARS]
        concepts = codes.get(value, SegmentCodes())
        colour = LABEL_COLOURS[1 + (value - 1) % (len(LABEL_COLOURS) - 1)]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=value, segment_label=name, segmented_property_category=_code(concepts.category),
            segmented_property_type=_code(concepts.type), algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in colour)),
        ))  # fmt: skip
    return descriptions


def _code(concept: tuple[str, str, str]) -> Code:
    scheme, value, meaning = concept
    return Code(value, scheme, meaning)


def _build(headers: list[Dataset], pixels: np.ndarray, descriptions: list, kind: str, run_id: str,
           series_dir: Path) -> hd.seg.Segmentation:  # fmt: skip
    """highdicom's SEG from the source headers and frames ``(K, J, I[, segments])``."""
    from segmorph import __version__

    source_number = int(getattr(headers[0], "SeriesNumber", None) or 0)
    description = f"segmorph {run_id}".strip()[:LO_CHARS]
    try:
        return hd.seg.Segmentation(
            source_images=headers, pixel_array=pixels, segmentation_type=kind, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=(source_number + 1000) % 2**31, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="segmorph", manufacturer_model_name="segmorph",
            software_versions=__version__, device_serial_number="0", omit_empty_frames=False,
            series_description=description, content_label="SEGMORPH", content_description=description,
            max_fractional_value=255,
        )  # fmt: skip
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise SegmorphError(f"cannot build a DICOM-SEG for this series ({first})", series_dir) from None


def is_segmentation(path: str | Path) -> bool:
    """True when ``path`` is a regular file in the DICOM file format whose SOP Class is Segmentation Storage.

    Cheap: reads the 128-byte preamble, the ``DICM`` prefix and the file meta information only.
    """
    path = Path(path)
    if not path.is_file():  # a FIFO or device is never opened
        return False
    try:
        with open(path, "rb") as handle:
            if handle.read(132)[128:] != b"DICM":
                return False
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # noqa: BLE001 -- pydicom raises several unrelated types for damaged headers: no SEG
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == SEGMENTATION_STORAGE


def read_segmentation(path: str | Path, reference: Image | None = None, *, voxel_budget: int | None = None) -> Image:
    """Decode a DICOM-SEG file into a label map on the grid of the series it segments.

    BINARY (and LABELMAP) segments become label value = segment number; where segments overlap, the higher
    segment number wins. FRACTIONAL segments become the most likely segment at each voxel, background where
    ``1 - sum of the fractions`` is larger than every fraction.

    Args:
        path: The SEG file.
        reference: The image whose grid the label map must land on (e.g. the series read with
            :func:`segmorph.io.read_image`): the SEG's frames are permuted, flipped and padded onto it (never
            resampled). Without it, the grid is the SEG's own: I along its rows, J down its columns, K along
            I x J over the span of its frames.
        voxel_budget: Most values to decode (:func:`segmorph.readchecks.max_voxels` when None).

    Returns:
        Label map ``(1, I, J, K)`` int64.

    Raises:
        SegmorphError: Not a readable DICOM-SEG, frames that do not form a regular 3D grid, a grid that does not
            fit ``reference`` or segments outside it; one line naming ``path``.

    Example:
        >>> labels = read_segmentation("case.dcm", reference=read_image("series/"))
    """
    path = Path(path)
    check_input_path(path)
    if not is_segmentation(path):
        raise SegmorphError("not a DICOM-SEG file (SOP Class is not Segmentation Storage)", path)
    seg = _read_checked(path, voxel_budget)
    fractional = seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    try:
        volume = seg.get_volume(combine_segments=not fractional, skip_overlap_checks=True, rescale_fractional=True)
    except (ValueError, RuntimeError, AttributeError, KeyError) as err:
        raise SegmorphError(f"frames do not form a regular 3D grid ({_first_line(err)})", path) from None
    if fractional:
        volume = volume.with_array(_most_likely_segment(volume.array, seg.segment_numbers))
    if reference is None:
        return _to_image(volume.array, volume.affine)
    return _on_reference(volume, reference, path)


def _read_checked(path: Path, voxel_budget: int | None) -> hd.seg.Segmentation:
    """The SEG read by highdicom after its declared size was checked against the voxel budget."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        frames = int(getattr(header, "NumberOfFrames", 1) or 1)
        rows, columns = int(header.Rows), int(header.Columns)
    except Exception as err:  # noqa: BLE001 -- pydicom raises several unrelated types for damaged files
        raise SegmorphError(f"cannot read DICOM-SEG header ({_first_line(err)})", path) from None
    check_voxel_budget(float(frames) * rows * columns, f"{frames} frames of {rows}x{columns}", path, voxel_budget)
    try:
        return hd.seg.segread(path)
    except Exception as err:  # noqa: BLE001 -- highdicom and pydicom raise several unrelated types
        raise SegmorphError(f"cannot read DICOM-SEG ({_first_line(err)})", path) from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _most_likely_segment(fractions: np.ndarray, numbers: list[int]) -> np.ndarray:
    """``(S, R, C, segments)`` fractions -> ``(S, R, C)`` segment numbers (0 where the remainder is largest)."""
    background = 1.0 - fractions.sum(axis=-1, keepdims=True)
    winner = np.concatenate([background, fractions], axis=-1).argmax(axis=-1)
    return np.asarray([0, *numbers], dtype=np.int64)[winner]


def _to_image(array: np.ndarray, volume_affine: np.ndarray) -> Image:
    """highdicom ``(slice, row, column)`` array and affine -> label Image ``(1, I, J, K)`` with K along I x J."""
    data = np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.int64)
    matrix = np.array(volume_affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    if np.dot(np.cross(matrix[:3, 0], matrix[:3, 1]), matrix[:3, 2]) < 0:  # slices stacked against I x J
        data = np.ascontiguousarray(data[:, :, ::-1])
        matrix[:3, 3] += (data.shape[2] - 1) * matrix[:3, 2]
        matrix[:3, 2] *= -1
    return Image(torch.from_numpy(data[None]), Affine(matrix), is_label=True)


def _on_reference(volume: hd.Volume, reference: Image, path: Path) -> Image:
    """The decoded volume permuted, flipped and padded onto ``reference``'s grid; refused when it does not fit."""
    if reference.ndim != 3:
        raise SegmorphError(f"a DICOM-SEG is 3D; the reference image is {reference.ndim}D", path)
    matrix = reference.affine.matrix[:, [2, 1, 0, 3]]
    geometry = hd.VolumeGeometry(matrix, reference.spatial_shape[::-1], coordinate_system="PATIENT")
    try:
        matched = volume.match_geometry(geometry, tol=GRID_TOLERANCE_MM)
    except (RuntimeError, ValueError):
        own = _to_image(volume.array, volume.affine)
        difference = grid_difference(own, reference) or "frames fall between the reference's voxels"
        raise SegmorphError(f"DICOM-SEG does not lie on the reference grid: {difference}", path) from None
    if np.count_nonzero(matched.array) != np.count_nonzero(volume.array):
        raise SegmorphError("DICOM-SEG has segments outside the reference grid", path)
    data = np.ascontiguousarray(matched.array.transpose(2, 1, 0)).astype(np.int64)
    return Image(torch.from_numpy(data[None]), reference.affine, is_label=True)
