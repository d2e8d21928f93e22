"""``segmorph train --init RUN [--freeze-encoder-steps N]``: the source's widths, every matching weight loaded and
recorded in run.json, and a source of the other dimensionality refused before anything is written."""

import json

import pytest
import torch

from helpers import write_msd_dataset
from segmorph.cli.main import main
from segmorph.engine.checkpoints import load_checkpoint
from segmorph.segmentation.plan import Plan

QUICK = ["--max-steps", "2", "--set", "train.steps_per_epoch=2", "--no-validate", "--no-check", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A three-class dataset, and two source runs of [4, 8] U-Nets: 3D on a binary version of the dataset, 2D on
    slices of the dataset itself."""
    root = tmp_path_factory.mktemp("init")
    dataset = write_msd_dataset(root / "ds", num_cases=5)
    binary = write_msd_dataset(root / "binary", num_cases=5)
    meta = json.loads((binary / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "object"}
    (binary / "dataset.json").write_text(json.dumps(meta))
    from segmorph.io import read_image, write_image

    for path in (binary / "labelsTr").iterdir():
        label = read_image(path, is_label=True)
        label.data.clamp_(max=1)
        write_image(label, path)
    small = ["--set", "network.features=[4,8]"]
    assert main(["train", str(binary), "--out", str(root / "binary_run"), *small, *QUICK]) == 0
    assert main(["train", str(dataset), "--out", str(root / "run_2d"), "--network-dims", "2", *small, *QUICK]) == 0
    return root


def test_init_from_a_run_with_other_classes_loads_all_but_the_heads(runs, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(runs / "ds"), "--out", str(out), "--init", str(runs / "binary_run"),
                 "--freeze-encoder-steps", "2", *QUICK])  # fmt: skip
    assert code == 0
    plan = Plan.load(out / "plan.json")
    assert plan.network["features"] == [4, 8] and plan.num_classes == 3  # the source's widths, this data's classes
    assert plan.train.freeze_encoder_steps == 2
    record = json.loads((out / "run.json").read_text())
    transfer = record["transfer"]
    assert record["init"] == str(runs / "binary_run")
    assert transfer["source"] == str(runs / "binary_run" / "checkpoint_best.pt")
    assert transfer["skipped"] and all(name.startswith("heads.") for name in transfer["skipped"])
    assert transfer["skipped"]["heads.0.weight"] == "shape [2, 4, 1, 1, 1] in the source, [3, 4, 1, 1, 1] here"
    assert {"encoder.0.first.0.weight", "decoder.0.first.0.weight", "upsample.0.weight"} <= set(transfer["loaded"])
    assert f"initialised {len(transfer['loaded'])} of" in capsys.readouterr().err
    source, _, _ = load_checkpoint(runs / "binary_run" / "checkpoint_best.pt")
    assert len(transfer["loaded"]) + len(transfer["skipped"]) == len(source)
    trained, _, _ = load_checkpoint(out / "checkpoint_last.pt")  # every step froze the encoder: still the source's
    assert all(torch.equal(trained[k], source[k]) for k in trained if k.startswith("encoder."))
    assert not torch.equal(trained["decoder.0.first.0.weight"], source["decoder.0.first.0.weight"])


def test_explicit_features_win_over_the_sources(runs, tmp_path):
    out = tmp_path / "run"
    flags = ["--init", str(runs / "binary_run"), "--set", "network.features=[4,8,16]"]
    assert main(["train", str(runs / "ds"), "--out", str(out), *flags, *QUICK]) == 0
    assert Plan.load(out / "plan.json").network["features"] == [4, 8, 16]
    transfer = json.loads((out / "run.json").read_text())["transfer"]
    assert "encoder.0.first.0.weight" in transfer["loaded"]
    assert transfer["skipped"]["encoder.2.first.0.weight"] == "not in the source"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--init", "{runs}/run_2d"], "run_2d/checkpoint_best.pt: a 2D network; this run trains a 3D one"),
        (["--init", "{runs}/nowhere"], "nowhere: not found"),
        (["--freeze-encoder-steps", "3"], "give --init"),
    ],
)
def test_bad_init_exits_1_with_one_line_and_writes_nothing(runs, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code = main(["train", str(runs / "ds"), "--out", str(out), *[f.format(runs=runs) for f in flags], *QUICK])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_a_source_too_deep_for_the_patch_is_refused_naming_it(runs, tmp_path, capsys):
    from segmorph.engine.checkpoints import save_checkpoint
    from segmorph.nn import UNet

    deep = UNet(3, 1, 3, (4, 8, 16, 32))  # 4 levels: the patch [24, 20, 12] is no multiple of 8
    source = save_checkpoint(tmp_path / "deep.pt", deep.state_dict(), {"network": {"name": "unet", **deep.config}})
    out = tmp_path / "run"
    assert main(["train", str(runs / "ds"), "--out", str(out), "--init", str(source), *QUICK]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {source}: --init: this source's network.features [4, 8,")
    assert "--set network.features" in err[0]
    assert not out.exists() or not any(out.iterdir())
