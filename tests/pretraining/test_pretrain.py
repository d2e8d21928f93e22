"""Self-supervised pretraining: the corruptions, the reconstruction task, the run folder (contract 1), the CLI's
bad inputs and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import sphere_case, write_msd_dataset
from segmorph.cli.main import main
from segmorph.engine.checkpoints import load_checkpoint
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.nn import UNet, build_network
from segmorph.pretraining.api import pretrain
from segmorph.pretraining.networks import CLASSIFIER_PREFIX
from segmorph.pretraining.objectives import (
    ObjectiveConfig,
    block_mask,
    corrupt,
    local_shuffle,
    reconstruction_loss,
    reconstruction_r2,
)
from segmorph.pretraining.pipeline import classifier_network
from segmorph.pretraining.task import ReconstructionTask, ValidationSet, patch_drawer
from segmorph.report import build_report, detect_kind
from segmorph.segmentation.pipeline import TrainRequest, plan_dataset

RUN_FILES = ("checkpoint_best.pt", "checkpoint_last.pt", "run.json", "train_log.csv", "curves.png",
             "reconstructions.png", "summary.json")  # fmt: skip


# -- objectives ----------------------------------------------------------------------------------------------------


def test_block_mask_hides_the_asked_share_in_whole_blocks():
    hidden = block_mask((32, 24, 16), 3, 8, 0.6, torch.Generator().manual_seed(1))
    assert hidden.shape == (3, 1, 32, 24, 16) and hidden.dtype == torch.bool
    assert 0.45 < hidden.float().mean().item() < 0.75
    # each patch's grid is shifted by the same offset on every axis: hidden runs come in steps of a block
    again = block_mask((32, 24, 16), 3, 8, 0.6, torch.Generator().manual_seed(1))
    assert torch.equal(hidden, again)
    assert not torch.equal(hidden[0], hidden[1])


def test_mask_corruption_keeps_visible_voxels_and_zeroes_hidden_ones():
    images = torch.randn(2, 2, 16, 16)
    corrupted, target = corrupt(images, ObjectiveConfig("mask", block=4), torch.Generator().manual_seed(0))
    hidden = target.expand_as(images)
    assert torch.equal(corrupted[~hidden], images[~hidden])
    assert torch.all(corrupted[hidden] == 0)
    noisy, _ = corrupt(images, ObjectiveConfig("mask", block=4, fill="noise"), torch.Generator().manual_seed(0))
    assert noisy[hidden].std() > 0.5


def test_local_shuffle_permutes_voxels_within_blocks_only():
    images = torch.arange(2 * 8 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8, 8)
    shuffled = local_shuffle(images, 4, 1.0, torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, images)
    for start in [(0, 0, 0), (4, 4, 0), (0, 4, 4)]:
        box = (slice(None), slice(None), *(slice(s, s + 4) for s in start))
        assert torch.equal(shuffled[box].flatten(2).sort(-1).values, images[box].flatten(2).sort(-1).values)
    # the same permutation in every channel: channel 1 stays channel 0 plus 512
    assert torch.equal(shuffled[:, 1] - shuffled[:, 0], torch.full((1, 8, 8, 8), 512.0))
    assert torch.equal(local_shuffle(images, 4, 0.0, torch.Generator()), images)
    odd = torch.randn(1, 1, 7, 9)  # sides that are no multiple of the block
    assert local_shuffle(odd, 4, 1.0, torch.Generator().manual_seed(0)).shape == odd.shape


def test_denoise_targets_every_voxel():
    images = torch.zeros(2, 1, 8, 8, 8)
    corrupted, target = corrupt(images, ObjectiveConfig("denoise", block=4, noise_std=0.4), torch.Generator())
    assert target.all() and 0.1 < corrupted.std() < 0.5


def test_patch_padding_is_neither_trained_nor_scored():
    volume = torch.randn(1, 8, 8, 8)
    draw, _ = patch_drawer([volume], (12, 12, 12))
    clean, valid = draw(3, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert valid.shape == (3, 1, 12, 12, 12) and valid.sum(dim=(1, 2, 3, 4)).tolist() == [512, 512, 512]
    assert torch.all(clean[~valid.expand_as(clean)] == 0)
    output, target = torch.full_like(clean, 5.0), torch.ones_like(valid)
    output[valid.expand_as(clean)] = clean[valid.expand_as(clean)]
    assert float(reconstruction_loss(output, clean, target, valid=valid)) == 0.0
    assert float(reconstruction_loss(output, clean, target)) > 0.0
    validation = ValidationSet.make(clean, ObjectiveConfig("denoise", block=4), seed=0, valid=valid)
    assert torch.equal(validation.target, valid)


def test_loss_and_score_known_answers():
    clean = torch.tensor([[[[0.0, 2.0, 4.0, 6.0]]]])
    target = torch.tensor([[[[True, True, False, False]]]])
    output = torch.tensor([[[[1.0, 1.0, 4.0, 8.0]]]])
    assert float(reconstruction_loss(output, clean, target)) == pytest.approx(1.0)
    assert float(reconstruction_loss(output, clean, target, visible_weight=0.5)) == pytest.approx(1.0 + 0.5 * 2.0)
    assert reconstruction_r2(clean, clean, target) == 1.0
    assert reconstruction_r2(output, clean, target) == pytest.approx(0.0)  # the mean of the hidden voxels
    with pytest.raises(ValueError, match="mask_ratio"):
        ObjectiveConfig(mask_ratio=1.0)


# -- the task learns -----------------------------------------------------------------------------------------------


def _normalised_volumes(count: int) -> list[torch.Tensor]:
    volumes = []
    for seed in range(count):
        data = sphere_case((24, 24, 16), seed=seed)[0].data
        volumes.append((data - data.mean()) / data.std())
    return volumes


@pytest.mark.parametrize("name", ["mask", "denoise"])
def test_the_autoencoder_reconstructs_better_after_training(name, one_thread):
    torch.manual_seed(0)
    volumes = _normalised_volumes(4)
    objective = ObjectiveConfig(name, block=4)
    draw, _ = patch_drawer(volumes[:3], (16, 16, 16))
    _, held_out = patch_drawer(volumes[3:], (16, 16, 16))
    clean, inside = held_out.sample(6, torch.Generator().manual_seed(5))
    validation = ValidationSet.make(clean, objective, seed=5, valid=inside.bool())
    task = ReconstructionTask(draw, validation, objective, batch_size=4, amp=False)
    model = UNet(3, 1, 1, features=(8, 16))
    before = task.validate(model, torch.device("cpu"))[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        model.train()
        loss = task.batch_loss(model, generator, torch.device("cpu"), amp=False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = task.validate(model, torch.device("cpu"))[0]
    assert after > before + 0.3, (before, after)
    assert after > 0.3


# -- run folders ---------------------------------------------------------------------------------------------------


def _write_2d_dataset(root: Path, count: int = 5, shape=(40, 32)) -> Path:
    """Paired 2D folders (imagesTr/labelsTr): bright disks on noise, labelled."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    affine = Affine.from_geometry((0.5, 0.5), (0.0, 0.0), np.eye(2))
    for index in range(count):
        centre = rng.uniform(10, 22, 2)
        disk = np.linalg.norm(grid - centre, axis=-1) < 7
        image = 50 + 100 * disk + rng.normal(0, 10, shape)
        name = f"p{index}.nii.gz"
        write_image(Image(torch.from_numpy(image[None].astype(np.float32)), affine), root / "imagesTr" / name)
        write_image(Image(torch.from_numpy(disk[None].astype(np.int64)), affine, True), root / "labelsTr" / name)
    return root


