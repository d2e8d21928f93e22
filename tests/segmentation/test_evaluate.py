"""evaluate_folders on tiny label files with a non-identity direction."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.segmentation.evaluate import CSV_COLUMNS, evaluate_arrays, evaluate_folders, summarize

SPACING = (0.8, 1.0, 2.0)
ROTATION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
AFFINE = Affine.from_geometry(SPACING, origin=(-5.0, 3.0, 10.0), direction=ROTATION)
SHAPE = (12, 10, 8)


def _write(path: Path, labels: np.ndarray, affine: Affine = AFFINE) -> Path:
    return write_image(Image(torch.from_numpy(labels[None].astype(np.int64)), affine, is_label=True), path)


def _maps() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """case -> (pred, ref). Class 1 perfect in case a, half in case b; class 2 only in case b's ref."""
    a_ref = np.zeros(SHAPE, np.int64)
    a_ref[2:6, 2:6, 2:6] = 1
    b_ref = np.zeros(SHAPE, np.int64)
    b_ref[4:8, 2:6, 2:6] = 1
    b_ref[9:11, 7:9, 1:3] = 2
    b_pred = np.zeros(SHAPE, np.int64)
    b_pred[2:6, 2:6, 2:6] = 1  # overlaps b_ref's class 1 in half its voxels: Dice 0.5
    return {"case_a": (a_ref.copy(), a_ref), "case_b": (b_pred, b_ref)}


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    for case, (pred, ref) in _maps().items():
        _write(pred_dir / f"{case}.nii.gz", pred)
        _write(ref_dir / f"{case}.nrrd", ref)  # different formats pair by case id
    return pred_dir, ref_dir


def test_csv_and_json_values(folders, tmp_path):
    pred_dir, ref_dir = folders
    out_csv = tmp_path / "out" / "metrics.csv"
    result = evaluate_folders(pred_dir, ref_dir, out_csv, console=False)
    with out_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    by_key = {(r["case"], int(r["label"])): r for r in rows}
    assert set(by_key) == {("case_a", 1), ("case_a", 2), ("case_b", 1), ("case_b", 2)}
    assert float(by_key["case_a", 1]["dice"]) == pytest.approx(1.0)
    assert float(by_key["case_b", 1]["dice"]) == pytest.approx(0.5)
    assert float(by_key["case_b", 2]["dice"]) == 0.0
    assert by_key["case_b", 2]["empty_pred"] == "True"
    diagonal = math.dist((0, 0, 0), np.multiply(SHAPE, SPACING))
    assert float(by_key["case_b", 2]["hd95"]) == pytest.approx(diagonal)
    assert float(by_key["case_a", 2]["dice"]) == 1.0  # absent from both: the both-empty rule

    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["cases"] == 2
    assert summary["classes"]["1"]["dice"]["mean"] == pytest.approx(0.75)
    assert summary["classes"]["1"]["dice"]["std"] == pytest.approx(0.25)
    assert summary["classes"]["1"]["dice"]["median"] == pytest.approx(0.75)
    assert summary["classes"]["2"]["dice"]["mean"] == pytest.approx(0.5)
    assert summary["classes"]["2"]["empty_pred"] == 2
    assert summary["mean_over_classes"]["dice"] == pytest.approx(0.625)
    assert summary["classes"]["1"]["name"] == "label_1"
    assert result["rows"][0]["case"] == "case_a"
    assert {k: v for k, v in result.items() if k != "rows"} == summary


def test_explicit_labels_and_console_table(folders, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # rich wraps cells at its default 80 columns when not on a terminal
    pred_dir, ref_dir = folders
    result = evaluate_folders(pred_dir, ref_dir, None, labels={0: "background", 1: "organ"})
    assert list(result["classes"]) == ["1"]
    assert result["classes"]["1"]["name"] == "organ"
    printed = capsys.readouterr().out
    assert "organ" in printed and "0.750 ± 0.250" in printed and "mean" in printed


def test_png_prediction_pairs_with_png_reference(tmp_path):
    pred, ref = np.zeros((16, 16), np.int64), np.zeros((16, 16), np.int64)
    pred[2:10, 2:10] = 1
    ref[2:10, 2:6] = 1
    affine = Affine.identity(2)
    _write(tmp_path / "p" / "slice.png", pred, affine)
    _write(tmp_path / "r" / "slice.png", ref, affine)
    result = evaluate_folders(tmp_path / "p", tmp_path / "r", None, console=False)
    assert result["classes"]["1"]["dice"]["mean"] == pytest.approx(2 * 32 / (64 + 32))


def test_geometry_mismatch_names_pred_file(folders):
    pred_dir, ref_dir = folders
    shifted = Affine.from_geometry(SPACING, origin=(-5.0, 3.0, 10.5), direction=ROTATION)
    _write(pred_dir / "case_b.nii.gz", _maps()["case_b"][0], shifted)
    with pytest.raises(SegmorphError, match=r"differs from reference case_b.nrrd: origin .* 0.5 mm apart") as info:
        evaluate_folders(pred_dir, ref_dir, None, labels={1: "organ"}, console=False)
    assert info.value.path == str(pred_dir / "case_b.nii.gz")


def test_shape_mismatch_names_pred_file(folders):
    pred_dir, ref_dir = folders
    _write(pred_dir / "case_a.nii.gz", np.zeros((12, 10, 7), np.int64))
    with pytest.raises(SegmorphError, match="shape") as info:
        evaluate_folders(pred_dir, ref_dir, None, labels={1: "organ"}, console=False)
    assert "case_a.nii.gz" in str(info.value)


def test_missing_prediction_is_an_error(folders, tmp_path):
    pred_dir, ref_dir = folders
    (pred_dir / "case_b.nii.gz").unlink()
    out_csv = tmp_path / "m.csv"
    with pytest.raises(SegmorphError, match="case_b"):
        evaluate_folders(pred_dir, ref_dir, out_csv, console=False)
    assert not out_csv.exists()


def test_no_pairs_lists_both_sides(folders):
    pred_dir, ref_dir = folders
    for path in pred_dir.iterdir():
        path.rename(path.with_name("other_" + path.name))
    with pytest.raises(SegmorphError, match="no prediction matches") as info:
        evaluate_folders(pred_dir, ref_dir, None, console=False)
    assert "case_a" in str(info.value) and "other_case_a" in str(info.value)


def test_extra_prediction_is_reported(folders):
    pred_dir, ref_dir = folders
    _write(pred_dir / "case_c.nii.gz", np.zeros(SHAPE, np.int64))
    result = evaluate_folders(pred_dir, ref_dir, None, console=False)
    assert result["unmatched_predictions"] == ["case_c"]
    assert result["cases"] == 2


def test_evaluate_arrays_and_summarize_in_memory():
    ref = np.zeros((8, 8), np.int64)
    ref[2:4, 2:4] = 1
    rows = evaluate_arrays([("x", ref, ref, (1.0, 1.0)), ("y", np.zeros_like(ref), ref, (1.0, 1.0))], {1: "a"})
    summary = summarize(rows)
    assert summary["classes"]["1"]["dice"]["mean"] == pytest.approx(0.5)
    assert summary["classes"]["1"]["hd95"]["mean"] == pytest.approx(math.hypot(8, 8) / 2)
