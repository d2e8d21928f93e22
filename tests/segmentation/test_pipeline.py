"""Train -> predict -> evaluate on tiny oblique, anisotropic volumes; outputs keep the input geometry."""

import json

import numpy as np
import pytest
import torch

from helpers import OBLIQUE, sphere_case, write_dicom_series
from segmorph.cli.main import main
from segmorph.io import read_image, write_image
from segmorph.segmentation.plan import Plan


def test_run_folder_holds_plan_checkpoints_and_validation(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"plan.json", "checkpoint_best.pt", "checkpoint_last.pt", "train_log.csv", "curves.png", "run.json"} <= names
    plan = Plan.load(trained_run / "plan.json")
    assert plan.network["features"] == [8, 16, 32]
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["val_cases"] == 2
    assert summary["validation"]["metrics"]["cases"] == 2


def test_predict_keeps_geometry_of_an_oblique_anisotropic_scan(trained_run, tmp_path):
    image, _ = sphere_case((26, 22, 13), seed=11)
    write_image(image, tmp_path / "scans" / "scan_a.nii.gz")
    assert (
        main(["predict", str(trained_run), str(tmp_path / "scans"), "--out", str(tmp_path / "masks"), "--quiet"]) == 0
    )
    mask = read_image(tmp_path / "masks" / "scan_a.nii.gz", is_label=True)
    assert mask.spatial_shape == image.spatial_shape
    assert mask.affine.allclose(OBLIQUE, atol=1e-6)
    assert set(np.unique(mask.numpy())) <= {0, 1, 2}


