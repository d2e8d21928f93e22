"""GAN training as a task of the engine's loop: the generator is the model, the task owns the discriminator.

Each step of :func:`segmorph.engine.loop.fit_task` calls :meth:`GanTask.batch_loss`, which

1. draws a batch of ``(image, label map)`` patches (half of them centred on foreground) and flips them at random;
2. generates images from the label maps (one-hot plus noise channels);
3. updates the discriminator once on real and generated pairs (its own optimiser, least-squares GAN loss,
   Mao et al. 2017, as pix2pix's successors use);
4. returns the generator's loss ``adversarial_weight * LSGAN + l1_weight * L1(generated, real)``, which the loop
   back-propagates into the generator (the discriminator's parameters are frozen while it is computed).

Validation generates whole held-out cases from their label maps with fixed noise and scores the Pearson
correlation of generated and real intensities per channel (higher is better, 1 at best): how much of the
real image's variation the label map explains through the generator. It is a fidelity score, not a judge
of realism (a blurred mean image scores well); the picture grid shows realism.

The task is a :class:`segmorph.engine.loop.StatefulTask`: the discriminator and its optimiser are saved in
``checkpoint_last.pt`` and restored on resume. Training runs in one process (no torchrun).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segmorph.configs import refuse_unknown_keys
from segmorph.engine.autocast import autocast
from segmorph.engine.loop import TrainConfig
from segmorph.synthesis.model import generate_image, generator_input
from segmorph.transforms import PatchSampler

Case = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class GanSettings:
    """The GAN's own settings (the rest is the segmentation plan's :class:`TrainConfig`).

    Attributes:
        l1_weight: Weight of the L1 distance to the real image in the generator's loss (pix2pix: 100).
        adversarial_weight: Weight of the adversarial term.
        discriminator_lr: Learning rate of the discriminator (Adam, betas 0.5 and 0.999 as pix2pix; constant).
        generator_lr: Peak learning rate of the generator (the loop's AdamW and schedule).
        noise_channels: Standard-normal input channels beside the one-hot labels.
        dropout: Dropout in the generator's decoder while training.
        flips: Flip patches along random axes (image and labels together).
        foreground_fraction: Share of patches centred on a foreground voxel.
        validation_cases: Most held-out cases scored each epoch (the first of the validation split).
        discriminator_width: Channels of the discriminator's first layer.
        generator_width_cap: Most channels of a generator level (its levels follow the plan's U-Net).
    """

    l1_weight: float = 100.0
    adversarial_weight: float = 1.0
    discriminator_lr: float = 2e-4
    generator_lr: float = 1e-3
    noise_channels: int = 1
    dropout: float = 0.0
    flips: bool = True
    foreground_fraction: float = 0.5
    validation_cases: int = 8
    discriminator_width: int = 32
    generator_width_cap: int = 128

    def __post_init__(self) -> None:
        for name in ("l1_weight", "adversarial_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name}: expected a finite weight of at least 0, got {getattr(self, name)}")
        if self.l1_weight == 0 and self.adversarial_weight == 0:
            raise ValueError("l1_weight: with adversarial_weight 0 too, the generator has nothing to learn")
        for name in ("discriminator_lr", "generator_lr"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name}: expected a positive learning rate, got {getattr(self, name)}")
        if self.noise_channels < 0 or self.validation_cases < 0:
            raise ValueError(f"noise_channels, validation_cases: expected at least 0, got {self.noise_channels}, "
                             f"{self.validation_cases}")  # fmt: skip
        if not 0.0 <= self.foreground_fraction <= 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"foreground_fraction, dropout: expected fractions, got {self.foreground_fraction}, "
                             f"{self.dropout}")  # fmt: skip
        if self.discriminator_width < 1 or self.generator_width_cap < 1:
            raise ValueError("discriminator_width, generator_width_cap: expected at least 1 channel")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GanSettings:
        refuse_unknown_keys(cls, values, "GAN settings")
        return cls(**values)


class GanTask:
    """Label-conditioned GAN training on preprocessed cases (see the module docstring).

    Args:
        train_cases: ``(image (C, *S) float32, label (1, *S) int64)`` pairs; negative (ignored) labels count as
            background.
        val_cases: Same, generated whole and scored each epoch; may be empty.
        config: The loop's settings (patch, batch, seed...).
        settings: The GAN's settings.
        discriminator: A :class:`~segmorph.synthesis.networks.PatchDiscriminator` for ``num_classes + C`` channels.
        num_classes: Label classes including background.
        channel_names: One name per image channel (the validation columns).
        slice_axis: For a 2D generator of 3D cases: the axis slices are cut across.
    """

    score_key = "correlation"

    def __init__(
        self, train_cases: Sequence[Case], val_cases: Sequence[Case], config: TrainConfig, settings: GanSettings,
        discriminator: nn.Module, num_classes: int, channel_names: Sequence[str], slice_axis: int | None = None,
    ) -> None:  # fmt: skip
        if not train_cases:
            raise ValueError("train_cases: a GAN needs at least one labelled case")
        self.config, self.settings = config, settings
        self.num_classes = num_classes
        self.slice_axis = slice_axis
        self.score_parts = [str(name) for name in channel_names]
        labels = [_known(label) for _, label in train_cases]
        self.sampler = PatchSampler([image for image, _ in train_cases], labels, config.patch_size,
                                    settings.foreground_fraction, slice_axis=slice_axis)  # fmt: skip
        self.val_cases = [(image, _known(label)) for image, label in val_cases]
        self.discriminator = discriminator
        self.d_optimizer = torch.optim.Adam(
            discriminator.parameters(), lr=settings.discriminator_lr, betas=(0.5, 0.999)
        )
        self.last_losses: dict[str, float] = {}

    # -- training --------------------------------------------------------------------------------
    def batch_loss(self, model: nn.Module, generator: torch.Generator, device: torch.device, amp: bool) -> torch.Tensor:
        images, labels = self.sampler.sample(self.config.batch_size, generator)
        images, labels = self._flip(images, labels, generator)
        noise = torch.randn((labels.shape[0], self.settings.noise_channels, *labels.shape[2:]), generator=generator)
        inputs = generator_input(labels, self.num_classes, noise).to(device)
        real = images.to(device)
        one_hot = inputs[:, : self.num_classes]
        self._place(device)
        with autocast(device, amp):
            fake = model(inputs).float()
        d_loss = self._update_discriminator(one_hot, real, fake.detach(), device, amp)
        self.discriminator.requires_grad_(False)
        try:
            with autocast(device, amp):
                score = self.discriminator(torch.cat([one_hot, fake], dim=1)).float()
        finally:
            self.discriminator.requires_grad_(True)
        adversarial = F.mse_loss(score, torch.ones_like(score))
        l1 = (fake - real).abs().mean()
        self.last_losses = {"discriminator": float(d_loss), "adversarial": float(adversarial.detach()),
                            "l1": float(l1.detach())}  # fmt: skip
        return self.settings.adversarial_weight * adversarial + self.settings.l1_weight * l1

    def _place(self, device: torch.device) -> None:
        """The discriminator and its optimiser's moments on ``device`` (restored state arrives on the CPU)."""
        self.discriminator.train()
        if next(self.discriminator.parameters()).device == torch.device(device):
            return
        self.discriminator.to(device)
        for state in self.d_optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":  # Adam keeps its step counter on the CPU
                    state[key] = value.to(device)

    def _update_discriminator(self, one_hot, real, fake, device, amp) -> torch.Tensor:
        """One Adam step of the discriminator on real (target 1) and generated (target 0) pairs."""
        with autocast(device, amp):
            real_score = self.discriminator(torch.cat([one_hot, real], dim=1)).float()
            fake_score = self.discriminator(torch.cat([one_hot, fake], dim=1)).float()
        loss = 0.5 * (F.mse_loss(real_score, torch.ones_like(real_score)) +
                      F.mse_loss(fake_score, torch.zeros_like(fake_score)))  # fmt: skip
        self.d_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), 12.0)
        if torch.isfinite(norm):  # as the engine's loop: a non-finite gradient is skipped, not applied
            self.d_optimizer.step()
        return loss.detach()

    def _flip(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        if not self.settings.flips:
            return images, labels
        axes = [a + 2 for a in range(images.ndim - 2) if float(torch.rand((), generator=generator)) < 0.5]
        return (images.flip(axes), labels.flip(axes)) if axes else (images, labels)

    # -- validation ------------------------------------------------------------------------------
    @torch.inference_mode()
    def validate(self, model: nn.Module, device: torch.device) -> list[float]:
        if not self.val_cases:
            return []
        scores = []
        for index, (image, label) in enumerate(self.val_cases):
            noise = torch.Generator().manual_seed(self.config.seed * 1000 + index)
            generated = generate_image(model, label, self.config.patch_size, noise, device, self.config.amp,
                                       self.slice_axis)  # fmt: skip
            scores.append(channel_correlation(generated, image))
        return [round(float(v), 5) for v in torch.stack(scores).mean(0)]

    # -- state (StatefulTask) --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.d_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.d_optimizer.load_state_dict(state["optimizer"])


def channel_correlation(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per channel of two ``(C, *S)`` images (0 for a constant channel).

    Example:
        >>> x = torch.randn(2, 8, 8)
        >>> channel_correlation(3 * x + 1, x)
        tensor([1.0000, 1.0000])
    """
    a = generated.reshape(generated.shape[0], -1).double()
    b = real.reshape(real.shape[0], -1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denominator = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    return torch.where(
        denominator > 0, (a * b).sum(1) / denominator.clamp_min(1e-300), torch.zeros_like(denominator)
    ).float()


def _known(label: torch.Tensor) -> torch.Tensor:
    """The label map with ignored (negative) voxels as background: the generator has no class for "unknown"."""
    return label.clamp_min(0) if bool((label < 0).any()) else label
