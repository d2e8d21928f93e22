"""``TrainConfig.freeze_encoder_steps``: the encoder gets no update for the first N steps, the rest trains."""

import pytest
import torch
from torch import nn

from segmorph.engine.loop import TrainConfig, fit_task
from segmorph.nn import UNet
from segmorph.nn.classifiers import ResNet
from segmorph.nn.transfer import encoder_parameter_names


class RegressionTask:
    """Random inputs, a fixed random target: every parameter gets a gradient."""

    score_key = "none"
    score_parts = ()

    def __init__(self, input_shape, target_fn):
        self.input_shape, self.target_fn = input_shape, target_fn

    def batch_loss(self, model, generator, device, amp):
        x = torch.randn(self.input_shape, generator=generator)
        return nn.functional.mse_loss(model(x), self.target_fn(x))

    def validate(self, model, device):
        return []


def _snapshots(model, task, steps, frozen, tmp_path):
    """The parameters before training and after each step."""
    snapshots = [{k: v.detach().clone() for k, v in model.named_parameters()}]

    def keep(record):
        snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})

    config = TrainConfig(patch_size=(8, 8), batch_size=2, max_steps=steps, steps_per_epoch=1, amp=False, warmup=0.0,
                         freeze_encoder_steps=frozen, learning_rate=1e-2)  # fmt: skip
    fit_task(model, task, config, tmp_path, {}, callbacks=[keep], show_progress=False)
    return snapshots


def _changed(before, after, names):
    return {name for name in names if not torch.equal(before[name], after[name])}


@pytest.mark.parametrize("network", ["unet", "resnet"])
def test_encoder_is_unchanged_for_the_frozen_steps_and_trains_after(network, tmp_path):
    torch.manual_seed(0)
    if network == "unet":
        model = UNet(2, 1, 2, (4, 8))
        task = RegressionTask((2, 1, 8, 8), lambda x: torch.cat([x, -x], 1))
        assert all(name.startswith("encoder.") for name in encoder_parameter_names(model))
    else:
        model = ResNet(2, 1, 3, width=4, blocks=(1, 1, 1, 1), stem_stride=1)
        task = RegressionTask((4, 1, 16, 16), lambda x: x.mean((2, 3)).repeat(1, 3))
        assert not any(name.startswith("fc.") for name in encoder_parameter_names(model))
    encoder = set(encoder_parameter_names(model))
    others = {name for name, _ in model.named_parameters()} - encoder
    assert encoder and others
    frozen = 3
    snapshots = _snapshots(model, task, frozen + 1, frozen, tmp_path)
    start, after_frozen, after_next = snapshots[0], snapshots[frozen], snapshots[frozen + 1]
    assert _changed(start, after_frozen, encoder) == set()  # bitwise unchanged for N steps
    assert _changed(start, snapshots[1], others) == others  # the rest trains from step 1
    assert _changed(after_frozen, after_next, encoder)  # step N + 1 updates the encoder


def test_freeze_refuses_a_negative_count_and_a_network_without_encoder(tmp_path):
    with pytest.raises(ValueError, match="freeze_encoder_steps"):
        TrainConfig(patch_size=(8, 8), max_steps=1, freeze_encoder_steps=-1)
    config = TrainConfig(patch_size=(8, 8), max_steps=1, freeze_encoder_steps=2, amp=False)
    task = RegressionTask((2, 3), lambda x: x)
    with pytest.raises(ValueError, match="freeze_encoder_steps: a Linear has no encoder"):
        fit_task(nn.Linear(3, 3), task, config, tmp_path, {}, show_progress=False)
