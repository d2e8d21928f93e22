"""Where a network looked: Grad-CAM for classifiers and segmentation networks, and a test-time-augmentation variance map.

Grad-CAM (Selvaraju et al. 2017): for a target score ``y`` and the activations ``A`` ``(B, F, *s)`` of one layer,
each feature map's weight is the spatial mean of ``dy/dA``; the map is ``ReLU(sum_f w_f A_f)``, upsampled
(bi/trilinear) to the input grid and scaled to 0..1 per image (all zeros where nothing contributes).

* Classifiers: ``y`` is the target class's log-odds against the other classes (:func:`class_log_odds`; with two
  classes the logit difference), which is what the decision depends on; the layer is the model's ``cam_layer``
  (its last convolution block) unless given.
* Segmentation networks (:class:`segmorph.nn.UNet`), per class ``c`` (Vinogradova et al. 2020): ``y`` is the sum
  of class ``c``'s logits over the voxels predicted as ``c`` (``region="predicted"``; where no voxel is predicted
  as ``c``, over the whole image instead) or over the whole image (``region="image"``). The default layer is the
  U-Net's bottleneck (deepest encoder block), the most semantic and least spatially trivial one.

All maps have the input's spatial axes ``(I, J[, K])`` (see :mod:`segmorph.geometry`); 3D inputs give volumes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segmorph.engine.sliding_window import sliding_window_logits
from segmorph.plots import normalise_for_display, plt, save_figure

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def _check_batch(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim not in (4, 5) or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a floating (B, C, I, J) or (B, C, I, J, K) tensor, got {got}")


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _layer_gradients(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, score_fn: ScoreFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations of ``layer`` and the gradients of ``score_fn(model(images))`` with respect to them, in eval mode."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            inputs = images.detach().to(_device_of(model)).requires_grad_(True)  # a graph even with frozen weights
            score = score_fn(model(inputs))
            if not captured:
                raise ValueError("layer: is not used by the model's forward pass")
            gradients = torch.autograd.grad(score, captured[-1])[0]
    finally:
        handle.remove()
        model.train(was_training)
    return captured[-1].detach(), gradients.detach()


def _cam_from(activations: torch.Tensor, gradients: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """``(B, *spatial_shape)`` Grad-CAM maps scaled to 0..1 per image."""
    spatial_axes = tuple(range(2, activations.ndim))
    weights = gradients.float().mean(spatial_axes, keepdim=True)
    cam = torch.relu((weights * activations.float()).sum(1, keepdim=True))
    mode = "bilinear" if activations.ndim == 4 else "trilinear"
    cam = F.interpolate(cam, size=tuple(spatial_shape), mode=mode, align_corners=False)[:, 0]
    flat = cam.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    span = (high - low).view(-1, *[1] * (cam.ndim - 1))
    scaled = (cam - low.view_as(span)) / span.clamp_min(1e-12)
    return torch.where(span > 1e-12, scaled, torch.zeros_like(cam)).cpu()


def class_log_odds(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``(B,)`` log-odds of ``classes[b]`` against the other classes: ``z_c - logsumexp(z_k, k != c)``.

    With two classes this is ``z_c - z_other``. Unlike ``z_c`` alone it is what the softmax decision depends on
    (a network may put its evidence into either logit), and unlike ``log p_c`` it does not saturate.
    """
    chosen = logits.gather(1, classes[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(classes, logits.shape[1]).bool(), float("-inf"))
    return chosen - torch.logsumexp(others, dim=1)


def grad_cam(
    model: nn.Module, images: torch.Tensor, target_class: int | Sequence[int] | None = None,
    layer: nn.Module | None = None,
) -> torch.Tensor:  # fmt: skip
    """Grad-CAM of a classifier.

    Args:
        model: Maps ``(B, C, *S)`` to logits ``(B, K)``; run in eval mode (its mode is restored).
        images: ``(B, C, *S)`` prepared inputs, 2D or 3D.
        target_class: Class explained: one for all images, one per image, or None for each image's predicted class.
        layer: Module whose output is explained; default ``model.cam_layer``.

    Returns:
        ``(B, *S)`` float32 maps in 0..1 on the CPU.
    """
    _check_batch(images)
    layer = layer if layer is not None else model.cam_layer
    targets: list[int] | None = None
    if target_class is not None:
        targets = [int(target_class)] * images.shape[0] if isinstance(target_class, int) else list(target_class)
        if len(targets) != images.shape[0]:
            raise ValueError(f"target_class: expected {images.shape[0]} classes (one per image), got {len(targets)}")

    def score(logits: torch.Tensor) -> torch.Tensor:
        chosen = logits.argmax(1) if targets is None else torch.tensor(targets, device=logits.device)
        return class_log_odds(logits.float(), chosen).sum()

    activations, gradients = _layer_gradients(model, layer, images, score)
    return _cam_from(activations, gradients, images.shape[2:])


def default_segmentation_layer(model: nn.Module) -> nn.Module:
    """The deepest encoder block of a U-Net-like model (``model.encoder[-1]``)."""
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ValueError("layer: the model has no encoder; pass the layer to explain")
    return encoder[-1]


def segmentation_grad_cam(
    model: nn.Module, images: torch.Tensor, target_class: int, layer: nn.Module | None = None,
    region: str = "predicted",
) -> torch.Tensor:  # fmt: skip
    """Grad-CAM of one class of a segmentation network (see the module docstring for the class score).

    Args:
        model: Maps ``(B, C, *S)`` to logits ``(B, K, *S)`` in eval mode (e.g. :class:`segmorph.nn.UNet`).
        images: ``(B, C, *S)``, sizes the model accepts (multiples of ``model.divisor``).
        target_class: Class explained, ``0 <= target_class < K``.
        layer: Module whose output is explained; default the deepest encoder block.
        region: ``"predicted"`` (the voxels predicted as the class) or ``"image"`` (every voxel).

    Returns:
        ``(B, *S)`` float32 maps in 0..1 on the CPU (a volume per image in 3D).
    """
    _check_batch(images)
    if region not in ("predicted", "image"):
        raise ValueError(f"region: expected 'predicted' or 'image', got {region!r}")
    divisor = int(getattr(model, "divisor", 1))
    if any(s % divisor for s in images.shape[2:]):
        raise ValueError(f"images: spatial sizes {tuple(images.shape[2:])} must be multiples of {divisor}")
    layer = layer if layer is not None else default_segmentation_layer(model)

    def score(logits: torch.Tensor) -> torch.Tensor:
        if not 0 <= target_class < logits.shape[1]:
            raise ValueError(f"target_class: expected 0..{logits.shape[1] - 1}, got {target_class}")
        class_logits = logits[:, target_class]
        if region == "image":
            return class_logits.sum()
        mask = (logits.argmax(1) == target_class).to(class_logits.dtype)
        empty = mask.flatten(1).sum(1) == 0
        mask[empty] = 1.0  # nothing predicted as the class: explain the class score over the whole image
        return (class_logits * mask).sum()

    activations, gradients = _layer_gradients(model, layer, images, score)
    return _cam_from(activations, gradients, images.shape[2:])


def tta_variance(
    model: nn.Module, image: torch.Tensor, mirror_axes: Sequence[int] | None = None,
    patch_size: Sequence[int] | None = None, device: str | torch.device | None = None, overlap: float = 0.5,
    amp: bool = False,
) -> torch.Tensor:  # fmt: skip
    """Per-voxel variance of the foreground probability over test-time mirrorings.

    For every combination of flips along ``mirror_axes`` (the identity included), the flipped image is
    segmented (sliding window, softmax), the foreground probability ``1 - p(background)`` is flipped back, and
    the population variance (divided by the number of flips) is taken per voxel. High values mark voxels whose
    call depends on the image's orientation: a cheap uncertainty map.

    Args:
        model: Segmentation network mapping ``(B, C, *P)`` to logits ``(B, K, *P)``, class 0 the background.
        image: ``(C, *S)`` prepared (normalised) input, 2D or 3D.
        mirror_axes: Spatial axes (0 = I) to flip; None: all.
        patch_size: Sliding-window tile; None: the whole image, rounded up to ``model.divisor``.
        device: Where the network runs; None: the model's device.
        overlap: Tile overlap (with a ``patch_size`` smaller than the image).
        amp: bfloat16 autocast where the device runs it fast (:mod:`segmorph.engine.autocast`).

    Returns:
        ``(*S)`` float32 variances in ``[0, 0.25]`` on the CPU, the input's grid.
    """
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise ValueError(f"image: expected a (C, I, J) or (C, I, J, K) tensor, got {getattr(image, 'shape', image)}")
    ndim = image.ndim - 1
    axes = tuple(range(ndim)) if mirror_axes is None else tuple(int(a) for a in mirror_axes)
    if any(not 0 <= a < ndim for a in axes):
        raise ValueError(f"mirror_axes: spatial axes must be in 0..{ndim - 1}, got {axes}")
    divisor = int(getattr(model, "divisor", 1))
    patch = tuple(patch_size) if patch_size else tuple(math.ceil(s / divisor) * divisor for s in image.shape[1:])
    device = torch.device(device) if device is not None else _device_of(model)
    foreground = []
    for count in range(len(axes) + 1):
        for flipped in itertools.combinations(axes, count):
            dims = tuple(a + 1 for a in flipped)
            moved = image.flip(dims) if dims else image
            probabilities = sliding_window_logits(model, moved, patch, overlap=overlap, device=device, amp=amp)
            fg = 1.0 - probabilities[0]
            foreground.append((fg.flip(tuple(a - 1 for a in dims)) if dims else fg).cpu())
    return torch.stack(foreground).var(0, unbiased=False)


def save_cam_overlay(
    image: np.ndarray | torch.Tensor, cam: np.ndarray | torch.Tensor, path: str | Path, num_slices: int = 3,
    title: str = "", alpha: float = 0.45,
) -> Path:  # fmt: skip
    """PNG of the image with the heat map drawn over it (atomic write).

    2D: the image and the overlay side by side. 3D: ``num_slices`` slices along K around the map's peak.

    Args:
        image: ``(C, I, J[, K])`` (the first channel is shown, RGB as colour).
        cam: ``(I, J[, K])`` map in 0..1 on the same grid.
        path: Output PNG.
        num_slices: Slices shown for 3D maps.
        title: Figure title.
        alpha: Opacity of the heat map at its maximum.
    """
    image = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    cam = cam.detach().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam)
    if image.shape[1:] != cam.shape:
        raise ValueError(f"cam: expected spatial shape {image.shape[1:]} (the image's), got {cam.shape}")
    if cam.ndim == 2:
        panels = [(image, None, "image"), (image, cam, "Grad-CAM")]
    else:
        panels = [(image[..., k], cam[..., k], f"slice {k}") for k in _slices_around_peak(cam, num_slices)]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.6), squeeze=False)
    for axis, (picture, heat, name) in zip(axes[0], panels):
        _draw_heat(axis, picture, heat, name, alpha)
    figure.suptitle(title)
    return save_figure(figure, path)


def _slices_around_peak(cam: np.ndarray, count: int) -> list[int]:
    peak = int(np.unravel_index(int(np.argmax(cam)), cam.shape)[-1])
    depth = cam.shape[-1]
    first = min(max(peak - count // 2, 0), max(depth - count, 0))
    return list(range(first, min(first + count, depth)))


def _draw_heat(axis: plt.Axes, picture: np.ndarray, heat: np.ndarray | None, title: str, alpha: float) -> None:
    if picture.shape[0] == 3:
        background = np.stack([normalise_for_display(c) for c in picture], -1)
    else:
        background = np.repeat(normalise_for_display(picture[0])[..., None], 3, -1)
    if heat is not None:
        colours = plt.get_cmap("jet")(np.clip(heat, 0, 1))[..., :3]
        weight = alpha * np.clip(heat, 0, 1)[..., None]
        background = background * (1 - weight) + colours * weight
    axis.imshow(np.clip(np.swapaxes(background, 0, 1), 0, 1), origin="upper")  # rows = J, columns = I
    axis.set_title(title, fontsize=9)
    axis.axis("off")
