"""``segmorph train --labelled-cases N --unlabelled fold|SCANS``: which cases keep their labels, what becomes the
unlabelled set, what run.json records, and bad inputs refused in one line before anything is written."""

import json

import pytest
import torch

from helpers import sphere_case, write_msd_dataset
from segmorph.cli.main import main
from segmorph.engine.checkpoints import load_checkpoint
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.segmentation.few_labels import choose_labelled
from segmorph.segmentation.plan import Plan

QUICK = ["--max-steps", "2", "--set", "train.steps_per_epoch=2", "--set", "network.features=[4,8]", "--no-validate",
         "--no-check", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six labelled cases (fold 0 of 5 validates on two of them) and a folder of two unlabelled scans."""
    root = tmp_path_factory.mktemp("few")
    write_msd_dataset(root / "ds", num_cases=6)
    for k in range(2):
        write_image(sphere_case(seed=30 + k)[0], root / "extra" / f"scan_{k}.nii.gz")
    return root


def _train(dataset, out, *flags):
    return main(["train", str(dataset / "ds"), "--out", str(out), *flags, *QUICK])


def test_labelled_cases_are_a_seeded_choice_of_the_training_fold(dataset, tmp_path):
    assert _train(dataset, tmp_path / "run", "--labelled-cases", "2", "--seed", "1") == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    chosen = record["labelled_cases"]
    assert len(chosen) == 2 and set(chosen) <= set(record["train_cases"]) and not set(chosen) & set(record["val_cases"])
    assert chosen == choose_labelled(record["train_cases"], 2, seed=1)  # the same cases for the same seed
    assert len(record["train_cases"]) == 4 and len(record["val_cases"]) == 2  # the split itself is untouched
    assert "unlabelled" not in record
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_cases"] == 2 and "unlabelled_cases" not in summary
    _, _, extras = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert "task" not in extras  # supervised training on the chosen cases alone


def test_the_rest_of_the_fold_and_a_folder_become_the_unlabelled_set(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(dataset, out, "--labelled-cases", "2", "--unlabelled", "fold", str(dataset / "extra")) == 0
    record = json.loads((out / "run.json").read_text())
    rest = sorted(set(record["train_cases"]) - set(record["labelled_cases"]))
    assert record["unlabelled"] == {"sources": ["fold", str(dataset / "extra")], "cases": [*rest, "scan_0", "scan_1"]}
    assert json.loads((out / "summary.json").read_text())["unlabelled_cases"] == 4
    assert Plan.load(out / "plan.json").semi.method == "mean_teacher"
    _, _, extras = load_checkpoint(out / "checkpoint_last.pt")
    assert extras["task"]["step"] == 2 and "encoder.0.first.0.weight" in extras["task"]["teacher"]
    assert "semi-supervised: mean_teacher on 4 unlabelled scans" in capsys.readouterr().err
    # resuming takes the labelled cases and the unlabelled sources from run.json
    assert main(["train", str(dataset / "ds"), "--out", str(out), "--resume", "--no-validate", "--quiet"]) == 0
    assert "semi-supervised: mean_teacher on 4 unlabelled scans" in capsys.readouterr().err


def test_slices_of_3d_scans_train_semi_supervised(dataset, tmp_path):
    out = tmp_path / "run"
    assert _train(dataset, out, "--network-dims", "2", "--labelled-cases", "2", "--unlabelled", "fold") == 0
    assert Plan.load(out / "plan.json").slice_axis is not None
    _, _, extras = load_checkpoint(out / "checkpoint_last.pt")
    assert extras["task"]["teacher"]["encoder.0.first.0.weight"].ndim == 4  # a 2D teacher


def _affine_2d():
    from segmorph.geometry import Affine

    return Affine.from_geometry((0.8, 1.1), (0.0, 0.0), torch.eye(2).numpy())


@pytest.mark.parametrize(
    "flags, make, message",
    [
        (["--unlabelled", "fold"], None, "give --labelled-cases"),
        (["--labelled-cases", "2", "--unlabelled", "{tmp}/nowhere"], None, "nowhere"),
        (["--labelled-cases", "2", "--unlabelled", "{tmp}/empty"], "empty", "no images"),
        (["--labelled-cases", "2", "--unlabelled", "{tmp}/flat"], "flat", "a 2D scan among 3D scans"),
        (["--labelled-cases", "5"], None, "expected 1 to 4"),
        (["--labelled-cases", "2", "--unlabelled", "fold", "--set", "semi.unlabelled_share=1"], None,
         "semi.unlabelled_share"),
        (["--labelled-cases", "4", "--unlabelled", "fold"], None, "leaves no training case without labels"),
        (["--folds", "all", "--labelled-cases", "2"], None, "--folds"),
    ],
)  # fmt: skip
def test_bad_few_label_inputs_exit_1_with_one_line_and_write_nothing(dataset, tmp_path, capsys, flags, make, message):
    if make == "empty":
        (tmp_path / "empty").mkdir()
    if make == "flat":
        (tmp_path / "flat").mkdir()
        write_image(Image(sphere_case()[0].data[..., 0].contiguous(), _affine_2d()), tmp_path / "flat" / "flat.nii.gz")
    out = tmp_path / "run"
    code = _train(dataset, out, *[f.format(tmp=tmp_path) for f in flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    if make == "flat":
        assert "flat.nii.gz: " in err[0]  # error: <file>: <problem>
    assert not out.exists() or not any(out.iterdir())
