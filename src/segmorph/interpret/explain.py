"""Where a segmentation network looked and how sure it was: ``segmorph explain``.

For each scan and a trained run folder (plan.json + checkpoint):

* **Test-time augmentation (TTA).** The scan is preprocessed as :class:`segmorph.segmentation.predict.Predictor` does
  (:func:`segmorph.segmentation.preprocess.preprocess_sample`: the plan's spacing and normalisation). ``N`` variants of the
  prepared image are segmented with the sliding window. Variant ``n`` is flipped along the ``n``-th combination
  of spatial axes (identity first; all ``2**ndim`` combinations come once before any repeats) and its normalised
  intensities ``x`` become ``x * scale + shift``, ``scale ~ U(1 - 0.1, 1 + 0.1)``, ``shift ~ U(-0.1, 0.1)`` (in
  standard deviations of the normalised image; drawn from a generator seeded with ``seed``; variant 0 is not
  jittered). Predictions are flipped back. Their mean probabilities give the segmentation; the per-voxel
  population variance over the variants of the foreground probability ``1 - p(background)`` is the uncertainty
  map, in ``[0, 0.25]``.
* **Grad-CAM** per class (:func:`segmorph.interpret.gradcam.segmentation_grad_cam`: the class's logits summed
  over the voxels the network predicts as that class). The layer explained is by default the U-Net's coarsest
  decoder block (the first after the bottleneck, where context has been merged with the skip connection):
  on hippocampus validation cases its map peaked inside the explained class for nearly every class map,
  while the bottleneck's (``layer="bottleneck"``, gradcam's default) did not and was on average lower inside
  the class than in the background (see benchmarks/RESULTS.md): a bottleneck feature map a few voxels wide
  says little about where the skip connections put the boundary. The network sees one
  window of the preprocessed volume: the whole volume (zero-padded to a multiple of the network's divisor)
  when that padded volume has at most as many voxels as the training patch, else a window of the training
  patch's size centred on the bounding box of the predicted foreground (on the volume's centre when nothing is
  predicted) and shifted to lie inside the volume. Each map is scaled to 0..1 within the window and pasted into
  a zero map of the whole preprocessed grid.

Every map then goes back to the scan's own grid through :func:`segmorph.segmentation.preprocess.undo_preprocessing` (the
linear resampling and crop-box paste that ``predict`` uses; maps are zero outside the crop box), so outputs have
the scan's exact shape, spacing, origin and direction. Spatial arrays are ``(I, J[, K])``, with a leading
channel, class or map axis where one is named (see :mod:`segmorph.geometry`); world positions are mm (LPS).

**Ensembles.** A cross-validation run (its folds) or a ``segmorph find-best`` folder (its runs) is explained over
all its networks (:func:`segmorph.segmentation.ensemble.ensemble_members`, each with its weight ``w``, summing to
1): each network is explained as a single run, with the same TTA variants, and its maps brought to the scan's grid;
then the prediction is the most likely class of the weighted mean of the networks' mean TTA probabilities, the
uncertainty is the variance of the foreground probability over every network's variants together (the weighted
mean of the networks' variances plus the weighted variance of their mean foreground probabilities: the ensemble's
uncertainty, which includes the members' disagreement), and each Grad-CAM map is the weighted mean of the
networks' maps (each scaled to 0..1 in its own window, so the mean stays in 0..1). ``explain.json`` says
``"members": N``, and for an ensemble lists each network's weight and Grad-CAM window.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segmorph.engine.sliding_window import pad_to_patch, sliding_window_logits
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image, Sample
from segmorph.interpret.gradcam import default_segmentation_layer, save_cam_overlay, segmentation_grad_cam
from segmorph.io import atomic_write_text, list_images, mask_file_name, read_image, write_image
from segmorph.outputs import Output, check_outputs
from segmorph.progress import track
from segmorph.segmentation.ensemble import AnyPredictor, ensemble_members, load_predictor
from segmorph.segmentation.find_best import is_ensemble_folder, read_members
from segmorph.segmentation.plan import Plan
from segmorph.segmentation.predict import PredictOptions, Predictor, most_likely_class
from segmorph.segmentation.preprocess import UndoRecord, nonzero_box, preprocess_sample, undo_preprocessing

JITTER_SCALE = 0.1  # intensity scale drawn from 1 +- this
JITTER_SHIFT = 0.1  # intensity shift drawn from +- this, in standard deviations of the normalised image


@dataclass(frozen=True)
class ExplainOptions:
    """What to explain.

    Attributes:
        classes: Classes to explain, as label values or names; empty: every foreground class.
        tta: Number of test-time-augmentation variants (at least 2).
        seed: Seed of the intensity jitter; the same seed gives the same maps.
        cam: Compute Grad-CAM maps (False: uncertainty and prediction only).
        layer: Layer explained: ``"decoder"`` (the coarsest decoder block) or ``"bottleneck"`` (the deepest
            encoder block).
        checkpoint: ``"best"`` or ``"last"``.
    """

    classes: tuple[int | str, ...] = ()
    tta: int = 8
    seed: int = 0
    cam: bool = True
    layer: str = "decoder"
    checkpoint: str = "best"


@dataclass(frozen=True)
class TtaVariant:
    """One test-time augmentation: flip ``flip_axes`` (spatial, 0 = I), then ``x * scale + shift``."""

    flip_axes: tuple[int, ...] = ()
    scale: float = 1.0
    shift: float = 0.0

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """The augmented copy of a prepared image ``(C, *S)``."""
        dims = tuple(a + 1 for a in self.flip_axes)
        return (image.flip(dims) if dims else image) * self.scale + self.shift

    def undo(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores ``(K, *S)`` of the augmented image flipped back onto the prepared image's grid."""
        dims = tuple(a + 1 for a in self.flip_axes)
        return scores.flip(dims) if dims else scores


