"""Learned registration: training writes a loadable run; inference keeps geometry; the prior travels with it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import OBLIQUE, sphere_case, write_msd_dataset
from segmorph.cli.main import main
from segmorph.io import read_image, write_image
from segmorph.registration.learned import model as learned_model
from segmorph.registration.learned import network as learned_network
from segmorph.registration.learned.config import LearnedConfig
from segmorph.registration.learned.model import LearnedRegistration, network_window
from segmorph.registration.learned.network import (
    build_registration_network,
    predict_displacement,
    predict_velocity,
    warp_moving,
)
from segmorph.registration.learned.training import RegistrationTrainRequest, train_registration
from segmorph.registration.run import deformation_quality

TINY = LearnedConfig(features=(4, 8, 8), train_shape=(24, 24, 16), prealign="com")


def test_untrained_network_starts_at_the_identity():
    network = build_registration_network(3, TINY)
    velocity = predict_velocity(network.eval(), torch.rand(1, 2, 21, 19, 13))  # any size: padded inside
    assert velocity.shape == (1, 3, 21, 19, 13)
    assert velocity.abs().max() < 1e-2  # voxels


def test_full_resolution_inputs_give_a_half_resolution_velocity_trained_from_the_first_level():
    config = replace(TINY, features=(4, 8, 8, 8), input_shrink=1)
    network = build_registration_network(3, config).eval()
    inputs = torch.rand(1, 2, 21, 19, 13)
    assert predict_velocity(network, inputs, input_shrink=1).shape == (1, 3, 21, 19, 13)  # padded to 24x24x16 inside
    displacement = predict_displacement(network, inputs, config)
    assert displacement.shape == (1, 3, 21, 19, 13) and displacement.abs().max() < 1e-2  # voxels
    coarse = learned_network.coarse_velocity(network.train(), torch.rand(1, 2, 24, 24, 16), 1, False)
    assert coarse.shape == (1, 3, 12, 12, 8)  # the network decodes down to half resolution only
    coarse.square().sum().backward()
    assert next(network.encoder[0].parameters()).grad.abs().sum() > 0  # the full-resolution level learns


class ConstantVelocity(torch.nn.Module):
    """A stand-in network whose velocity is the same vector everywhere (coarse voxels); counts its calls."""

    divisor = 1

    def __init__(self, vector):
        super().__init__()
        self.vector = torch.tensor(vector, dtype=torch.float32)
        self.inputs = []

    def forward(self, inputs):
        self.inputs.append(inputs.clone())
        return self.vector.view(1, -1, *[1] * (inputs.ndim - 2)).expand(inputs.shape[0], -1, *inputs.shape[2:])


def test_passes_compose_translations_on_the_coarse_grid():
    """Constant velocities are translations: two passes at scale 0.5 move 1.5x the first pass's shift."""
    network = ConstantVelocity([1.0, -2.0, 0.5])  # coarse voxels
    inputs = torch.rand(1, 2, 17, 21, 13)  # padded to 18 x 22 x 14 inside, network grid 9 x 11 x 7
    one = predict_displacement(network, inputs, replace(TINY, passes=1))
    two = predict_displacement(network, inputs, replace(TINY, passes=2, pass_scale=0.5))
    full_per_coarse = torch.tensor([17 / 8, 21 / 10, 13 / 6]).view(1, 3, 1, 1, 1)  # corner-aligned grids
    assert torch.allclose(one, torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1, 1) * full_per_coarse, atol=1e-4)
    assert torch.allclose(two, 1.5 * one, atol=1e-4)
    assert len(network.inputs) == 3  # one pass, then two
    shrunk = torch.nn.functional.avg_pool3d(torch.nn.functional.pad(inputs, [0, 1, 0, 1, 0, 1]), 2)
    assert torch.equal(network.inputs[1], shrunk)  # the second pass's fixed image is untouched, the moving one moved
    assert torch.allclose(network.inputs[2][:, 1], shrunk[:, 1])
    assert not torch.allclose(network.inputs[2][:, 0], shrunk[:, 0])