def _checkpoint(run: Path) -> tuple[dict, dict]:
    state, config, _ = load_checkpoint(run / "checkpoint_best.pt")
    return state, config


@pytest.mark.parametrize(("dims", "extra"), [("3d", []), ("2d slices", ["--network-dims", "2"]), ("2d pictures", [])])
def test_unet_run_folder_holds_the_plan_of_segmorph_train(tmp_path, dims, extra, one_thread):
    data = _write_2d_dataset(tmp_path / "data") if dims == "2d pictures" else write_msd_dataset(tmp_path / "data", 4)
    out = tmp_path / "pre"
    assert main(["pretrain", str(data), "--out", str(out), "--max-steps", "3", "--quiet", *extra]) == 0
    for name in (*RUN_FILES, "plan.json"):
        assert (out / name).is_file(), name
    network_dims = 2 if extra else None
    _, train_plan = plan_dataset(TrainRequest(dataset=data, out=tmp_path / "t", time_budget_s=0, max_steps=3,
                                              network_dims=network_dims, show_progress=False))  # fmt: skip
    plan = json.loads((out / "plan.json").read_text())
    expected = {**train_plan.network, "num_classes": 1, "deep_supervision": False}
    assert plan["network"] == expected
    assert plan["preprocess"] == train_plan.preprocess.to_dict()
    assert plan["train"]["patch_size"] == list(train_plan.train.patch_size)
    assert plan.get("slice_axis") == train_plan.slice_axis
    state, config = _checkpoint(out)
    assert config["network"] == expected and config["transfer_prefix"] == ""
    assert config["pretraining"]["objective"]["name"] == "mask"
    assert set(state) == set(build_network(expected).state_dict())
    record = json.loads((out / "run.json").read_text())
    assert record["kind"] == "pretraining" and len(record["val_cases"]) == 1
    assert detect_kind(out) == "pretraining"
    page = build_report(out, tmp_path / "report.html").read_text()
    assert "Reconstructions" in page and "masked autoencoder" in page


