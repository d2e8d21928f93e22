"""Dataset layouts, case loading with its checks, and splits (tiny synthetic files in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import require_dataset
from segmorph.errors import SegmorphError, SegmorphWarning
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.segmentation.datasets import (
    CaseFiles,
    DatasetSpec,
    class_count,
    infer_labels,
    load_dataset,
    load_sample,
    modality_of,
    split_cases,
    split_from_list,
)

SHAPE = (7, 6, 5)
ANGLE = 0.3
DIRECTION = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0], [np.sin(ANGLE), np.cos(ANGLE), 0], [0, 0, 1]])
AFFINE = Affine.from_geometry((0.8, 1.1, 2.5), (10.0, -4.0, 3.0), DIRECTION)


def volume(seed: int, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(1, 100, (1, *shape)).astype(np.float32))


def label_map(shape: tuple[int, ...] = SHAPE, top: int = 2) -> torch.Tensor:
    label = torch.zeros((1, *shape), dtype=torch.int64)
    label[0, 1:4, 1:4, 1:3] = 1
    label[0, 4:6, 2:5, 2:4] = top
    return label


def write_case(folder: Path, name: str, data: torch.Tensor, affine: Affine = AFFINE, is_label: bool = False) -> Path:
    return write_image(Image(data, affine, is_label), folder / f"{name}.nii.gz")


def make_msd(root: Path, ids: tuple[str, ...] = ("hip_001", "hip_002", "hip_003")) -> Path:
    for n, case_id in enumerate(ids):
        write_case(root / "imagesTr", case_id, volume(n))
        write_case(root / "labelsTr", case_id, label_map(), is_label=True)
    meta = {
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_nnunet(root: Path, ids: tuple[str, ...] = ("case_a", "case_b"), training_list: bool = False) -> Path:
    for n, case_id in enumerate(ids):
        write_case(root / "imagesTr", f"{case_id}_0000", volume(2 * n))
        write_case(root / "imagesTr", f"{case_id}_0001", volume(2 * n + 1))
        write_case(root / "labelsTr", case_id, label_map(top=1), is_label=True)
    meta: dict = {
        "channel_names": {"0": "CT", "1": "T2"},
        "labels": {"background": 0, "tumour": 1},
        "file_ending": ".nii.gz",
        "numTraining": len(ids),
    }
    if training_list:
        meta["training"] = [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_layout_loads_cases_labels_and_geometry(tmp_path: Path) -> None:
    spec = load_dataset(make_msd(tmp_path))
    assert spec.case_ids == ["hip_001", "hip_002", "hip_003"]
    assert spec.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert spec.channel_names == ("MRI",) and spec.modalities == ("MRI",)
    sample = load_sample(spec.cases[1], spec)
    assert sample.case_id == "hip_002"
    assert sample.image.data.shape == (1, *SHAPE) and sample.label.data.shape == (1, *SHAPE)
    assert torch.allclose(sample.image.data, volume(1))
    assert torch.equal(sample.label.data, label_map())
    assert sample.image.affine.allclose(AFFINE, atol=1e-5)
    assert sample.meta["label_path"].endswith("hip_002.nii.gz")


def test_a_file_ending_that_no_image_has_is_named(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".nrrd"}))
    with pytest.raises(SegmorphError, match=r"imagesTr: holds no \.nrrd files, the file_ending of dataset\.json"):
        load_dataset(root)


@pytest.mark.parametrize(("declared", "expected"), [(5, "numTraining is 5 but 2 training cases were found"),
                                                    ("two", "numTraining is not a whole number")])  # fmt: skip
def test_a_num_training_that_disagrees_is_a_warning_and_the_cases_found_are_used(tmp_path, declared, expected):
    root = make_nnunet(tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": declared}))
    with pytest.warns(SegmorphWarning, match=expected) as caught:
        spec = load_dataset(root)
    assert spec.case_ids == ["case_a", "case_b"]
    assert str(caught[0].message).startswith(str(root / "dataset.json"))


def test_class_count_is_the_highest_label_value_plus_one(tmp_path: Path) -> None:
    import warnings
    from dataclasses import replace

    spec = load_dataset(make_nnunet(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegmorphWarning)
        assert class_count(spec) == 2
        assert class_count(replace(spec, labels={})) == 2
    with pytest.warns(SegmorphWarning, match="label values 0, 255 are not consecutive: 254 of the network's 256"):
        assert class_count(replace(spec, labels={0: "background", 255: "lesion"})) == 256
    with pytest.raises(SegmorphError, match="label value 5000: a label's value is its network output channel") as err:
        class_count(replace(spec, labels={0: "background", 1: "a", 5000: "b"}))
    assert err.value.path == str(tmp_path)


def test_a_num_training_that_agrees_gives_no_warning(tmp_path: Path) -> None:
    import warnings

    root = make_nnunet(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegmorphWarning)
        assert len(load_dataset(root).cases) == 2


@pytest.mark.parametrize("training_list", [False, True])
def test_nnunet_channel_files_are_stacked(tmp_path: Path, training_list: bool) -> None:
    spec = load_dataset(make_nnunet(tmp_path, training_list=training_list))
    assert spec.case_ids == ["case_a", "case_b"]
    assert spec.labels == {0: "background", 1: "tumour"}
    assert spec.modalities == ("CT", "MRI")
    assert [p.name for p in spec.cases[1].images] == ["case_b_0000.nii.gz", "case_b_0001.nii.gz"]
    sample = load_sample(spec.cases[1], spec)
    assert sample.image.data.shape == (2, *SHAPE)
    assert torch.allclose(sample.image.data[0], volume(2)[0]) and torch.allclose(sample.image.data[1], volume(3)[0])


def test_missing_channel_file_is_named(tmp_path: Path) -> None:
    make_nnunet(tmp_path, training_list=True)
    (tmp_path / "imagesTr" / "case_b_0001.nii.gz").unlink()
    with pytest.raises(SegmorphError, match="channel 1") as err:
        load_dataset(tmp_path)
    assert err.value.path.endswith("case_b_0001.nii.gz")


def test_missing_channel_file_in_folder_pairing_is_named(tmp_path: Path) -> None:
    make_nnunet(tmp_path)
    (tmp_path / "imagesTr" / "case_a_0001.nii.gz").unlink()
    with pytest.raises(SegmorphError) as err:
        load_dataset(tmp_path)
    assert err.value.path.endswith("case_a_0001.nii.gz")


def test_png_folders_are_rgb_and_labels_are_inferred(tmp_path: Path) -> None:
    rgb = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 9, 8)).astype(np.uint8))
    mask = torch.zeros((1, 9, 8), dtype=torch.int64)
    mask[0, 2:5, 3:6] = 1
    for name in ("01", "02"):
        write_image(Image(rgb, Affine.identity(2)), tmp_path / "images" / f"{name}.png")
        write_image(Image(mask, Affine.identity(2), True), tmp_path / "masks" / f"{name}.png")
    spec = load_dataset(tmp_path)
    assert spec.modalities == ("rgb",) * 3 and spec.labels == {}
    assert infer_labels(spec).labels == {0: "background", 1: "label_1"}
    sample = load_sample(spec.cases[0], infer_labels(spec))
    assert torch.equal(sample.image.data, rgb.float()) and torch.equal(sample.label.data, mask)


def test_explicit_folders_and_unlabelled_cases(tmp_path: Path) -> None:
    write_case(tmp_path / "scans", "a", volume(0))
    write_case(tmp_path / "vessels", "a", label_map(), is_label=True)
    spec = load_dataset(tmp_path, images_dir="scans", labels_dir="vessels")
    assert spec.cases == (CaseFiles("a", (tmp_path / "scans" / "a.nii.gz",), tmp_path / "vessels" / "a.nii.gz"),)
    unlabelled = load_dataset(tmp_path, images_dir="scans")
    assert unlabelled.cases[0].label is None
    assert load_sample(unlabelled.cases[0], unlabelled).label is None


def test_spec_round_trips_through_json(tmp_path: Path) -> None:
    spec = load_dataset(make_nnunet(tmp_path))
    again = DatasetSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_modality_names() -> None:
    assert [modality_of(n) for n in ("CT", "t1w", "FLAIR", "rgb", "noNorm")] == ["CT", "MRI", "MRI", "rgb", "other"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "invalid JSON"), ('{"labels": {"0": "bg"}}', "modality"), ('{"modality": {"0": "MRI"}}', "labels")],
)
def test_bad_dataset_json_is_named(tmp_path: Path, content: str, expected: str) -> None:
    make_msd(tmp_path)
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(SegmorphError, match=expected) as err:
        load_dataset(tmp_path)
    assert err.value.path.endswith("dataset.json")


def test_missing_label_file_is_named(tmp_path: Path) -> None:
    make_msd(tmp_path)
    (tmp_path / "labelsTr" / "hip_002.nii.gz").unlink()
    with pytest.raises(SegmorphError) as err:
        load_dataset(tmp_path)
    assert err.value.path.endswith("hip_002.nii.gz")


def test_unpaired_files_are_named(tmp_path: Path) -> None:
    write_case(tmp_path / "images", "a", volume(0))
    write_case(tmp_path / "images", "b", volume(1))
    write_case(tmp_path / "labels", "a", label_map(), is_label=True)
    with pytest.raises(SegmorphError, match=r"b\.nii\.gz"):
        load_dataset(tmp_path)
    write_case(tmp_path / "labels", "b", label_map(), is_label=True)
    write_case(tmp_path / "labels", "c", label_map(), is_label=True)
    with pytest.raises(SegmorphError, match=r"c\.nii\.gz"):
        load_dataset(tmp_path)


def test_missing_and_empty_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(SegmorphError) as err:
        load_dataset(tmp_path / "nowhere")
    assert err.value.path.endswith("nowhere")
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    with pytest.raises(SegmorphError, match="no image files") as err:
        load_dataset(tmp_path)
    assert err.value.path.endswith("imagesTr")
    with pytest.raises(SegmorphError, match="no dataset.json"):
        load_dataset(tmp_path / "imagesTr")


def test_label_with_another_shape_is_named(tmp_path: Path) -> None:
    spec = load_dataset(make_msd(tmp_path))
    write_case(tmp_path / "labelsTr", "hip_001", label_map((7, 6, 4)), is_label=True)
    with pytest.raises(SegmorphError, match="shape") as err:
        load_sample(spec.cases[0], spec)
    assert err.value.path.endswith("hip_001.nii.gz") and "labelsTr" in err.value.path


def test_label_with_another_geometry_is_named(tmp_path: Path) -> None:
    spec = load_dataset(make_msd(tmp_path))
    moved = Affine.from_geometry(AFFINE.spacing, AFFINE.origin + [0, 0.5, 0], AFFINE.direction)
    write_case(tmp_path / "labelsTr", "hip_003", label_map(), moved, is_label=True)
    with pytest.raises(SegmorphError, match="origin") as err:
        load_sample(spec.cases[2], spec)
    assert err.value.path.endswith("hip_003.nii.gz") and "labelsTr" in err.value.path


def test_channel_with_another_shape_is_named(tmp_path: Path) -> None:
    spec = load_dataset(make_nnunet(tmp_path))
    write_case(tmp_path / "imagesTr", "case_a_0001", volume(0, (7, 6, 6)))
    with pytest.raises(SegmorphError, match="shape") as err:
        load_sample(spec.cases[0], spec)
    assert err.value.path.endswith("case_a_0001.nii.gz")


def test_undeclared_label_values_are_named(tmp_path: Path) -> None:
    spec = load_dataset(make_msd(tmp_path))
    write_case(tmp_path / "labelsTr", "hip_002", label_map(top=5), is_label=True)
    with pytest.raises(SegmorphError, match=r"\[5\]") as err:
        load_sample(spec.cases[1], spec)
    assert err.value.path.endswith("hip_002.nii.gz")


def test_split_is_deterministic_disjoint_and_covering() -> None:
    ids = [f"case_{i:02d}" for i in range(12)]
    folds = [split_cases(ids, fold, num_folds=5, seed=3) for fold in range(5)]
    assert folds == [split_cases(list(reversed(ids)), fold, num_folds=5, seed=3) for fold in range(5)]
    for train, val in folds:
        assert not set(train) & set(val) and sorted(train + val) == ids and val
    assert sorted(c for _, val in folds for c in val) == ids
    assert folds[0] != split_cases(ids, 0, num_folds=5, seed=4)
    assert split_cases(ids, -1) == (ids, [])


def test_split_rejects_bad_arguments() -> None:
    with pytest.raises(SegmorphError, match="fold"):
        split_cases(["a", "b", "c"], fold=3, num_folds=3)
    with pytest.raises(SegmorphError, match=r"2 cases cannot make 5 folds.*between 2 and the number of cases") as err:
        split_cases(["a", "b"], fold=0, num_folds=5, dataset="data")
    assert err.value.path == "data"
    assert split_from_list(["c", "a", "b"], ["b"]) == (["a", "c"], ["b"])
    with pytest.raises(SegmorphError, match="zz"):
        split_from_list(["a", "b"], ["a", "zz"])


@pytest.mark.integration
@pytest.mark.slow
def test_hippocampus_cases_load() -> None:
    spec = load_dataset(require_dataset("msd_hippocampus", "dataset.json"))
    assert len(spec.cases) == 208 and spec.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    for case in spec.cases[:3]:
        sample = load_sample(case, spec)
        assert sample.image.num_channels == 1 and sample.label.spatial_shape == sample.image.spatial_shape
        assert min(sample.image.spatial_shape) >= 24 and max(sample.image.spatial_shape) <= 59
        assert set(torch.unique(sample.label.data).tolist()) == {0, 1, 2}
        assert np.allclose(sample.image.spacing, 1.0)


def test_a_broken_link_in_a_dataset_folder_is_named(tmp_path):
    from helpers import write_msd_dataset

    root = write_msd_dataset(tmp_path / "data", num_cases=3)
    (root / "dataset.json").unlink()  # the cases are the folders' files
    (root / "imagesTr" / "extra_0000.nii.gz").symlink_to(tmp_path / "moved_away.nii.gz")
    with pytest.raises(SegmorphError, match="broken symbolic link") as err:
        load_dataset(root)
    assert err.value.path.endswith("extra_0000.nii.gz")
