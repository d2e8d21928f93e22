"""Atlas-based segmentation: register labelled atlases to a scan, propagate their labels, fuse them.

Each atlas is an image with a label map on the same grid. The atlas image (moving) is registered to
the scan (fixed), classically or with a learned model; its labels are resampled onto the scan's grid
through the resulting fixed → moving transform (see :mod:`segmorph.registration`), and the
propagated label maps are fused voxel by voxel:

* ``"majority"``: each atlas votes for the label it warped there (label-wise linear interpolation);
* ``"weighted"``: locally weighted voting (Artaechevarria et al. 2009; Sabuncu et al. 2010): each
  atlas's one-hot labels, warped with linear interpolation, are weighted at every voxel by how
  well the warped atlas image matches the scan in a small window around it.

The fused labels lie on the scan's exact grid (same shape, same affine). With a reference label map,
Dice per label is reported for the fused result and for each propagated atlas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from segmorph.errors import SegmorphError
from segmorph.image import Image, check_same_grid
from segmorph.io import atomic_write_text, distance_unit, image_suffix, read_image, strip_suffix, write_image
from segmorph.metrics.segmentation import case_metrics, dice_score
from segmorph.outputs import check_outputs
from segmorph.progress import track
from segmorph.readchecks import check_voxel_budget
from segmorph.registration.classical import ClassicalConfig, register_classical
from segmorph.registration.names import FUSIONS, METHODS
from segmorph.registration.pairs import normalise_intensity
from segmorph.registration.similarity import box_sum
from segmorph.registration.transform import Transform
from segmorph.segmentation.evaluate import dataset_label_names, name_labels, read_label_names

if TYPE_CHECKING:
    from segmorph.registration.learned.model import LearnedRegistration

EXAMPLE = (
    "segmorph atlas-segment scan.nii.gz --atlases a1.nii.gz:a1_seg.nii.gz a2.nii.gz:a2_seg.nii.gz --out seg.nii.gz"
)


# -- label fusion --------------------------------------------------------------------------------


def majority_vote(label_maps: Sequence[np.ndarray]) -> np.ndarray:
    """The most frequent label at every voxel; a tie goes to the lowest of the tied labels.

    Args:
        label_maps: One integer label map per atlas, all the same shape ``(I, J[, K])``.

    Returns:
        Integer label map ``(I, J[, K])``, int64.
    """
    if len(label_maps) == 0:
        raise ValueError("label_maps: is empty; give at least one label map")
    shapes = sorted({tuple(np.shape(m)) for m in label_maps})
    if len(shapes) != 1:
        raise ValueError(f"label_maps: shapes differ {shapes}")
    stack = np.stack([np.asarray(m) for m in label_maps])
    if not np.issubdtype(stack.dtype, np.integer):
        raise ValueError(f"label_maps: expected integer label maps, got {stack.dtype}")
    best_label = np.zeros(stack.shape[1:], dtype=np.int64)
    best_count = np.full(stack.shape[1:], -1, dtype=np.int64)
    for value in np.unique(stack):  # ascending, and only a strictly larger count wins: ties keep the lower label
        count = np.count_nonzero(stack == value, axis=0)
        better = count > best_count
        best_label[better], best_count[better] = value, count[better]
    return best_label


def local_mean_squared_difference(
    images: torch.Tensor, target: torch.Tensor, window: int | Sequence[int] = 5
) -> torch.Tensor:
    """Mean of ``(image - target)**2`` over a box around every voxel (only voxels inside the grid).

    Args:
        images: ``(N, 1, *S)`` warped atlas images.
        target: ``(1, 1, *S)`` the scan, same intensity scale.
        window: Box size in voxels, one int or one per spatial axis.

    Returns:
        ``(N, *S)`` float32, intensity units squared.
    """
    sizes = (window,) * (images.ndim - 2) if isinstance(window, int) else tuple(window)
    squared = (images.float() - target.float()) ** 2
    count = box_sum(torch.ones_like(target, dtype=torch.float32), sizes)
    return (box_sum(squared, sizes) / count)[:, 0]


def locally_weighted_vote(
    label_probabilities: Sequence[torch.Tensor],
    warped_images: Sequence[torch.Tensor],
    target: torch.Tensor,
    sigma: float = 0.1,
    window: int | Sequence[int] = 5,
    normalise: bool = True,
) -> np.ndarray:
    """Locally weighted voting: each atlas's label probabilities weighted by its local image match.

    The weight of atlas ``n`` at voxel ``x`` is a Gaussian of its local mean squared intensity
    difference to the target, ``w_n(x) = exp(-d_n(x) / (2 sigma**2))`` with ``d_n`` the mean of
    ``(I_n - T)**2`` over a ``window`` box around ``x`` (Sabuncu et al. 2010's Gaussian intensity
    model, averaged over a patch as in Artaechevarria et al. 2009). The fused label is
    ``argmax_k sum_n w_n(x) P_n(k, x)``. Weights are computed relative to the best atlas at each
    voxel, which leaves the argmax unchanged and keeps them from all underflowing to zero.

    Args:
        label_probabilities: One ``(K, *S)`` tensor per atlas: one-hot labels warped with linear
            interpolation; channel ``k`` is the ``k``-th label (zero outside the atlas's field of view).
        warped_images: One ``(1, *S)`` tensor per atlas: the atlas image warped onto the target grid
            (only the first channel is used when there are more).
        target: ``(1, *S)`` the scan.
        sigma: Width of the Gaussian, in normalised intensity units (about 0..1 from the 1st to the
            99th percentile): small values trust only the best-matching atlas.
        window: Box size in voxels for the local difference, one int or one per spatial axis.
        normalise: Scale each image by its 1st and 99th percentiles first
            (:func:`~segmorph.registration.pairs.normalise_intensity`). Pass False when the inputs
            are on a common scale already.

    Returns:
        Channel index of the winning label at every voxel, ``(*S)`` int64 (0 where no atlas has a label).
    """
    _check_vote_inputs(label_probabilities, warped_images, target)
    if sigma <= 0:
        raise ValueError(f"sigma: expected a positive width, got {sigma}")
    images = torch.stack([w[:1].float() for w in warped_images])
    reference = target[:1].float()[None]
    if normalise:
        images = torch.stack([normalise_intensity(i) for i in images])
        reference = normalise_intensity(reference)
    distance = local_mean_squared_difference(images, reference, window)
    weights = torch.exp(-(distance - distance.min(0).values) / (2 * sigma**2))
    scores = torch.zeros_like(label_probabilities[0], dtype=torch.float32)
    for probabilities, weight in zip(label_probabilities, weights):
        scores += probabilities.float() * weight
    return scores.argmax(0).numpy().astype(np.int64)


def _check_vote_inputs(label_probabilities, warped_images, target: torch.Tensor) -> None:
    if len(label_probabilities) == 0:
        raise ValueError("label_probabilities: is empty; give at least one atlas")
    if len(warped_images) != len(label_probabilities):
        raise ValueError(
            f"warped_images: {len(warped_images)} images for {len(label_probabilities)} label probability maps"
        )
    spatial = tuple(target.shape[1:])
    expected = (label_probabilities[0].shape[0], *spatial)
    for index, (probabilities, image) in enumerate(zip(label_probabilities, warped_images)):
        if tuple(probabilities.shape) != expected:
            raise ValueError(
                f"label_probabilities[{index}]: expected shape {expected}, got {tuple(probabilities.shape)}"
            )
        if tuple(image.shape[1:]) != spatial:
            raise ValueError(f"warped_images[{index}]: shape {tuple(image.shape)}, target grid {spatial}")


# -- atlas segmentation --------------------------------------------------------------------------


@dataclass
class AtlasSegmentation:
    """Result of :func:`atlas_segment`.

    Attributes:
        labels: Fused label map ``(1, *S)`` int64 on the scan's grid (same affine).
        atlas_labels: Each atlas's labels propagated onto the scan's grid ``(1, *S)``, in atlas order.
        dice: Label value → Dice of the fused labels against the reference (empty without one).
        atlas_dice: Per atlas, label value → Dice of its propagated labels (empty without a reference).
    """

    labels: Image
    atlas_labels: list[Image] = field(default_factory=list)
    dice: dict[int, float] = field(default_factory=dict)
    atlas_dice: list[dict[int, float]] = field(default_factory=list)


def _check_atlases(scan: Image, atlases: Sequence[tuple[Image, Image]], names: Sequence[str]) -> None:
    if len(atlases) == 0:
        raise SegmorphError("no atlases given; pass at least one atlas image with its label map")
    for (image, labels), name in zip(atlases, names):
        if image.ndim != scan.ndim:
            raise SegmorphError(f"atlas is {image.ndim}D but the scan is {scan.ndim}D", name)
        if labels.num_channels != 1 or labels.data.is_floating_point():
            raise SegmorphError("atlas labels must be an integer label map with one channel", name)
        check_same_grid(labels, image, "atlas label grid differs from its atlas image", name)


def register_atlas(
    scan: Image,
    atlas_image: Image,
    method: str = "deformable",
    model: LearnedRegistration | None = None,
    config: ClassicalConfig | None = None,
    device: str | torch.device = "cpu",
    atlas_labels: Image | None = None,
) -> Transform:
    """Scan (fixed) → atlas (moving) transform, classical or learned (``method="learned"`` needs ``model``).

    ``atlas_labels`` guide a learned model trained with ``label_guidance`` (see ``LearnedRegistration.register``).
    """
    if method == "learned":
        if model is None:
            raise ValueError("model: method 'learned' needs a LearnedRegistration")
        return model.register(scan, atlas_image, moving_labels=atlas_labels)
    return register_classical(scan, atlas_image, method, config, device=device)


def _label_values(atlases: Sequence[tuple[Image, Image]]) -> np.ndarray:
    """Sorted label values over all atlases, background 0 always first."""
    values = {0}
    for _, labels in atlases:
        values.update(int(v) for v in torch.unique(labels.data))
    return np.array(sorted(values), dtype=np.int64)


def _warp_one_hot(transform: Transform, labels: Image, values: np.ndarray, scan: Image) -> torch.Tensor:
    """One-hot labels ``(K, *S)`` (channel ``k`` = ``values[k]``) warped linearly onto the scan's grid."""
    index = torch.from_numpy(np.searchsorted(values, labels.numpy()[0]))
    one_hot = F.one_hot(index, len(values)).movedim(-1, 0).float()
    warped = transform.warp(Image(one_hot, labels.affine), scan.affine, scan.spatial_shape, "linear")
    return warped.data


def _normalised(image: Image) -> Image:
    """First channel scaled by its percentiles on its own grid (before warping adds zeros outside it)."""
    return Image(normalise_intensity(image.data[:1].float()), image.affine)


def _dice_per_label(pred: np.ndarray, ref: np.ndarray, values: Sequence[int]) -> dict[int, float]:
    return {int(v): dice_score(pred == v, ref == v) for v in values if v != 0}


def atlas_segment(
    scan: Image,
    atlases: Sequence[tuple[Image, Image]],
    method: str = "deformable",
    fusion: str = "weighted",
    model: LearnedRegistration | None = None,
    config: ClassicalConfig | None = None,
    reference: Image | None = None,
    progress: bool = True,
    names: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    sigma: float = 0.1,
    window: int = 5,
) -> AtlasSegmentation:
    """Segment ``scan`` by registering each atlas to it, propagating the atlas labels and fusing them.

    Args:
        scan: Image to segment ``(C, *S)``; the output lies on its grid.
        atlases: ``(image, labels)`` pairs, each label map ``(1, *S_a)`` on its image's grid (any grid
            and any world position relative to the scan).
        method: ``"rigid"``, ``"affine"``, ``"deformable"`` (classical) or ``"learned"`` (needs ``model``).
        fusion: ``"weighted"`` (locally weighted vote) or ``"majority"`` (ties to the lowest label).
        model: A trained registration network, for ``method="learned"`` (unused by other methods).
        config: Classical registration settings (defaults when None).
        reference: Reference label map on the scan's grid; Dice per label is then reported.
        progress: Show a progress bar over the atlases (on terminals).
        names: One name per atlas for error messages, e.g. the label files (default ``atlas 1``, ...).
        device: Where classical registration optimises.
        sigma: Width of the weighted vote's Gaussian, normalised intensity units.
        window: Box size of the weighted vote's local difference, voxels.

    Raises:
        SegmorphError: No atlases; an atlas of other dimensionality than the scan; a label map not on
            its image's grid; a reference not on the scan's grid; the weighted vote's probabilities (atlases x
            labels x scan voxels) beyond the memory budget (:func:`segmorph.readchecks.max_voxels`).
        ValueError: Unknown ``method`` or ``fusion``, or ``"learned"`` without a model.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
    if method == "learned" and model is None:
        raise ValueError("model: method 'learned' needs a LearnedRegistration")
    names = list(names) if names is not None else [f"atlas {i + 1}" for i in range(len(atlases))]
    if len(names) != len(atlases):
        raise ValueError(f"names: {len(names)} names for {len(atlases)} atlases")
    _check_atlases(scan, atlases, names)
    if reference is not None:
        check_same_grid(reference, scan, "reference grid differs from the scan's", "reference")
    values = _label_values(atlases)
    if fusion == "weighted":  # every atlas's warped probability of every label is held until the vote
        shape = "x".join(map(str, scan.spatial_shape))
        check_voxel_budget(float(len(atlases)) * len(values) * np.prod(scan.spatial_shape, dtype=np.float64),
                           f"the weighted vote's label probabilities ({len(atlases)} atlases x {len(values)} labels x "
                           f"{shape} voxels)", names[0])  # fmt: skip
    propagated, probabilities, warped_images = [], [], []
    for image, labels in track(atlases, "atlases", total=len(atlases), enabled=progress):
        transform = register_atlas(scan, image, method, model, config, device, labels)
        if fusion == "majority":
            propagated.append(transform.warp(labels, scan.affine, scan.spatial_shape).numpy()[0])
            continue
        probabilities.append(_warp_one_hot(transform, labels, values, scan))
        warped_images.append(transform.warp(_normalised(image), scan.affine, scan.spatial_shape, "linear").data)
        propagated.append(values[probabilities[-1].argmax(0).numpy()])
    if fusion == "majority":
        fused = majority_vote(propagated)
    else:
        target = normalise_intensity(scan.data[:1].float())
        fused = values[locally_weighted_vote(probabilities, warped_images, target, sigma, window, normalise=False)]
    return _result(scan, fused, propagated, reference, values)


def _on_scan_grid(labels: np.ndarray, scan: Image) -> Image:
    return Image(torch.from_numpy(np.asarray(labels, dtype=np.int64)[None]), scan.affine, is_label=True)


def _result(scan: Image, fused: np.ndarray, propagated: list[np.ndarray], reference: Image | None, values):
    result = AtlasSegmentation(_on_scan_grid(fused, scan), [_on_scan_grid(p, scan) for p in propagated])
    if reference is not None:
        ref = reference.numpy()[0]
        scored = sorted(set(values.tolist()) | {int(v) for v in np.unique(ref)})
        result.dice = _dice_per_label(fused, ref, scored)
        result.atlas_dice = [_dice_per_label(p, ref, scored) for p in propagated]
    return result


# -- command line --------------------------------------------------------------------------------


def parse_atlas_spec(spec: str) -> tuple[Path, Path]:
    """``"IMAGE:LABELS"`` → the two paths, both existing files or folders.

    Raises:
        SegmorphError: Naming the spec, when it is not two non-empty paths joined by one ``:``, or a
            path does not exist.
    """
    parts = spec.split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise SegmorphError("expected an atlas as IMAGE:LABELS (two paths joined by one ':')", spec)
    image_path, label_path = Path(parts[0]), Path(parts[1])
    for what, path in (("atlas image", image_path), ("atlas label map", label_path)):
        if not path.exists():
            raise SegmorphError(f"{what} {str(path)!r} does not exist", spec)
    return image_path, label_path


def metrics_path(out_path: str | Path) -> Path:
    """``seg.nii.gz`` → ``seg_metrics.json`` in the same folder."""
    out_path = Path(out_path)
    return out_path.parent / f"{strip_suffix(out_path)}_metrics.json"


def run_atlas_segment(
    scan_path: str | Path,
    atlas_specs: Sequence[str],
    out_path: str | Path,
    method: str = "deformable",
    fusion: str = "weighted",
    model_dir: str | Path | None = None,
    reference_path: str | Path | None = None,
    progress: bool = True,
    config: ClassicalConfig | None = None,
    device: str = "cpu",
    labels_from: str | Path | None = None,
) -> dict:
    """Files in, files out: read the scan and ``IMAGE:LABELS`` atlases, write the fused segmentation.

    The segmentation is written atomically to ``out_path``; with a reference, the metrics of every
    label (:func:`~segmorph.metrics.segmentation.case_metrics`: Dice, HD95 in mm, or px for pictures, ...) and each
    atlas's Dice go to ``<out stem>_metrics.json`` beside it. Labels are named by ``labels_from`` (a run or dataset
    folder, or a dataset.json), else by the dataset.json beside the reference's folder or the first atlas label
    map's (MSD: ``labelsTr/..``) when it names every label, else ``label_<value>``.

    Returns:
        A summary: ``out``, ``metrics_file`` (or None), ``dice`` (label → fused Dice), ``names`` (label → name,
        the labels scored), ``atlases`` (image, labels and Dice per atlas), ``metrics`` (the case_metrics rows,
        or None).

    Raises:
        SegmorphError: A malformed or missing atlas spec (naming it), an unreadable image, an atlas
            label map off its image's grid (naming the label file), an unknown output format, a
            ``learned`` method without a model, a reference off the scan's grid.
    """
    out_path = Path(out_path)
    if not image_suffix(out_path):
        raise SegmorphError("unknown output image format (use e.g. .nii.gz, .nrrd, .mha)", out_path)
    if method == "learned" and model_dir is None:
        raise SegmorphError("method 'learned' needs a registration model folder (--model)")
    pairs = [parse_atlas_spec(spec) for spec in atlas_specs]
    if not pairs:
        raise SegmorphError("no atlases given; pass at least one IMAGE:LABELS pair")
    outputs = [out_path] + ([metrics_path(out_path)] if reference_path is not None else [])
    check_outputs(outputs, inputs=[scan_path, reference_path, model_dir, *(p for pair in pairs for p in pair)])
    scan = read_image(scan_path)
    atlases = [(read_image(image), read_image(labels, is_label=True)) for image, labels in pairs]
    reference = None if reference_path is None else read_image(reference_path, is_label=True)
    if reference is not None:
        check_same_grid(reference, scan, "reference grid differs from the scan's", reference_path)
    model = _load_model(model_dir, device) if method == "learned" else None
    result = atlas_segment(
        scan, atlases, method, fusion, model, config, reference, progress, [str(lab) for _, lab in pairs], device
    )  # fmt: skip
    write_image(result.labels, out_path)
    known = _known_names(labels_from, reference_path, pairs[0][1])
    summary = {"scan": str(scan_path), "out": str(out_path), "method": method, "fusion": fusion,
               "dice": result.dice, "names": name_labels(result.dice, known), "metrics": None, "metrics_file": None,
               "atlases": [{"image": str(i), "labels": str(lab)} for i, lab in pairs]}  # fmt: skip
    if reference is not None:
        _write_metrics(summary, result, scan, reference, out_path, distance_unit(reference_path))
    return summary


def _known_names(labels_from: str | Path | None, reference_path: str | Path | None,
                 atlas_labels: Path) -> dict[int, str] | None:  # fmt: skip
    """Names of ``labels_from``, else of the dataset.json beside the reference's or the atlas labels' folder."""
    if labels_from is not None:
        return read_label_names(labels_from)
    for path in (reference_path, atlas_labels):
        names = None if path is None else dataset_label_names(Path(path).parent)
        if names:
            return names
    return None


def _load_model(model_dir: str | Path | None, device: str) -> LearnedRegistration:
    from segmorph.registration.learned.model import LearnedRegistration

    return LearnedRegistration.load(model_dir, device)


def _write_metrics(summary: dict, result: AtlasSegmentation, scan: Image, reference: Image, out_path: Path,
                   unit: str = "mm") -> None:  # fmt: skip
    labels = summary["names"]
    spacing = scan.spacing if unit == "mm" else np.ones(scan.ndim)
    rows = case_metrics(result.labels.numpy()[0], reference.numpy()[0], spacing, labels) if labels else []
    rows = [{**row, "unit": unit} for row in rows]
    for entry, dice in zip(summary["atlases"], result.atlas_dice):
        entry["dice"] = dice
    summary["metrics"] = rows
    path = metrics_path(out_path)
    atomic_write_text(path, json.dumps(summary, indent=1) + "\n")
    summary["metrics_file"] = str(path)
