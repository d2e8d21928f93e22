"""Write a test image as a DICOM series with pydicom: one file per slice, real UIDs, full geometry.

``segmorph.io.read_image(folder)`` gives back the image's grid (affine within 1e-6 mm) and its values within
half a rescale step; the slice files are in the order of the image's slice axis K.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from segmorph.image import Image

SOP_CLASSES = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2"}  # MR / CT Image Storage
INT16_STEPS = 30000  # stored values span 0..INT16_STEPS when the image needs a rescale


def write_series(
    image: Image, folder: Path, modality: str = "MR", *, study_uid: str | None = None, series_uid: str | None = None,
    frame_of_reference_uid: str | None = None, patient_id: str = "SEGMORPH-TEST", series_number: int = 1,
) -> list[Path]:  # fmt: skip
    """Write a 3D single-channel image as a DICOM series (``slice_000.dcm`` ... one per k slice) into ``folder``.

    Slice ``k`` holds ``image.data[0, :, :, k]`` transposed (DICOM rows are J, columns are I), at
    ImagePositionPatient = the world position (LPS mm) of voxel ``(0, 0, k)``; ImageOrientationPatient holds the
    I and J directions, PixelSpacing ``[spacing J, spacing I]``, SliceThickness and SpacingBetweenSlices the K
    spacing. Whole values within int16 are stored as they are; others through RescaleSlope/RescaleIntercept.

    Args:
        image: ``(1, I, J, K)`` with a right-handed direction (K along I x J, as DICOM readers sort slices).
        folder: Created; must not exist yet.
        modality: ``"MR"`` or ``"CT"`` (MR / CT Image Storage).
        study_uid, series_uid, frame_of_reference_uid: Given to put several series in one study or frame;
            new UIDs otherwise.

    Returns:
        The slice files in the order of K.
    """
    if image.ndim != 3 or image.num_channels != 1:
        raise ValueError(f"image: expected (1, I, J, K), got {tuple(image.data.shape)}")
    direction = image.affine.direction
    if not np.allclose(np.cross(direction[:, 0], direction[:, 1]), direction[:, 2], atol=1e-6):
        raise ValueError("image: direction must be right-handed (K along I x J) for a DICOM series")
    values = image.numpy()[0].astype(np.float64)
    slope, intercept = _rescale(values)
    stored = np.round((values - intercept) / slope).astype(np.int16)
    shared = _series_dataset(image, modality, slope, intercept, patient_id, series_number)
    shared.StudyInstanceUID = study_uid or generate_uid()
    shared.SeriesInstanceUID = series_uid or generate_uid()
    shared.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    folder.mkdir(parents=True)
    paths = []
    for k in range(stored.shape[2]):
        ds = _slice_dataset(shared, stored[:, :, k].T, image.affine.matrix, k)
        path = folder / f"slice_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _rescale(values: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) so that ``(values - intercept) / slope`` fits int16 (1, 0 for whole int16 values)."""
    low, high = float(values.min()), float(values.max())
    if np.array_equal(values, np.round(values)) and low >= -32768 and high <= 32767:
        return 1.0, 0.0
    slope = float(f"{max(high - low, 1e-6) / INT16_STEPS:.8g}")
    return slope, float(f"{low:.8g}")


def _series_dataset(image: Image, modality: str, slope: float, intercept: float, patient_id: str,
                    series_number: int) -> Dataset:  # fmt: skip
    """The attributes every slice shares (patient, study, series, equipment, image pixel description)."""
    today = dt.date.today().strftime("%Y%m%d")
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.PatientName = "Test^Series"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = today, "120000", today, "120000"
    ds.ContentDate, ds.ContentTime = today, "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.Manufacturer = "segmorph tests"
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.PatientPosition = "HFS"
    ds.Laterality = ""
    spacing = image.affine.spacing
    direction = image.affine.direction
    ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # [between rows (J), between columns (I)]
    ds.SliceThickness = _ds(spacing[2])
    ds.SpacingBetweenSlices = _ds(spacing[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.spatial_shape[1], image.spatial_shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
    if modality == "CT":
        ds.RescaleType = "HU"
        ds.KVP = "120"
    else:
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "3D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "500", "10", 1
    return ds


def _slice_dataset(shared: Dataset, pixels: np.ndarray, affine: np.ndarray, k: int) -> Dataset:
    """One slice: ``pixels`` (rows J, columns I) int16 at index ``k`` of the series."""
    ds = Dataset()
    ds.update(shared)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    ds.AcquisitionNumber = 1
    position = (affine @ [0.0, 0.0, k, 1.0])[:3]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(float(np.dot(affine[:3, 2] / np.linalg.norm(affine[:3, 2]), position)))
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    return ds


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (the DS limit) keeping as many digits as fit."""
    for digits in range(12, 4, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{float(value):.4g}"
