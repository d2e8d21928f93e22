"""Learned registration: a VoxelMorph-style network predicting a stationary velocity field.

The network (a U-Net on the moving and fixed images stacked as two channels) outputs a velocity
field at half resolution, in voxels of that coarse grid; it is integrated by scaling and squaring
and upsampled to a displacement. Training is unsupervised (image similarity + diffusion smoothness)
with an optional Dice term on warped one-hot labels (training only). With a segmentation prior the
network also sees both scans' label probabilities; a label-guided model (``label_guidance``) takes the
moving scan's own labels in place of its probabilities where they are given. Inference runs after a
built-in pre-alignment (for models with a prior: the centres of the prior's structures brought
together): by default two passes of the network, the second registering the fixed image to the
moving one warped by the first (a cascade, composed), or one pass optionally refined by a few
instance-optimisation steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segmorph.checkpoint import load_checkpoint, model_from_checkpoint
from segmorph.configs import refuse_unknown_keys
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.metrics import dice_score
from segmorph.nn import UNet
from segmorph.precision import autocast
from segmorph.registration import spatial
from segmorph.registration.classical import (
    ClassicalConfig,
    Level,
    displacement_transform,
    initial_matrix,
    optimise_velocity,
    register_classical,
    velocity_transform,
)
from segmorph.registration.pairs import normalise_intensity
from segmorph.registration.prior import content_box, foreground_centre
from segmorph.registration.regularize import diffusion
from segmorph.registration.similarity import get_similarity
from segmorph.registration.transform import Transform

PREALIGNMENTS = ("auto", "prior", "affine", "com", "none")
# A quick affine for pre-alignment: the two coarse pyramid levels only.
PREALIGN_CONFIG = ClassicalConfig(
    shrink=(4, 2), rigid_iterations=(30, 0), affine_iterations=(30, 10), deformable_iterations=(0, 0)
)


@dataclass(frozen=True)
class LearnedConfig:
    """Network and loss settings of learned registration (stored in the checkpoint).

    Attributes:
        features: U-Net channels per level.
        train_shape: Grid the training pairs are padded or cropped to (centred), voxels.
        similarity: Image term (``"ncc"``, ``"mse"``, ``"mi"``, ``"mind"``).
        ncc_window: Local NCC window, voxels.
        smoothness: Weight of the diffusion regulariser on the velocity (coarse voxels).
        dice_weight: Weight of ``1 - Dice`` between warped moving and fixed labels (0: unsupervised).
            2 rather than 1: hippocampus, 20 minutes on a 2-core CPU, monitor-pair Dice 0.852 -> 0.861,
            held-out benchmark pairs 0.783 -> 0.800, still no folding.
        integration_steps: Scaling-and-squaring steps.
        prealign: What runs before the network at inference: ``"prior"`` (a translation matching the
            centres of the segmentation prior's foreground probabilities), ``"affine"`` (a quick
            classical affine), ``"com"`` (intensity centres of mass), ``"none"`` (the pair as it comes,
            as training pairs are used) or ``"auto"`` (the default: ``"prior"`` for a model with a
            prior, else ``"none"``). Training pairs are not pre-aligned, so the network copes with the
            offsets it saw (centred hippocampus crops: structure centres up to ~3 mm apart) and fails
            beyond; matching the prior's centres first brings the rest within that range. Hippocampus
            benchmark pairs: ``"none"`` 0.812, ``"prior"`` 0.829 (one pair 0.42 -> 0.85: its structures
            5.7 mm apart).
        flip: Random flips of both images as augmentation.
        prior_classes: Classes (with background) of the segmentation prior whose foreground
            probabilities the network also sees (0: images only). See :mod:`segmorph.registration.prior`.
        input_shrink: 2: the network works on 2x2x2-averaged inputs (8x cheaper; it predicts a
            half-resolution velocity either way); 1: full-resolution inputs.
        passes: Network passes at inference and on monitor pairs. Each pass after the first sees the
            moving image (and its prior) warped by the passes so far; the transforms are composed
            (see :func:`predict_displacement`). Hippocampus (20-minute model, benchmark pairs): one pass
            0.800, two 0.813, three 0.814 (~0.03 s more a pass on a 2-core CPU).
        pass_scale: Weight of the velocity of each pass after the first: the network was trained on
            unaligned pairs and over-corrects nearly aligned ones. Chosen on 30 monitor-case pairs:
            one pass 0.842; two at scale 0.25 / 0.5 / 0.75 / 1: 0.849 / 0.850 / 0.848 / 0.846.
            Training on such nearly aligned pairs too (half the batches pre-warped) did not do better.
        label_guidance: Share of training pairs (0..1) whose moving channels of the prior are the
            moving scan's one-hot labels instead of the prior's probabilities. A model trained so
            takes the moving labels at inference where they are given (``register(...,
            moving_labels=...)``, ``segmorph register --moving-labels``, atlases): they are what gets
            warped, so the network aligns exactly them to the fixed scan's prior. Used only by runs
            with a prior and labels of its classes (training sets it to 0 otherwise). Hippocampus
            benchmark pairs, prior pre-alignment: 0 -> 0.5 gave 0.829 -> 0.830 from the images
            alone and 0.838 with the moving labels.
    """

    features: tuple[int, ...] = (16, 32, 32, 64)
    train_shape: tuple[int, ...] = (48, 64, 48)
    similarity: str = "ncc"
    ncc_window: int = 9
    smoothness: float = 1.0
    dice_weight: float = 2.0
    integration_steps: int = 7
    prealign: str = "auto"
    flip: bool = True
    prior_classes: int = 0
    input_shrink: int = 2
    passes: int = 2
    pass_scale: float = 0.5
    label_guidance: float = 0.5

    def __post_init__(self) -> None:
        get_similarity(self.similarity)
        if not 0.0 <= self.label_guidance <= 1.0:
            raise ValueError(f"label_guidance: expected a share in 0..1, got {self.label_guidance}")
        if self.input_shrink not in (1, 2):
            raise ValueError(f"input_shrink: expected 1 or 2, got {self.input_shrink}")
        if self.passes < 1:
            raise ValueError(f"passes: expected at least 1, got {self.passes}")
        if self.prealign not in PREALIGNMENTS:
            raise ValueError(f"prealign: expected one of {PREALIGNMENTS}, got {self.prealign!r}")
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))
        object.__setattr__(self, "train_shape", tuple(int(s) for s in self.train_shape))

    @classmethod
    def from_dict(cls, values: dict) -> LearnedConfig:
        refuse_unknown_keys(cls, values, "registration config")
        return cls(**{"label_guidance": 0.0, **values})  # checkpoints from before label guidance: unguided


def build_registration_network(ndim: int, config: LearnedConfig) -> UNet:
    """U-Net with two input channels (moving, fixed) and ``ndim`` outputs at half resolution.

    The output layer starts near zero (the identity transform), as in VoxelMorph.
    """
    in_channels = 2 + 2 * max(config.prior_classes - 1, 0)
    output_level = 1 if config.input_shrink == 1 else 0
    network = UNet(ndim, in_channels, ndim, config.features, output_level=output_level)
    head = network.heads[output_level]
    nn.init.normal_(head.weight, std=1e-5)
    nn.init.zeros_(head.bias)
    return network


def displacement_from_velocity(velocity: torch.Tensor, shape: Sequence[int], steps: int) -> torch.Tensor:
    """Integrate a coarse velocity ``(B, n, *C)`` (coarse voxels) and upsample to ``(B, n, *shape)`` voxels."""
    return spatial.resize_field(spatial.integrate(velocity, steps), shape)


def _pad_to_multiple(data: torch.Tensor, divisor: int) -> tuple[torch.Tensor, list[int]]:
    """Zero-pad ``(B, C, *S)`` at the far end of each axis to multiples of ``divisor``."""
    extra = [(-s) % divisor for s in data.shape[2:]]
    pads: list[int] = []
    for e in reversed(extra):
        pads += [0, e]
    return F.pad(data, pads), extra


def network_input(fixed: torch.Tensor, moved: torch.Tensor, fixed_prior=None, moved_prior=None) -> torch.Tensor:
    """Channels in the network's order: moving, fixed, then moving and fixed foreground probabilities."""
    parts = [moved, fixed] + ([moved_prior, fixed_prior] if fixed_prior is not None else [])
    return torch.cat(parts, dim=1)


