"""Learned registration: training writes a loadable run; inference keeps geometry; the prior travels with it."""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import OBLIQUE, sphere_case, write_msd_dataset
from segmorph.cli import main
from segmorph.io import read_image, write_image
from segmorph.registration.learned import (
    LearnedConfig,
    LearnedRegistration,
    build_registration_network,
    predict_velocity,
)
from segmorph.registration.training import RegistrationTrainRequest, train_registration

TINY = LearnedConfig(features=(4, 8, 8), train_shape=(24, 24, 16), prealign="com")


def test_untrained_network_starts_at_the_identity():
    network = build_registration_network(3, TINY)
    velocity = predict_velocity(network.eval(), torch.rand(1, 2, 21, 19, 13))  # any size: padded inside
    assert velocity.shape == (1, 3, 21, 19, 13)
    assert velocity.abs().max() < 1e-2  # voxels


def test_train_registration_writes_a_run_that_registers_on_the_fixed_grid(tmp_path, trained_run):
    dataset = write_msd_dataset(tmp_path / "data", num_cases=8)
    out = tmp_path / "reg_run"
    request = RegistrationTrainRequest(dataset, out, time_budget_s=0, max_steps=4, config=TINY,
                                       show_progress=False, segmentation_run=trained_run)  # fmt: skip
    summary = train_registration(request)
    assert summary["steps"] == 4
    names = {p.name for p in out.iterdir()}
    assert {"checkpoint_best.pt", "checkpoint_last.pt", "run.json", "summary.json", "segmentation_prior"} <= names
    split = json.loads((out / "run.json").read_text())["split"]
    assert not set(split["train"]) & set(split["held_out"]) and not set(split["train"]) & set(split["monitor"])

    model = LearnedRegistration.load(out)
    assert model.prior is not None and model.config.prior_classes == 3
    fixed, fixed_labels = sphere_case((24, 20, 12), seed=1)
    moving, _ = sphere_case((24, 20, 12), seed=2)
    transform = model.register(fixed, moving)
    warped = transform.warp(moving, fixed.affine, fixed.spatial_shape)
    assert warped.affine.allclose(OBLIQUE) and warped.spatial_shape == fixed.spatial_shape

    write_image(fixed, tmp_path / "fixed.nii.gz")
    write_image(moving, tmp_path / "moving.nii.gz")
    write_image(fixed_labels, tmp_path / "labels.nii.gz")
    code = main(["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), "--out",
                 str(tmp_path / "reg"), "--method", "learned", "--model", str(out), "--refine", "2",
                 "--moving-labels", str(tmp_path / "labels.nii.gz")])  # fmt: skip
    assert code == 0
    labels = read_image(tmp_path / "reg" / "warped_labels.nii.gz", is_label=True)
    assert labels.affine.allclose(fixed.affine, atol=1e-5)
    assert set(np.unique(labels.numpy())) <= {0, 1, 2}


def test_loading_a_segmentation_run_as_a_registration_model_is_refused(trained_run, capsys):
    code = main(["register", "a.nii.gz", "b.nii.gz", "--out", "x", "--method", "learned", "--model", str(trained_run)])
    assert code == 1
    assert "not a registration model" in capsys.readouterr().err