def test_predicted_mask_overlays_the_object(trained_run, tmp_path):
    image, label = sphere_case((24, 20, 12), seed=12)
    write_image(image, tmp_path / "scan.nrrd")
    assert (
        main(["predict", str(trained_run), str(tmp_path / "scan.nrrd"), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    )
    mask = read_image(tmp_path / "m" / "scan.nii.gz", is_label=True).numpy() > 0
    reference = label.numpy() > 0
    dice = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
    assert dice > 0.7  # the mask lies on the object, not shifted or flipped


def test_predict_a_dicom_series_keeps_its_geometry(trained_run, tmp_path):
    image, _ = sphere_case()
    write_dicom_series(image, tmp_path / "series")
    assert main(["predict", str(trained_run), str(tmp_path / "series"), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    mask = read_image(tmp_path / "m" / "series.nii.gz", is_label=True)
    source = read_image(tmp_path / "series")
    assert mask.affine.allclose(source.affine, atol=1e-6)
    assert mask.spatial_shape == source.spatial_shape


def test_predict_continue_skips_done_cases(trained_run, tmp_path):
    image, _ = sphere_case(seed=5)
    for name in ("a", "b"):
        write_image(image, tmp_path / "scans" / f"{name}.nii.gz")
    out = tmp_path / "masks"
    _, done = sphere_case(seed=9)  # a complete mask already there is kept as it is
    write_image(done, out / "a.nii.gz")
    kept = (out / "a.nii.gz").read_bytes()
    (out / "b.nii.gz").write_bytes(b"torn")  # a half-written one is not "done": it is segmented again
    assert main(["predict", str(trained_run), str(tmp_path / "scans"), "--out", str(out), "--continue", "--quiet"]) == 0
    assert (out / "a.nii.gz").read_bytes() == kept
    assert read_image(out / "b.nii.gz", is_label=True).spatial_shape == image.spatial_shape


def test_evaluate_cli_writes_metrics(trained_run, tmp_path, capsys):
    validation = trained_run / "validation"
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", str(validation), str(validation / "reference"), "--out", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".json").is_file()
    summary = json.loads(out.with_suffix(".json").read_text())
    assert 0.0 <= summary["mean_over_classes"]["dice"] <= 1.0


def test_export_torchscript_matches_pytorch(trained_run, tmp_path):
    out = tmp_path / "model.pt"
    assert main(["export", str(trained_run), "--format", "torchscript", "--out", str(out)]) == 0
    from segmorph.segmentation.predict import Predictor

    model = Predictor(trained_run).model
    scripted = torch.jit.load(str(out))
    x = torch.randn(1, 1, *Plan.load(trained_run / "plan.json").train.patch_size)
    with torch.inference_mode():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda d: (d / "bad.nii.gz").write_bytes(b"\x1f\x8b garbage"), "bad.nii.gz: cannot read image"),
        (lambda d: None, "holds no images"),
    ],
)
def test_predict_bad_input_exits_1_with_one_line(trained_run, tmp_path, capsys, make_input, message):
    scans = tmp_path / "scans"
    scans.mkdir()
    make_input(scans)
    code = main(["predict", str(trained_run), str(scans), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_train_refuses_undeclared_labels(tmp_path, capsys):
    from conftest import write_msd_dataset

    root = write_msd_dataset(tmp_path / "ds", num_cases=3)
    _, label = sphere_case(seed=0)
    label.data[0, 0, 0, 0] = 7
    write_image(label, root / "labelsTr" / "case_001.nii.gz")
    code = main(["train", str(root), "--out", str(tmp_path / "run"), "--max-steps", "2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "case_001.nii.gz" in err[0] and "7" in err[0]


def test_info_prints_geometry(tmp_path, capsys):
    image, _ = sphere_case()
    write_image(image, tmp_path / "a.nii.gz")
    assert main(["info", str(tmp_path / "a.nii.gz")]) == 0
    out = capsys.readouterr().out
    assert "spacing    (0.8, 1.1, 2.5) mm" in out
    assert "origin     (-12.5, 30.25, 7) mm" in out


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["predict"])
    assert exit_info.value.code == 2


def _corrupt_image(root):
    (root / "imagesTr" / "case_001.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")


def _mismatched_label(root):
    _, label = sphere_case((20, 20, 12), seed=1)
    write_image(label, root / "labelsTr" / "case_001.nii.gz")


def _nan_image(root):
    image, _ = sphere_case(seed=1)
    image.data[0, 3, 3, 3] = float("nan")
    (root / "imagesTr" / "case_001.nii.gz").unlink()
    write_image(image, root / "imagesTr" / "case_001.mha")
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][1]["image"] = "./imagesTr/case_001.mha"
    (root / "dataset.json").write_text(json.dumps(meta))


def _empty_dataset(root):
    for path in list((root / "imagesTr").iterdir()) + list((root / "labelsTr").iterdir()):
        path.unlink()
    (root / "dataset.json").unlink()


@pytest.mark.parametrize(
    "break_dataset, message",
    [
        (_corrupt_image, "case_001.nii.gz: cannot read image"),
        (_mismatched_label, "case_001.nii.gz"),
        (_nan_image, "case_001.mha: image holds 1 NaN"),
        (_empty_dataset, "imagesTr: folder holds no image files"),
    ],
)
def test_train_bad_input_exits_1_with_one_line_and_no_run(tmp_path, capsys, break_dataset, message):
    from conftest import write_msd_dataset

    root = write_msd_dataset(tmp_path / "ds", num_cases=3)
    break_dataset(root)
    code = main(["train", str(root), "--out", str(tmp_path / "run"), "--max-steps", "2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_predict_writes_overlays_and_probabilities(trained_run, tmp_path):
    image, _ = sphere_case(seed=7)
    write_image(image, tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    args = ["predict", str(trained_run), str(tmp_path / "scan.nii.gz"), "--out", str(out), "--quiet"]
    assert main([*args, "--overlays", "--probabilities", "--largest-component"]) == 0
    assert (out / "scan_overlay.png").stat().st_size > 1000
    probabilities = read_image(out / "scan_probabilities.nii.gz")
    assert probabilities.num_channels == 3
    assert torch.allclose(probabilities.data.sum(0), torch.ones(image.spatial_shape), atol=1e-4)
    assert probabilities.affine.allclose(OBLIQUE, atol=1e-6)


def test_baseline_cli_segments_with_otsu(tmp_path):
    image, label = sphere_case(seed=3)
    write_image(image, tmp_path / "scan.nii.gz")
    assert main(["baseline", str(tmp_path / "scan.nii.gz"), "--method", "otsu", "--out", str(tmp_path / "m")]) == 0
    mask = read_image(tmp_path / "m" / "scan.nii.gz", is_label=True)
    assert mask.affine.allclose(OBLIQUE, atol=1e-6)
    predicted, reference = mask.numpy()[0] > 0, label.numpy()[0] > 0
    assert 2 * (predicted & reference).sum() / (predicted.sum() + reference.sum()) > 0.9


def test_demo_without_data_says_where_to_get_it(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "medicaldecathlon.com" in err[0] and "Task04" in err[0]


def test_max_steps_alone_means_no_time_budget():
    from segmorph.cli.arguments import time_budget
    from segmorph.cli.main import build_parser

    parse = build_parser().parse_args
    assert time_budget(parse(["train", "ds", "--out", "r", "--max-steps", "10"]), 1200.0) == 0.0
    assert time_budget(parse(["train", "ds", "--out", "r"]), 1200.0) == 1200.0
    assert (
        time_budget(parse(["train", "ds", "--out", "r", "--max-steps", "10", "--time-budget", "5m"]), 1200.0) == 300.0
    )


def test_predict_wrong_channel_count_names_the_scan(trained_run, tmp_path, capsys):
    image, _ = sphere_case()
    write_image(image.with_data(image.data.repeat(2, 1, 1, 1)), tmp_path / "two_channels.nii.gz")
    code = main(["predict", str(trained_run), str(tmp_path / "two_channels.nii.gz"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "two_channels.nii.gz: expected 1 channels, got 2" in err[0]


def test_predict_refuses_weights_that_do_not_fit_the_stored_network(trained_run, tmp_path, capsys):
    import shutil

    from segmorph.engine.checkpoints import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state, config, _ = load_checkpoint(run / "checkpoint_best.pt")
    config["network"]["features"] = [4, 8, 16]  # the weights are of an 8-16-32 network
    save_checkpoint(run / "checkpoint_best.pt", state, config)
    scan = tmp_path / "scan.nii.gz"
    write_image(sphere_case((24, 20, 12), seed=1)[0], scan)
    assert main(["predict", str(run), str(scan), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint_best.pt" in err[0] and "does not fit" in err[0], err