def test_composed_passes_fade_out_without_folding(monkeypatch):
    """A large shift near the window's faces: each pass's velocity is tapered before integration, so
    the composed field reaches 0 at the faces and stays invertible (a tapered displacement would fold)."""
    model = LearnedRegistration(build_registration_network(3, TINY).eval(), replace(TINY, passes=2, pass_scale=1.0))
    fixed, moving = (_zero_framed(sphere_case((24, 20, 12), seed=seed)[0], 8) for seed in (1, 2))

    def shift(network, inputs, input_shrink, amp):  # 4 coarse voxels along the last axis, everywhere
        velocity = torch.zeros(inputs.shape[0], 3, *inputs.shape[2:])
        velocity[:, 2] = 4.0
        return velocity

    monkeypatch.setattr(learned_network, "coarse_velocity", shift)
    transform = model.register(fixed, moving, matrix=np.eye(4))
    displacement = transform.steps[0].displacement
    assert displacement.norm(dim=0).max() > 8.0  # mm: far more than a taper's ramp can absorb
    assert deformation_quality(transform, fixed)["folding_percent"] == 0.0


def _zero_framed(image, margin: int):
    """``image`` with ``margin`` zero slices before and after its last axis (content in the middle)."""
    data = torch.nn.functional.pad(image.data, [margin, margin])
    return type(image)(data, image.affine, image.is_label)


def test_warp_moving_moves_the_moving_image_and_its_prior_only():
    inputs = torch.rand(1, 6, 8, 9, 10)  # moving, fixed, 2 moving prior channels, 2 fixed prior channels
    shift = torch.zeros(1, 3, 8, 9, 10)
    shift[:, 2] = 1.0  # one voxel along the last axis
    warped = warp_moving(inputs, shift)
    for channel in (0, 2, 3):
        assert torch.allclose(warped[:, channel, :, :, :-1], inputs[:, channel, :, :, 1:], atol=1e-5)
    for channel in (1, 4, 5):
        assert torch.equal(warped[:, channel], inputs[:, channel])


def test_learned_config_refuses_impossible_passes():
    with pytest.raises(ValueError, match="passes"):
        replace(TINY, passes=0)
    assert LearnedConfig.from_dict({"features": [4, 8]}).passes == 2  # checkpoints from before passes: the default


def test_the_network_sees_its_training_grid_centred_on_the_content():
    content = (slice(10, 30), slice(0, 70), slice(5, 9))
    assert network_window(content, (48, 64, 48)) == [(-4, 44), (0, 70), (-17, 31)]  # grid size, or content's
    in_image, in_window = learned_model._overlap([(-4, 44), (0, 70), (-17, 31)], (40, 70, 12))
    assert in_image == (slice(0, 40), slice(0, 70), slice(0, 12))
    assert in_window == (slice(4, 44), slice(0, 70), slice(17, 29))
    weights = learned_model._taper(content, [(-4, 44), (0, 70), (-17, 31)], 8)
    assert weights[14:34, :, 22:26].min() == 1.0  # the content is never damped, up to a face it touches
    assert weights[0].max() == 0.0 and weights[:, :, 0].max() == 0.0  # faces away from the content: 0
    assert weights[7, 5, 24] < 1.0 and weights[8:14, 5, 24].min() == 1.0  # the ramp spans at most 8 voxels


def test_the_field_reaches_the_edges_of_a_scan_filled_with_content(monkeypatch):
    """An unpadded scan (non-zero to its faces): the predicted field is used as is, up to the faces."""
    model = LearnedRegistration(build_registration_network(3, TINY).eval(), TINY)
    fixed, _ = sphere_case((24, 20, 12), seed=1)
    fixed.data[:] += 1.0  # non-zero everywhere
    seen = []

    def constant(network, inputs, input_shrink=2, amp=False):
        seen.append(tuple(inputs.shape[2:]))
        return torch.ones(1, 3, *inputs.shape[2:])

    monkeypatch.setattr(learned_model, "predict_velocity", constant)
    velocity = model._network_field(fixed, fixed)
    assert seen == [(24, 24, 16)]  # the training grid, centred on the scan
    assert torch.equal(velocity, torch.ones(1, 3, 24, 20, 12))


