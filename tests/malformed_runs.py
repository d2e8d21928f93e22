"""Malformed-input cases: tampered run folders, configs, JSON/CSV records, transforms, landmarks, labels CSVs (classes 2, 4, 6).

Each case is a :class:`malformed.BadInput`; :func:`malformed.corpus` gathers ``CASES``. Run folders are copies of
the ``trained_run`` fixture, tampered in the copy (the fixture itself must stay byte-identical).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from helpers import sphere_case
from malformed import BadInput, Prepared, _classify_dataset, _dataset, _edit_json, _registration_folder, _scan
from segmorph.image import Image
from segmorph.io import write_image

DEEP = "[" * 10_000 + "]" * 10_000  # Python's json recurses: this would end in RecursionError


def _run_copy(tmp: Path, run: Path | None, name: str = "tampered_run") -> Path:
    folder = tmp / name
    shutil.copytree(run, folder)
    return folder


def _predict(tmp: Path, run: Path | None, tamper: Callable[[Path], None], names: str) -> Prepared:
    """``predict`` with a copy of the trained run tampered by ``tamper``."""
    folder = _run_copy(tmp, run)
    tamper(folder)
    scan = _scan(tmp / "scan.nii.gz")
    out = tmp / "masks"
    return Prepared(["predict", str(folder), str(scan), "--out", str(out), "--quiet"], names, out)


def _plan_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda folder: _edit_json(folder / "plan.json", edit)


def _plan_text(text: str | bytes) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        path = folder / "plan.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return tamper


# -- plan.json -------------------------------------------------------------------------------------


def plan_nan_patch(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, _plan_edit(lambda p: p["train"].update(patch_size=[float("nan"), 8, 8])), "plan.json")


def plan_huge_patch(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, _plan_edit(lambda p: p["train"].update(patch_size=[10**9, 8, 8])), "plan.json")


def plan_negative_spacing(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, _plan_edit(lambda p: p["preprocess"].update(target_spacing=[-1.0, 1.0, 1.0])),
                    "plan.json")  # fmt: skip


def plan_absurd_spacing(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, _plan_edit(lambda p: p["preprocess"].update(target_spacing=[1e-30, 1.0, 1.0])),
                    "plan.json")  # fmt: skip


def plan_infinite_spacing(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, _plan_edit(lambda p: p["preprocess"].update(target_spacing=[float("inf"), 1, 1])),
                    "plan.json")  # fmt: skip


def plan_folder(tmp: Path, run: Path | None) -> Prepared:
    def tamper(folder: Path) -> None:
        (folder / "plan.json").unlink()
        (folder / "plan.json").mkdir()

    return _predict(tmp, run, tamper, "plan.json")


def plan_deeply_nested(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, _plan_text('{"ndim": ' + DEEP + "}"), "plan.json")


def plan_as_list(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, _plan_text("[3, 2, 1]"), "plan.json")


def plan_not_utf8(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, lambda f: (f / "plan.json").write_bytes((f / "plan.json").read_bytes() + b"\n\xe9\n"),
                    "plan.json")  # fmt: skip


def plan_without_train(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, _plan_edit(lambda p: p.pop("train")), "plan.json")


# -- checkpoints -----------------------------------------------------------------------------------


def _rewrite_checkpoint(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """Load the copied run's checkpoint_best.pt, change its payload, save it again (plain tensors only)."""

    def tamper(folder: Path) -> None:
        path = folder / "checkpoint_best.pt"
        payload = torch.load(path, weights_only=True)
        edit(payload)
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        path.write_bytes(buffer.getvalue())

    return tamper


def _network_ndim(payload: dict, ndim: int) -> None:
    config = json.loads(payload["config_json"])
    config["network"]["ndim"] = ndim
    payload["config_json"] = json.dumps(config)


def checkpoint_config_not_json(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, _rewrite_checkpoint(lambda p: p.update(config_json='{"network": {"ndim": 3')),
                    "checkpoint_best.pt")  # fmt: skip


def checkpoint_config_a_list(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, _rewrite_checkpoint(lambda p: p.update(config_json="[1, 2, 3]")), "checkpoint_best.pt")


