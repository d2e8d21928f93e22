"""Semi-supervised training with a mean teacher: it helps where the labels are few, it is supervised training when
its weight is 0, its teacher resumes, and it runs on slices of 3D scans."""

from functools import partial

import numpy as np
import pytest
import torch

from segmorph.engine.checkpoints import load_checkpoint
from segmorph.engine.loop import TrainConfig
from segmorph.errors import SegmorphError
from segmorph.nn import UNet
from segmorph.segmentation.few_labels import choose_labelled
from segmorph.segmentation.plan import Plan
from segmorph.segmentation.semisupervised import (
    SemiConfig,
    SemiSupervisedTask,
    consistency_weight,
    unlabelled_batch_size,
)
from segmorph.segmentation.task import SegmentationTask, fit


def ball(seed: int, noise: float, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A z-scored ``(1, size, size, size)`` image of a ball of random radius, position and contrast, Gaussian noise
    of ``noise`` times the unit contrast, and its label map."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1).astype(float)
    centre = size / 2 + rng.uniform(-2.5, 2.5, 3)
    label = (np.linalg.norm(grid - centre, axis=-1) < rng.uniform(2.5, 6.0)).astype(np.int64)
    image = rng.uniform(0.6, 2.0) * label + rng.normal(0, noise, label.shape)
    image = (image - image.mean()) / image.std()
    return torch.tensor(image[None], dtype=torch.float32), torch.tensor(label[None])


def _config(**kwargs) -> TrainConfig:
    base = {"patch_size": (16, 16, 16), "batch_size": 2, "max_steps": 6, "steps_per_epoch": 3, "seed": 0, "amp": False}
    return TrainConfig(**{**base, **kwargs})


def _model(ndim: int = 3) -> UNet:
    torch.manual_seed(0)
    return UNet(ndim, 1, 2, (8, 16), deep_supervision=True)


def _semi(unlabelled, **settings):
    return partial(SemiSupervisedTask, unlabelled=unlabelled, semi=SemiConfig(**settings))


def test_two_labelled_cases_and_unlabelled_scans_beat_the_labels_alone(tmp_path, one_thread):
    # Two clean labelled scans; the scans to segment come noisier (another scanner), and ten of them are given
    # without labels: the student learns to agree with its teacher on them (Perone et al. 2019's setting).
    labelled = [ball(seed, noise=0.3) for seed in (0, 1)]
    unlabelled = [ball(seed, noise=1.0)[0] for seed in range(100, 110)]
    validation = [ball(seed, noise=1.0) for seed in range(200, 208)]
    config = _config(max_steps=120, steps_per_epoch=60)
    alone = fit(_model(), labelled, validation, config, tmp_path / "alone", {}, 2, show_progress=False)
    semi = fit(_model(), labelled, validation, config, tmp_path / "semi", {}, 2, show_progress=False,
               compose=_semi(unlabelled))  # fmt: skip
    assert semi.history[-1].val_score > alone.history[-1].val_score + 0.01


def test_zero_weight_is_supervised_training(tmp_path):
    """The unlabelled patches come from a generator of their own: the labelled batches stay those of training
    without them, and a consistency weight of 0 gives the very same weights."""
    cases = [ball(seed, noise=0.5) for seed in range(2)]
    fit(_model(), cases, [], _config(), tmp_path / "alone", {}, 2, show_progress=False)
    fit(_model(), cases, [], _config(), tmp_path / "semi", {}, 2, show_progress=False,
        compose=_semi([ball(9, noise=0.5)[0]], weight=0.0))  # fmt: skip
    alone, _, _ = load_checkpoint(tmp_path / "alone" / "checkpoint_last.pt")
    semi, _, extras = load_checkpoint(tmp_path / "semi" / "checkpoint_last.pt")
    assert all(torch.equal(alone[k], semi[k]) for k in alone)
    teacher = extras["task"]["teacher"]
    assert extras["task"]["step"] == 6 and set(teacher) == set(semi)
    assert not torch.equal(teacher["encoder.0.first.0.weight"], semi["encoder.0.first.0.weight"])  # an average


def test_the_teacher_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    cases = [ball(seed, noise=0.5) for seed in range(2)]
    unlabelled = [ball(seed, noise=0.5)[0] for seed in (7, 8)]
    fit(_model(), cases, [], _config(), tmp_path / "full", {}, 2, show_progress=False, compose=_semi(unlabelled))

    def crash_after_first_epoch(record):
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(_model(), cases, [], _config(), tmp_path / "part", {}, 2, show_progress=False,
            callbacks=[crash_after_first_epoch], compose=_semi(unlabelled))  # fmt: skip
    _, _, interrupted = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")
    assert interrupted["task"]["step"] == 3
    fit(_model(), cases, [], _config(), tmp_path / "part", {}, 2, resume=True, show_progress=False,
        compose=_semi(unlabelled))  # fmt: skip
    full_student, _, full = load_checkpoint(tmp_path / "full" / "checkpoint_last.pt")
    part_student, _, part = load_checkpoint(tmp_path / "part" / "checkpoint_last.pt")
    assert part["task"]["step"] == 6
    for name, value in full["task"]["teacher"].items():
        assert torch.allclose(value, part["task"]["teacher"][name], atol=1e-6), name
    assert all(torch.allclose(full_student[k], part_student[k], atol=1e-6) for k in full_student)


def test_slices_of_3d_scans_train_a_2d_student_and_teacher(tmp_path):
    cases = [ball(seed, noise=0.5) for seed in range(2)]
    unlabelled = [ball(seed, noise=0.5)[0] for seed in (5, 6)]
    tasks = []

    def keep(task):
        tasks.append(SemiSupervisedTask(task, unlabelled, SemiConfig()))
        return tasks[-1]

    result = fit(_model(ndim=2), cases, cases[:1], _config(patch_size=(16, 16)), tmp_path, {}, 2,
                 show_progress=False, slice_axis=2, compose=keep)  # fmt: skip
    assert result.steps == 6 and 0.0 <= result.best_score <= 1.0
    assert tasks[0].teacher.config["ndim"] == 2
    patches, _ = tasks[0].sampler.sample(3, torch.Generator().manual_seed(0))
    assert patches.shape == (3, 1, 16, 16)


def test_consistency_terms_known_answers():
    task = SemiSupervisedTask(SegmentationTask([ball(0, 0.5)], [], _config(), 2), [ball(1, 0.5)[0]], SemiConfig())
    logits = torch.tensor([[2.0, -2.0], [0.0, 0.0]]).T.reshape(1, 2, 2, 1, 1)  # voxel 0 sure, voxel 1 unsure
    assert float(task.consistency(logits, logits)) == 0.0
    flipped = logits.flip(1)  # p = (0.982, 0.018) against (0.018, 0.982) on voxel 0, equal on voxel 1
    assert float(task.consistency(logits, flipped)) == pytest.approx((0.982 - 0.018) ** 2 * 2 / 4, abs=1e-3)
    task.semi = SemiConfig(method="pseudo_label", confidence=0.9)
    # cross-entropy to the teacher's class on its confident voxel only, averaged over both voxels
    expected = float(torch.nn.functional.cross_entropy(logits[:, :, 0, 0, 0], torch.tensor([1]))) / 2
    assert float(task.consistency(logits, flipped)) == pytest.approx(expected, rel=1e-5)


def test_ramp_share_and_labelled_choice():
    assert consistency_weight(2.0, 0.0, 0.4) == pytest.approx(2.0 * np.exp(-5.0))
    assert consistency_weight(2.0, 0.2, 0.4) == pytest.approx(2.0 * np.exp(-1.25))
    assert consistency_weight(2.0, 0.5, 0.4) == consistency_weight(2.0, 0.0, 0.0) == 2.0
    assert [unlabelled_batch_size(2, s) for s in (0.1, 0.5, 0.75)] == [1, 2, 6]
    ids = [f"case_{k}" for k in range(10)]
    chosen = choose_labelled(ids, 3, seed=4)
    assert chosen == choose_labelled(list(reversed(ids)), 3, seed=4)
    assert len(set(chosen)) == 3 and set(chosen) < set(ids)
    assert any(choose_labelled(ids, 3, seed) != chosen for seed in range(5))
    with pytest.raises(SegmorphError, match="expected 1 to 10"):
        choose_labelled(ids, 11, seed=0)


def test_plan_keeps_the_semi_section(tmp_path):
    from helpers import write_msd_dataset
    from segmorph.segmentation.pipeline import TrainRequest, plan_dataset

    request = TrainRequest(write_msd_dataset(tmp_path / "ds", num_cases=3), tmp_path / "run", max_steps=2,
                           overrides=(("semi.weight", 3), ("semi.method", "pseudo_label")), show_progress=False)  # fmt: skip
    _, plan = plan_dataset(request)
    assert plan.semi == SemiConfig(weight=3.0, method="pseudo_label")
    loaded = Plan.load(plan.save(tmp_path / "plan.json"))
    assert loaded.semi == plan.semi
    values = plan.to_dict()
    del values["semi"]  # a plan written before the section: the defaults
    assert Plan.from_dict(values).semi == SemiConfig()
    bad = TrainRequest(request.dataset, request.out, max_steps=2, overrides=(("semi.unlabelled_share", 1),),
                       show_progress=False)  # fmt: skip
    with pytest.raises(SegmorphError, match=r"semi\.unlabelled_share: expected a fraction in \(0, 1\)"):
        plan_dataset(bad)
