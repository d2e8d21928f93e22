"""Settings of learned registration (stored in the checkpoint) and the pre-alignments it offers."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from segmorph.configs import refuse_unknown_keys
from segmorph.registration.classical import (
    ClassicalConfig,
)
from segmorph.registration.similarity import get_similarity

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
            probabilities the network also sees (0: images only). See :mod:`segmorph.registration.learned.prior`.
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


def registration_checkpoint_config(config: LearnedConfig, labels: dict[int, str]) -> dict:
    """The JSON config stored beside the weights (``kind``, loss settings, label names)."""
    return {"kind": "registration", "registration": asdict(config), "labels": {str(k): v for k, v in labels.items()}}
