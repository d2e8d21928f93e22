"""Malformed-input cases: outputs that would overwrite an input, a run folder's file, or each other (class 1 and 8).

Each case is a :class:`malformed.BadInput`; :func:`malformed.corpus` gathers ``CASES``. The checks of
:mod:`segmorph.outputs` run before any model loads, so most cases use a stand-in run folder (a ``plan.json`` and
a checkpoint that are not even valid): the refusal must come first, and every byte must stay as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from malformed import BadInput, Prepared, _dataset, _dicom_series, _reads_despite_chmod, _registration_folder, _scan

OVERWRITE = "would overwrite the input"
IN_FOLDER = "would overwrite a file of the input folder"
IS_INPUT_FOLDER = "is the input folder"
HOLDS_INPUT = "output folder holds the input"
COLLIDE = "two outputs would be written to this one path"
NOT_A_FOLDER = "exists and is a file; expected a folder"


def _stand_in_run(tmp: Path) -> Path:
    """A folder laid out as a segmentation run, its files junk: outputs are checked before they are read."""
    run = tmp / "run"
    run.mkdir()
    (run / "plan.json").write_text('{"not": "a plan"}\n')
    (run / "checkpoint_best.pt").write_bytes(b"not a checkpoint")
    return run


def _scans(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        _scan(folder / name, seed=seed)
    return folder


def _predict(tmp: Path, scans: list[Path], out: Path, *extra: str) -> list[str]:
    return ["predict", str(_stand_in_run(tmp)), *map(str, scans), "--out", str(out), *extra]


# -- predict, baseline, explain ----------------------------------------------------------------------


def predict_into_input_folder(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "a.nii.gz", "b.nii.gz")
    return Prepared(_predict(tmp, [scans], scans), "scans")


def predict_beside_input_file(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "k_0000.nii.gz")
    return Prepared(_predict(tmp, [scans / "k_0000.nii.gz"], scans), "k_0000.nii.gz")


def predict_out_is_input_file(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "k.nii.gz")
    return Prepared(_predict(tmp, [scans / "k.nii.gz"], scans / "k.nii.gz"), "k.nii.gz")


def predict_into_run_folder(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "a.nii.gz")
    argv = _predict(tmp, [scans], tmp / "run")
    return Prepared(argv, "run")


def predict_into_trained_run(tmp: Path, run: Path | None) -> Prepared:
    assert run is not None
    scans = _scans(tmp / "scans", "a.nii.gz")
    return Prepared(["predict", str(run), str(scans), "--out", str(run)], str(run))


def predict_two_scans_one_case_name(tmp: Path, run: Path | None) -> Prepared:
    first, second = _scans(tmp / "site1", "k.nii.gz"), _scans(tmp / "site2", "k.nii.gz")
    out = tmp / "masks"
    return Prepared(_predict(tmp, [first, second], out), "k.nii.gz", out)


def predict_k_beside_k_0000(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "k.nii.gz", "k_0000.nii.gz")
    out = tmp / "masks"
    return Prepared(_predict(tmp, [scans], out), "k.nii.gz", out)


def predict_probabilities_collide_with_a_mask(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "k.nii.gz", "k_probabilities.nii.gz")
    out = tmp / "masks"
    return Prepared(_predict(tmp, [scans], out, "--probabilities"), "k_probabilities.nii.gz", out)


def predict_out_is_an_existing_file(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "a.nii.gz")
    out = tmp / "masks.txt"
    out.write_text("notes\n")
    return Prepared(_predict(tmp, [scans], out), "masks.txt", out)


def predict_out_below_a_file(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "a.nii.gz")
    (tmp / "notes.txt").write_text("notes\n")
    out = tmp / "notes.txt" / "masks"
    return Prepared(_predict(tmp, [scans], out), "notes.txt")


def predict_mask_symlinked_to_an_input(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "k_0000.nii.gz", "other.nii.gz")
    out = tmp / "masks"
    out.mkdir()
    os.symlink(scans / "other.nii.gz", out / "k.nii.gz")
    return Prepared(_predict(tmp, [scans], out, "--continue"), "k.nii.gz", out)


def predict_out_symlinked_to_the_input_folder(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "a.nii.gz")
    os.symlink(scans, tmp / "masks")
    return Prepared(_predict(tmp, [scans], tmp / "masks"), "masks")


def predict_out_in_a_read_only_folder(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "a.nii.gz")
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return Prepared(_predict(tmp, [scans], locked / "masks"), "locked")


def baseline_into_input_folder(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "a.nii.gz", "b.nii.gz")
    return Prepared(["baseline", str(scans), "--out", str(scans)], "scans")


def baseline_two_scans_one_case_name(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "k.nii.gz", "k_0000.nii.gz")
    out = tmp / "masks"
    return Prepared(["baseline", str(scans), "--out", str(out)], "k.nii.gz", out)


def baseline_mask_hard_linked_to_an_input(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "k_0000.nii.gz")
    other = _scans(tmp / "kept", "keep.nii.gz")
    out = tmp / "masks"
    out.mkdir()
    os.link(other / "keep.nii.gz", out / "k.nii.gz")
    return Prepared(["baseline", str(scans), str(other), "--out", str(out)], "k.nii.gz")


def explain_into_input_folder(tmp: Path, run: Path | None) -> Prepared:
    scans = _scans(tmp / "scans", "a.nii.gz")
    return Prepared(["explain", str(_stand_in_run(tmp)), str(scans), "--out", str(scans)], "scans")


def explain_would_replace_a_dicom_input(tmp: Path, run: Path | None) -> Prepared:
    scans = tmp / "scans"
    _dicom_series(scans / "series", [0.0, 1.0, 2.0, 3.0])
    return Prepared(["explain", str(_stand_in_run(tmp)), str(scans / "series"), "--out", str(scans)], "series")


# -- evaluate, report, export ------------------------------------------------------------------------


def _evaluation_folders(tmp: Path) -> tuple[Path, Path]:
    root = _dataset(tmp / "ds", num_cases=2)
    return root / "imagesTr", root / "labelsTr"


def evaluate_out_onto_a_reference(tmp: Path, run: Path | None) -> Prepared:
    predictions, references = _evaluation_folders(tmp)
    argv = ["evaluate", str(predictions), str(references), "--out", str(references / "case_000.nii.gz")]
    return Prepared(argv, "case_000.nii.gz")


def evaluate_out_onto_a_prediction(tmp: Path, run: Path | None) -> Prepared:
    predictions, references = _evaluation_folders(tmp)
    argv = ["evaluate", str(predictions), str(references), "--out", str(predictions / "case_001.nii.gz")]
    return Prepared(argv, "case_001.nii.gz")


def evaluate_out_is_a_folder(tmp: Path, run: Path | None) -> Prepared:
    predictions, references = _evaluation_folders(tmp)
    (tmp / "metrics").mkdir()
    return Prepared(["evaluate", str(predictions), str(references), "--out", str(tmp / "metrics")], "metrics")


def report_onto_plan(tmp: Path, run: Path | None) -> Prepared:
    assert run is not None
    return Prepared(["report", str(run), "--out", str(run / "plan.json")], "plan.json")


def report_onto_checkpoint(tmp: Path, run: Path | None) -> Prepared:
    run = _stand_in_run(tmp)
    return Prepared(["report", str(run), "--out", str(run / "checkpoint_best.pt")], "checkpoint_best.pt")


def export_onto_checkpoint(tmp: Path, run: Path | None) -> Prepared:
    assert run is not None
    return Prepared(["export", str(run), "--out", str(run / "checkpoint_best.pt")], "checkpoint_best.pt")


def plan_onto_dataset_json(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds", num_cases=2)
    return Prepared(["plan", str(root), "--out", str(root / "dataset.json")], "dataset.json")


# -- registration ------------------------------------------------------------------------------------


def warp_out_onto_its_input(tmp: Path, run: Path | None) -> Prepared:
    reg = _registration_folder(tmp / "reg")
    image = _scan(tmp / "moving.nii.gz")
    return Prepared(["warp", str(image), "--transform", str(reg), "--out", str(image)], "moving.nii.gz")


def warp_out_onto_the_transform_folder(tmp: Path, run: Path | None) -> Prepared:
    reg = _registration_folder(tmp / "reg")
    image = _scan(tmp / "moving.nii.gz")
    return Prepared(["warp", str(image), "--transform", str(reg), "--out", str(reg / "warped.nii.gz")], "warped.nii.gz")


def register_out_is_the_images_folder(tmp: Path, run: Path | None) -> Prepared:
    images = _scans(tmp / "images", "fixed.nii.gz", "moving.nii.gz")
    argv = [
        "register",
        str(images / "fixed.nii.gz"),
        str(images / "moving.nii.gz"),
        "--out",
        str(images),
        "--method",
        "rigid",
    ]
    return Prepared(argv, "images")


def register_pairs_out_is_the_images_folder(tmp: Path, run: Path | None) -> Prepared:
    images = _scans(tmp / "images", "f.nii.gz", "m.nii.gz")
    pairs = tmp / "pairs.csv"
    pairs.write_text("fixed,moving\nimages/f.nii.gz,images/m.nii.gz\n")
    return Prepared(["register", "--pairs", str(pairs), "--out", str(images), "--method", "rigid"], "images")


def atlas_segment_out_onto_an_atlas(tmp: Path, run: Path | None) -> Prepared:
    scan, atlas, labels = (
        _scan(tmp / "scan.nii.gz"),
        _scan(tmp / "atlas.nii.gz", 1),
        _scan(tmp / "atlas_labels.nii.gz", 2),
    )
    argv = ["atlas-segment", str(scan), "--atlases", f"{atlas}:{labels}", "--out", str(labels)]
    return Prepared(argv, "atlas_labels.nii.gz")


def train_registration_out_is_the_dataset(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds", num_cases=2)
    return Prepared(["train-registration", str(root), "--out", str(root), "--max-steps", "1"], "ds")


# -- training, classification, anonymisation ----------------------------------------------------------


def train_out_is_the_dataset(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds", num_cases=2)
    return Prepared(["train", str(root), "--out", str(root), "--max-steps", "1"], "ds")


def train_out_inside_the_dataset(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds", num_cases=2)
    out = root / "runs" / "first"
    return Prepared(["train", str(root), "--out", str(out), "--max-steps", "1"], "first", out)


def _classification_folder(tmp: Path) -> Path:
    root = tmp / "pictures"
    for name in ("normal", "lesion"):
        _scans(root / name, f"{name}_1.nii.gz")
    return root


def classify_train_out_is_the_dataset(tmp: Path, run: Path | None) -> Prepared:
    root = _classification_folder(tmp)
    return Prepared(["classify", "train", str(root), "--out", str(root), "--max-steps", "1"], "pictures")


def classify_predict_out_onto_an_image(tmp: Path, run: Path | None) -> Prepared:
    root = _classification_folder(tmp)
    image = root / "normal" / "normal_1.nii.gz"
    return Prepared(
        ["classify", "predict", str(_stand_in_run(tmp)), str(image), "--out", str(image)], "normal_1.nii.gz"
    )


def classify_predict_out_onto_the_run(tmp: Path, run: Path | None) -> Prepared:
    root = _classification_folder(tmp)
    stand_in = _stand_in_run(tmp)
    argv = ["classify", "predict", str(stand_in), str(root / "lesion"), "--out", str(stand_in / "plan.json")]
    return Prepared(argv, "plan.json")


def anonymize_into_its_input(tmp: Path, run: Path | None) -> Prepared:
    series = _dicom_series(tmp / "dicom", [0.0, 1.0, 2.0])
    out = series / "anonymized"
    return Prepared(["anonymize", str(series), "--out", str(out)], "anonymized", out)


CASES: tuple[BadInput, ...] = (
    BadInput("out_predict_into_input_folder", predict_into_input_folder, IS_INPUT_FOLDER),
    BadInput("out_predict_beside_input_file", predict_beside_input_file, HOLDS_INPUT),
    BadInput("out_predict_out_is_input_file", predict_out_is_input_file, NOT_A_FOLDER),
    BadInput("out_predict_into_run_folder", predict_into_run_folder, IS_INPUT_FOLDER),
    BadInput("out_predict_into_trained_run", predict_into_trained_run, IS_INPUT_FOLDER, needs_model=True),
    BadInput("out_predict_two_scans_one_case_name", predict_two_scans_one_case_name, COLLIDE),
    BadInput("out_predict_k_beside_k_0000", predict_k_beside_k_0000, COLLIDE),
    BadInput("out_predict_probabilities_collide", predict_probabilities_collide_with_a_mask, COLLIDE),
    BadInput("out_predict_out_is_an_existing_file", predict_out_is_an_existing_file, NOT_A_FOLDER),
    BadInput("out_predict_out_below_a_file", predict_out_below_a_file, "is a file, not a folder"),
    BadInput("out_predict_mask_symlinked_to_input", predict_mask_symlinked_to_an_input, OVERWRITE),
    BadInput("out_predict_out_symlinked_to_input_folder", predict_out_symlinked_to_the_input_folder, IS_INPUT_FOLDER),
    BadInput(
        "out_predict_read_only_folder",
        predict_out_in_a_read_only_folder,
        "permission denied",
        skip_reason=_reads_despite_chmod,
    ),  # fmt: skip
    BadInput("out_baseline_into_input_folder", baseline_into_input_folder, IS_INPUT_FOLDER),
    BadInput("out_baseline_two_scans_one_case_name", baseline_two_scans_one_case_name, COLLIDE),
    BadInput("out_baseline_mask_hard_linked_to_input", baseline_mask_hard_linked_to_an_input, OVERWRITE),
    BadInput("out_explain_into_input_folder", explain_into_input_folder, IS_INPUT_FOLDER),
    BadInput("out_explain_would_replace_dicom_input", explain_would_replace_a_dicom_input, OVERWRITE),
    BadInput("out_evaluate_onto_reference", evaluate_out_onto_a_reference, OVERWRITE),
    BadInput("out_evaluate_onto_prediction", evaluate_out_onto_a_prediction, OVERWRITE),
    BadInput("out_evaluate_out_is_a_folder", evaluate_out_is_a_folder, "is an existing folder"),
    BadInput("out_report_onto_plan", report_onto_plan, IN_FOLDER, needs_model=True),
    BadInput("out_report_onto_checkpoint", report_onto_checkpoint, IN_FOLDER),
    BadInput("out_export_onto_checkpoint", export_onto_checkpoint, IN_FOLDER, needs_model=True),
    BadInput("out_plan_onto_dataset_json", plan_onto_dataset_json, IN_FOLDER),
    BadInput("out_warp_onto_its_input", warp_out_onto_its_input, OVERWRITE),
    BadInput("out_warp_onto_transform_folder", warp_out_onto_the_transform_folder, IN_FOLDER),
    BadInput("out_register_into_images_folder", register_out_is_the_images_folder, HOLDS_INPUT),
    BadInput("out_register_pairs_into_images_folder", register_pairs_out_is_the_images_folder, HOLDS_INPUT),
    BadInput("out_atlas_segment_onto_atlas", atlas_segment_out_onto_an_atlas, OVERWRITE),
    BadInput("out_train_registration_into_dataset", train_registration_out_is_the_dataset, IS_INPUT_FOLDER),
    BadInput("out_train_into_dataset", train_out_is_the_dataset, IS_INPUT_FOLDER),
    BadInput("out_train_inside_dataset", train_out_inside_the_dataset, "or lie inside it"),
    BadInput("out_classify_train_into_dataset", classify_train_out_is_the_dataset, IS_INPUT_FOLDER),
    BadInput("out_classify_predict_onto_image", classify_predict_out_onto_an_image, OVERWRITE),
    BadInput("out_classify_predict_onto_run", classify_predict_out_onto_the_run, IN_FOLDER),
    BadInput("out_anonymize_into_its_input", anonymize_into_its_input, "or lie inside it"),
)
