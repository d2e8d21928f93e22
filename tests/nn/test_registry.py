"""The network registry: every network by name, from its stored arguments; bad arguments refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from segmorph.nn import FCN, UNet, build_network, check_network_config, network_names
from segmorph.nn.classifiers import Ensemble, ResNet, SimpleCNN
from segmorph.nn.registry import change_network_config, network_arguments

UNET = {"name": "unet", "ndim": 2, "in_channels": 1, "num_classes": 3, "features": [4, 8], "residual": False,
        "deep_supervision": True}  # fmt: skip


def test_every_network_rebuilds_from_its_stored_config():
    networks = [UNet(2, 1, 3, (4, 8)), FCN(2, 1, 3, (4, 8)), SimpleCNN(2, 1, 2, (4, 8)), ResNet(2, 1, 2, width=4),
                Ensemble([SimpleCNN(2, 1, 2, (4, 8)).config] * 2)]  # fmt: skip
    names = ["unet", "fcn", "simplecnn", "resnet", "ensemble"]
    for network, name in zip(networks, names):
        config = json.loads(json.dumps({"name": name, **network.config}))
        check_network_config(config)
        rebuilt = build_network(config)
        assert type(rebuilt) is type(network)
        assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in network.parameters()]
    assert type(build_network({k: v for k, v in UNET.items() if k != "name"})) is UNet  # early plans: no name
    assert network_names("segmentation") == ("unet", "fcn") and network_names("classification") == (
        "resnet",
        "simplecnn",
    )


def test_inference_settings_apply_where_the_network_takes_them():
    assert build_network(UNET, deep_supervision=False).deep_supervision is False
    fcn = build_network({"name": "fcn", "ndim": 2, "in_channels": 1, "num_classes": 3, "features": [4, 8]},
                        deep_supervision=False)  # fmt: skip
    assert isinstance(fcn, FCN) and fcn(torch.zeros(1, 1, 8, 8)).shape == (1, 3, 8, 8)


def test_a_new_name_keeps_the_arguments_the_new_network_takes():
    assert change_network_config(UNET, {"name": "fcn"}) == {"name": "fcn", "ndim": 2, "in_channels": 1,
                                                            "num_classes": 3, "features": [4, 8]}  # fmt: skip
    assert network_arguments("fcn") == (["ndim", "in_channels", "num_classes"], ["features"])


def test_bad_configs_are_refused_naming_the_argument():
    cases = [
        ({**UNET, "name": "vgg"}, "name: unknown network 'vgg'; known: unet, fcn, simplecnn, resnet, ensemble"),
        ({**UNET, "name": "fcn"}, "residual: fcn takes no argument 'residual'"),
        ({"name": "fcn", "ndim": 2}, "in_channels: fcn needs it"),
        ({**UNET, "features": [4]}, "features: need at least 2 levels"),
        ({**UNET, "features": [4, 0]}, "features: expected a list of positive integers"),
        ({**UNET, "ndim": 4}, "ndim: expected 2 or 3, got 4 (unet)"),
    ]  # fmt: skip
    for config, message in cases:
        with pytest.raises(ValueError) as err:
            check_network_config(config)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_network_beyond_the_memory_budget_is_refused_before_any_weight_is_allocated(monkeypatch):
    from segmorph.errors import SegmorphError
    from segmorph.readchecks import MAX_VOXELS_ENV

    small = build_network(UNET)
    parameters = sum(p.numel() for p in small.parameters())
    monkeypatch.setenv(MAX_VOXELS_ENV, str(4 * parameters))  # weights, gradients and two moments: just fits
    build_network(UNET)
    monkeypatch.setenv(MAX_VOXELS_ENV, str(4 * parameters - 1))
    with pytest.raises(SegmorphError, match=f"unet network of {parameters:,} parameters"):
        build_network(UNET)
