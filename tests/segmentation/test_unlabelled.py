"""Unlabelled scans from files, folders, DICOM series and dataset folders."""

import pytest
import torch

from helpers import sphere_case, write_dicom_series, write_msd_dataset
from segmorph.errors import SegmorphError
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.segmentation.datasets import load_dataset
from segmorph.segmentation.unlabelled import unlabelled_spec


def test_files_folders_series_and_dataset_folders_become_unlabelled_cases(tmp_path):
    dataset = write_msd_dataset(tmp_path / "data", num_cases=3)
    (tmp_path / "scans").mkdir()
    for k in range(2):
        write_image(sphere_case(seed=10 + k)[0], tmp_path / "scans" / f"extra_{k}.nii.gz")
    write_dicom_series(sphere_case(seed=20)[0], tmp_path / "series")
    single = write_image(sphere_case(seed=30)[0], tmp_path / "one.nrrd")
    spec = unlabelled_spec([dataset, tmp_path / "scans", tmp_path / "series", single])
    ids = spec.case_ids
    assert len(ids) == 3 + 2 + 1 + 1
    assert {"extra_0", "extra_1", "series", "one"} <= set(ids)
    assert all(case.label is None for case in spec.cases)
    assert ids == sorted(ids)


def test_the_same_name_in_two_folders_gets_the_folder_in_front(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_image(sphere_case()[0], tmp_path / folder / "case.nii.gz")
    assert unlabelled_spec([tmp_path / "a", tmp_path / "b"]).case_ids == ["a__case", "b__case"]


def test_a_folder_of_class_folders_gives_the_images_of_each(tmp_path):
    for folder, names in (("benign", ["b_1", "same"]), ("normal", ["n_1", "same"]), ("empty", [])):
        (tmp_path / "classes" / folder).mkdir(parents=True)
        for name in names:
            write_image(sphere_case()[0], tmp_path / "classes" / folder / f"{name}.nii.gz")
    (tmp_path / "classes" / "labels.csv").write_text("file,class\n")
    ids = unlabelled_spec([tmp_path / "classes"]).case_ids
    assert ids == ["b_1", "benign__same", "n_1", "normal__same"]


def test_mixed_dimensionality_is_refused_naming_the_file(tmp_path):
    (tmp_path / "scans").mkdir()
    write_image(sphere_case()[0], tmp_path / "scans" / "a.nii.gz")
    flat = sphere_case()[0]
    write_image(Image(flat.data[..., 0], _affine_2d()), tmp_path / "scans" / "b.nii.gz")
    with pytest.raises(SegmorphError, match=r"a 2D scan among 3D scans") as caught:
        unlabelled_spec([tmp_path / "scans"])
    assert caught.value.path.endswith("b.nii.gz")


def test_channels_must_match_the_labelled_dataset(tmp_path):
    dataset = load_dataset(write_msd_dataset(tmp_path / "data", num_cases=2))
    image = sphere_case()[0]
    write_image(Image(torch.cat([image.data, image.data]), image.affine), tmp_path / "two.nii.gz")
    with pytest.raises(SegmorphError, match="2 channel"):
        unlabelled_spec([tmp_path / "two.nii.gz"], like=dataset)


def test_a_scan_of_singular_geometry_is_named(tmp_path):
    import SimpleITK as sitk

    scan = sitk.GetImageFromArray(torch.rand(6, 7, 8).numpy())
    scan.SetSpacing((1e-30, 1.0, 1.0))
    sitk.WriteImage(scan, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(SegmorphError, match="degenerate geometry") as caught:
        unlabelled_spec([tmp_path / "flat.nii.gz"])
    assert caught.value.path.endswith("flat.nii.gz")


def test_missing_source_and_empty_folder(tmp_path):
    with pytest.raises(SegmorphError):
        unlabelled_spec([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegmorphError, match="no images"):
        unlabelled_spec([tmp_path / "empty"])


def _affine_2d():
    from segmorph.geometry import Affine

    return Affine.from_geometry((0.8, 1.2), (3.0, -4.0), (1.0, 0.0, 0.0, 1.0))