@dataclass
class Explanation:
    """One scan's results on the scan's own grid ``S``.

    Attributes:
        prediction: ``(*S)`` label map of the mean TTA probabilities, uint8 (int32 beyond 256 classes).
        uncertainty: ``(*S)`` float32 TTA variance of the foreground probability, in ``[0, 0.25]``.
        cams: Class value -> ``(*S)`` float32 Grad-CAM map in 0..1.
        window: Grad-CAM window on the preprocessed grid: ``(start, size)`` in voxels per axis (an ensemble's
            first network's).
        layer: The layer Grad-CAM explained (``"decoder"`` or ``"bottleneck"``).
        variants: The TTA variants used (by every network of an ensemble).
        members: For an ensemble, each network's name, weight and Grad-CAM window (on its own preprocessed
            grid); empty for a single run.
    """

    prediction: np.ndarray
    uncertainty: np.ndarray
    cams: dict[int, np.ndarray]
    window: tuple[tuple[int, ...], tuple[int, ...]]
    layer: str
    variants: list[TtaVariant]
    members: list[tuple[str, float, tuple[tuple[int, ...], tuple[int, ...]]]] = field(default_factory=list)


@dataclass
class NetworkMaps:
    """One network's results (or several networks' pooled by :func:`pool_networks`) on the scan's grid ``S``.

    Attributes:
        probabilities: ``(K, *S)`` float32 mean class probabilities over the TTA variants.
        variance: ``(*S)`` float32 variance of the foreground probability ``1 - p(background)`` over the variants.
        cams: ``(M, *S)`` float32 Grad-CAM maps in 0..1, one per explained class (M may be 0).
        window: Grad-CAM window on the network's preprocessed grid: ``(start, size)`` in voxels per axis.
        variants: The TTA variants used.
    """

    probabilities: torch.Tensor
    variance: torch.Tensor
    cams: torch.Tensor
    window: tuple[tuple[int, ...], tuple[int, ...]]
    variants: list[TtaVariant]


