"""The source DICOM series of an image: its files and headers in the order of the image's slice axis.

:func:`segmorph.io.read_image` reads a series folder with SimpleITK, which sorts the files along the slice
normal; slice ``k`` of the resulting :class:`~segmorph.image.Image` (data ``(C, I, J, K)``: I = column,
J = row, K = slice) comes from ``series_files(folder)[k]``. Objects that refer back to the series (DICOM-SEG,
RT-STRUCT) use these headers for their UIDs and per-frame geometry.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from segmorph.errors import SegmorphError


def series_files(folder: str | Path) -> list[Path]:
    """The files of the one DICOM series in ``folder``, in the order of the image's slice axis (K).

    Raises:
        SegmorphError: The folder holds no DICOM series or more than one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SegmorphError("not a DICOM series folder", folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise SegmorphError("folder holds no DICOM series", folder)
    if len(ids) > 1:
        raise SegmorphError(f"folder holds {len(ids)} DICOM series; give one series per folder", folder)
    return [Path(name) for name in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])]


def read_series_headers(folder: str | Path, with_pixels: bool = False) -> list[Dataset]:
    """The headers of the series in ``folder``, one per slice, in the order of the image's slice axis (K).

    Args:
        folder: A folder holding one DICOM series.
        with_pixels: Also read the pixel data (highdicom's SEG writer needs the source images' attributes
            only, so the default skips it).

    Raises:
        SegmorphError: No single series in the folder, or a file pydicom cannot parse.
    """
    headers = []
    for path in series_files(folder):
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=not with_pixels))
        except Exception as err:  # noqa: BLE001 -- pydicom raises several unrelated types for damaged files
            raise SegmorphError(f"cannot read DICOM header ({str(err).splitlines()[0][:200]})", path) from None
    return headers
