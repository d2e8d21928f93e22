"""Semi-supervised segmentation: unlabelled scans used in the same training loop, by a mean teacher.

Method (``semi.method``):

* ``"mean_teacher"`` (default): Tarvainen & Valpola 2017, "Mean teachers are better role models"; for
  segmentation Perone & Cohen-Adad 2018 (weight-averaged consistency targets, MRI) and Yu et al. 2019 (UA-MT, 3D
  MRI). The teacher is an exponential moving average of the student's weights; each step adds unlabelled patches
  to the labelled ones, student and teacher see the same spatial augmentation of them but their own intensity
  augmentation and noise, and the student is pulled towards the teacher's softmax by a mean squared error. The
  EMA teacher gives steadier targets than the student's own predictions (Pi-model, temporal ensembling), it
  needs no labels and no threshold, the squared error on probabilities stays bounded where the teacher is wrong
  (cross-entropy to a wrong hard label does not), and on small medical datasets it is the consistency method
  that the later ones (UA-MT, cross pseudo-supervision) are measured against.
* ``"pseudo_label"``: the same teacher and views, but the consistency term is the cross-entropy of the student to
  the teacher's most likely class, on the voxels where the teacher's probability reaches ``semi.confidence``
  (confident pseudo-labels as in FixMatch, Sohn et al. 2020, here from the mean teacher). Sharper targets; it can
  confirm the teacher's own mistakes, hence the threshold.

The consistency weight rises as ``weight * exp(-5 (1 - t / rampup)^2)`` over the first ``rampup`` of training
(``t`` the loop's progress fraction, the one its learning-rate schedule follows, given to the task before each
batch: :class:`segmorph.engine.loop.ScheduledTask`), so that a teacher that knows nothing yet does not steer the
student.

The loop validates and saves the student (or its weight average with ``train.ema_decay``), as in supervised
training: the teacher's average lags the student while it still learns fast, and the checkpoint holds the weights
the loop validated. The teacher is training state: :meth:`SemiSupervisedTask.state_dict` saves it (with the task's
random state) in ``checkpoint_last.pt`` for resuming. The unlabelled patches and their perturbations
come from a generator of the task's own, so the labelled batches are those supervised training draws. A step costs
about twice a supervised one: the unlabelled patches' forward and backward passes and the teacher's forward pass.

Patches are ``(B, C, *P)`` images in the preprocessed intensity units; unlabelled scans are ``(C, *S)`` float32
volumes preprocessed with the run's plan; in slice mode (``slice_axis``) 2D slices of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from segmorph.configs import check, refuse_unknown_keys
from segmorph.engine import distributed as dist
from segmorph.engine.autocast import autocast
from segmorph.engine.loop import frozen_copy, update_average
from segmorph.errors import SegmorphError
from segmorph.segmentation.task import SegmentationTask
from segmorph.transforms import AugmentParams, PatchSampler, apply_intensity, draw_intensity_params

METHODS = ("mean_teacher", "pseudo_label")


@dataclass(frozen=True)
class SemiConfig:
    """Semi-supervised settings (the plan's ``semi`` section; used when unlabelled scans are given).

    Attributes:
        method: ``"mean_teacher"`` (softmax mean squared error to the teacher) or ``"pseudo_label"``
            (cross-entropy to the teacher's confident classes).
        unlabelled_share: Share of each step's patches that are unlabelled: ``train.batch_size`` labelled
            patches plus ``round(batch_size * share / (1 - share))`` unlabelled ones (at least one).
        weight: Weight of the consistency term after the ramp-up (the supervised Dice + CE has weight 1).
        rampup: Fraction of training over which the weight rises (sigmoid-shaped, from near 0); 0: full at once.
        teacher_decay: EMA decay of the teacher's weights per step; ramps up as
            ``min(teacher_decay, (1 + step) / (10 + step))``. Separate from ``train.ema_decay``.
        noise_std: Standard deviation of the Gaussian noise added to each view (clipped at two of them), in
            preprocessed intensity units (z-scores for MRI).
        confidence: ``pseudo_label``: the teacher probability a voxel needs to count.
    """

    method: str = "mean_teacher"
    unlabelled_share: float = 0.5
    weight: float = 1.0
    rampup: float = 0.3
    teacher_decay: float = 0.99
    noise_std: float = 0.1
    confidence: float = 0.8

    def __post_init__(self) -> None:
        check(self.method in METHODS, f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        check(0.0 < self.unlabelled_share < 1.0,
              f"unlabelled_share: expected a fraction in (0, 1), got {self.unlabelled_share}")  # fmt: skip
        check(self.weight >= 0, f"weight: expected at least 0, got {self.weight}")
        check(0.0 <= self.rampup <= 1.0, f"rampup: expected a fraction of training in [0, 1], got {self.rampup}")
        check(0.0 <= self.teacher_decay < 1.0, f"teacher_decay: expected 0 <= value < 1, got {self.teacher_decay}")
        check(self.noise_std >= 0, f"noise_std: expected at least 0, got {self.noise_std}")
        check(0.0 <= self.confidence < 1.0, f"confidence: expected a probability in [0, 1), got {self.confidence}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SemiConfig:
        refuse_unknown_keys(cls, values, "semi")
        return cls(**values)


def unlabelled_batch_size(batch_size: int, share: float) -> int:
    """Unlabelled patches beside ``batch_size`` labelled ones for a ``share`` of unlabelled patches per step.

    Example:
        >>> unlabelled_batch_size(2, 0.5), unlabelled_batch_size(4, 0.2), unlabelled_batch_size(2, 0.1)
        (2, 1, 1)
    """
    return max(1, round(batch_size * share / (1.0 - share)))


def consistency_weight(weight: float, progress: float, rampup: float) -> float:
    """``weight * exp(-5 (1 - progress / rampup)^2)`` during the ramp-up, ``weight`` after it (Laine & Aila 2017).

    Example:
        >>> round(consistency_weight(1.0, 0.0, 0.3), 4), consistency_weight(1.0, 0.3, 0.3)
        (0.0067, 1.0)
    """
    if rampup <= 0 or progress >= rampup:
        return weight
    return weight * math.exp(-5.0 * (1.0 - max(progress, 0.0) / rampup) ** 2)


class SemiSupervisedTask:
    """A :class:`SegmentationTask` plus unlabelled patches and a mean teacher (see the module docstring).

    Each step: the segmentation task's labelled batch and loss, then ``unlabelled_batch_size`` patches of the
    unlabelled scans, augmented once spatially; the student sees them with one intensity augmentation and noise,
    the teacher (weights averaged from the student's) with another, and the consistency term is added with its
    ramped weight. Validation is the segmentation task's.

    Args:
        task: The supervised task (labelled cases, validation cases, sampler, augmentation, loss).
        unlabelled: Unlabelled preprocessed scans ``(C, *S)``, 3D in slice mode.
        semi: Method, share, weight, ramp-up, teacher decay, noise.
    """

    def __init__(self, task: SegmentationTask, unlabelled: Sequence[torch.Tensor], semi: SemiConfig) -> None:
        if not unlabelled:
            raise SegmorphError("semi-supervised training needs at least one unlabelled scan")
        self.task = task
        self.semi = semi
        self.score_key = task.score_key
        self.score_parts = task.score_parts
        config = task.config
        empty = [torch.zeros((1,) * image.ndim, dtype=torch.int64).expand(1, *image.shape[1:]) for image in unlabelled]
        self.sampler = PatchSampler(list(unlabelled), empty, config.patch_size, 0.0, slice_axis=task.slice_axis)
        self.batch_size = unlabelled_batch_size(config.batch_size, semi.unlabelled_share)
        # A generator of its own: the labelled patches are those the supervised task alone would draw.
        self.generator = torch.Generator().manual_seed(config.seed + 7919 + 1000 * dist.rank())
        self.teacher: nn.Module | None = None
        self.restored: dict | None = None  # teacher weights from a checkpoint, until the student is known
        self.step = 0  # steps done and fraction of training done, set by the loop (ScheduledTask)
        self.progress = 0.0
        self.last_weight = 0.0

    def at_step(self, step: int, progress: float) -> None:
        """The loop's step count and progress fraction before this step's batch (the ramp-up's clock)."""
        self.step, self.progress = step, progress

    # -- training ------------------------------------------------------------------------------
    def batch_loss(self, model: nn.Module, generator: torch.Generator, device: torch.device, amp: bool) -> torch.Tensor:
        student = getattr(model, "module", model)  # the network itself under DistributedDataParallel
        teacher = self._updated_teacher(student)
        supervised = self.task.batch_loss(model, generator, device, amp)
        patches, _ = self.sampler.sample(self.batch_size, self.generator)
        student_view, teacher_view = self.views(patches.to(device), self.generator)
        with autocast(device, amp):
            outputs = student(student_view)
            with torch.no_grad():
                targets = teacher(teacher_view)
        logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        self.last_weight = consistency_weight(self.semi.weight, self.progress, self.semi.rampup)
        self.step += 1  # steps done once this one is (the loop tells it again before the next)
        return supervised + self.last_weight * self.consistency(logits, targets)

    def views(self, patches: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Student and teacher views of ``(B, C, *P)`` patches: one spatial augmentation for both, then an
        intensity augmentation and clipped Gaussian noise of each one's own."""
        augmenter = self.task.augmenter
        params = augmenter.draw(patches.shape[0], patches.shape[1], tuple(patches.shape[2:]), generator)
        warped, _ = augmenter.apply(patches, None, AugmentParams(params.spatial, None))
        student = self._perturbed(warped, params.intensity, generator)
        other = None
        if params.intensity is not None:
            other = draw_intensity_params(augmenter.config.intensity, *warped.shape[:2], warped.shape[2:], generator)
        return student, self._perturbed(warped, other, generator)

    def _perturbed(self, x: torch.Tensor, intensity, generator: torch.Generator) -> torch.Tensor:
        if intensity is not None:
            x = apply_intensity(x, intensity)
        if self.semi.noise_std > 0:
            noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
            x = x + (noise * self.semi.noise_std).clamp(-2 * self.semi.noise_std, 2 * self.semi.noise_std)
        return x

    def consistency(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The consistency term of student logits against teacher logits, both ``(B, K, *P)``."""
        logits, teacher_logits = logits.float(), teacher_logits.float()
        target = torch.softmax(teacher_logits, dim=1)
        if self.semi.method == "mean_teacher":
            return F.mse_loss(torch.softmax(logits, dim=1), target)
        confidence, classes = target.max(dim=1)
        per_voxel = F.cross_entropy(logits, classes, reduction="none")
        return (per_voxel * (confidence >= self.semi.confidence)).mean()

    def _updated_teacher(self, student: nn.Module) -> nn.Module:
        """The teacher: a frozen copy of the student at the first step (or the restored one), then moved towards
        the student's weights after each optimiser step."""
        if self.teacher is None:
            self.teacher = frozen_copy(student)
            if self.restored is not None:
                self.teacher.load_state_dict(self.restored)
                self.restored = None
        if self.step > 0:
            decay = min(self.semi.teacher_decay, (1 + self.step) / (10 + self.step))
            update_average(self.teacher, student, decay)
        self.teacher.eval()
        return self.teacher

    def validate(self, model: nn.Module, device: torch.device) -> list[float]:
        return self.task.validate(model, device)

    # -- state (StatefulTask) ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The teacher's weights, the steps it has followed and the state of this task's generator."""
        state: dict = {"step": self.step, "generator": self.generator.get_state()}
        weights = self.teacher.state_dict() if self.teacher is not None else self.restored
        if weights is not None:
            state["teacher"] = {name: value.detach().clone() for name, value in weights.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        teacher = state.get("teacher")
        if teacher is None:
            return
        if self.teacher is None:
            self.restored = dict(teacher)
        else:
            self.teacher.load_state_dict(teacher)
