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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segmorph.engine.checkpoints import load_checkpoint, model_from_checkpoint
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.nn import UNet
from segmorph.registration.classical import (
    ClassicalConfig,
    Level,
    displacement_transform,
    initial_matrix,
    optimise_velocity,
    register_classical,
    velocity_transform,
)
from segmorph.registration.learned.config import (
    PREALIGN_CONFIG,
    PREALIGNMENTS,
    LearnedConfig,
    check_passes,
    check_refine,
)
from segmorph.registration.learned.network import (
    build_registration_network,
    network_input,
    predict_displacement,
    predict_velocity,
)
from segmorph.registration.learned.prior import content_box, foreground_centre
from segmorph.registration.pairs import normalise_intensity
from segmorph.registration.similarity import get_similarity
from segmorph.registration.transform import Transform


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
        self.source: Path | None = None  # the checkpoint it was loaded from, named in its errors
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
            from segmorph.registration.learned.prior import PRIOR_FOLDER, SegmentationPrior

            prior = SegmentationPrior(run_dir / PRIOR_FOLDER, device)
        model = cls(network, config, device, prior)
        model.source = path
        return model

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
        if fixed.same_grid(moving):  # whole voxels: resampling becomes a shift; the network does the rest
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
            raise SegmorphError(f"the model registers {self.network.config['ndim']}D images, got {fixed.ndim}D",
                                self.source)  # fmt: skip
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
            if not moving.same_grid(moving_labels):
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
        check_refine(refine)
        passes = 1 if refine > 0 else self.config.passes if passes is None else passes
        check_passes(passes)
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


def _voxel_shift(matrix: np.ndarray, fixed: Image, moving: Image) -> tuple[int, ...] | None:
    """Voxels ``s`` with ``moving(T(x_i)) = moving[i + s]`` when ``T`` is a translation by whole voxels
    between scans on one grid (then resampling is a shift), else None."""
    if not fixed.same_grid(moving) or not np.allclose(matrix[:-1, :-1], np.eye(fixed.ndim), atol=1e-9):
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