def test_train_registration_writes_a_run_that_registers_on_the_fixed_grid(tmp_path, trained_run, capsys):
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
    assert summary["monitor_score"] == "Dice" and 0.0 <= summary["best_monitor_score"] <= 1.0
    train_registration(replace(request, max_steps=6, resume=True))
    record = json.loads((out / "run.json").read_text())  # the first run's record kept, the resume appended
    assert record["split"] == split and len(record["resumes"]) == 1 and record["data_fingerprint"]["files"] > 0

    model = LearnedRegistration.load(out)
    assert model.prior is not None and model.config.prior_classes == 3
    fixed, fixed_labels = sphere_case((24, 20, 12), seed=1)
    moving, _ = sphere_case((24, 20, 12), seed=2)
    transform = model.register(fixed, moving)
    warped = transform.warp(moving, fixed.affine, fixed.spatial_shape)
    assert warped.affine.allclose(OBLIQUE) and warped.spatial_shape == fixed.spatial_shape
    field = transform.steps[0]  # two passes: a composed displacement, inverted by iteration
    assert model.config.passes == 2 and field.velocity is None and field.affine.allclose(fixed.affine)
    points = torch.tensor([[1.0, 2.0, 3.0], [4.0, -1.0, 2.0]], dtype=torch.float64)
    assert torch.allclose(transform.inverse().map_points(transform.map_points(points)), points, atol=1e-2)
    assert model.register(fixed, moving, passes=1).steps[0].velocity is not None  # one pass: exp(v)
    with pytest.raises(ValueError, match="passes: expected 1 to 20 network passes, got 0"):
        model.register(fixed, moving, passes=0)

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
    assert json.loads((tmp_path / "reg" / "registration.json").read_text())["passes"] == 1  # --refine: one pass
    pair = [str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), "--method", "learned", "--model", str(out)]
    assert main(["register", *pair, "--out", str(tmp_path / "reg3"), "--passes", "3"]) == 0
    assert json.loads((tmp_path / "reg3" / "registration.json").read_text())["passes"] == 3
    assert not (tmp_path / "reg3" / "velocity.nii.gz").exists()  # a composed field has no single velocity
    capsys.readouterr()
    for flag, value, words in [
        ("--passes", "0", "--passes: expected 1 to 20 network passes, got 0"),
        ("--passes", "21", "--passes: expected 1 to 20 network passes, got 21"),
        ("--refine", "-1", "--refine: expected 0 to 10,000 instance-optimisation steps, got -1"),
        ("--refine", "1000000000", "--refine: expected 0 to 10,000 instance-optimisation steps, got 1000000000"),
    ]:
        assert main(["register", *pair, "--out", str(tmp_path / "reg0"), flag, value]) == 1
        assert capsys.readouterr().err == f"error: {words}\n"
    assert not (tmp_path / "reg0").exists()


def test_loading_a_segmentation_run_as_a_registration_model_is_refused(trained_run, capsys):
    code = main(["register", "a.nii.gz", "b.nii.gz", "--out", "x", "--method", "learned", "--model", str(trained_run)])
    assert code == 1
    assert "not a registration model" in capsys.readouterr().err


def test_a_registration_checkpoint_without_its_facts_is_one_clear_error(tmp_path):
    from segmorph.engine.checkpoints import save_checkpoint
    from segmorph.errors import SegmorphError

    save_checkpoint(tmp_path / "checkpoint_best.pt", {}, {"kind": "registration"})
    with pytest.raises(SegmorphError, match="does not fit this segmorph"):
        LearnedRegistration.load(tmp_path)