def coarse_velocity(network: UNet, inputs: torch.Tensor, input_shrink: int, amp: bool) -> torch.Tensor:
    """The network's velocity at half resolution ``(B, n, *C)``, in voxels of that coarse grid.

    ``inputs`` ``(B, C, *S)`` must have sizes divisible by ``network.divisor * input_shrink``. With
    ``input_shrink = 2`` the network sees 2x2x2-averaged inputs and predicts at its own resolution;
    with 1 it sees full-resolution inputs and stops decoding one level early.
    """
    with autocast(inputs.device, amp):
        return network(_shrunk(inputs, input_shrink)).float()


def _shrunk(inputs: torch.Tensor, input_shrink: int) -> torch.Tensor:
    """The inputs the network sees: 2x2(x2)-averaged when ``input_shrink`` is 2."""
    if input_shrink == 1:
        return inputs
    return (F.avg_pool3d if inputs.ndim == 5 else F.avg_pool2d)(inputs, 2)


def predict_velocity(network: UNet, inputs: torch.Tensor, input_shrink: int = 2, amp: bool = False) -> torch.Tensor:
    """Velocity on the fixed grid ``(B, n, *S)`` in fixed voxels from :func:`network_input` ``(B, C, *S)``.

    Inputs of any size are zero-padded to the network's divisor; the coarse output is resized to the
    padded full grid (vectors rescaled) and cropped back.
    """
    shape = inputs.shape[2:]
    stacked, _ = _pad_to_multiple(inputs, network.divisor * input_shrink)
    coarse = coarse_velocity(network, stacked, input_shrink, amp)
    full = spatial.resize_field(coarse, stacked.shape[2:])
    return _crop(full, shape)


