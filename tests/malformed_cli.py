"""Malformed-input cases: the one-line contract: control characters in names, errors naming their file (class 5).

Each case is a :class:`malformed.BadInput`; :func:`malformed.corpus` gathers ``CASES``.

The names hold what a hostile name may hold: a newline or carriage return (a second, forged line), ``ESC [2J``
(clears the terminal), ``ESC ]0;...BEL`` (sets its title), a tab, DEL, C1 controls (``CSI`` as one byte,
``NEL``), the Unicode line separator. The error line must show each escaped (``\\n``, ``\\x1b``...), so it
stays one line and nothing reaches the terminal raw; ``names`` is that escaped form.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from malformed import SHAPE, BadInput, Prepared, _dataset, _float_image, _registration_folder, _scan

NEWLINE = "scan\nerror: forged second line"
CARRIAGE_RETURN = "scan\roverwritten"
CLEAR_SCREEN = "scan\x1b[2J\x1b[H"
SET_TITLE = "scan\x1b]0;owned\x07"
TAB = "scan\tnote"
DELETE = "scan\x7fdel"
C1 = "scan\x9b31m\x85next"
LINE_SEPARATOR = "scan\u2028next"
LONG = "n" * 200 + "\x1b[31m" + "m" * 20

ESCAPED = {
    NEWLINE: "scan\\nerror: forged second line",
    CARRIAGE_RETURN: "scan\\roverwritten",
    CLEAR_SCREEN: "scan\\x1b[2J\\x1b[H",
    SET_TITLE: "scan\\x1b]0;owned\\x07",
    TAB: "scan\\tnote",
    DELETE: "scan\\x7fdel",
    C1: "scan\\x9b31m\\x85next",
    LINE_SEPARATOR: "scan\\u2028next",
    LONG: "n" * 200 + "\\x1b[31m" + "m" * 20,
}


def _info_missing(stem: str) -> object:
    def build(tmp: Path, run: Path | None) -> Prepared:
        return Prepared(["info", str(tmp / f"{stem}.nii.gz")], ESCAPED[stem] + ".nii.gz")

    return build


def _info_truncated(stem: str) -> object:
    def build(tmp: Path, run: Path | None) -> Prepared:
        path = _scan(tmp / f"{stem}.nii.gz")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return Prepared(["info", str(path)], ESCAPED[stem] + ".nii.gz")

    return build


def predict_scan_with_escape_and_nan(tmp: Path, run: Path | None) -> Prepared:
    values = np.ones(SHAPE)
    values[1, 2, 3] = np.nan
    scans = tmp / "scans"
    scans.mkdir()
    _float_image(scans / f"{SET_TITLE}.nii.gz", values)
    out = tmp / "masks"
    return Prepared(["predict", str(run), str(scans), "--out", str(out), "--quiet"], ESCAPED[SET_TITLE], out)


def baseline_scan_with_tab_and_inf(tmp: Path, run: Path | None) -> Prepared:
    values = np.ones(SHAPE)
    values[0, 0, 0] = np.inf
    path = _float_image(tmp / f"{TAB}.mha", values)
    out = tmp / "masks"
    return Prepared(["baseline", str(path), "--out", str(out)], ESCAPED[TAB] + ".mha", out)


def evaluate_prediction_with_newline(tmp: Path, run: Path | None) -> Prepared:
    predictions, references = tmp / "predictions", tmp / "references"
    predictions.mkdir()
    references.mkdir()
    labels = np.zeros(SHAPE)
    labels[2:5, 2:5, 2:4] = 1
    _float_image(references / f"{NEWLINE}.nii.gz", labels)
    _float_image(predictions / f"{NEWLINE}.nii.gz", labels * 0.5)  # not integer: not a label map
    out = tmp / "metrics.csv"
    return Prepared(["evaluate", str(predictions), str(references), "--out", str(out)], ESCAPED[NEWLINE], out)


def warp_transform_folder_with_clear_screen(tmp: Path, run: Path | None) -> Prepared:
    folder = _registration_folder(tmp / CLEAR_SCREEN)
    (folder / "transform.json").write_text('{"steps": [{"type": "matrix", ')
    image = _scan(tmp / "moving.nii.gz")
    out = tmp / "warped.nii.gz"
    argv = ["warp", str(image), "--transform", str(folder), "--out", str(out)]
    return Prepared(argv, ESCAPED[CLEAR_SCREEN] + "/transform.json", out)


def register_moving_with_c1_controls(tmp: Path, run: Path | None) -> Prepared:
    fixed = _scan(tmp / "fixed.nii.gz")
    moving = _float_image(tmp / f"{C1}.nii.gz", np.ones((10, 8)))
    out = tmp / "reg"
    return Prepared(["register", str(fixed), str(moving), "--out", str(out)], ESCAPED[C1] + ".nii.gz", out)


def _write_config(path: Path, values: dict) -> Path:
    path.write_text(json.dumps(values))
    return path


def plan_config_file_with_bad_value(tmp: Path, run: Path | None) -> Prepared:
    """The value comes from the --config file: the error names that file, not just the key."""
    root = _dataset(tmp / "ds")
    config = _write_config(tmp / f"{CLEAR_SCREEN}.json", {"train": {"batch_size": "four"}})
    out = tmp / "plan.json"
    argv = ["plan", str(root), "--out", str(out), "--config", str(config), "--set", "train.seed=3"]
    return Prepared(argv, ESCAPED[CLEAR_SCREEN] + ".json", out)


def plan_config_file_with_unknown_key(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    config = _write_config(tmp / "overrides.json", {"train.batch_sise": 2})
    out = tmp / "plan.json"
    return Prepared(["plan", str(root), "--out", str(out), "--config", str(config)], "overrides.json", out)


def train_registration_config_file_out_of_range(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds", num_cases=4)
    config = _write_config(tmp / f"{NEWLINE}.json", {"train": {"batch_size": 0}})
    out = tmp / "reg_run"
    argv = ["train-registration", str(root), "--out", str(out), "--config", str(config), "--max-steps", "1", "--quiet"]
    return Prepared(argv, ESCAPED[NEWLINE] + ".json", out)


def classify_config_file_with_wrong_type(tmp: Path, run: Path | None) -> Prepared:
    config = _write_config(tmp / "classifier.json", {"train": {"learning_rate": "fast"}})
    out = tmp / "run"
    argv = ["classify", "train", str(tmp / "images"), "--out", str(out), "--config", str(config), "--max-steps", "1",
            "--quiet"]  # fmt: skip
    return Prepared(argv, "classifier.json", out)


CASES: tuple[BadInput, ...] = (
    BadInput("name_with_newline_is_one_line", _info_missing(NEWLINE), "no such file"),
    BadInput("name_with_carriage_return", _info_missing(CARRIAGE_RETURN), "no such file"),
    BadInput("name_clearing_the_terminal", _info_truncated(CLEAR_SCREEN), "truncated"),
    BadInput("name_setting_the_terminal_title", _info_truncated(SET_TITLE), "truncated"),
    BadInput("name_with_tab", _info_missing(TAB), "no such file"),
    BadInput("name_with_delete", _info_truncated(DELETE), "truncated"),
    BadInput("name_with_c1_controls", _info_missing(C1), "no such file"),
    BadInput("name_with_unicode_line_separator", _info_truncated(LINE_SEPARATOR), "truncated"),
    BadInput("very_long_name_with_escape", _info_truncated(LONG), "truncated"),
    BadInput(
        "predict_scan_name_setting_title", predict_scan_with_escape_and_nan, "NaN or infinite voxels", needs_model=True
    ),  # fmt: skip
    BadInput("baseline_scan_name_with_tab", baseline_scan_with_tab_and_inf, "NaN or infinite voxels"),
    BadInput("evaluate_prediction_name_with_newline", evaluate_prediction_with_newline, "non-integer"),
    BadInput(
        "warp_transform_folder_clearing_terminal", warp_transform_folder_with_clear_screen, "malformed transform record"
    ),  # fmt: skip
    BadInput("register_moving_name_with_c1_controls", register_moving_with_c1_controls, "is 2D"),
    BadInput(
        "plan_config_file_bad_value_names_the_file",
        plan_config_file_with_bad_value,
        "train.batch_size: expected an integer",
    ),  # fmt: skip
    BadInput(
        "plan_config_file_unknown_key_names_the_file",
        plan_config_file_with_unknown_key,
        "unknown plan key 'train.batch_sise'",
    ),  # fmt: skip
    BadInput(
        "train_registration_config_file_names_the_file", train_registration_config_file_out_of_range, "batch_size"
    ),  # fmt: skip
    BadInput(
        "classify_config_file_names_the_file",
        classify_config_file_with_wrong_type,
        "train.learning_rate: expected a number",
    ),  # fmt: skip
)