def checkpoint_2d_in_3d_run(tmp: Path, run: Path | None) -> Prepared:
    return _predict(tmp, run, _rewrite_checkpoint(lambda p: _network_ndim(p, 2)), "checkpoint_best.pt")


# -- report ----------------------------------------------------------------------------------------


def _report(tmp: Path, run: Path | None, file: str, content: str | bytes) -> Prepared:
    folder = _run_copy(tmp, run)
    (folder / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp / "report.html"
    return Prepared(["report", str(folder), "--out", str(out)], file, out)


def report_run_json_list(tmp: Path, run: Path | None) -> Prepared:
    return _report(tmp, run, "run.json", '["python", "-m", "segmorph"]')


def report_summary_json_string(tmp: Path, run: Path | None) -> Prepared:
    return _report(tmp, run, "summary.json", '"all good"')


def report_train_log_latin1(tmp: Path, run: Path | None) -> Prepared:
    log = (run / "train_log.csv").read_bytes()
    return _report(tmp, run, "train_log.csv", log + b"9,900,1.0,0.001,0.5,0.7,caf\xe9\n")


def report_summary_inner_wrong_type(tmp: Path, run: Path | None) -> Prepared:
    prepared = _report(tmp, run, "summary.json", json.dumps({"fit": [1, 2], "validation": "good"}))
    return Prepared(prepared.argv, "tampered_run", prepared.out)


def report_registration_json_list(tmp: Path, run: Path | None) -> Prepared:
    folder = _registration_folder(tmp / "reg")
    (folder / "registration.json").write_text("[1, 2]")
    out = tmp / "report.html"
    return Prepared(["report", str(folder), "--out", str(out)], "registration.json", out)


# -- transforms ------------------------------------------------------------------------------------


def _warp(tmp: Path, edit: Callable[[dict, Path], None]) -> Prepared:
    folder = _registration_folder(tmp / "reg")
    record = json.loads((folder / "transform.json").read_text())
    edit(record, folder)
    (folder / "transform.json").write_text(json.dumps(record))
    image = _scan(tmp / "moving.nii.gz")
    out = tmp / "warped.nii.gz"
    return Prepared(["warp", str(image), "--transform", str(folder), "--out", str(out)], "transform.json", out)


def _matrix(record: dict, values: list) -> None:
    record["steps"] = [{"type": "matrix", "matrix": values}]


def transform_deeply_nested(tmp: Path, run: Path | None) -> Prepared:
    prepared = _warp(tmp, lambda record, folder: None)
    (tmp / "reg" / "transform.json").write_text('{"steps": ' + DEEP + "}")
    return prepared


def transform_absurd_grid(tmp: Path, run: Path | None) -> Prepared:
    return _warp(tmp, lambda record, folder: record["fixed_grid"].update(shape=[100_000, 100_000, 100_000]))


def transform_field_wrong_components(tmp: Path, run: Path | None) -> Prepared:
    def edit(record: dict, folder: Path) -> None:
        image, _ = sphere_case((10, 8, 6))
        write_image(Image(torch.zeros((2, 10, 8, 6)), image.affine), folder / "field_0.nii.gz")
        record["steps"] = [{"type": "field", "displacement": "field_0.nii.gz"}, *record["steps"]]

    return _warp(tmp, edit)


def transform_2d_matrix_in_3d_chain(tmp: Path, run: Path | None) -> Prepared:
    return _warp(tmp, lambda record, folder: record["steps"].append({"type": "matrix", "matrix": np.eye(3).tolist()}))


def transform_2d_matrix_on_3d_grid(tmp: Path, run: Path | None) -> Prepared:
    return _warp(tmp, lambda record, folder: _matrix(record, np.eye(3).tolist()))


def transform_singular_matrix(tmp: Path, run: Path | None) -> Prepared:
    singular = np.eye(4)
    singular[0, 0] = 0.0
    return _warp(tmp, lambda record, folder: _matrix(record, singular.tolist()))


def transform_nan_matrix(tmp: Path, run: Path | None) -> Prepared:
    values = np.eye(4)
    values[1, 3] = np.nan
    return _warp(tmp, lambda record, folder: _matrix(record, values.tolist()))


def transform_absurd_matrix(tmp: Path, run: Path | None) -> Prepared:
    return _warp(tmp, lambda record, folder: _matrix(record, (np.eye(4) * [1e9, 1e9, 1e9, 1]).tolist()))


def transform_field_outside_folder(tmp: Path, run: Path | None) -> Prepared:
    def edit(record: dict, folder: Path) -> None:
        record["steps"] = [{"type": "field", "displacement": "../moving.nii.gz"}]

    return _warp(tmp, edit)


# -- CSV files -------------------------------------------------------------------------------------


def pairs_csv_latin1(tmp: Path, run: Path | None) -> Prepared:
    _scan(tmp / "fixed.nii.gz")
    _scan(tmp / "moving.nii.gz", seed=1)
    pairs = tmp / "pairs.csv"
    pairs.write_bytes(b"fixed,moving\nfixed.nii.gz,moving.nii.gz\nfixed.nii.gz,moving_caf\xe9.nii.gz\n")
    out = tmp / "regs"
    return Prepared(["register", "--pairs", str(pairs), "--out", str(out), "--method", "rigid", "--quiet"],
                    "pairs.csv", out)  # fmt: skip


def _landmarks(tmp: Path, moving_text: bytes) -> Prepared:
    folder = _registration_folder(tmp / "reg")
    fixed = tmp / "fixed_points.csv"
    fixed.write_text("x,y,z\n1,2,3\n4,5,6\n")
    moving = tmp / "moving_points.csv"
    moving.write_bytes(moving_text)
    argv = ["evaluate-registration", str(folder), "--landmarks", str(fixed), str(moving)]
    return Prepared(argv, "moving_points.csv", folder)


def landmarks_latin1(tmp: Path, run: Path | None) -> Prepared:
    return _landmarks(tmp, b"x,y,z\n1,2,3\n4,5,6 \xb5m\n")


def landmarks_nan(tmp: Path, run: Path | None) -> Prepared:
    return _landmarks(tmp, b"x,y,z\n1,2,3\nnan,5,6\n")


def landmarks_infinite(tmp: Path, run: Path | None) -> Prepared:
    return _landmarks(tmp, b"1,2,3\n4,inf,6\n")


def _classify(tmp: Path, rows: list[str], *extra: str) -> Prepared:
    root = _classify_dataset(tmp / "cls", rows)
    out = tmp / "run"
    argv = ["classify", "train", str(root), "--labels", "labels.csv", "--target", "lesion", "--out", str(out),
            "--max-steps", "1", "--quiet", *extra]  # fmt: skip
    return Prepared(argv, "labels.csv", out)


def labels_csv_latin1(tmp: Path, run: Path | None) -> Prepared:
    prepared = _classify(tmp, ["img0.png,0", "img1.png,1", "img2.png,0", "img3.png,1"])
    path = tmp / "cls" / "labels.csv"
    path.write_bytes(path.read_bytes() + b"img3.png,b\xe9nin\n")
    return prepared


def labels_csv_duplicate_image(tmp: Path, run: Path | None) -> Prepared:
    return _classify(tmp, ["img0.png,0", "img1.png,1", "img2.png,0", "img3.png,1", "img1.png,0"])


def labels_csv_numbers_written_two_ways(tmp: Path, run: Path | None) -> Prepared:
    """``1`` and ``1.0`` are one class, so ``img2.png`` listed as both is one image with one class, listed twice."""
    return _classify(tmp, ["img0.png,0", "img1.png,1", "img2.png,1", "img3.png,0.0", "img2.png,1.0"])


# -- configs ---------------------------------------------------------------------------------------


def _train(tmp: Path, key: str, value: str) -> Prepared:
    root = _dataset(tmp / "ds")
    out = tmp / "run"
    argv = ["train", str(root), "--out", str(out), "--max-steps", "2", "--quiet", "--set", f"{key}={value}"]
    return Prepared(argv, key, out)


def _train_registration(tmp: Path, key: str, value: str) -> Prepared:
    root = _dataset(tmp / "ds")
    out = tmp / "run"
    argv = [
        "train-registration",
        str(root),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--quiet",
        "--set",
        f"{key}={value}",
    ]
    return Prepared(argv, key, out)


def _classify_set(tmp: Path, key: str, value: str) -> Prepared:
    prepared = _classify(tmp, ["img0.png,0", "img1.png,1", "img2.png,0", "img3.png,1"], "--set", f"{key}={value}")
    return Prepared(prepared.argv, key, prepared.out)


def set_steps_per_epoch_zero(tmp: Path, run: Path | None) -> Prepared:
    return _train(tmp, "train.steps_per_epoch", "0")


def set_learning_rate_nan(tmp: Path, run: Path | None) -> Prepared:
    return _train(tmp, "train.learning_rate", "NaN")


def set_momentum_nan(tmp: Path, run: Path | None) -> Prepared:
    return _train(tmp, "train.momentum", "NaN")


def set_batch_size_negative(tmp: Path, run: Path | None) -> Prepared:
    return _train(tmp, "train.batch_size", "-1")


def set_time_budget_infinite(tmp: Path, run: Path | None) -> Prepared:
    return _train(tmp, "train.time_budget_s", "Infinity")


def set_patch_beyond_budget(tmp: Path, run: Path | None) -> Prepared:
    return _train(tmp, "train.patch_size", "[65536, 65536, 65536]")


def registration_steps_per_epoch_zero(tmp: Path, run: Path | None) -> Prepared:
    return _train_registration(tmp, "train.steps_per_epoch", "0")


def registration_time_budget_infinite(tmp: Path, run: Path | None) -> Prepared:
    return _train_registration(tmp, "train.time_budget_s", "1e999")


def registration_smoothness_nan(tmp: Path, run: Path | None) -> Prepared:
    return _train_registration(tmp, "registration.smoothness", "NaN")


def registration_train_shape_beyond_budget(tmp: Path, run: Path | None) -> Prepared:
    return _train_registration(tmp, "registration.train_shape", "[100000, 100000, 100000]")


def classify_learning_rate_nan(tmp: Path, run: Path | None) -> Prepared:
    return _classify_set(tmp, "train.learning_rate", "NaN")


def classify_time_budget_infinite(tmp: Path, run: Path | None) -> Prepared:
    return _classify_set(tmp, "train.time_budget_s", "Infinity")


def classify_batch_size_negative(tmp: Path, run: Path | None) -> Prepared:
    return _classify_set(tmp, "train.batch_size", "-1")


def config_file_deeply_nested(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    config = tmp / "deep.json"
    config.write_text('{"train": ' + DEEP + "}")
    out = tmp / "plan.json"
    return Prepared(["plan", str(root), "--out", str(out), "--config", str(config)], "deep.json", out)


def dataset_json_deeply_nested(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    (root / "dataset.json").write_text('{"labels": ' + DEEP + "}")
    out = tmp / "plan.json"
    return Prepared(["plan", str(root), "--out", str(out)], "dataset.json", out)


def _model(name: str, build: Callable[[Path, Path | None], Prepared], fragment: str) -> BadInput:
    return BadInput(name, build, fragment, needs_model=True)


CASES: tuple[BadInput, ...] = (
    _model("plan_nan_patch", plan_nan_patch, "non-finite number NaN"),
    _model("plan_huge_patch", plan_huge_patch, "the memory budget"),
    _model("plan_negative_spacing", plan_negative_spacing, "target_spacing"),
    _model("plan_absurd_spacing", plan_absurd_spacing, "target_spacing"),
    _model("plan_infinite_spacing", plan_infinite_spacing, "non-finite number Infinity"),
    _model("plan_folder", plan_folder, "Is a directory"),
    _model("plan_deeply_nested", plan_deeply_nested, "nests deeper than"),
    _model("plan_as_list", plan_as_list, "expected a JSON object"),
    _model("plan_not_utf8", plan_not_utf8, "is not UTF-8"),
    _model("plan_without_train", plan_without_train, "missing key 'train'"),
    _model("checkpoint_config_not_json", checkpoint_config_not_json, "invalid JSON"),
    _model("checkpoint_config_a_list", checkpoint_config_a_list, "expected a JSON object"),
    _model("checkpoint_2d_in_3d_run", checkpoint_2d_in_3d_run, "ndim 2, the run needs 3"),
    _model("report_run_json_list", report_run_json_list, "expected a JSON object"),
    _model("report_summary_json_string", report_summary_json_string, "expected a JSON object"),
    _model("report_train_log_latin1", report_train_log_latin1, "byte 0xe9 is not UTF-8"),
    _model("report_summary_inner_wrong_type", report_summary_inner_wrong_type, "not laid out as segmorph writes"),
    BadInput("report_registration_json_list", report_registration_json_list, "expected a JSON object"),
    BadInput("transform_deeply_nested", transform_deeply_nested, "nests deeper than"),
    BadInput("transform_absurd_grid", transform_absurd_grid, "the memory budget"),
    BadInput("transform_field_wrong_components", transform_field_wrong_components, "needs 3 components"),
    BadInput("transform_2d_matrix_in_3d_chain", transform_2d_matrix_in_3d_chain, "2D step in a 3D transform chain"),
    BadInput("transform_2d_matrix_on_3d_grid", transform_2d_matrix_on_3d_grid, "2D transform chain on a 3D fixed_grid"),
    BadInput("transform_singular_matrix", transform_singular_matrix, "singular matrix"),
    BadInput("transform_nan_matrix", transform_nan_matrix, "non-finite number NaN"),
    BadInput("transform_absurd_matrix", transform_absurd_matrix, "absurd matrix"),
    BadInput("transform_field_outside_folder", transform_field_outside_folder, "a file name in the folder"),
    BadInput("pairs_csv_latin1", pairs_csv_latin1, "line 3: byte 0xe9 is not UTF-8"),
    BadInput("landmarks_latin1", landmarks_latin1, "line 3: byte 0xb5 is not UTF-8"),
    BadInput("landmarks_nan", landmarks_nan, "line 3: landmarks must be finite numbers"),
    BadInput("landmarks_infinite", landmarks_infinite, "line 2: landmarks must be finite numbers"),
    BadInput("labels_csv_latin1", labels_csv_latin1, "line 6: byte 0xe9 is not UTF-8"),
    BadInput("labels_csv_duplicate_image", labels_csv_duplicate_image, "image 'img1.png' is listed with class '0'"),
    BadInput(
        "labels_csv_numbers_written_two_ways",
        labels_csv_numbers_written_two_ways,
        "image 'img2.png' is listed again on row 4",
    ),  # fmt: skip
    BadInput("set_steps_per_epoch_zero", set_steps_per_epoch_zero, "expected at least 1, got 0"),
    BadInput("set_learning_rate_nan", set_learning_rate_nan, "expected a finite number, got nan"),
    BadInput("set_momentum_nan", set_momentum_nan, "expected a finite number, got nan"),
    BadInput("set_batch_size_negative", set_batch_size_negative, "expected at least 1, got -1"),
    BadInput("set_time_budget_infinite", set_time_budget_infinite, "expected a finite number, got inf"),
    BadInput("set_patch_beyond_budget", set_patch_beyond_budget, "the memory budget"),
    BadInput("registration_steps_per_epoch_zero", registration_steps_per_epoch_zero, "expected at least 1, got 0"),
    BadInput("registration_time_budget_infinite", registration_time_budget_infinite, "expected a finite number"),
    BadInput("registration_smoothness_nan", registration_smoothness_nan, "expected a finite number, got nan"),
    BadInput(
        "registration_train_shape_beyond_budget", registration_train_shape_beyond_budget, "the memory budget"
    ),  # fmt: skip
    BadInput("classify_learning_rate_nan", classify_learning_rate_nan, "expected a finite number, got nan"),
    BadInput("classify_time_budget_infinite", classify_time_budget_infinite, "expected a finite number, got inf"),
    BadInput("classify_batch_size_negative", classify_batch_size_negative, "expected at least 1, got -1"),
    BadInput("config_file_deeply_nested", config_file_deeply_nested, "nests deeper than"),
    BadInput("dataset_json_deeply_nested", dataset_json_deeply_nested, "nests deeper than"),
)
