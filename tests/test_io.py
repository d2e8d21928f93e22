import gzip

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import OBLIQUE, sphere_case, write_dicom_series
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import list_images, read_image, write_image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_then_read_keeps_geometry_and_values(tmp_path, suffix):
    image, label = sphere_case()
    write_image(image, tmp_path / f"image{suffix}")
    write_image(label, tmp_path / f"label{suffix}")
    image_back = read_image(tmp_path / f"image{suffix}")
    label_back = read_image(tmp_path / f"label{suffix}", is_label=True)
    assert image_back.affine.allclose(OBLIQUE, atol=1e-6)
    assert label_back.affine.allclose(OBLIQUE, atol=1e-6)
    assert torch.allclose(image_back.data, image.data)
    assert torch.equal(label_back.data, label.data)


def test_axis_order_matches_simpleitk_index_order(tmp_path):
    data = torch.zeros(1, 4, 5, 6)
    data[0, 3, 1, 2] = 7.0
    write_image(Image(data, Affine.from_geometry((1.0, 2.0, 3.0))), tmp_path / "a.nii.gz")
    itk = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    assert itk.GetSize() == (4, 5, 6)
    assert itk.GetPixel(3, 1, 2) == 7.0
    assert itk.GetSpacing() == (1.0, 2.0, 3.0)


def test_rgb_png_becomes_three_channels(tmp_path):
    rgb = np.zeros((5, 7, 3), dtype=np.uint8)  # rows (y) x columns (x) x colour
    rgb[1, 2] = (10, 20, 30)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "a.png"))
    image = read_image(tmp_path / "a.png")
    assert image.data.shape == (3, 7, 5)  # (C, I = x, J = y)
    assert image.data[:, 2, 1].tolist() == [10.0, 20.0, 30.0]


def test_label_png_round_trip(tmp_path):
    labels = torch.zeros(1, 9, 6, dtype=torch.int64)
    labels[0, 2:5, 1:3] = 1
    write_image(Image(labels, Affine.identity(2), is_label=True), tmp_path / "mask.png")
    assert torch.equal(read_image(tmp_path / "mask.png", is_label=True).data, labels)


def test_dicom_series_folder_keeps_geometry(tmp_path):
    image, _ = sphere_case()
    write_dicom_series(image, tmp_path / "series")
    assert list_images([tmp_path / "series"]) == [tmp_path / "series"]
    back = read_image(tmp_path / "series")
    assert back.spatial_shape == image.spatial_shape
    assert back.affine.allclose(OBLIQUE, atol=1e-4)


def test_corrupt_file_gives_one_clear_error(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 4))
    with pytest.raises(SegmorphError, match="broken.nii.gz: cannot read image"):
        read_image(path)


def test_nan_voxels_are_refused_with_the_file_name(tmp_path):
    data = torch.ones(1, 4, 4, 4)
    data[0, 1, 1, 1] = float("nan")
    write_image(Image(data, Affine.identity()), tmp_path / "nan.mha")
    with pytest.raises(SegmorphError, match=r"nan.mha: image holds 1 NaN"):
        read_image(tmp_path / "nan.mha")


def test_non_integer_labels_are_refused(tmp_path):
    write_image(Image(torch.full((1, 3, 3, 3), 0.5), Affine.identity()), tmp_path / "frac.nii.gz")
    with pytest.raises(SegmorphError, match="non-integer"):
        read_image(tmp_path / "frac.nii.gz", is_label=True)


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegmorphError, match="holds no images"):
        list_images([tmp_path / "empty"])


def test_write_leaves_no_temporary_file_behind(tmp_path):
    image, _ = sphere_case()
    write_image(image, tmp_path / "out.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_failed_write_leaves_nothing(tmp_path):
    image = Image(torch.zeros(2, 4, 4, 4), Affine.identity())  # two channels cannot go into a PNG
    with pytest.raises(SegmorphError):
        write_image(image, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
