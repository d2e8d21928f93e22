"""Native DICOM pixel data checked against the header before GDCM decodes it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from segmorph.dicom.pixels import check_pixel_data
from segmorph.errors import SegmorphError
from segmorph.io import read_image


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_whole_native_and_compressed_files_pass(name):
    check_pixel_data(get_testdata_file(name))


def test_a_multi_frame_file_passes_and_reads_every_frame(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.NumberOfFrames, ds.PixelData = 3, ds.PixelData * 3
    ds.save_as(tmp_path / "frames.dcm")
    check_pixel_data(tmp_path / "frames.dcm")
    assert read_image(tmp_path / "frames.dcm").spatial_shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda ds: setattr(ds, "PixelData", ds.PixelData[:4096]), "pixel data holds 4,096 bytes; the header declares "
         "64x64 pixels x 1 frame(s) x 1 sample(s) of 16 bits (8,192 bytes)"),
        (lambda ds: setattr(ds, "NumberOfFrames", 2), "x 2 frame(s)"),
        (lambda ds: setattr(ds, "BitsAllocated", 12), "bits allocated 12: DICOM pixels take 1 bit or a whole number"),
        (lambda ds: setattr(ds, "Rows", 0), "Rows 0 is not a positive whole number"),
    ],
)  # fmt: skip
def test_pixel_data_shorter_than_declared_is_refused_by_name(tmp_path, edit, words):
    path = tmp_path / "edited.dcm"
    shutil.copy(get_testdata_file("MR_small.dcm"), path)
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
    with pytest.raises(SegmorphError, match="edited.dcm") as err:
        check_pixel_data(path)
    assert words in str(err.value)


def test_a_file_without_the_dicm_prefix_is_left_to_the_reader(tmp_path: Path):
    path = tmp_path / "raw.bin"
    path.write_bytes(b"\0" * 200)
    check_pixel_data(path)