@pytest.mark.parametrize("name", ["resnet", "simplecnn"])
def test_classifier_run_stores_the_classifier_keys_but_the_final_layer(tmp_path, name, one_thread):
    data = _write_2d_dataset(tmp_path / "data", count=4)
    out = tmp_path / "pre"
    result = pretrain([data / "imagesTr"], out, max_steps=2, network=name, width=4, size=32, show_progress=False)
    assert result.steps == 2 and result.network == name
    for item in RUN_FILES:
        assert (out / item).is_file(), item
    assert not (out / "plan.json").exists()
    state, config = _checkpoint(out)
    assert config["transfer_prefix"] == CLASSIFIER_PREFIX
    assert config["network"] == classifier_network(name, 4, 2, 1)
    assert config["pretraining"]["input"] == {"size": [32, 32], "channels": 1, "normalisation": "zscore"}
    stored = {k.removeprefix(CLASSIFIER_PREFIX) for k in state if k.startswith(CLASSIFIER_PREFIX)}
    own = set(build_network(config["network"]).state_dict())
    assert stored == {k for k in own if not k.startswith("fc.")}
    assert any(k.startswith("decoder.") for k in state)


def test_resume_continues_an_interrupted_run(tmp_path, monkeypatch, one_thread):
    data = _write_2d_dataset(tmp_path / "data", count=4)
    settings = {"max_steps": 50, "network": "simplecnn", "width": 4, "size": 16, "show_progress": False}
    pretrain([data / "imagesTr"], tmp_path / "full", **settings)

    def crash(self, step, row, model, device):
        raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr("segmorph.pretraining.pipeline.ReconstructionPreview.track", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            pretrain([data / "imagesTr"], tmp_path / "part", **settings)
    assert len((tmp_path / "part" / "train_log.csv").read_text().splitlines()) == 2  # header and epoch 1 of 2
    assert main(["pretrain", str(data / "imagesTr"), "--out", str(tmp_path / "part"), "--network", "simplecnn",
                 "--resume", "--quiet"]) == 0  # fmt: skip
    full, _, _ = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    part, _, extras = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")
    assert json.loads(extras["counters_json"])["step"] == 50
    assert all(torch.allclose(full[k].float(), part[k].float(), atol=1e-5) for k in full)
    assert len(json.loads((tmp_path / "part" / "run.json").read_text())["resumes"]) == 1


# -- bad input -----------------------------------------------------------------------------------------------------


def _missing(tmp_path: Path) -> tuple[Path, str]:
    return tmp_path / "nowhere", "no such file or folder"


def _empty(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", "holds no images"


def _mixed(tmp_path: Path) -> tuple[Path, str]:
    image = sphere_case()[0]
    write_image(image, tmp_path / "mixed" / "a.nii.gz")
    write_image(Image(image.data[..., 0], Affine.identity(2)), tmp_path / "mixed" / "b.nii.gz")
    return tmp_path / "mixed", "a 2D scan among 3D scans"


def _unreadable(tmp_path: Path) -> tuple[Path, str]:
    write_image(sphere_case()[0], tmp_path / "scans" / "a.nii.gz")
    (tmp_path / "scans" / "b.nii.gz").write_bytes(b"not an image")
    return tmp_path / "scans", "cannot read"


@pytest.mark.parametrize("make_input", [_missing, _empty, _mixed, _unreadable])
def test_bad_input_is_one_line_exit_1_and_nothing_written(tmp_path, capsys, make_input):
    source, message = make_input(tmp_path)
    out = tmp_path / "pre"
    assert main(["pretrain", str(source), "--out", str(out), "--max-steps", "2", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path}/") and message in err[0], err
    assert not out.exists()


def test_options_that_do_not_fit_the_network_and_an_input_folder_as_output_are_refused(tmp_path):
    data = write_msd_dataset(tmp_path / "data", 2)
    with pytest.raises(SegmorphError, match="--spacing and --network-dims"):
        pretrain(data, tmp_path / "pre", max_steps=2, network="resnet", network_dims=2)
    with pytest.raises(SegmorphError, match="--size"):
        pretrain(data, tmp_path / "pre", max_steps=2, size=32)
    with pytest.raises(SegmorphError, match="input folder"):
        pretrain(data, data, max_steps=2)
    with pytest.raises(SegmorphError, match="lie inside"):
        pretrain(data, data / "pre", max_steps=2)
    with pytest.raises(SegmorphError, match="no checkpoint_last.pt"):
        pretrain(data, tmp_path / "pre", max_steps=2, resume=True)
    with pytest.raises(SegmorphError, match=r"block: 1000 voxels is larger than the shortest side of the \[.*\] patch"):
        pretrain(data, tmp_path / "pre", max_steps=2, block=1000)
    with pytest.raises(SegmorphError, match="block: expected at least 1 voxel, got 0"):
        pretrain(data, tmp_path / "pre", max_steps=2, block=0)
    assert not (tmp_path / "pre").exists()
