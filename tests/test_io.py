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


def test_a_scan_read_as_a_label_map_is_refused_by_its_count_of_values(tmp_path):
    values = torch.arange(2000, dtype=torch.float32).reshape(1, 20, 10, 10)  # whole numbers, as an int16 MRI
    write_image(Image(values, Affine.identity()), tmp_path / "scan.nii.gz")
    with pytest.raises(SegmorphError, match="scan.nii.gz: not a label map: holds 2,000 distinct values"):
        read_image(tmp_path / "scan.nii.gz", is_label=True)
    many = torch.zeros(1, 20, 10, 10, dtype=torch.int64)
    many.view(-1)[:1024] = torch.arange(1024) * 50  # 1,024 values far apart: still a label map
    write_image(Image(many, Affine.identity(), is_label=True), tmp_path / "parcels.nii.gz")
    assert len(torch.unique(read_image(tmp_path / "parcels.nii.gz", is_label=True).data)) == 1024


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


# -- hostile files: budget, geometry, pixel types (the reading layer's checks) ------------------------


def test_voxel_budget_from_the_environment_and_the_argument(tmp_path, monkeypatch):
    image, _ = sphere_case((10, 8, 6))
    write_image(image, tmp_path / "scan.mha")
    monkeypatch.setenv("SEGMORPH_MAX_VOXELS", "479")
    with pytest.raises(SegmorphError, match=r"scan.mha: declared size 10x8x6 \(480 values\) is too large to load"):
        read_image(tmp_path / "scan.mha")
    assert read_image(tmp_path / "scan.mha", voxel_budget=480).spatial_shape == (10, 8, 6)
    monkeypatch.setenv("SEGMORPH_MAX_VOXELS", "lots")
    with pytest.raises(SegmorphError, match="SEGMORPH_MAX_VOXELS='lots': expected a positive whole number"):
        read_image(tmp_path / "scan.mha")


def test_voxel_budget_covers_nifti_headers_and_dicom_series(tmp_path, monkeypatch):
    image, _ = sphere_case((10, 8, 6))
    write_image(image, tmp_path / "scan.nii.gz")
    write_dicom_series(image, tmp_path / "series")
    monkeypatch.setenv("SEGMORPH_MAX_VOXELS", "100")
    with pytest.raises(SegmorphError, match="scan.nii.gz: declared size 10x8x6"):
        read_image(tmp_path / "scan.nii.gz")
    with pytest.raises(SegmorphError, match="series: a series of 6 slices"):
        read_image(tmp_path / "series")


def test_default_budget_follows_the_memory_the_process_may_use(monkeypatch):
    from segmorph import readchecks

    monkeypatch.delenv("SEGMORPH_MAX_VOXELS", raising=False)
    monkeypatch.setattr(readchecks, "usable_memory_bytes", lambda: 32 * 1000)
    assert readchecks.max_voxels() == 1000
    readchecks.check_voxel_budget(1000, "patch", "plan.json")
    with pytest.raises(SegmorphError, match=r"plan.json: patch \(1,001 values\) is too large to load"):
        readchecks.check_voxel_budget(1001, "patch", "plan.json")
    with pytest.raises(SegmorphError, match="too large to load"):
        readchecks.check_voxel_budget(float("inf"), "patch", "plan.json")


@pytest.mark.parametrize(
    ("spacing", "origin", "direction", "problem"),
    [
        ((1.0, 0.0, 1.0), (0, 0, 0), np.eye(3), "spacing"),
        ((1.0, 1e-7, 1.0), (0, 0, 0), np.eye(3), "spacing"),
        ((1.0, 1.0, 2e6), (0, 0, 0), np.eye(3), "spacing"),
        ((1.0, float("nan"), 1.0), (0, 0, 0), np.eye(3), "spacing"),
        ((1.0, 1.0, 1.0), (0, float("inf"), 0), np.eye(3), "origin"),
        ((1.0, 1.0, 1.0), (0, 0, 0), np.diag([1.0, 1.0, 0.0]), "not orthonormal"),
        ((1.0, 1.0, 1.0), (0, 0, 0), np.full((3, 3), float("nan")), "NaN"),
    ],
)
def test_degenerate_geometry_is_refused(spacing, origin, direction, problem):
    from segmorph.readchecks import check_geometry

    with pytest.raises(SegmorphError, match=f"x.nrrd: degenerate geometry: .*{problem}"):
        check_geometry(spacing, origin, np.asarray(direction).ravel(), "x.nrrd")
    check_geometry((1e-6, 0.5, 1e6), (-1e5, 0, 3), OBLIQUE.direction, "x.nrrd")


def _nifti_header_patched(source, target, **fields):
    import struct

    header = bytearray(source.read_bytes())
    for fmt, offset, value in fields.values():
        struct.pack_into(fmt, header, offset, *(value if isinstance(value, tuple) else (value,)))
    target.write_bytes(bytes(header))
    return target


def test_nifti_sform_wins_when_set_and_qform_otherwise(tmp_path):
    image, _ = sphere_case((10, 8, 6))
    write_image(image, tmp_path / "both.nii")
    both = tmp_path / "both.nii"
    sform_only = _nifti_header_patched(both, tmp_path / "sform.nii", q=("<h", 252, 0), o=("<f", 268, 99.0))
    qform_only = _nifti_header_patched(both, tmp_path / "qform.nii", s=("<h", 254, 0), o=("<f", 292, 99.0))
    for path in (both, sform_only, qform_only):
        assert read_image(path).affine.allclose(OBLIQUE, atol=1e-4), path
    disagree = _nifti_header_patched(both, tmp_path / "two.nii", o=("<f", 268, 12.52))  # 0.02 mm off
    with pytest.raises(SegmorphError, match="two.nii: qform and sform disagree: .* 0.02 mm apart"):
        read_image(disagree)


