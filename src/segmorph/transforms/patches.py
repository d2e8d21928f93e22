"""Random training patches with nnU-Net style foreground oversampling.

Volumes are ``(C, I, J[, K])`` images and ``(1, I, J[, K])`` integer label maps (array axes of
:mod:`segmorph.geometry`); patches are stacked into ``(count, C, *P)`` and ``(count, 1, *P)``. Where a
patch passes the volume border, images and labels read 0. In slice mode (``slice_axis``) the patches of 3D
volumes are 2D: boxes one voxel thick along that axis, with the axis dropped.

Negative label values mark ignored (unannotated) voxels
(:data:`segmorph.segmentation.datasets.IGNORE`): they are never foreground, they keep their value in the
patches, and in a case holding any, the patches that are not centred on foreground are centred on an annotated
voxel (label >= 0), as nnU-Net does, so that sparse annotations still reach the loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from segmorph.transforms.spatial import check_probability


def _check_cases(images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], ndim: int) -> None:
    if len(images) == 0:
        raise ValueError("images: expected at least one case, got none")
    if len(labels) != len(images):
        raise ValueError(f"labels: expected {len(images)} label maps (one per image), got {len(labels)}")
    channels = images[0].shape[0] if images[0].ndim else 0
    for case, (image, label) in enumerate(zip(images, labels)):
        if image.ndim != ndim + 1:
            raise ValueError(
                f"patch_size: has {ndim} values but case {case} has {image.ndim - 1} spatial axes "
                f"(image shape {tuple(image.shape)}, expected (C, *S))"
            )
        if image.shape[0] != channels:
            raise ValueError(f"images: case {case} has {image.shape[0]} channels, case 0 has {channels}")
        if tuple(label.shape) != (1, *image.shape[1:]):
            raise ValueError(f"labels: case {case} must have shape {(1, *image.shape[1:])}, got {tuple(label.shape)}")
        if label.is_floating_point() or label.is_complex():
            raise ValueError(f"labels: case {case} must be an integer tensor, got {label.dtype}")


def _pick(u: float, count: int) -> int:
    """Index in ``range(count)`` from a uniform draw ``u`` in [0, 1)."""
    return min(int(u * count), count - 1)


def crop_with_padding(volume: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """The box ``[start, start + size)`` of a ``(C, *S)`` volume, zeros where it leaves the volume.

    Args:
        volume: ``(C, *S)`` tensor.
        start: Corner of the box in voxels per spatial axis; may be negative or past the end.
        size: Box size in voxels per spatial axis.

    Returns:
        ``(C, *size)`` tensor of ``volume``'s dtype and device.
    """
    out = volume.new_zeros((volume.shape[0], *size))
    source, target = [slice(None)], [slice(None)]
    for begin, length, extent in zip(start, size, volume.shape[1:]):
        low, high = max(begin, 0), min(begin + length, extent)
        if high <= low:
            return out
        source.append(slice(low, high))
        target.append(slice(low - begin, high - begin))
    out[tuple(target)] = volume[tuple(source)]
    return out


class PatchSampler:
    """Draws training patches from a fixed set of cases; foreground locations are found once per case.

    Args:
        images: ``C``-channel volumes ``(C, *S)``, one per case; shapes may differ between cases.
        labels: Integer label maps ``(1, *S)`` on the same grids.
        patch_size: Patch size in voxels, 2 or 3 values (2 in slice mode: the in-plane sizes, in the order of
            the volume's remaining axes).
        foreground_fraction: Share of patches centred on a foreground voxel (label > 0); nnU-Net uses 1/3.
            The others are random, or centred on an annotated voxel (label >= 0) in a case with ignored voxels.
        max_voxels_per_class: Foreground voxels kept per class and case (evenly strided), bounding memory; as
            many annotated voxels are kept per case with ignored voxels.
        slice_axis: Slice mode: the spatial axis (0, 1 or 2) of 3D volumes that 2D patches are cut across; a
            foreground patch is a slice through its foreground voxel. None: patches have the volumes' dimensions.
    """

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        patch_size: Sequence[int],
        foreground_fraction: float = 1.0 / 3.0,
        max_voxels_per_class: int = 10_000,
        slice_axis: int | None = None,
    ) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) not in (2, 3) or min(self.patch_size) < 1:
            raise ValueError(f"patch_size: expected 2 or 3 positive sizes, got {tuple(patch_size)}")
        if slice_axis is not None and (len(self.patch_size) != 2 or slice_axis not in (0, 1, 2)):
            raise ValueError(f"slice_axis: expected 0, 1 or 2 with a 2D patch_size, got {slice_axis} with "
                             f"{list(self.patch_size)}")  # fmt: skip
        self.slice_axis = slice_axis
        # the box cut from a volume: the patch, one voxel thick along the slice axis in slice mode
        self.box = self.patch_size
        if slice_axis is not None:
            self.box = (*self.patch_size[:slice_axis], 1, *self.patch_size[slice_axis:])
        check_probability("foreground_fraction", foreground_fraction)
        if max_voxels_per_class < 1:
            raise ValueError(f"max_voxels_per_class: must be >= 1, got {max_voxels_per_class}")
        _check_cases(images, labels, len(self.box))
        self.images, self.labels = list(images), list(labels)
        self.foreground_fraction = foreground_fraction
        self.max_voxels_per_class = max_voxels_per_class
        self._foreground: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self._annotated: dict[int, torch.Tensor | None] = {}

    def foreground(self, case: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Classes present in a case (``(m,)``, > 0) and, for each, flat voxel indices ``(n_c,)`` (cached)."""
        if case not in self._foreground:
            flat = self.labels[case].reshape(-1)
            where = (flat > 0).nonzero().flatten()
            values, order = torch.sort(flat[where], stable=True)
            classes, counts = torch.unique_consecutive(values, return_counts=True)
            voxels = []
            for group in torch.split(where[order], counts.tolist()):
                stride = math.ceil(group.numel() / self.max_voxels_per_class)
                voxels.append(group[::stride].cpu())
            self._foreground[case] = (classes.cpu(), voxels)
        return self._foreground[case]

    def annotated(self, case: int) -> torch.Tensor | None:
        """Flat indices ``(n,)`` of annotated voxels (label >= 0, evenly strided) of a case holding ignored
        (negative) voxels; None when every voxel of the case is annotated (cached)."""
        if case not in self._annotated:
            flat = self.labels[case].reshape(-1)
            kept = None
            if bool((flat < 0).any()):
                where = (flat >= 0).nonzero().flatten()
                kept = where[:: max(1, math.ceil(where.numel() / self.max_voxels_per_class))].cpu()
            self._annotated[case] = kept
        return self._annotated[case]

    def _start(self, case: int, fraction: torch.Tensor, foreground: bool) -> list[int]:
        """Corner of a patch; ``fraction`` is ``(2 + n,)`` uniform draws in [0, 1)."""
        shape = self.images[case].shape[1:]
        # Corners keep the patch inside the volume, or the volume inside the patch when it is smaller.
        lows = [min(0, s - p) for s, p in zip(shape, self.box)]
        highs = [max(0, s - p) for s, p in zip(shape, self.box)]
        classes, voxels = self.foreground(case) if foreground else (torch.zeros(0), [])
        if classes.numel():
            group = voxels[_pick(float(fraction[0]), len(voxels))]
            return self._centred_on(group[_pick(float(fraction[1]), group.numel())], shape, lows, highs)
        annotated = self.annotated(case)
        if annotated is not None and annotated.numel():
            return self._centred_on(annotated[_pick(float(fraction[1]), annotated.numel())], shape, lows, highs)
        return [lo + _pick(u, hi - lo + 1) for u, lo, hi in zip(fraction[2:].tolist(), lows, highs)]

    def _centred_on(self, index: torch.Tensor, shape: Sequence[int], lows: list[int], highs: list[int]) -> list[int]:
        """Corner of the box centred on the voxel of flat ``index``, kept within ``lows``..``highs``."""
        centre = torch.unravel_index(index.reshape(()), tuple(shape))
        return [min(max(int(c) - p // 2, lo), hi) for c, p, lo, hi in zip(centre, self.box, lows, highs)]

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``count`` patches.

        Cases are picked uniformly. ``floor(count * foreground_fraction)`` patches, plus one more with the
        probability of the remainder, are centred on a foreground voxel: a class present in the case is
        picked uniformly, then one of its voxels (cases without foreground give a random patch). The other
        patches are random, or centred on an annotated voxel of a case holding ignored voxels.

        Args:
            count: Number of patches.
            generator: Source of randomness; the same seed gives the same patches.

        Returns:
            ``(count, C, *P)`` images and ``(count, 1, *P)`` labels, dtypes and device of the first case (2D
            patches in slice mode).
        """
        if count < 1:
            raise ValueError(f"count: expected a positive number of patches, got {count}")
        n = len(self.box)
        draws = torch.rand((count, 4 + n), generator=generator, device=generator.device, dtype=torch.float64).cpu()
        exact = count * self.foreground_fraction
        num_foreground = min(count, math.floor(exact) + int(float(draws[0, 0]) < exact - math.floor(exact)))
        images = self.images[0].new_zeros((count, self.images[0].shape[0], *self.patch_size))
        labels = self.labels[0].new_zeros((count, 1, *self.patch_size))
        for i in range(count):
            case = _pick(float(draws[i, 1]), len(self.images))
            start = self._start(case, draws[i, 2:], foreground=i >= count - num_foreground)
            image = crop_with_padding(self.images[case], start, self.box)
            label = crop_with_padding(self.labels[case], start, self.box)
            if self.slice_axis is not None:  # drop the one-voxel axis: (C, *P)
                image, label = image.squeeze(self.slice_axis + 1), label.squeeze(self.slice_axis + 1)
            images[i], labels[i] = image, label
        return images, labels


def random_patches(
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    patch_size: Sequence[int],
    count: int,
    foreground_fraction: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``count`` patches once; build a :class:`PatchSampler` to reuse the foreground search every step.

    Args:
        images: ``(C, *S)`` volumes, one per case.
        labels: ``(1, *S)`` integer label maps.
        patch_size: Patch size in voxels (2 or 3 values).
        count: Number of patches.
        foreground_fraction: Share of patches centred on a foreground voxel.
        generator: Source of randomness.

    Returns:
        ``(count, C, *P)`` images and ``(count, 1, *P)`` labels.
    """
    return PatchSampler(images, labels, patch_size, foreground_fraction).sample(count, generator)
