import pytest
import torch

from segmorph.segmentation.losses import SegmentationLoss, cross_entropy_loss, dice_ce_loss, soft_dice_loss


def _perfect_logits(target: torch.Tensor, classes: int, scale: float = 50.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(target[:, 0], classes).movedim(-1, 1).double() * scale


def test_perfect_prediction_has_near_zero_dice_and_ce():
    target = torch.randint(0, 3, (2, 1, 6, 5, 4))
    logits = _perfect_logits(target, 3)
    assert soft_dice_loss(logits, target).item() < 1e-6
    assert cross_entropy_loss(logits, target).item() < 1e-6


def test_dice_known_answer_half_overlap():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[..., :2, :] = 1  # 8 foreground voxels
    logits = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    logits[:, 1, :, :2] = 100.0  # predicts the left half: overlap 4 of 8 + 8
    logits[:, 0, :, 2:] = 100.0
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.5, abs=1e-4)


def test_background_is_excluded_by_default():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 0] = 100.0  # perfect background, class 1 absent from both -> Dice 1
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-4)


def test_alpha_mixes_the_two_terms():
    target = torch.randint(0, 2, (1, 1, 5, 5))
    logits = torch.randn(1, 2, 5, 5)
    mixed = dice_ce_loss(logits, target, alpha=0.3)
    expected = 0.3 * cross_entropy_loss(logits, target) + 0.7 * soft_dice_loss(logits, target)
    assert mixed.item() == pytest.approx(expected.item(), rel=1e-6)


def test_deep_supervision_weights_outputs():
    target = torch.randint(0, 2, (1, 1, 8, 8))
    outputs = [torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)]
    loss = SegmentationLoss(alpha=0.5, deep_supervision_weights=(1.0, 0.5))(outputs, target)
    coarse = torch.nn.functional.interpolate(target.float(), size=(4, 4), mode="nearest").long()
    expected = (dice_ce_loss(outputs[0], target) * 1.0 + dice_ce_loss(outputs[1], coarse) * 0.5) / 1.5
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradcheck_float64():
    target = torch.randint(0, 3, (1, 1, 3, 3, 2))
    logits = torch.randn(1, 3, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: soft_dice_loss(x.double(), target), (logits,))


def test_shape_mismatch_names_target():
    with pytest.raises(ValueError, match="target"):
        dice_ce_loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha"):
        dice_ce_loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long), alpha=2.0)