def test_gantry_tilted_dicom_series_is_refused(tmp_path):
    from malformed_readers import _dicom

    straight = _dicom(tmp_path / "straight", [(1.0, 2.0, 1.5 * z) for z in range(4)])
    assert read_image(straight).affine.spacing.tolist() == pytest.approx([0.123456, 0.123456, 1.5])
    tilted = _dicom(tmp_path / "tilted", [(1.0, 2.0 + 0.1 * z, 1.5 * z) for z in range(4)])
    with pytest.raises(SegmorphError, match=r"tilted: gantry tilt: .* \(3.81 degrees\)"):
        read_image(tilted)


def test_values_overflowing_float32_are_refused_even_without_the_finite_check(tmp_path):
    values = np.ones((4, 4, 3))
    values[0, 0, 0] = 1e30  # large but within float32: kept
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "large.nrrd"))
    assert float(read_image(tmp_path / "large.nrrd").data.max()) == pytest.approx(1e30, rel=1e-6)
    values[0, 0, 0] = 1e39
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "overflow.nrrd"))
    with pytest.raises(SegmorphError, match="overflow.nrrd: image holds 1 voxel"):
        read_image(tmp_path / "overflow.nrrd", check_finite=False)


def test_uint64_labels_within_range_are_read(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 4, 4), 7, np.uint64)), str(tmp_path / "labels.nii.gz"))
    assert int(read_image(tmp_path / "labels.nii.gz", is_label=True).data.max()) == 7


def test_special_files_are_refused_before_opening(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.nii.gz")
    with pytest.raises(SegmorphError, match="pipe.nii.gz: not a regular file or folder: a FIFO"):
        read_image(tmp_path / "pipe.nii.gz")
    with pytest.raises(SegmorphError, match="pipe.nii.gz: not a regular file or folder"):
        list_images([tmp_path / "pipe.nii.gz"])
    with pytest.raises(SegmorphError, match="file name too long"):
        list_images([tmp_path / ("x" * 256)])


def test_case_name_is_how_every_command_matches_files(tmp_path):
    from segmorph.io import case_name

    assert case_name("scans/case_001_0000.nii.gz") == "case_001"
    assert case_name("masks/case_001.nii.gz") == "case_001"
    assert case_name("fundus/21.png") == "21"
    series = tmp_path / "series_7"
    series.mkdir()
    assert case_name(series) == "series_7"


def _picture(path, mode, array):
    from PIL import Image as Picture

    Picture.fromarray(array, mode if mode in ("RGBA", "LA") else None).convert(mode).save(path)
    return path


@pytest.mark.parametrize(("mode", "channels"), [("RGBA", 3), ("LA", 1), ("P", 3)])
def test_a_picture_with_alpha_or_a_palette_reads_as_grey_or_rgb(tmp_path, mode, channels):
    from segmorph.io import read_image_information

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque: the colours exactly
    source = rgba if mode != "LA" else rgba[..., [0, 3]]
    path = _picture(tmp_path / f"p_{mode}.png", "LA" if mode == "LA" else "RGBA" if mode == "RGBA" else "P",
                    source if mode != "P" else rgba[..., :3].copy())  # fmt: skip
    image = read_image(path)
    assert image.num_channels == channels and image.spatial_shape == (40, 30)
    assert read_image_information(path)[:2] == ((40, 30), channels)
    if mode != "P":  # a palette quantises the colours
        expected = source[..., :channels].transpose(2, 1, 0).astype(np.float32)
        assert np.array_equal(image.numpy(), expected)


def test_a_transparent_picture_is_laid_over_black(tmp_path):
    rgba = np.full((8, 6, 4), 200, dtype=np.uint8)
    rgba[:4, ..., 3] = 0  # the first four rows transparent
    rgba[4:, ..., 3] = 51  # the others one fifth opaque
    path = _picture(tmp_path / "t.png", "RGBA", rgba)
    values = read_image(path).numpy()  # (3, I = 6 columns, J = 8 rows)
    assert values.shape == (3, 6, 8)
    assert np.all(values[..., :4] == 0) and np.allclose(values[..., 4:], 40.0)


def test_a_broken_link_among_the_images_is_named_not_skipped(tmp_path):
    from segmorph.io import list_images

    write_image(sphere_case()[0], tmp_path / "a.nii.gz")
    (tmp_path / "b.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (tmp_path / ".hidden.nii.gz").symlink_to(tmp_path / "gone.nii.gz")  # hidden: not an input
    with pytest.raises(SegmorphError, match=r"broken symbolic link \(to .*gone.nii.gz, which does not exist\)") as err:
        list_images([tmp_path])
    assert err.value.path == str(tmp_path / "b.nii.gz")


def test_a_picture_that_makes_libpng_warn_reads_without_a_word_on_stderr(tmp_path, capfd):
    import struct
    import zlib

    from segmorph.io import read_image_information

    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    write_image(Image(torch.from_numpy(pixels.transpose(2, 1, 0).copy()), Affine.identity(2)), tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    profile = b"prof\0\0" + zlib.compress(b"too short")  # libpng: "iCCP: too short", printed on stderr
    chunk = struct.pack(">I", len(profile)) + b"iCCP" + profile + struct.pack(">I", zlib.crc32(b"iCCP" + profile))
    (tmp_path / "iccp.png").write_bytes(data[:33] + chunk + data[33:])  # after the signature and IHDR
    capfd.readouterr()
    assert torch.equal(read_image(tmp_path / "iccp.png").data, read_image(tmp_path / "ok.png").data)
    assert read_image_information(tmp_path / "iccp.png")[0] == (4, 4)
    assert capfd.readouterr().err == ""
