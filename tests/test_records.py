"""segmorph.records: the one reader of the project's JSON and CSV records, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segmorph.classification.data import class_value, load_labels_csv
from segmorph.configs import apply_overrides, parse_duration
from segmorph.engine.loop import TrainConfig
from segmorph.errors import SegmorphError
from segmorph.records import (
    finite_number,
    json_depth,
    read_csv,
    read_csv_lines,
    read_csv_rows,
    read_json,
    read_json_if_present,
)
from segmorph.registration.transform import check_matrix


def _write(path: Path, payload: str | bytes) -> Path:
    path.write_bytes(payload if isinstance(payload, bytes) else payload.encode())
    return path


def test_read_json_returns_an_object_and_accepts_a_byte_order_mark(tmp_path):
    path = _write(tmp_path / "plan.json", b"\xef\xbb\xbf" + json.dumps({"ndim": 3, "x": [1, {"y": 2}]}).encode())
    assert read_json(path, "plan") == {"ndim": 3, "x": [1, {"y": 2}]}


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("[1, 2]", "expected a JSON object at the top level, got a JSON array"),
        ('"text"', "expected a JSON object at the top level, got a string"),
        ('{"a": 1,}', "invalid JSON (line 1"),
        (b'{"name": "caf\xe9"}', "line 1: byte 0xe9 is not UTF-8"),
        ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", "nests deeper than"),
    ],
)
def test_read_json_refuses_tampered_records_naming_the_file(tmp_path, payload, fragment):
    path = _write(tmp_path / "run.json", payload)
    with pytest.raises(SegmorphError) as caught:
        read_json(path, "run record")
    assert fragment in caught.value.problem
    assert caught.value.path == str(path)


def test_read_json_missing_and_folder(tmp_path):
    with pytest.raises(SegmorphError, match="plan not found"):
        read_json(tmp_path / "plan.json", "plan")
    (tmp_path / "plan.json").mkdir()
    with pytest.raises(SegmorphError, match="Is a directory"):
        read_json(tmp_path / "plan.json", "plan")
    assert read_json_if_present(tmp_path / "absent.json") is None
    with pytest.raises(SegmorphError, match="Is a directory"):
        read_json_if_present(tmp_path / "plan.json")


def test_read_json_refuses_non_finite_numbers_only_when_asked(tmp_path):
    path = _write(tmp_path / "metrics.json", '{"hd95": NaN, "big": 1e999}')
    values = read_json(path, "metrics")
    assert np.isnan(values["hd95"]) and values["big"] == float("inf")
    with pytest.raises(SegmorphError, match="non-finite number NaN"):
        read_json(path, "plan", finite=True)
    with pytest.raises(SegmorphError, match="too large for a float"):
        read_json(_write(tmp_path / "p.json", '{"big": 1e999}'), "plan", finite=True)


def test_json_depth_ignores_brackets_inside_strings():
    assert json_depth('{"a": "[[[[{{{{", "b": [[1]]}') == 3
    assert json_depth('{"a": "\\"[[["}') == 1


def test_read_csv_with_bom_columns_lines_and_blank_rows(tmp_path):
    path = _write(tmp_path / "pairs.csv", b"\xef\xbb\xbf fixed ,moving\na.nii,b.nii\n\n,\nc.nii,d.nii\n")
    table = read_csv(path, ["fixed", "moving"], "pairs CSV")
    assert table.columns == ("fixed", "moving")
    assert table.rows == [{"fixed": "a.nii", "moving": "b.nii"}, {"fixed": "c.nii", "moving": "d.nii"}]
    assert table.lines == [2, 5]
    assert read_csv_rows(path, ["fixed"]) == table.rows


@pytest.mark.parametrize("separator", [b";", b"\t"])
def test_read_csv_takes_semicolons_or_tabs_where_the_header_uses_only_those(tmp_path, separator):
    rows = b"fixed,moving\na 1.nii,b,2.nii\n".replace(b",", separator).replace(b"b" + separator, b"b,")
    table = read_csv(_write(tmp_path / "pairs.csv", rows), ["fixed", "moving"])
    assert table.columns == ("fixed", "moving")
    assert table.rows == [{"fixed": "a 1.nii", "moving": "b,2.nii"}]  # a comma inside a cell stays
    commas = read_csv(_write(tmp_path / "commas.csv", b"fixed,moving\na;1,b\tc\n"), ["fixed", "moving"])
    assert commas.rows == [{"fixed": "a;1", "moving": "b\tc"}]  # a comma in the header: commas separate


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"fixed,moving\na,b\nc\xe9,d\n", "line 3: byte 0xe9 is not UTF-8"),
        (b"", "is empty: expected a header row with columns fixed,moving"),
        (b"fixed,target\na,b\n", "no column 'moving'"),
        (b"fixed,moving\n", "has a header but no rows"),
    ],
)
def test_read_csv_refuses_bad_tables_naming_the_file(tmp_path, payload, fragment):
    path = _write(tmp_path / "pairs.csv", payload)
    with pytest.raises(SegmorphError) as caught:
        read_csv(path, ["fixed", "moving"], "pairs CSV")
    assert fragment in caught.value.problem
    assert caught.value.path == str(path)


def test_read_csv_lines_keep_line_numbers_of_multiline_cells(tmp_path):
    path = _write(tmp_path / "t.csv", 'a,"two\nlines"\n\nb,c\n')
    assert read_csv_lines(path) == [(1, ["a", "two\nlines"]), (4, ["b", "c"])]


def test_finite_number():
    assert finite_number(" 2.5 ", "x") == 2.5
    for bad in ("nan", "inf", "text", True, None):
        with pytest.raises(SegmorphError, match="x: expected a"):
            finite_number(bad, "x", "f.csv")


def test_config_values_must_be_finite():
    base = TrainConfig(patch_size=(8, 8, 8), max_steps=5)
    for key, value in (("train.learning_rate", float("nan")), ("train.time_budget_s", float("inf"))):
        with pytest.raises(SegmorphError, match=f"{key.split('.')[1]}: expected a finite number"):
            apply_overrides(base, {key.split(".")[1]: value}, "plan")
    with pytest.raises(SegmorphError, match="invalid duration"):
        parse_duration(float("inf"))


def test_patch_beyond_the_voxel_budget_is_refused(monkeypatch):
    monkeypatch.setenv("SEGMORPH_MAX_VOXELS", "1000")
    with pytest.raises(ValueError, match="patch_size: .* memory budget"):
        TrainConfig(patch_size=(16, 16, 16), max_steps=5)


def test_matrix_checks():
    assert np.array_equal(check_matrix(np.eye(4).tolist(), "m", "t.json"), np.eye(4))
    for values, fragment in ((np.diag([0.0, 1, 1, 1]), "singular"), (np.diag([1e6, 1, 1, 1]), "absurd matrix"),
                             (np.ones((4, 4)), "last row")):  # fmt: skip
        with pytest.raises(SegmorphError, match=fragment):
            check_matrix(values, "m", "t.json")


def test_class_values_are_normalised_numbers():
    assert {class_value(v) for v in ("0", "0.0", "+0", " 0 ")} == {"0"}
    assert class_value("1.50") == "1.5" and class_value("benign") == "benign"


def test_labels_csv_numbers_written_two_ways_are_one_class(tmp_path):
    for index in range(4):
        (tmp_path / f"img{index}.png").write_bytes(b"")
    _write(tmp_path / "labels.csv", "file,lesion\nimg0.png,0\nimg1.png,1.0\nimg2.png,0.0\nimg3.png,1\n")
    dataset = load_labels_csv(tmp_path, tmp_path / "labels.csv", target="lesion")
    assert dataset.class_names == ("0", "1")
    assert dataset.labels == [0, 1, 0, 1]


def test_labels_csv_image_with_two_labels_is_refused(tmp_path):
    for index in range(2):
        (tmp_path / f"img{index}.png").write_bytes(b"")
    _write(tmp_path / "labels.csv", "file,lesion\nimg0.png,0\nimg1.png,1\nimg0.png,1\n")
    with pytest.raises(SegmorphError, match=r"row 4: image 'img0.png' is listed with class '1', and with '0' on row 2"):
        load_labels_csv(tmp_path, tmp_path / "labels.csv", target="lesion")