def draw_variants(count: int, ndim: int, seed: int) -> list[TtaVariant]:
    """``count`` TTA variants for ``ndim`` spatial axes; all random numbers are drawn here (see the module doc)."""
    if count < 2:
        raise SegmorphError(f"--tta: needs at least 2 variants for a variance, got {count}")
    flips = [axes for n in range(ndim + 1) for axes in itertools.combinations(range(ndim), n)]
    jitter = torch.rand((count, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    variants = [TtaVariant()]
    for index in range(1, count):
        scale, shift = jitter[index].tolist()
        variants.append(TtaVariant(flips[index % len(flips)], 1 + JITTER_SCALE * scale, JITTER_SHIFT * shift))
    return variants


def tta_statistics(
    model: nn.Module, image: torch.Tensor, variants: Sequence[TtaVariant], patch_size: Sequence[int],
    options: PredictOptions, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Mean class probabilities ``(K, *S)`` and foreground-probability variance ``(*S)`` over ``variants``.

    ``image`` is the prepared ``(C, *S)``; both results are float32 on the CPU, on its grid. The variance is
    accumulated with Welford's update, so memory stays at three volumes whatever the number of variants.
    """
    total, mean, squares = None, torch.zeros(image.shape[1:]), torch.zeros(image.shape[1:])
    for count, variant in enumerate(variants, start=1):
        scores = sliding_window_logits(
            model, variant.apply(image), patch_size, overlap=options.overlap, batch_size=options.batch_size,
            device=device, amp=options.amp,
        )  # fmt: skip
        probabilities = variant.undo(scores).cpu()
        total = probabilities if total is None else total.add_(probabilities)
        foreground = 1.0 - probabilities[0]
        delta = foreground - mean
        mean += delta / count
        squares += delta * (foreground - mean)
    return total / len(variants), squares / len(variants)


def cam_window(
    shape: Sequence[int], patch_size: Sequence[int], divisor: int, foreground: torch.Tensor
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Where Grad-CAM looks on the preprocessed grid (see the module docstring).

    Args:
        shape: Preprocessed spatial shape ``S`` in voxels.
        patch_size: The training patch in voxels (multiples of ``divisor``).
        divisor: The network's size divisor.
        foreground: ``(*S)`` bool, the predicted foreground.

    Returns:
        ``(start, size, network_shape)``: the window's first voxel and size per axis, and the (padded) input
        shape the network sees.
    """
    whole = tuple(math.ceil(s / divisor) * divisor for s in shape)
    if math.prod(w // divisor for w in whole) < 2:  # a voxel or so: padded to the patch, as predict pads it
        whole = tuple(max(w, p) for w, p in zip(whole, patch_size))
    if math.prod(whole) <= math.prod(patch_size):
        return (0,) * len(shape), tuple(shape), whole
    size = tuple(min(p, s) for p, s in zip(patch_size, shape))
    low, high = nonzero_box(foreground[None].numpy())  # the whole grid when nothing is predicted
    centre = (low + high - 1) / 2
    start = tuple(int(min(max(round(c - (n - 1) / 2), 0), s - n)) for c, n, s in zip(centre, size, shape))
    return start, size, tuple(patch_size)


def explained_layer(model: nn.Module, name: str) -> nn.Module:
    """The module Grad-CAM explains: ``"decoder"``, the coarsest decoder block (``model.decoder[-1]``), or
    ``"bottleneck"``, the deepest encoder block."""
    if name == "bottleneck":
        return default_segmentation_layer(model)
    decoder = getattr(model, "decoder", None)
    if name != "decoder" or decoder is None:
        raise SegmorphError(f"layer: expected 'decoder' or 'bottleneck' of a U-Net, got {name!r}")
    return decoder[-1]


def class_cams(
    model: nn.Module, image: torch.Tensor, classes: Sequence[int], start: Sequence[int], size: Sequence[int],
    network_shape: Sequence[int], layer: nn.Module,
) -> torch.Tensor:  # fmt: skip
    """Grad-CAM ``(M, *S)`` of ``layer`` for each of ``classes`` on the grid of the prepared ``image``
    ``(C, *S)``: computed in the window ``start``/``size`` (zero-padded to ``network_shape``), zeros outside."""
    window = tuple(slice(a, a + n) for a, n in zip(start, size))
    padded, crop = pad_to_patch(image[(slice(None), *window)], tuple(network_shape))
    cams = torch.zeros((len(classes), *image.shape[1:]))
    for row, target in enumerate(classes):
        cams[(row, *window)] = segmentation_grad_cam(model, padded[None], target, layer)[0][crop]
    return cams


def to_scan_grid(maps: torch.Tensor, record: UndoRecord) -> torch.Tensor:
    """Maps ``(M, *S_pre)`` on the preprocessed grid -> ``(M, *S_orig)`` on the scan's grid (zero outside the
    crop box), by predict's :func:`undo_preprocessing` behind a dummy background channel."""
    return undo_preprocessing(torch.cat([maps.new_zeros((1, *maps.shape[1:])), maps]), record)[1:]


def resolve_classes(requested: Sequence[int | str], labels: dict[int, str]) -> list[int]:
    """Label values of ``requested`` (values or names, any case), in order, without repeats; empty: every
    foreground class. Raises SegmorphError for a class the run does not know."""
    if not requested:
        return [k for k in sorted(labels) if k > 0]
    by_name = {name.lower(): value for value, name in labels.items()}
    chosen: list[int] = []
    for item in requested:
        text = str(item).strip()
        value = int(text) if re.fullmatch(r"\d+", text) else by_name.get(text.lower())
        if value not in labels:
            known = ", ".join(f"{k} ({n})" for k, n in sorted(labels.items()))
            raise SegmorphError(f"unknown class {text!r}; this run's classes are {known}")
        if value not in chosen:
            chosen.append(value)
    return chosen


def explain_network(predictor: Predictor, image: Image, classes: Sequence[int], options: ExplainOptions) -> NetworkMaps:
    """TTA statistics and per-class Grad-CAM of one network for one scan, on the scan's own grid."""
    plan = predictor.plan
    _check_scan(image, plan)
    prepared, record = preprocess_sample(Sample("scan", image), plan.preprocess)
    data = prepared.image.data
    variants = draw_variants(options.tta, plan.ndim, options.seed)
    mean, variance = tta_statistics(
        predictor.model, data, variants, plan.train.patch_size, predictor.options, predictor.device
    )
    divisor = int(getattr(predictor.model, "divisor", 1))
    start, size, network_shape = cam_window(data.shape[1:], plan.train.patch_size, divisor, mean.argmax(0) > 0)
    maps = [variance[None]]
    if classes:
        layer = explained_layer(predictor.model, options.layer)
        maps.append(class_cams(predictor.model, data, classes, start, size, network_shape, layer))
    on_grid = to_scan_grid(torch.cat(maps), record)
    return NetworkMaps(undo_preprocessing(mean, record), on_grid[0], on_grid[1:], (start, size), variants)


def pool_networks(weighted: Iterable[tuple[float, NetworkMaps]]) -> NetworkMaps:
    """Several networks' maps as one ensemble's (see the module docstring); consumed one network at a time.

    With weights ``w_n`` (normalised by their sum), foreground means ``mu_n = 1 - probabilities_n[0]`` and variances
    ``v_n``: probabilities and CAMs are the weighted means, and the variance is that of the foreground probability over
    all networks' variants together, ``sum w_n v_n + sum w_n (mu_n - mu)**2`` with ``mu = sum w_n mu_n``
    (accumulated with Chan et al.'s pairwise update). Window and variants are the first network's.
    """
    pooled, mean, total = None, None, 0.0
    for weight, maps in weighted:
        foreground = 1.0 - maps.probabilities[0]
        if pooled is None:
            pooled = NetworkMaps(maps.probabilities * weight, maps.variance * weight, maps.cams * weight,
                                 maps.window, maps.variants)  # fmt: skip
            mean = foreground
        else:
            delta = foreground - mean
            pooled.probabilities.add_(maps.probabilities, alpha=weight)
            pooled.cams.add_(maps.cams, alpha=weight)
            pooled.variance.add_(maps.variance, alpha=weight)
            pooled.variance.add_(delta.square(), alpha=total * weight / (total + weight))
            mean = mean + delta * (weight / (total + weight))
        total += weight
    if pooled is None or total <= 0:
        raise ValueError("weighted: expected at least one network with a positive weight")
    pooled.probabilities /= total
    pooled.variance /= total
    pooled.cams /= total
    return pooled


def explain_image(
    predictor: AnyPredictor, image: Image, classes: Sequence[int], options: ExplainOptions
) -> Explanation:  # fmt: skip
    """TTA uncertainty, mean-TTA prediction and per-class Grad-CAM of one scan, on its own grid; for an ensemble
    (a cross-validation run or a find-best folder's predictor) over all its networks (see the module docstring)."""
    networks = ensemble_members(predictor)
    windows: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def each() -> Iterator[tuple[float, NetworkMaps]]:
        for _, member, weight in networks:
            maps = explain_network(member, image, classes, options)
            windows.append(maps.window)
            yield weight, maps

    pooled = pool_networks(each())
    cams = pooled.cams.numpy()
    members = [] if isinstance(predictor, Predictor) else [
        (name, weight, window) for (name, _, weight), window in zip(networks, windows, strict=True)
    ]  # fmt: skip
    return Explanation(
        prediction=most_likely_class(pooled.probabilities), uncertainty=pooled.variance.numpy(),
        cams=dict(zip(classes, cams)), window=pooled.window, layer=options.layer, variants=pooled.variants,
        members=members,
    )  # fmt: skip


def _check_scan(image: Image, plan: Plan) -> None:
    refuse_slice_plan(plan)
    if image.num_channels != len(plan.channel_names):
        raise SegmorphError(f"expected {len(plan.channel_names)} channel(s), got {image.num_channels}")
    if image.ndim != plan.ndim:
        raise SegmorphError(f"expected a {plan.ndim}D image, got {image.ndim}D")


def refuse_slice_plan(plan: Plan) -> None:
    """Explanations need a network of the scans' dimensions: refuse a 2D network on slices of 3D scans in one line."""
    if plan.slice_axis is not None:
        raise SegmorphError("explain needs a network of the scans' dimensions; this run is a 2D network on slices of "
                            "3D scans (--network-dims 2): explain a 3D run, or use predict")  # fmt: skip


def summarise(explanation: Explanation, affine: Affine, names: dict[int, str]) -> dict[str, Any]:
    """The JSON-friendly facts of ``explain.json``: explained classes, each CAM's peak (voxel and mm, LPS),
    mean uncertainty inside and outside the predicted structure, the TTA variants and the CAM window."""
    peaks = {}
    for value, cam in explanation.cams.items():
        index = np.unravel_index(int(np.argmax(cam)), cam.shape) if cam.max() > 0 else None
        peaks[names[value]] = None if index is None else {
            "voxel": [int(i) for i in index], "mm": [round(float(x), 3) for x in affine.voxel_to_world(index)],
        }  # fmt: skip
    inside = explanation.prediction > 0
    uncertainty = explanation.uncertainty
    windows: dict[str, Any] = {"cam_window": _window(explanation.window)}
    if explanation.members:  # an ensemble: every network's window, on its own preprocessed grid
        windows = {"member_networks": [{"name": name, "weight": weight, "cam_window": _window(window)}
                                       for name, weight, window in explanation.members]}  # fmt: skip
    return {
        "members": max(1, len(explanation.members)),
        "classes": {str(value): names[value] for value in explanation.cams},
        "cam_peaks": peaks,
        "cam_layer": explanation.layer,
        **windows,
        "uncertainty": {
            "mean_inside": float(uncertainty[inside].mean()) if inside.any() else None,
            "mean_outside": float(uncertainty[~inside].mean()) if (~inside).any() else None,
            "max": float(uncertainty.max()),
            "predicted_voxels": int(inside.sum()),
        },
        "tta": [
            {"flip_axes": list(v.flip_axes), "scale": round(v.scale, 6), "shift": round(v.shift, 6)}
            for v in explanation.variants
        ],
    }


def _window(window: tuple[tuple[int, ...], tuple[int, ...]]) -> dict[str, Any]:
    return {"start": list(window[0]), "size": list(window[1]), "grid": "preprocessed (plan spacing)"}


def write_explanation(explanation: Explanation, image: Image, folder: Path, names: dict[int, str], title: str) -> None:
    """Write a case's NIfTI maps, PNG overlays and ``explain.json`` into ``folder`` (each file atomically)."""
    affine = image.affine
    prediction = Image(torch.from_numpy(explanation.prediction[None]), affine, is_label=True)
    write_image(prediction, folder / "prediction.nii.gz")
    uncertainty = explanation.uncertainty
    write_image(Image(torch.from_numpy(uncertainty[None].copy()), affine), folder / "uncertainty.nii.gz")
    # drawn as the standard deviation over its maximum: variance concentrates on a few boundary voxels and would
    # leave the rest of the boundary invisible
    deviation = np.sqrt(uncertainty)
    top = float(deviation.max())
    shown = deviation / top if top > 0 else deviation
    label = f"{title}: TTA std of P(foreground), max {top:.2f}"
    save_cam_overlay(image.data, shown, folder / "uncertainty.png", title=label)
    for value, cam in explanation.cams.items():
        name = names[value]
        write_image(Image(torch.from_numpy(cam[None].copy()), affine), folder / f"gradcam_{name}.nii.gz")
        save_cam_overlay(image.data, cam, folder / f"gradcam_{name}.png", title=f"{title}: Grad-CAM {name}")
    atomic_write_text(folder / "explain.json", json.dumps(summarise(explanation, affine, names), indent=2) + "\n")


def file_names(classes: Sequence[int], labels: dict[int, str]) -> dict[int, str]:
    """The name of each class in file names: its label name where every name is a safe, unique file-name part,
    else its value (for every class, so names never collide)."""
    names = {c: labels.get(c, str(c)) for c in classes}
    safe = all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", n) for n in names.values())
    return names if safe and len(set(names.values())) == len(names) else {c: str(c) for c in classes}


def explain_files(
    run_dir: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, options: ExplainOptions = ExplainOptions(),
    device: str = "cpu", show_progress: bool = True,
) -> list[Path]:  # fmt: skip
    """Explain scans (files, folders of files, DICOM series folders) into ``out_dir/<case>/``.

    ``run_dir`` is a single run, a cross-validation run or a find-best folder (an ensemble: explained over all its
    networks, see the module docstring; a fold without a checkpoint is left out with one warning line).

    A case's folder is assembled under a hidden temporary name and renamed into place when complete, so an
    error (bad scan, full disk) leaves no ``out_dir/<case>`` behind, and a rerun replaces a previous one whole.

    Returns:
        The case folders written.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SegmorphError("no such run folder", run_dir)
    scans = list_images(inputs)
    outputs = [Output.folder(out_dir), *(Output.tree(Path(out_dir) / mask_file_name(s, ""), s) for s in scans)]
    runs = [run_dir, *(read_members(run_dir) if is_ensemble_folder(run_dir) else [])]
    check_outputs(outputs, inputs=[*runs, *inputs, *scans])  # before the models load
    predictor = load_predictor(run_dir, device, PredictOptions(checkpoint=options.checkpoint), postprocess="none")
    draw_variants(options.tta, predictor.plan.ndim, options.seed)  # refuse bad options before any work
    classes = _check_networks(predictor, options)
    names = file_names(classes, predictor.plan.labels)
    written = []
    for scan in track(scans, "explain", total=len(scans), enabled=show_progress):
        image = read_image(scan)
        try:
            explanation = explain_image(predictor, image, classes, options)
        except SegmorphError as err:
            raise SegmorphError(err.problem, err.path or scan) from None
        case = mask_file_name(scan, "")
        with _staged_folder(Path(out_dir), case) as folder:
            write_explanation(explanation, image, folder, names, case)
        written.append(Path(out_dir) / case)
    return written


def _check_networks(predictor: AnyPredictor, options: ExplainOptions) -> list[int]:
    """The classes to explain; a network that cannot be explained is refused in one line naming its plan."""
    classes: list[int] = []
    for _, member, _ in ensemble_members(predictor):
        try:
            refuse_slice_plan(member.plan)
            classes = resolve_classes(options.classes, member.plan.labels) if options.cam else []
            explained_layer(member.model, options.layer)
        except SegmorphError as err:
            raise SegmorphError(err.problem, member.run_dir / "plan.json") from None
    return classes


@contextlib.contextmanager
def _staged_folder(out_dir: Path, case: str) -> Iterator[Path]:
    """A hidden staging folder in ``out_dir``, renamed to ``out_dir/case`` when the block ends without error."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / case
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{case}.") as staging:
        folder = Path(staging) / case
        folder.mkdir()
        yield folder
        try:
            if target.exists():
                os.replace(target, Path(staging) / "previous")  # removed with the staging folder
            os.replace(folder, target)
        except OSError as err:
            raise SegmorphError(f"cannot move the finished case into place ({err.strerror})", target) from None
