"""Grad-CAM for classifiers and segmentation networks, and the test-time-augmentation variance map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segmorph.interpret.gradcam import (
    class_log_odds,
    grad_cam,
    save_cam_overlay,
    segmentation_grad_cam,
    tta_variance,
)
from segmorph.nn import UNet
from segmorph.nn.classifiers import SimpleCNN
from segmorph.segmentation.losses import SegmentationLoss

SIZE = 32
HALF = SIZE // 2


def _blob_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise with a bright square in the bottom-right quadrant (both classes); class 1 adds a Gaussian blob
    somewhere in the top-left quadrant ``I, J < 16``: the class depends on that region only."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 0.3, (count, 1, SIZE, SIZE)).astype(np.float32)
    labels = np.arange(count) % 2
    ii, jj = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    for k in range(count):
        di, dj = rng.integers(HALF + 3, SIZE - 3, 2)
        images[k, 0, di - 2 : di + 2, dj - 2 : dj + 2] += 2.0  # distractor, uninformative
        ci, cj = rng.integers(5, HALF - 5, 2)
        if labels[k]:
            images[k, 0] += 2.0 * np.exp(-((ii - ci) ** 2 + (jj - cj) ** 2) / (2 * 2.0**2))
    return torch.from_numpy(images), torch.from_numpy(labels)


def _train(model: nn.Module, loss_fn, images, targets, steps: int, lr: float, batch: int) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = torch.randint(images.shape[0], (batch,), generator=generator)
        loss = loss_fn(model(images[rows]), targets[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_classifier_cam_peaks_in_the_region_that_decides_the_class(one_thread):
    torch.manual_seed(0)
    images, labels = _blob_images(128, seed=0)
    model = _train(SimpleCNN(2, 1, 2, (8, 16)), F.cross_entropy, images, labels, steps=300, lr=3e-3, batch=16)
    test_images, test_labels = _blob_images(20, seed=1)
    with torch.no_grad():
        assert (model(test_images).argmax(1) == test_labels).float().mean() >= 0.85
    cams = grad_cam(model, test_images[test_labels == 1], target_class=1)
    assert cams.shape == (10, SIZE, SIZE) and cams.min() >= 0 and cams.max() <= 1
    peaks = np.array([np.unravel_index(int(cam.argmax()), cam.shape) for cam in cams])
    assert (peaks < HALF).all(1).mean() >= 0.9, peaks.tolist()


def test_cam_of_an_untrained_3d_classifier_is_a_volume_in_unit_range():
    torch.manual_seed(0)
    cams = grad_cam(SimpleCNN(3, 1, 2, (4, 8)), torch.randn(2, 1, 16, 12, 8))
    assert cams.shape == (2, 16, 12, 8) and cams.min() >= 0 and cams.max() <= 1
    with pytest.raises(ValueError, match="images"):
        grad_cam(SimpleCNN(2, 1, 2, (4, 8)), torch.randn(1, 16, 16))


def test_class_log_odds_is_the_logit_difference_for_two_classes():
    logits = torch.tensor([[1.0, 3.0], [2.0, -1.0]])
    assert class_log_odds(logits, torch.tensor([1, 1])).tolist() == pytest.approx([2.0, -3.0])
    three = torch.tensor([[0.0, 1.0, 2.0]])
    assert class_log_odds(three, torch.tensor([2])).item() == pytest.approx(2.0 - np.log(1 + np.e))


def _disc_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 0.3, (count, 1, SIZE, SIZE)).astype(np.float32)
    labels = np.zeros((count, 1, SIZE, SIZE), dtype=np.int64)
    ii, jj = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    for k in range(count):
        ci, cj = rng.integers(8, SIZE - 8, 2)
        disc = (ii - ci) ** 2 + (jj - cj) ** 2 <= 16
        images[k, 0][disc] += 1.5
        labels[k, 0][disc] = 1
    return torch.from_numpy(images), torch.from_numpy(labels)


def test_segmentation_cam_peaks_on_the_object(one_thread):
    torch.manual_seed(0)
    images, labels = _disc_images(32, seed=0)
    model = _train(UNet(2, 1, 2, (8, 16)), SegmentationLoss(0.5), images, labels, steps=80, lr=1e-2, batch=8)
    test_images, test_labels = _disc_images(8, seed=1)
    cams = segmentation_grad_cam(model, test_images, target_class=1)
    assert cams.shape == (8, SIZE, SIZE)
    on_object = [bool(test_labels[k, 0].flatten()[int(cam.argmax())]) for k, cam in enumerate(cams)]
    assert np.mean(on_object) >= 0.75, on_object


def test_segmentation_cam_3d_and_bad_arguments():
    torch.manual_seed(0)
    model = UNet(3, 1, 3, (4, 8))
    cams = segmentation_grad_cam(model, torch.randn(1, 1, 16, 8, 8), target_class=2, region="image")
    assert cams.shape == (1, 16, 8, 8)
    with pytest.raises(ValueError, match="multiples of 2"):
        segmentation_grad_cam(model, torch.randn(1, 1, 15, 8, 8), target_class=1)
    with pytest.raises(ValueError, match="target_class"):
        segmentation_grad_cam(model, torch.randn(1, 1, 16, 8, 8), target_class=5)


def test_tta_variance_is_zero_for_a_flip_equivariant_network_and_not_for_unet():
    torch.manual_seed(0)
    image = torch.randn(1, 12, 10, 8)
    pointwise = nn.Conv3d(1, 2, kernel_size=1)  # commutes with every flip
    assert torch.allclose(tta_variance(pointwise, image), torch.zeros(12, 10, 8), atol=1e-10)
    variance = tta_variance(UNet(3, 1, 2, (4, 8)), image, mirror_axes=(0, 2))
    assert variance.shape == (12, 10, 8) and variance.max() > 0 and variance.max() <= 0.25
    with pytest.raises(ValueError, match="mirror_axes"):
        tta_variance(pointwise, image, mirror_axes=(3,))


def test_save_cam_overlay_writes_pngs(tmp_path):
    image, cam = torch.randn(1, 20, 16), torch.rand(20, 16)
    assert save_cam_overlay(image, cam, tmp_path / "a.png").stat().st_size > 0
    assert save_cam_overlay(torch.randn(1, 8, 8, 6), torch.rand(8, 8, 6), tmp_path / "b.png", num_slices=3).is_file()
    with pytest.raises(ValueError, match="cam"):
        save_cam_overlay(image, torch.rand(16, 20), tmp_path / "c.png")
