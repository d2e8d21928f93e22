"""RT Structure Sets: a label map on an oblique, anisotropic DICOM series written as contours and rasterised back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from scipy import ndimage
from series_helpers import write_series
from skimage.draw import polygon

from helpers import OBLIQUE
from segmorph import __version__
from segmorph.dicom.rtstruct import read_rtstruct, roi_colour, slice_contours, write_rtstruct
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image

SHAPE = (24, 20, 10)  # I (columns) x J (rows) x K (slices), spacing (0.8, 1.1, 2.5) mm, oblique direction
NAMES = {1: "ring", 2: "box", 3: "Hippocampus é"}  # 3 is named but absent from the map


def _labels() -> np.ndarray:
    """Label 1: a spherical shell (a hole on every slice it crosses); label 2: a box touching the grid's edge."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1).astype(float)
    distance = np.linalg.norm((grid - [9.3, 10.2, 4.6]) * OBLIQUE.spacing, axis=-1)
    labels = np.zeros(SHAPE, dtype=np.int64)
    labels[(distance < 8.0) & (distance >= 3.5)] = 1
    labels[18:, 2:9, 2:8] = 2
    return labels


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, Image, Path]:
    """(series folder, label map on its grid, RT-STRUCT written from it)."""
    root = tmp_path_factory.mktemp("rtstruct")
    labels = _labels()
    scan = Image(torch.from_numpy((100.0 + 50 * labels)[None].astype(np.float32)), OBLIQUE)
    write_series(scan, root / "series", series_number=7)
    label_map = Image(torch.from_numpy(labels[None]), OBLIQUE, is_label=True)
    out = write_rtstruct(label_map, root / "series", root / "out" / "rtstruct.dcm", NAMES, run_id="run_42")
    return root / "series", label_map, out


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels within one voxel of the mask's in-plane boundary: dilation XOR erosion, slice by slice."""
    footprint = np.ones((3, 3, 1), dtype=bool)
    return ndimage.binary_dilation(mask, footprint) ^ ndimage.binary_erosion(mask, footprint)


def test_round_trip_differs_only_along_the_boundary(case):
    series, label_map, out = case
    scan = read_image(series)
    assert scan.affine.allclose(OBLIQUE)
    back = read_rtstruct(out, scan)
    assert back.is_label and back.data.dtype == torch.int64 and back.spatial_shape == SHAPE
    assert back.affine.allclose(scan.affine, atol=0)
    truth, got = label_map.numpy()[0], back.numpy()[0]
    differing = got != truth
    near = _boundary(truth == 1) | _boundary(truth == 2)
    assert not (differing & ~near).any(), f"{int((differing & ~near).sum())} voxels differ away from the boundary"
    assert differing.sum() <= 0.02 * (truth > 0).sum()
    for value in (1, 2):
        assert abs(int((got == value).sum()) - int((truth == value).sum())) <= 0.02 * (truth == value).sum()
    centre = (9, 10, 5)  # inside the shell's hole
    assert truth[centre] == 0 and got[centre] == 0
    assert set(np.unique(got)) == {0, 1, 2}


def test_structure_set_references_the_series(case):
    series, _, out = case
    ds = pydicom.dcmread(out)
    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())]
    source = slices[0]
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert ds.Modality == "RTSTRUCT"
    assert ds.Manufacturer == "segmorph" and ds.SoftwareVersions == __version__
    assert "run_42" in ds.SeriesDescription
    assert ds.SeriesNumber == 1007
    for keyword in ("PatientName", "PatientID", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyID"):
        assert ds[keyword].value == source[keyword].value, keyword
    new_uids = {ds.SeriesInstanceUID, ds.SOPInstanceUID}
    assert len(new_uids) == 2 and not new_uids & {source.SeriesInstanceUID, *(s.SOPInstanceUID for s in slices)}
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == source.FrameOfReferenceUID == ds.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == source.StudyInstanceUID
    referenced = study.RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in referenced.ContourImageSequence] == [s.SOPInstanceUID for s in slices]
    assert {i.ReferencedSOPClassUID for i in referenced.ContourImageSequence} == {source.SOPClassUID}