class _Probe(torch.nn.Module):
    """Logits (0, x, -x) of the input: smooth probabilities; records the grids it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.grids: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grids.append(tuple(x.shape[2:]))
        return torch.cat([torch.zeros_like(x), x, -x], dim=1)


def test_the_prior_runs_at_its_plan_spacing_and_answers_on_the_input_grid(trained_run):
    from segmorph.registration.learned.prior import SegmentationPrior

    prior = SegmentationPrior(trained_run)
    prior.network, prior.divisor = _Probe(), 1
    axes = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in (24, 20, 8)], indexing="ij")
    volume = (2.0 + torch.exp(-sum(a**2 for a in axes) / 0.5))[None, None]  # a smooth blob, non-zero everywhere
    spacing = (0.5, 0.5, 2.0)  # anisotropic: axis i of the tensor has spacing[i]
    for target in (spacing, None):  # the input's own spacing, or a plan without one: the network sees the input
        prior.plan = replace(prior.plan, preprocess=replace(prior.plan.preprocess, target_spacing=target))
        native = prior.probabilities(volume, spacing)
    prior.plan = replace(prior.plan, preprocess=replace(prior.plan.preprocess, target_spacing=(1.0, 1.0, 1.0)))
    resampled = prior.probabilities(volume, spacing)
    assert prior.network.grids == [(24, 20, 8), (24, 20, 8), (12, 10, 16)]  # 1 mm: 12 x 10 x 16 voxels
    assert resampled.shape == native.shape == (1, 3, 24, 20, 8)
    torch.testing.assert_close(resampled.sum(1), torch.ones(1, 24, 20, 8))
    difference = (resampled - native).abs()
    assert difference[..., 2:-2, 2:-2, 2:-2].max() < 0.05  # the same smooth answer from the resampled grid
    assert difference.max() < 0.2  # the far faces read the last coarse voxel (origin-preserving grids)
    with pytest.raises(ValueError, match="spacing"):
        prior.probabilities(volume, (1.0, 1.0))


# -- label guidance ------------------------------------------------------------------------------


def test_guided_pairs_see_the_moving_labels_in_place_of_the_moving_prior():
    from segmorph.registration.learned.training import PairData

    images, prior = torch.rand(3, 1, 4, 5, 6), torch.rand(3, 2, 4, 5, 6)
    labels = torch.randint(0, 3, (3, 4, 5, 6))
    onehot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float()
    data = PairData(images, onehot, prior)
    inputs = data.inputs(torch.tensor([0, 1]), torch.tensor([2, 0]), guided=torch.tensor([True, False]))
    assert inputs.shape == (2, 6, 4, 5, 6)  # moving, fixed, 2 moving prior, 2 fixed prior
    assert torch.equal(inputs[0, 2:4], onehot[2, 1:]) and torch.equal(inputs[1, 2:4], prior[0])
    assert torch.equal(inputs[:, 4:], prior[[0, 1]]) and torch.equal(inputs[:, 1], images[[0, 1], 0])
    assert data.can_guide() and not PairData(images, onehot[:, :2], prior).can_guide()


class _FlatPrior:
    """A stand-in prior: every voxel 1/3 of each of three classes."""

    num_classes = 3

    def image_probabilities(self, image):
        return torch.full((3, *image.spatial_shape), 1 / 3)


def _moving_prior_seen(monkeypatch, config, moving_labels):
    """The moving prior channels the network is given by ``register`` (captured, then an identity field)."""
    seen = []

    def capture(network, inputs, config, amp=False, weights=None):
        seen.append(inputs[:, 2:4].clone())
        return torch.zeros(1, 3, *inputs.shape[2:])

    monkeypatch.setattr(learned_model, "predict_displacement", capture)
    network = build_registration_network(3, replace(config, prior_classes=3))
    model = LearnedRegistration(network, replace(config, prior_classes=3), prior=_FlatPrior())
    fixed, _ = sphere_case((24, 20, 12), seed=1)
    moving, _ = sphere_case((24, 20, 12), seed=2)
    model.register(fixed, moving, prealign="none", moving_labels=moving_labels(moving))
    return seen[0], model


def test_a_label_guided_model_sees_the_moving_labels_and_others_ignore_them(monkeypatch):
    def labels_of(moving):  # one voxel of class 2, the rest background, on the moving grid
        data = torch.zeros(1, *moving.spatial_shape, dtype=torch.int64)
        data[0, 12, 10, 6] = 2
        return type(moving)(data, moving.affine, is_label=True)

    seen, model = _moving_prior_seen(monkeypatch, replace(TINY, label_guidance=0.5), labels_of)
    window = network_window([slice(0, 24), slice(0, 20), slice(0, 12)], TINY.train_shape)
    centre = [12 - window[0][0], 10 - window[1][0], 6 - window[2][0]]
    assert seen[0, 1, centre[0], centre[1], centre[2]] == 1 and seen[0, 1].sum() == 1 and seen[0, 0].sum() == 0
    assert model.guided_by(labels_of(sphere_case((24, 20, 12), seed=2)[0]))
    unguided, model = _moving_prior_seen(monkeypatch, replace(TINY, label_guidance=0.0), labels_of)
    assert not model.guided_by(labels_of(sphere_case((24, 20, 12), seed=2)[0]))
    assert abs(float(unguided.max()) - 1 / 3) < 1e-6 and unguided[0, 0].sum() > 100  # the prior's, not the labels


def test_labels_outside_the_prior_classes_do_not_guide(monkeypatch):
    def labels_of(moving):
        return type(moving)(torch.full((1, *moving.spatial_shape), 5, dtype=torch.int64), moving.affine, is_label=True)

    seen, model = _moving_prior_seen(monkeypatch, replace(TINY, label_guidance=1.0), labels_of)
    assert not model.guided_by(labels_of(sphere_case((24, 20, 12), seed=2)[0]))
    assert seen.max() <= 1 / 3 + 1e-6


def test_label_guidance_is_a_share_and_needs_a_prior(tmp_path, capsys):
    with pytest.raises(ValueError, match="label_guidance"):
        replace(TINY, label_guidance=1.5)
    dataset = write_msd_dataset(tmp_path / "data", num_cases=6)
    code = main(["train-registration", str(dataset), "--out", str(tmp_path / "reg"), "--max-steps", "1",
                 "--label-guidance", "0.5", "--quiet"])  # fmt: skip
    assert code == 1 and "registration.label_guidance: needs a segmentation model" in capsys.readouterr().err
    request = RegistrationTrainRequest(dataset, tmp_path / "plain", time_budget_s=0, max_steps=1, config=TINY,
                                       show_progress=False)  # fmt: skip
    train_registration(request)  # no prior: nothing for labels to stand in for, so the run is unguided
    assert LearnedRegistration.load(tmp_path / "plain").config.label_guidance == 0.0
    assert LearnedConfig.from_dict({"features": [4, 8]}).label_guidance == 0.0  # checkpoints from before it
    assert main(["train-registration", str(dataset), "--out", str(tmp_path / "reg"), "--label-guidance", "2"]) == 1
    assert "registration.label_guidance: expected a share in 0..1, got 2.0" in capsys.readouterr().err
    assert main(["train-registration", str(dataset), "--out", str(tmp_path / "big"), "--max-steps", "1",
                 "--batch-size", "100000000", "--quiet"]) == 1  # fmt: skip
    assert "exceeds the memory budget" in capsys.readouterr().err and not (tmp_path / "big").exists()


def test_a_label_guided_run_trains_and_registers_with_the_moving_labels(tmp_path, trained_run):
    dataset = write_msd_dataset(tmp_path / "data", num_cases=8)
    request = RegistrationTrainRequest(dataset, tmp_path / "reg_run", time_budget_s=0, max_steps=3, config=TINY,
                                       show_progress=False, segmentation_run=trained_run)  # fmt: skip
    assert train_registration(request)["steps"] == 3
    assert LearnedRegistration.load(tmp_path / "reg_run").config.label_guidance == 0.5
    fixed, _ = sphere_case((24, 20, 12), seed=1)
    moving, moving_labels = sphere_case((24, 20, 12), seed=2)
    for name, image in (("fixed", fixed), ("moving", moving), ("labels", moving_labels)):
        write_image(image, tmp_path / f"{name}.nii.gz")
    code = main(["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), "--out",
                 str(tmp_path / "reg"), "--method", "learned", "--model", str(tmp_path / "reg_run"),
                 "--moving-labels", str(tmp_path / "labels.nii.gz"), "--quiet"])  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "reg" / "registration.json").read_text())["label_guided"] is True


# -- pre-alignment by the prior ------------------------------------------------------------------


def test_prior_prealignment_matches_the_centres_of_the_structures(trained_run):
    from segmorph.geometry import Affine
    from segmorph.registration.learned.prior import SegmentationPrior, foreground_centre

    config = replace(TINY, prior_classes=3, prealign="auto")
    prior = SegmentationPrior(trained_run)
    model = LearnedRegistration(build_registration_network(3, config), config, prior=prior)
    fixed, _ = sphere_case((24, 20, 12), seed=1)
    shift = np.array([3.0, -4.5, 2.0])  # mm, world
    moved_grid = Affine.from_geometry(OBLIQUE.spacing, OBLIQUE.origin + shift, OBLIQUE.direction)
    moving = type(fixed)(fixed.data.clone(), moved_grid)  # the same scan, 3/4.5/2 mm away in the world
    assert foreground_centre(prior.image_probabilities(fixed), fixed.affine) is not None
    for kind in ("prior", "auto", None):
        matrix = model.prealign(fixed, moving, kind)
        assert np.allclose(matrix[:3, :3], np.eye(3)) and np.allclose(matrix[:3, 3], shift, atol=1e-6)
    background = torch.zeros(1, 3, *fixed.spatial_shape)
    background[:, 0] = 1.0
    prior.probabilities = lambda volumes, spacing, margin=1: background  # a prior that finds nothing
    assert foreground_centre(prior.image_probabilities(moving), moving.affine) is None
    assert np.allclose(model.prealign(fixed, moving, "prior"), np.eye(4))  # then no shift


def test_auto_prealignment_without_a_prior_is_none_and_prior_needs_one():
    from segmorph.errors import SegmorphError

    model = LearnedRegistration(build_registration_network(3, TINY), replace(TINY, prealign="auto"))
    fixed, _ = sphere_case((24, 20, 12), seed=1)
    moving, _ = sphere_case((24, 20, 12), seed=2)
    assert np.allclose(model.prealign(fixed, moving), np.eye(4))
    with pytest.raises(SegmorphError, match="needs a model trained with a segmentation prior"):
        model.prealign(fixed, moving, "prior")


def test_a_whole_voxel_translation_on_one_grid_is_a_shift_equal_to_resampling():
    from segmorph.registration.transform import Transform

    image, labels = sphere_case((24, 20, 12), seed=3)
    matrix = np.eye(4)
    matrix[:3, 3] = OBLIQUE.matrix[:3, :3] @ np.array([2.0, -1.0, 3.0])  # 2, -1, 3 voxels in the world
    shift = learned_model._voxel_shift(matrix, image, image)
    assert shift == (2, -1, 3)
    transform = Transform.from_matrix(matrix)
    for moving in (image, labels):
        resampled = transform.warp(moving, image.affine, image.spatial_shape)
        shifted = learned_model._shifted(moving, shift, image.affine)
        assert shifted.is_label == moving.is_label and shifted.affine.allclose(image.affine)
        assert torch.allclose(shifted.data.float(), resampled.data.float(), atol=1e-4)
    matrix[:3, 3] += 0.3  # not whole voxels: resampled instead
    assert learned_model._voxel_shift(matrix, image, image) is None
