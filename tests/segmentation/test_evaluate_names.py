"""Label names from dataset.json or a run, and distance units (mm for scans, px for pictures), in evaluation outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import distance_unit, has_physical_spacing, write_image
from segmorph.registration.run import evaluate_registration, label_names_for, label_overlap
from segmorph.registration.transform import Transform, save_transform
from segmorph.segmentation.api import evaluate
from segmorph.segmentation.evaluate import evaluate_arrays, evaluate_folders, name_labels, read_label_names

AFFINE = Affine.from_geometry((0.8, 1.0, 2.0), origin=(-5.0, 3.0, 10.0))
SHAPE = (12, 10, 8)
HIPPOCAMPUS = {"0": "background", "1": "Anterior", "2": "Posterior"}


def _labels(array: np.ndarray, affine: Affine = AFFINE) -> Image:
    return Image(torch.from_numpy(array[None].astype(np.int64)), affine, is_label=True)


def _pair() -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros(SHAPE, np.int64)
    ref[2:6, 2:6, 2:6] = 1
    ref[7:10, 5:9, 3:6] = 2
    pred = ref.copy()
    pred[2:4, 2:6, 2:6] = 0
    return pred, ref


def _msd(root: Path, labels: dict) -> tuple[Path, Path]:
    """``root/dataset.json`` + ``root/labelsTr/case_a.nii.gz``, and a prediction folder beside: (pred_dir, ref_dir)."""
    pred, ref = _pair()
    write_image(_labels(ref), root / "labelsTr" / "case_a.nii.gz")
    write_image(_labels(pred), root.parent / "pred" / "case_a.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": "hippo", "modality": {"0": "MRI"}, "labels": labels}))
    return root.parent / "pred", root / "labelsTr"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_dataset_json_beside_the_references_names_csv_json_and_table(tmp_path, capsys):
    pred_dir, ref_dir = _msd(tmp_path / "Task04", HIPPOCAMPUS)
    out = tmp_path / "metrics.csv"
    result = evaluate_folders(pred_dir, ref_dir, out, console=True)
    rows = _csv_rows(out)
    assert [(r["label"], r["name"], r["unit"]) for r in rows] == [("1", "Anterior", "mm"), ("2", "Posterior", "mm")]
    summary = json.loads(out.with_suffix(".json").read_text())
    assert {k: v["name"] for k, v in summary["classes"].items()} == {"1": "Anterior", "2": "Posterior"}
    assert summary["unit"] == "mm" and result["unit"] == "mm"
    table = capsys.readouterr().out
    assert "Anterior" in table and "Posterior" in table and "HD95 mm" in table and "label_1" not in table


def test_nnunet_v2_labels_are_read_too(tmp_path):
    pred_dir, ref_dir = _msd(tmp_path / "ds", {"background": 0, "Anterior": 1, "Posterior": 2})
    result = evaluate_folders(pred_dir, ref_dir, None, console=False)
    assert [row["name"] for row in result["rows"]] == ["Anterior", "Posterior"]


def test_a_dataset_json_that_misses_a_value_is_not_used(tmp_path):
    pred_dir, ref_dir = _msd(tmp_path / "ds", {"0": "background", "1": "Anterior"})
    result = evaluate_folders(pred_dir, ref_dir, None, console=False)
    assert [row["name"] for row in result["rows"]] == ["label_1", "label_2"]


def test_labels_from_a_run_folder_or_a_dataset_folder(tmp_path):
    pred, ref = _pair()
    write_image(_labels(ref), tmp_path / "ref" / "case_a.nii.gz")
    write_image(_labels(pred), tmp_path / "pred" / "case_a.nii.gz")
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text(json.dumps({"ndim": 3, "labels": HIPPOCAMPUS}))
    result = evaluate_folders(tmp_path / "pred", tmp_path / "ref", None, console=False, labels_from=run)
    assert [row["name"] for row in result["rows"]] == ["Anterior", "Posterior"]
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"Anterior": 1, "Posterior": 2}}))
    assert read_label_names(dataset) == {1: "Anterior", 2: "Posterior"}
    evaluation = evaluate(tmp_path / "pred", tmp_path / "ref", labels_from=dataset)
    assert set(evaluation.per_class) == {"Anterior", "Posterior"}


def test_labels_from_a_folder_without_names_is_refused_naming_it(tmp_path):
    with pytest.raises(SegmorphError, match="plan.json.*dataset.json") as caught:
        read_label_names(tmp_path)
    assert caught.value.path == str(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"1": ["a", "b"]}}))
    with pytest.raises(SegmorphError, match="cannot read entry"):
        read_label_names(tmp_path)


def test_name_labels_uses_known_names_only_when_they_cover_every_value():
    assert name_labels([0, 1, 2], {1: "Anterior", 2: "Posterior"}) == {1: "Anterior", 2: "Posterior"}
    assert name_labels([1, 3], {1: "Anterior", 2: "Posterior"}) == {1: "label_1", 3: "label_3"}
    assert name_labels([2], None) == {2: "label_2"}


def _square(shape=(20, 24), at=(5, 6), size=8) -> np.ndarray:
    mask = np.zeros(shape, np.int64)
    mask[at[0] : at[0] + size, at[1] : at[1] + size] = 1
    return mask


def test_png_rows_carry_unit_px_and_distances_count_pixels(tmp_path, capsys):
    picture = Affine.from_geometry((0.5, 0.5))  # whatever a picture's header says, distances count pixels
    ref, pred = _square(), _square(at=(8, 6))
    write_image(_labels(ref, picture), tmp_path / "ref" / "img_01.png")
    write_image(_labels(pred, picture), tmp_path / "pred" / "img_01.png")
    out = tmp_path / "metrics.csv"
    result = evaluate_folders(tmp_path / "pred", tmp_path / "ref", out, console=True)
    expected = evaluate_arrays([("img_01", pred, ref, (1.0, 1.0))], {1: "label_1"}, unit="px")[0]
    row = _csv_rows(out)[0]
    assert row["unit"] == "px" and result["unit"] == "px"
    assert float(row["hd95"]) == pytest.approx(expected["hd95"]) and expected["hd95"] == pytest.approx(3.0)
    assert float(row["volume_ref"]) == pytest.approx(64.0)  # pixels, not mm²
    table = capsys.readouterr().out
    assert "HD95 px" in table and "HD95 mm" not in table
    assert evaluate(tmp_path / "pred", tmp_path / "ref").unit == "px"


def test_references_mixing_pictures_and_scans_are_refused(tmp_path):
    picture, scan = Affine.from_geometry((1.0, 1.0)), Affine.from_geometry((0.7, 0.7))
    for name, affine in (("a.png", picture), ("b.nii.gz", scan)):
        write_image(_labels(_square(), affine), tmp_path / "ref" / name)
        write_image(_labels(_square(), affine), tmp_path / "pred" / name)
    with pytest.raises(SegmorphError, match="mix pictures"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", None, console=False)


def test_physical_spacing_is_known_by_suffix():
    assert not has_physical_spacing("a.PNG") and not has_physical_spacing("b.jpeg")
    assert has_physical_spacing("c.nii.gz") and has_physical_spacing("series_folder")
    assert (distance_unit("a.tif"), distance_unit("c.nrrd")) == ("px", "mm")


# -- registration --------------------------------------------------------------------------------


def test_registration_label_overlap_names_and_units():
    pred, ref = _pair()
    rows = label_overlap(_labels(pred), _labels(ref), {1: "Anterior", 2: "Posterior"})
    assert [(r["name"], r["unit"]) for r in rows] == [("Anterior", "mm"), ("Posterior", "mm")]
    rows = label_overlap(_labels(pred), _labels(ref), {1: "Anterior"}, unit="px")
    assert [(r["name"], r["unit"]) for r in rows] == [("label_1", "px"), ("label_2", "px")]


def test_evaluate_registration_names_labels_from_the_dataset_json(tmp_path):
    pred, ref = _pair()
    _msd(tmp_path / "Task04", HIPPOCAMPUS)
    folder = tmp_path / "reg"
    save_transform(Transform.from_matrix(np.eye(4)), folder, AFFINE, SHAPE)
    write_image(_labels(pred), folder / "warped_labels.nii.gz")
    fixed_labels = tmp_path / "Task04" / "labelsTr" / "case_a.nii.gz"
    assert label_names_for(fixed_labels) == {0: "background", 1: "Anterior", 2: "Posterior"}
    metrics = evaluate_registration(folder, fixed_labels)
    assert [row["name"] for row in metrics["labels"]] == ["Anterior", "Posterior"]
    written = json.loads((folder / "metrics.json").read_text())
    assert [row["name"] for row in written["labels"]] == ["Anterior", "Posterior"]


def test_atlas_segment_names_labels_from_the_dataset_json_beside_the_reference(tmp_path):
    from helpers import sphere_case
    from segmorph.registration.atlas import run_atlas_segment
    from segmorph.registration.classical import ClassicalConfig

    scan, reference = sphere_case(seed=0)
    atlas_image, atlas_labels = sphere_case(seed=1)
    root = tmp_path / "Task04"
    scan_path = write_image(scan, root / "imagesTr" / "scan.nii.gz")
    reference_path = write_image(reference, root / "labelsTr" / "scan.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": HIPPOCAMPUS}))
    atlas_path, atlas_labels_path = tmp_path / "atlas.nii.gz", tmp_path / "atlas_seg.nii.gz"
    write_image(atlas_image, atlas_path)
    write_image(atlas_labels, atlas_labels_path)
    spec = f"{atlas_path}:{atlas_labels_path}"
    config = ClassicalConfig(shrink=(2, 1), rigid_iterations=(5, 0), affine_iterations=(5, 0),
                             deformable_iterations=(0, 0))  # fmt: skip
    summary = run_atlas_segment(scan_path, [spec], tmp_path / "out" / "seg.nii.gz", "affine", "majority",
                                reference_path=reference_path, progress=False, config=config)  # fmt: skip
    assert summary["names"] == {1: "Anterior", 2: "Posterior"}
    metrics = json.loads((tmp_path / "out" / "seg_metrics.json").read_text())
    assert [(row["name"], row["unit"]) for row in metrics["metrics"]] == [("Anterior", "mm"), ("Posterior", "mm")]


def test_train_log_names_classes_by_dataset_label_names(trained_run: Path):
    from helpers import MSD_LABELS

    header = (trained_run / "train_log.csv").read_text().splitlines()[0].split(",")
    names = [name for value, name in sorted(MSD_LABELS.items()) if value != "0"]
    assert header[-len(names) :] == [f"val_dice_{name}" for name in names]


def test_score_part_names_fall_back_to_values_for_missing_repeated_or_unsafe_names():
    from segmorph.segmentation.task import score_part_names

    assert score_part_names(4, {1: "Anterior", 2: "Posterior", 3: "Anterior"}) == ["Anterior", "Posterior", "3"]
    assert score_part_names(4, {1: "a,b", 2: "", 3: "7"}) == ["1", "2", "3"]
    assert score_part_names(3) == ["1", "2"]