def test_one_roi_per_label_with_names_colours_and_observations(case):
    _, _, out = case
    ds = pydicom.dcmread(out)
    rois = {int(item.ROINumber): item.ROIName for item in ds.StructureSetROISequence}
    assert rois == NAMES  # the named label 3 is listed though the map does not hold it
    assert {item.ROIGenerationAlgorithm for item in ds.StructureSetROISequence} == {"AUTOMATIC"}
    colours = [tuple(item.ROIDisplayColor) for item in ds.ROIContourSequence]
    assert len(set(colours)) == 3
    assert [int(item.ReferencedROINumber) for item in ds.ROIContourSequence] == [1, 2, 3]
    assert "ContourSequence" not in ds.ROIContourSequence[2]
    observations = ds.RTROIObservationsSequence
    assert [int(o.ReferencedROINumber) for o in observations] == [1, 2, 3]
    assert {o.RTROIInterpretedType for o in observations} <= {"", "ORGAN"}


def test_contours_lie_in_the_plane_of_the_slice_they_reference(case):
    series, _, out = case
    slices = {}
    for path in series.iterdir():
        header = pydicom.dcmread(path, stop_before_pixels=True)
        orientation = np.array(header.ImageOrientationPatient, dtype=float)
        slices[header.SOPInstanceUID] = (
            np.array(header.ImagePositionPatient, float),
            np.cross(orientation[:3], orientation[3:]),
        )
    ds = pydicom.dcmread(out)
    counts = {}
    for item in ds.ROIContourSequence[:2]:
        for contour in item.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.array(contour.ContourData, dtype=float).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints >= 3
            position, normal = slices[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            assert np.abs((points - position) @ normal).max() < 1e-3
            counts[int(item.ReferencedROINumber)] = counts.get(int(item.ReferencedROINumber), 0) + 1
    labels = _labels()
    # the shell: an outer contour on each slice it crosses, plus an inner one where the slice cuts the hole
    assert counts[1] > int((labels == 1).any(axis=(0, 1)).sum())
    assert counts[2] == 6


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors(case):
    _, _, out = case
    result = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    assert "RTStructureSet" in report
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report


def test_slice_contours_known_answers():
    square = np.zeros((5, 5), dtype=bool)
    square[1:3, 1:3] = True
    (octagon,) = slice_contours(square)
    # midpoints between inside and outside pixels; the corners cut across, the straight runs reduced to ends
    assert sorted(map(tuple, octagon.tolist())) == sorted(
        [(0.5, 1.0), (0.5, 2.0), (1.0, 2.5), (2.0, 2.5), (2.5, 2.0), (2.5, 1.0), (2.0, 0.5), (1.0, 0.5)]
    )
    ring = np.ones((5, 5), dtype=bool)  # touches every edge of the slice
    ring[2, 2] = False
    assert len(slice_contours(ring)) == 2
    assert slice_contours(np.zeros((4, 4), dtype=bool)) == []


def test_slice_contours_fill_back_exactly():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = rng.random((13, 11)) < 0.5
        filled = np.zeros_like(mask)
        for points in slice_contours(mask):
            rows, columns = polygon(points[:, 0], points[:, 1], shape=mask.shape)
            filled[rows, columns] ^= True
        assert np.array_equal(filled, mask)


def test_roi_colours_differ():
    assert len({roi_colour(n) for n in range(1, 51)}) == 50


def test_non_ascii_names_survive(case):
    _, _, out = case
    ds = pydicom.dcmread(out)
    assert ds.StructureSetROISequence[2].ROIName == "Hippocampus é"


def test_not_an_rtstruct_is_refused(case, tmp_path):
    series, _, _ = case
    scan = read_image(series)
    image_file = sorted(series.iterdir())[0]
    with pytest.raises(
        SegmorphError, match=r"not an RT Structure Set \(SOP Class UID 1\.2\.840\.10008\.5\.1\.4\.1\.1\.4 "
    ):
        read_rtstruct(image_file, scan)
    text = tmp_path / "notes.dcm"
    text.write_text("not DICOM at all\n")
    with pytest.raises(SegmorphError, match="not a DICOM Part 10 file") as caught:
        read_rtstruct(text, scan)
    assert str(caught.value).startswith(str(text)) and "\n" not in str(caught.value)
    with pytest.raises(SegmorphError, match="no such RT-STRUCT file"):
        read_rtstruct(tmp_path / "missing.dcm", scan)


def test_contours_off_the_reference_slices_are_refused(case):
    series, _, out = case
    scan = read_image(series)
    half_slice = Image(scan.data, scan.affine.shifted([0, 0, 0.5]))
    with pytest.raises(
        SegmorphError, match=r"ROI 1: a contour does not lie on the reference's slices \(0\.5 slices off"
    ):
        read_rtstruct(out, half_slice)
    fewer = Image(scan.data[..., :3], scan.affine)
    with pytest.raises(SegmorphError, match="does not lie on the reference's slices .*has 3 slices along K"):
        read_rtstruct(out, fewer)


def test_label_map_off_the_series_grid_is_refused(case, tmp_path):
    series, label_map, _ = case
    moved = Image(
        label_map.data, Affine.from_geometry(OBLIQUE.spacing, OBLIQUE.origin + [1.0, 0, 0], OBLIQUE.direction)
    )
    with pytest.raises(SegmorphError, match="label map does not lie on the series grid"):
        write_rtstruct(moved, series, tmp_path / "moved.dcm", NAMES)
    with pytest.raises(SegmorphError, match="label map has 9 slices, the series 10"):
        write_rtstruct(Image(label_map.data[..., :9], OBLIQUE), series, tmp_path / "short.dcm", NAMES)
    with pytest.raises(SegmorphError, match=r"labels: expected a 3D label map \(1, I, J, K\)"):
        write_rtstruct(Image(label_map.data.repeat(2, 1, 1, 1), OBLIQUE), series, tmp_path / "two.dcm", NAMES)
    empty = Image(torch.zeros_like(label_map.data), OBLIQUE, is_label=True)
    with pytest.raises(SegmorphError, match="nothing to write"):
        write_rtstruct(empty, series, tmp_path / "empty.dcm", {0: "background"})
    halves = Image(label_map.data.double() / 2, OBLIQUE)
    with pytest.raises(SegmorphError, match="not whole numbers"):
        write_rtstruct(halves, series, tmp_path / "halves.dcm", NAMES)
    assert not list(tmp_path.iterdir())


def test_output_in_the_series_folder_or_over_an_input_is_refused(case):
    series, label_map, _ = case
    before = sorted(series.iterdir())
    with pytest.raises(SegmorphError, match="source series folder"):
        write_rtstruct(label_map, series, series / "rtstruct.dcm", NAMES)
    with pytest.raises(SegmorphError):
        write_rtstruct(label_map, series, before[0], NAMES)
    assert sorted(series.iterdir()) == before


def test_series_without_frame_of_reference_is_refused(case, tmp_path):
    series, label_map, _ = case
    copy = tmp_path / "series"
    copy.mkdir()
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(copy / path.name)
    with pytest.raises(SegmorphError, match="series has no FrameOfReferenceUID"):
        write_rtstruct(label_map, copy, tmp_path / "rt.dcm", NAMES)
    assert not (tmp_path / "rt.dcm").exists()


def _edited(out: Path, folder: Path, edit) -> Path:
    ds = pydicom.dcmread(out)
    edit(ds)
    ds.save_as(folder / "edited.dcm")
    return folder / "edited.dcm"


def test_malformed_contours_are_refused(case, tmp_path):
    series, _, out = case
    scan = read_image(series)

    def undeclared(ds):
        ds.ROIContourSequence[0].ReferencedROINumber = 9

    def short(ds):
        ds.ROIContourSequence[1].ContourSequence[0].ContourData = ["1.0", "2.0", "3.0", "4.0"]

    with pytest.raises(SegmorphError, match="refers to ROI 9, not in the Structure Set ROI Sequence"):
        read_rtstruct(_edited(out, tmp_path, undeclared), scan)
    with pytest.raises(SegmorphError, match="ROI 2: a contour has 4 coordinates"):
        read_rtstruct(_edited(out, tmp_path, short), scan)


def test_point_contours_enclose_nothing(case, tmp_path):
    series, label_map, out = case

    def to_points(ds):
        for contour in ds.ROIContourSequence[1].ContourSequence:
            contour.ContourGeometricType = "POINT"

    back = read_rtstruct(_edited(out, tmp_path, to_points), read_image(series)).numpy()[0]
    assert not (back == 2).any() and (back == 1).sum() > 0
