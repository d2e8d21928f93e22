"""The GAN task in the engine's loop: a phantom's known answer, the discriminator resumed, the validation score."""

from __future__ import annotations

import pytest
import torch

from segmorph.engine.checkpoints import load_checkpoint
from segmorph.engine.loop import StatefulTask, TrainConfig, fit_task
from segmorph.synthesis.model import generate_image
from segmorph.synthesis.networks import LabelToImageGenerator, PatchDiscriminator, discriminator_features
from segmorph.synthesis.task import GanSettings, GanTask, channel_correlation

BRIGHT, DARK = 2.0, -0.5


def _phantom(seed: int, shape=(32, 32)) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-intensity phantom: a disc (label 1) at ``BRIGHT`` on a ``DARK`` background, a little noise."""
    draws = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
    centre = torch.tensor(shape, dtype=torch.float32).view(-1, 1, 1) / 2 + torch.rand(2, 1, 1, generator=draws) * 6 - 3
    label = ((grid - centre).pow(2).sum(0).sqrt() < 8).long()[None]
    image = torch.where(label > 0, BRIGHT, DARK) + 0.05 * torch.randn(1, *shape, generator=draws)
    return image.float(), label


def _task(steps: int, cases, settings: GanSettings | None = None) -> tuple[GanTask, TrainConfig]:
    config = TrainConfig(patch_size=(32, 32), batch_size=2, max_steps=steps, steps_per_epoch=steps,
                         learning_rate=1e-3, weight_decay=0.0, augment=False, seed=0)  # fmt: skip
    discriminator = PatchDiscriminator(2, 3, discriminator_features((32, 32), 8))
    return GanTask(cases[:3], cases[3:], config, settings or GanSettings(), discriminator, 2, ["grey"]), config


def _generated(generator, case) -> torch.Tensor:
    return generate_image(generator.eval(), case[1], (32, 32), torch.Generator().manual_seed(0))


def test_a_few_steps_teach_the_generator_that_label_1_is_bright(tmp_path, one_thread):
    torch.manual_seed(0)
    cases = [_phantom(i) for i in range(4)]
    generator = LabelToImageGenerator(2, 2, 1, (8, 16))
    held_out = cases[3]
    before = float((_generated(generator, held_out) - held_out[0]).abs().mean())
    task, config = _task(40, cases)
    fit_task(generator, task, config, tmp_path / "run", generator.config, show_progress=False)
    out = _generated(generator, held_out)
    after = float((out - held_out[0]).abs().mean())
    assert after < 0.5 * before
    inside, outside = float(out[held_out[1] > 0].mean()), float(out[held_out[1] == 0].mean())
    assert inside > outside + 1.0  # the disc is bright, the background dark (known answer: 2.0 vs -0.5)
    assert abs(outside - DARK) < 0.5
    assert task.validate(generator, torch.device("cpu"))[0] > 0.8


def test_the_task_keeps_its_discriminator_and_its_optimiser_across_a_resume(tmp_path, one_thread):
    torch.manual_seed(0)
    cases = [_phantom(i) for i in range(4)]
    generator = LabelToImageGenerator(2, 2, 1, (4, 8))
    task, config = _task(2, cases)
    assert isinstance(task, StatefulTask)
    fit_task(generator, task, config, tmp_path, generator.config, show_progress=False)
    trained = {k: v.clone() for k, v in task.discriminator.state_dict().items()}
    _, _, extras = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert set(extras["task"]) == {"discriminator", "optimizer"}

    torch.manual_seed(1)  # a fresh discriminator with other weights
    resumed, _ = _task(2, cases)
    assert not torch.equal(resumed.discriminator.state_dict()["layers.0.weight"], trained["layers.0.weight"])
    fit_task(LabelToImageGenerator(2, 2, 1, (4, 8)), resumed, config, tmp_path, generator.config, resume=True,
             show_progress=False)  # fmt: skip
    for name, value in resumed.discriminator.state_dict().items():
        assert torch.equal(value, trained[name]), name
    state = resumed.d_optimizer.state_dict()["state"]
    assert state and all(int(s["step"]) == 2 for s in state.values())  # Adam's counters: two steps taken


def test_batch_loss_updates_the_discriminator_and_returns_the_generators_loss():
    torch.manual_seed(0)
    cases = [_phantom(i) for i in range(4)]
    task, _ = _task(1, cases, GanSettings(l1_weight=10.0, adversarial_weight=0.5))
    generator = LabelToImageGenerator(2, 2, 1, (4, 8))
    before = {k: v.clone() for k, v in task.discriminator.state_dict().items()}
    loss = task.batch_loss(generator, torch.Generator().manual_seed(0), torch.device("cpu"), amp=False)
    losses = task.last_losses
    assert loss.item() == pytest.approx(0.5 * losses["adversarial"] + 10.0 * losses["l1"], rel=1e-5)
    assert not torch.equal(before["layers.0.weight"], task.discriminator.state_dict()["layers.0.weight"])
    grads = [p.grad.clone() for p in task.discriminator.parameters()]  # of its own step
    loss.backward()  # the loop's step: gradients reach the generator and leave the discriminator's alone
    assert all(p.grad is not None for p in generator.parameters() if p.requires_grad)
    assert all(torch.equal(p.grad, g) for p, g in zip(task.discriminator.parameters(), grads))


def test_a_non_finite_discriminator_gradient_is_skipped():
    torch.manual_seed(0)
    cases = [_phantom(i) for i in range(4)]
    cases[:3] = [(image * float("nan"), label) for image, label in cases[:3]]  # every training image NaN
    task, _ = _task(1, cases)
    before = {k: v.clone() for k, v in task.discriminator.state_dict().items()}
    task.batch_loss(LabelToImageGenerator(2, 2, 1, (4, 8)), torch.Generator().manual_seed(0), torch.device("cpu"),
                    amp=False)  # fmt: skip
    after = task.discriminator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_channel_correlation_known_answers():
    x = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(channel_correlation(3 * x + 1, x), torch.ones(2), atol=1e-6)
    assert torch.allclose(channel_correlation(-x, x), -torch.ones(2), atol=1e-6)
    assert torch.equal(channel_correlation(torch.zeros(1, 4, 4), x[:1, :4, :4]), torch.zeros(1))


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"l1_weight": -1.0}, "l1_weight"), ({"l1_weight": float("inf")}, "finite weight"), ({"generator_lr": 0.0}, "generator_lr"),
     ({"l1_weight": 0.0, "adversarial_weight": 0.0}, "l1_weight"), ({"foreground_fraction": 2.0}, "foreground_fraction")],
)  # fmt: skip
def test_bad_gan_settings_are_named(changes, named):
    with pytest.raises(ValueError, match=named):
        GanSettings(**changes)
    with pytest.raises(ValueError, match="unknown keys"):
        GanSettings.from_dict({"l1": 1.0})