def predict_displacement(network: UNet, inputs: torch.Tensor, config: LearnedConfig, amp: bool = False,
                         weights: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Displacement on the fixed grid ``(B, n, *S)`` in fixed voxels after ``config.passes`` passes.

    Pass 1 is :func:`predict_velocity`'s, integrated on the network's coarse grid. Each further pass
    sees the moving channels of the network's (shrunk) inputs warped by the displacement so far
    (:func:`warp_moving`), and its transform, velocity scaled by ``config.pass_scale``, is applied
    first: ``u = u_new + u_so_far(x + u_new)``, composed on the coarse grid and resized once at the
    end. The result is a composition of diffeomorphisms, not the exponential of one velocity.
    ``weights`` ``(*S)`` multiply every pass's velocity (resampled to the coarse grid) before it is
    integrated, e.g. a taper to 0 at the faces: weighting velocities keeps each pass diffeomorphic,
    weighting the composed displacement would not.
    """
    shape = inputs.shape[2:]
    stacked, _ = _pad_to_multiple(inputs, network.divisor * config.input_shrink)
    shrunk = _shrunk(stacked, config.input_shrink)
    velocity = coarse_velocity(network, shrunk, 1, amp)
    coarse_weights = 1.0 if weights is None else _coarse_weights(weights, stacked.shape[2:], velocity.shape[2:])
    displacement = spatial.integrate(velocity * coarse_weights, config.integration_steps)
    for _ in range(config.passes - 1):
        moved = warp_moving(shrunk, spatial.resize_field(displacement, shrunk.shape[2:]))
        velocity = config.pass_scale * coarse_velocity(network, moved, 1, amp) * coarse_weights
        displacement = spatial.compose(displacement, spatial.integrate(velocity, config.integration_steps))
    full = spatial.resize_field(displacement, stacked.shape[2:])
    return _crop(full, shape)


def _crop(field: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(B, C, *P)`` cut back to the unpadded ``shape`` (padding sits at the far end of each axis)."""
    return field[(slice(None), slice(None), *[slice(0, s) for s in shape])]


def _coarse_weights(weights: torch.Tensor, padded: Sequence[int], coarse: Sequence[int]) -> torch.Tensor:
    """``weights`` ``(*S)`` zero-padded like the inputs to ``padded`` and resized (corner-aligned) to ``coarse``."""
    pads: list[int] = []
    for size, target in zip(reversed(weights.shape), reversed(padded)):
        pads += [0, target - size]
    padded_weights = F.pad(weights.to(torch.float32)[None, None], pads)
    return spatial.resize_image(padded_weights, coarse)


def warp_moving(inputs: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """:func:`network_input` ``(B, C, *S)`` with the moving image and its prior warped by ``displacement`` (voxels)."""
    moving = [0, *range(2, 2 + (inputs.shape[1] - 2) // 2)]
    warped = inputs.clone()
    warped[:, moving] = spatial.warp(inputs[:, moving], displacement, padding="zeros")
    return warped


# -- training ------------------------------------------------------------------------------------


@dataclass
class PairData:
    """Training cases on one grid: normalised images ``(N, 1, *S)``, one-hot labels ``(N, K, *S)`` and
    the prior's foreground probabilities ``(N, K' - 1, *S)``."""

    images: torch.Tensor
    onehot: torch.Tensor | None
    prior: torch.Tensor | None = None

    @classmethod
    def from_cases(cls, images: Sequence[Image], labels: Sequence[torch.Tensor] | None, num_classes: int,
                   prior=None):  # fmt: skip
        """Stack the first channel of ``images`` (one grid), their labels and the prior's probabilities."""
        stacked = torch.stack([normalise_intensity(i.data[:1].float()) for i in images])
        onehot = None
        if labels is not None:
            onehot = torch.stack([F.one_hot(lab[0].long(), num_classes).movedim(-1, 0).float() for lab in labels])
        probabilities = None
        if prior is not None:
            probabilities = torch.cat([prior.probabilities(i.data[None, :1].float(), i.spacing)[:, 1:] for i in images])
        return cls(stacked, onehot, probabilities)

    def inputs(self, fixed: torch.Tensor, moving: torch.Tensor, guided: torch.Tensor | None = None) -> torch.Tensor:
        """Network input of pairs given as index tensors; where ``guided`` (bool ``(B,)``) is true, the
        moving scan's foreground one-hot labels stand in for its prior probabilities."""
        if self.prior is None:
            return network_input(self.images[fixed], self.images[moving])
        moving_prior = self.prior[moving]
        if guided is not None and bool(guided.any()):
            moving_prior = torch.where(guided.view(-1, *[1] * (moving_prior.ndim - 1)), self.onehot[moving, 1:], moving_prior)
        return network_input(self.images[fixed], self.images[moving], self.prior[fixed], moving_prior)

    def can_guide(self) -> bool:
        """Whether labels can stand in for the prior: both present, with the same classes."""
        return self.prior is not None and self.onehot is not None and self.onehot.shape[1] - 1 == self.prior.shape[1]


class RegistrationTask:
    """Random pairs, similarity + smoothness (+ Dice) loss; validation Dice of warped labels."""

    score_key = "dice"

    def __init__(self, train: PairData, val: PairData, val_pairs: Sequence[tuple[int, int]], config: LearnedConfig,
                 batch_size: int):  # fmt: skip
        self.train, self.val, self.val_pairs = train, val, list(val_pairs)
        self.config = config
        self.batch_size = batch_size
        num_classes = train.onehot.shape[1] if train.onehot is not None else 0
        self.score_parts = [f"dice_{k}" for k in range(1, num_classes)] if num_classes else ["ncc"]
        similarity = get_similarity(config.similarity)
        self.similarity = (lambda f, w: similarity(f, w, window=config.ncc_window)) if config.similarity == "ncc" else similarity
        if config.label_guidance > 0 and not (train.can_guide() and val.can_guide()):
            raise ValueError("label_guidance: needs labels and a segmentation prior with the same classes")

    def _draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        count = self.train.images.shape[0]
        fixed = torch.randint(count, (self.batch_size,), generator=generator)
        moving = (fixed + torch.randint(1, count, (self.batch_size,), generator=generator)) % count
        return fixed, moving

    def batch_loss(self, model: nn.Module, generator: torch.Generator, device: torch.device, amp: bool) -> torch.Tensor:
        fixed_index, moving_index = self._draw(generator)
        guided = None
        if self.config.label_guidance > 0:
            guided = torch.rand(self.batch_size, generator=generator) < self.config.label_guidance
        images = self.train.inputs(fixed_index, moving_index, guided)
        labels = None
        if self.train.onehot is not None and self.config.dice_weight > 0:
            labels = torch.cat([self.train.onehot[moving_index], self.train.onehot[fixed_index]], dim=1)
        images, labels = self._flip(images, labels, generator)
        images = images.to(device)
        velocity = coarse_velocity(model, images, self.config.input_shrink, amp)
        displacement = displacement_from_velocity(velocity, images.shape[2:], self.config.integration_steps)
        moved = spatial.warp(images[:, :1], displacement)
        loss = self.similarity(images[:, 1:2], moved) + self.config.smoothness * diffusion(velocity)
        if labels is not None:
            labels = labels.to(device)
            half = labels.shape[1] // 2
            warped = spatial.warp(labels[:, :half], displacement)
            loss = loss + self.config.dice_weight * (1 - soft_dice(warped, labels[:, half:]))
        return loss

    def _flip(self, images, labels, generator):
        if not self.config.flip:
            return images, labels
        axes = [a + 2 for a in range(images.ndim - 2) if torch.rand((), generator=generator) < 0.5]
        if not axes:
            return images, labels
        return images.flip(axes), None if labels is None else labels.flip(axes)

    @torch.inference_mode()
    def validate(self, model: nn.Module, device: torch.device) -> list[float]:
        if not self.val_pairs:
            return []
        scores = []
        for fixed_index, moving_index in self.val_pairs:
            moving = self.val.images[moving_index : moving_index + 1]
            guided = torch.tensor([self.config.label_guidance > 0])  # scored as it is used where labels are given
            inputs = self.val.inputs(torch.tensor([fixed_index]), torch.tensor([moving_index]), guided)
            displacement = predict_displacement(model, inputs.to(device), self.config)
            fixed = inputs[:, 1:2]
            if self.val.onehot is None:
                moved = spatial.warp(moving.to(device), displacement)
                scores.append([-float(self.similarity(fixed.to(device), moved))])
                continue
            warped = spatial.warp(self.val.onehot[moving_index : moving_index + 1].to(device), displacement)
            predicted = warped.argmax(1)[0].cpu().numpy()
            reference = self.val.onehot[fixed_index].argmax(0).numpy()
            scores.append([dice_score(predicted == k, reference == k) for k in range(1, warped.shape[1])])
        return [round(float(v), 5) for v in np.mean(scores, axis=0)]


def soft_dice(warped: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean soft Dice over foreground channels (1..K-1) of one-hot ``(B, K, *S)`` maps."""
    axes = tuple(range(2, warped.ndim))
    intersection = (warped[:, 1:] * reference[:, 1:]).sum(axes)
    total = warped[:, 1:].sum(axes) + reference[:, 1:].sum(axes)
    return ((2 * intersection + 1e-5) / (total + 1e-5)).mean()


# -- inference -----------------------------------------------------------------------------------


@dataclass
class PriorMaps:
    """The segmentation prior's class probabilities ``(K, *S)`` of a fixed and a moving scan, each on its grid."""

    fixed: torch.Tensor
    moving: torch.Tensor


class LearnedRegistration:
    """A trained registration network, loaded once and applied to many pairs."""

    def __init__(self, network: UNet, config: LearnedConfig, device: str | torch.device = "cpu", prior=None) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.config = config
        self.prior = prior
        if config.prior_classes and prior is None:
            raise ValueError("prior: this model needs its segmentation prior")

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> LearnedRegistration:
        """Load ``checkpoint_best.pt`` (weights only, JSON config) from a ``train-registration`` run."""
        run_dir = Path(run_dir)
        path = run_dir / "checkpoint_best.pt"
        if not path.exists():
            raise SegmorphError("no checkpoint_best.pt (expected a segmorph train-registration run)", run_dir)
        state, stored, _ = load_checkpoint(path)
        if stored.get("kind") != "registration":
            raise SegmorphError("checkpoint is not a registration model", path)
        with model_from_checkpoint(path):
            config = LearnedConfig.from_dict(stored["registration"])
            network = build_registration_network(int(stored["network"]["ndim"]), config)
            network.load_state_dict(state)
        prior = None
        if config.prior_classes:
            from segmorph.registration.prior import PRIOR_FOLDER, SegmentationPrior

            prior = SegmentationPrior(run_dir / PRIOR_FOLDER, device)
        return cls(network, config, device, prior)

    def prealign(self, fixed: Image, moving: Image, kind: str | None = None,
                 maps: PriorMaps | None = None) -> np.ndarray:  # fmt: skip
        """World matrix fixed → moving from the pre-alignment ``kind`` (default: the model's).

        ``maps``: the prior's probabilities of both scans, when already computed (``"prior"`` uses them).
        """
        kind = kind or self.config.prealign
        if kind not in PREALIGNMENTS:
            raise ValueError(f"prealign: expected one of {PREALIGNMENTS}, got {kind!r}")
        if kind == "auto":
            kind = "prior" if self.prior is not None else "none"
        if kind == "prior":
            return self._prior_translation(fixed, moving, maps)
        if kind == "affine":
            return register_classical(fixed, moving, "affine", PREALIGN_CONFIG, device=self.device).matrix()
        return initial_matrix(fixed, moving, kind)

    def guided_by(self, moving_labels: Image | None) -> bool:
        """Whether :meth:`register` lets these moving labels stand in for the prior of the moving scan:
        the model was trained so (``label_guidance``) and the label values are classes of its prior."""
        if moving_labels is None or self.prior is None or self.config.label_guidance <= 0:
            return False
        low, high = torch.aminmax(moving_labels.data)
        return bool(low >= 0 and high < self.prior.num_classes)

    def prior_maps(self, fixed: Image, moving: Image) -> PriorMaps | None:
        """The prior's class probabilities of both scans, each on its own grid (None without a prior)."""
        if self.prior is None:
            return None
        return PriorMaps(self.prior.image_probabilities(fixed), self.prior.image_probabilities(moving))

    def _prior_translation(self, fixed: Image, moving: Image, maps: PriorMaps | None = None) -> np.ndarray:
        """World translation fixed → moving taking the prior's fixed foreground centre to the moving one
        (the identity where the prior finds no foreground in either scan)."""
        maps = maps or self.prior_maps(fixed, moving)
        if maps is None:
            raise SegmorphError("pre-alignment 'prior' needs a model trained with a segmentation prior")
        matrix = np.eye(fixed.ndim + 1)
        centres = foreground_centre(maps.fixed, fixed.affine), foreground_centre(maps.moving, moving.affine)
        if centres[0] is None or centres[1] is None:
            return matrix
        matrix[:-1, -1] = centres[1] - centres[0]
        if _same_grid(fixed, moving):  # whole voxels: resampling becomes a shift; the network does the rest
            linear = fixed.affine.matrix[:-1, :-1]
            matrix[:-1, -1] = linear @ np.round(np.linalg.solve(linear, matrix[:-1, -1]))
        return matrix

    @torch.inference_mode()
    def _network_field(self, fixed: Image, moved: Image, passes: int = 1, fixed_prior: torch.Tensor | None = None,
                       moved_prior: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """The network's field on the fixed grid ``(1, n, *S)`` in fixed voxels: one pass's velocity
        (``passes = 1``) or the displacement of ``passes`` composed passes (:func:`predict_displacement`).
        ``fixed_prior`` and ``moved_prior`` ``(K - 1, *S)``: foreground probabilities (or one-hot
        labels) of the fixed and moved scans on the fixed grid, for a model with a prior (computed when
        not given).
        """
        fixed_data = normalise_intensity(fixed.data[:1].float())[None]
        moved_data = normalise_intensity(moved.data[:1].float())[None]
        priors: list[torch.Tensor | None] = [None, None]
        if self.prior is not None:
            if fixed_prior is None or moved_prior is None:
                maps = self.prior_maps(fixed, moved)
                fixed_prior, moved_prior = maps.fixed[1:], maps.moving[1:]
            priors = [fixed_prior[None], moved_prior[None]]
        inputs = network_input(fixed_data, moved_data, *priors)
        content = content_box(torch.stack([fixed.data[:1], moved.data[:1]]), 0)
        window = network_window(content, self.config.train_shape)
        in_image, in_window = _overlap(window, fixed.spatial_shape)
        framed = torch.zeros(*inputs.shape[:2], *[stop - start for start, stop in window])
        framed[(slice(None), slice(None), *in_window)] = inputs[(slice(None), slice(None), *in_image)]
        framed, taper = framed.to(self.device), _taper(content, window, TAPER_VOXELS)
        if passes == 1:
            field = predict_velocity(self.network, framed, self.config.input_shrink, amp=True).cpu() * taper
        else:
            config = replace(self.config, passes=passes)
            field = predict_displacement(self.network, framed, config, True, taper.to(self.device)).cpu()
        full = torch.zeros(1, fixed.ndim, *fixed.spatial_shape)
        full[(slice(None), slice(None), *in_image)] = field[(slice(None), slice(None), *in_window)]
        return full

    def register(self, fixed: Image, moving: Image, refine: int = 0, matrix: np.ndarray | None = None,
                 prealign: str | None = None, passes: int | None = None,
                 moving_labels: Image | None = None) -> Transform:  # fmt: skip
        """Fixed → moving transform ``[field, prealignment]``.

        With one pass (or ``refine``) the field is ``exp(v)`` and keeps its velocity (exact inverse by
        negation); with several it is the composed displacement of the passes (inverted by fixed-point
        iteration). The prior, when the model has one, runs once per scan: its probabilities serve the
        pre-alignment, the network (the moving scan's resampled with the moving image) and the polish.

        Args:
            fixed: Reference image; its grid carries the field.
            moving: Image to align.
            refine: Instance-optimisation steps polishing one pass's velocity (0: none; the network
                then runs one pass, the polish taking the place of the others).
            matrix: A pre-alignment to use instead of computing one.
            prealign: ``"prior"``, ``"affine"``, ``"com"``, ``"none"`` or ``"auto"`` instead of the
                model's setting (see :class:`LearnedConfig`).
            passes: Network passes instead of the model's ``passes``.
            moving_labels: The moving scan's label map (its grid): a model trained with
                ``label_guidance`` sees them in place of the prior's probabilities of the moving scan
                (see :meth:`guided_by`); other models ignore them.
        """
        if fixed.ndim != self.network.config["ndim"]:
            raise SegmorphError(f"the model registers {self.network.config['ndim']}D images, got {fixed.ndim}D")
        maps = self.prior_maps(fixed, moving)
        matrix = self.prealign(fixed, moving, prealign, maps) if matrix is None else matrix
        shift = _voxel_shift(matrix, fixed, moving)

        def onto_fixed(image: Image) -> Image:
            if shift is not None:
                return _shifted(image, shift, fixed.affine)
            return Transform.from_matrix(matrix).warp(image, fixed.affine, fixed.spatial_shape)

        fixed_prior = moved_prior = None
        if maps is None:
            moved = onto_fixed(moving)
        else:  # the moving image and its foreground probabilities resampled together
            both = onto_fixed(Image(torch.cat([moving.data[:1].float(), maps.moving[1:]]), moving.affine)).data
            moved, fixed_prior, moved_prior = Image(both[:1], fixed.affine), maps.fixed[1:], both[1:]
        if self.guided_by(moving_labels):
            if not _same_grid(moving, moving_labels):
                raise ValueError("moving_labels: not on the moving image's grid")
            moved_labels = onto_fixed(moving_labels).data[0].long()
            moved_prior = F.one_hot(moved_labels, self.prior.num_classes).movedim(-1, 0)[1:].float()
        passes = self.passes_used(refine, passes)
        field = self._network_field(fixed, moved, passes, fixed_prior, moved_prior)
        if passes > 1:
            return displacement_transform(field, fixed.affine, matrix)
        if refine > 0:
            field = self._refine(fixed, moving, matrix, field, refine, maps).cpu()
        return velocity_transform(field, fixed.affine, matrix, self.config.integration_steps)

    def passes_used(self, refine: int = 0, passes: int | None = None) -> int:
        """Network passes :meth:`register` runs: one with ``refine``, else ``passes`` or the model's."""
        passes = 1 if refine > 0 else self.config.passes if passes is None else passes
        if passes < 1:
            raise ValueError(f"passes: expected at least 1, got {passes}")
        return passes

    def _refine(self, fixed: Image, moving: Image, matrix: np.ndarray, velocity: torch.Tensor, steps: int,
                maps: PriorMaps | None = None):  # fmt: skip
        config = replace(
            ClassicalConfig(), similarity=self.config.similarity, ncc_window=self.config.ncc_window, shrink=(1,),
            rigid_iterations=(0,), affine_iterations=(0,), deformable_iterations=(steps,), velocity_shrink=2,
            smoothness=self.config.smoothness, integration_steps=self.config.integration_steps, deformable_lr=0.1,
        )  # fmt: skip
        fixed_data = normalise_intensity(fixed.data[:1].float())[None]
        moving_data = normalise_intensity(moving.data[:1].float())[None]
        velocity = velocity.to(self.device)
        if self.prior is None:
            level = Level(fixed_data.to(self.device), moving_data.to(self.device), fixed.affine, moving.affine)
            return optimise_velocity([level], config, matrix, velocity=velocity)
        # With a prior, the polish also matches the structures: image NCC plus MSE of the label probabilities.
        maps = maps or self.prior_maps(fixed, moving)
        fixed_prior, moving_prior = maps.fixed[None, 1:], maps.moving[None, 1:]
        level = Level(torch.cat([fixed_data, fixed_prior], 1).to(self.device),
                      torch.cat([moving_data, moving_prior], 1).to(self.device), fixed.affine, moving.affine)  # fmt: skip
        image_term = get_similarity("ncc")

        def similarity(f: torch.Tensor, w: torch.Tensor, mask=None) -> torch.Tensor:
            structures = ((f[:, 1:] - w[:, 1:]) ** 2).mean() * f.shape[1]
            return image_term(f[:, :1], w[:, :1], window=self.config.ncc_window) + structures

        return optimise_velocity([level], config, matrix, velocity=velocity, similarity=similarity)


def _same_grid(fixed: Image, moving: Image) -> bool:
    """Whether both lie on one grid (shape and geometry)."""
    return moving.spatial_shape == fixed.spatial_shape and moving.affine.allclose(fixed.affine)


def _voxel_shift(matrix: np.ndarray, fixed: Image, moving: Image) -> tuple[int, ...] | None:
    """Voxels ``s`` with ``moving(T(x_i)) = moving[i + s]`` when ``T`` is a translation by whole voxels
    between scans on one grid (then resampling is a shift), else None."""
    if not _same_grid(fixed, moving) or not np.allclose(matrix[:-1, :-1], np.eye(fixed.ndim), atol=1e-9):
        return None
    voxels = np.linalg.solve(fixed.affine.matrix[:-1, :-1], matrix[:-1, -1])
    if not np.allclose(voxels, np.round(voxels), atol=1e-6):
        return None
    return tuple(int(v) for v in np.round(voxels))


def _shifted(image: Image, shift: Sequence[int], affine: Affine) -> Image:
    """``image`` read ``shift`` voxels further along each axis (``out[i] = image[i + shift]``), zeros outside."""
    data = torch.zeros_like(image.data)
    target, source = [slice(None)], [slice(None)]
    for size, step in zip(image.spatial_shape, shift):
        step = max(-size, min(size, step))
        target.append(slice(max(-step, 0), size - max(step, 0)))
        source.append(slice(max(step, 0), size - max(-step, 0)))
    data[tuple(target)] = image.data[tuple(source)]
    return Image(data, affine, image.is_label)


TAPER_VOXELS = 8  # the field fades to 0 over at most this many voxels between the content and the window's faces


def network_window(content: Sequence[slice], train_shape: Sequence[int]) -> list[tuple[int, int]]:
    """Index window ``(start, stop)`` per axis that the network sees at inference, framed as in training.

    Training pairs are the cases centred on the ``train_shape`` grid, so the network sees its
    training grid's size (or the content's, where that is larger) centred on the non-zero content
    of the pair; the window may reach outside the image, which is zero there. Framed otherwise (a
    tight box, or a much larger zero-padded canvas) the network's output changes: instance
    normalisation and zero-padded convolutions see a different amount of background.
    """
    window = []
    for box, size in zip(content, train_shape):
        extent = max(size, box.stop - box.start)
        start = (box.start + box.stop) // 2 - extent // 2
        window.append((start, start + extent))
    return window


def _overlap(window: Sequence[tuple[int, int]], shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of ``window`` inside an image of ``shape``: as image indices, and as window indices."""
    in_image = tuple(slice(max(start, 0), min(stop, size)) for (start, stop), size in zip(window, shape))
    in_window = tuple(slice(s.start - start, s.stop - start) for s, (start, _) in zip(in_image, window))
    return in_image, in_window


def _taper(content: Sequence[slice], window: Sequence[tuple[int, int]], voxels: int) -> torch.Tensor:
    """Weights over the window: 1 on the content, a half cosine down to 0 towards each face.

    The ramp spans the background between the content and the face (at most ``voxels``); where the
    content reaches the face, the weight stays 1 up to it.
    """
    weights = torch.ones([stop - start for start, stop in window])
    for axis, (box, (start, stop)) in enumerate(zip(content, window)):
        ramp = torch.ones(stop - start)
        before, after = min(voxels, box.start - start), min(voxels, stop - box.stop)
        for width, at_start in ((before, True), (after, False)):
            if width > 0:
                edge = 0.5 - 0.5 * torch.cos(torch.pi * torch.arange(width) / width)
                if at_start:
                    ramp[:width] = edge
                else:
                    ramp[len(ramp) - width :] = edge.flip(0)
        view = [1] * len(window)
        view[axis] = stop - start
        weights = weights * ramp.view(view)
    return weights


def registration_checkpoint_config(config: LearnedConfig, labels: dict[int, str]) -> dict:
    """The JSON config stored beside the weights (``kind``, loss settings, label names)."""
    return {"kind": "registration", "registration": asdict(config), "labels": {str(k): v for k, v in labels.items()}}
