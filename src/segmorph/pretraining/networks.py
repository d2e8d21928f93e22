"""The networks pretraining trains, stored so that a later run can load them by name (:mod:`segmorph.nn.transfer`).

* U-Net: the segmentation plan's U-Net itself, its heads predicting the input channels, without deep supervision
  (:func:`unet_pretraining_config`). Its checkpoint keys are the U-Net's own names (``transfer_prefix`` "").
* Classifiers (ResNet, SimpleCNN): :class:`ClassifierAutoencoder`, the classifier under ``network.`` (without its
  final linear layer, which is not pretrained) and a light upsampling decoder under ``decoder.``; the checkpoint
  keys under ``network.`` are the classifier's own names once the prefix (:data:`CLASSIFIER_PREFIX`) is removed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segmorph.nn.blocks import head_layer
from segmorph.nn.classifiers import ConvBNReLU, ResNet, SimpleCNN
from segmorph.nn.registry import build_network

CLASSIFIER_PREFIX = "network."
"""Where :class:`ClassifierAutoencoder` keeps the classifier's weights (the checkpoint's ``transfer_prefix``)."""
MIN_DECODER_CHANNELS = 8


def unet_pretraining_config(network: dict[str, Any]) -> dict[str, Any]:
    """The U-Net config of a segmentation plan made into an autoencoder's: ``num_classes`` = input channels,
    no deep supervision; every other argument (depth, width, residual blocks) as the plan says.

    Example:
        >>> unet_pretraining_config({"name": "unet", "ndim": 3, "in_channels": 1, "num_classes": 3,
        ...                          "features": [16, 32], "residual": False, "deep_supervision": True})["num_classes"]
        1
    """
    return {**network, "num_classes": int(network["in_channels"]), "deep_supervision": False}


class ClassifierAutoencoder(nn.Module):
    """A classifier's convolutional body as encoder, a light decoder back to the input grid.

    Input ``(B, C, *S)`` as the classifier takes it; output ``(B, C, *S)``, the reconstruction. The decoder
    doubles the resolution as often as the body halves it, each time a 3x3 conv-BN-ReLU halving the channels (at
    least :data:`MIN_DECODER_CHANNELS`), resamples to ``S`` (sizes that are not a multiple of the body's stride),
    then a 1x1 convolution gives the ``C`` channels.

    Args:
        classifier: The classifier's constructor config (``{"name": "resnet"|"simplecnn", ...}``); its final
            linear layer is dropped (an ``nn.Identity``).
    """

    def __init__(self, classifier: dict[str, Any]) -> None:
        super().__init__()
        self.config = {"classifier": dict(classifier)}
        self.network = build_network(classifier)
        if not isinstance(self.network, (ResNet, SimpleCNN)):
            raise ValueError(f"classifier: expected a resnet or simplecnn config, got {classifier.get('name')!r}")
        self.network.fc = nn.Identity()  # the final linear layer is trained on the labelled images only
        ndim, channels, stride = body_shape(self.network)
        stages, width = [], channels
        for _ in range(int(round(math.log2(stride)))):
            out = max(width // 2, MIN_DECODER_CHANNELS)
            stages.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), ConvBNReLU(ndim, width, out)))
            width = out
        head = head_layer(ndim, width, int(classifier["in_channels"]))
        self.decoder = nn.ModuleDict({"stages": nn.Sequential(*stages), "head": head})

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's features before global pooling ``(B, F, *S / stride)``."""
        return body_features(self.network, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.decoder["stages"](self.encode(x))
        if tuple(y.shape[2:]) != tuple(x.shape[2:]):
            y = F.interpolate(y, size=tuple(x.shape[2:]), mode="bilinear" if x.ndim == 4 else "trilinear",
                              align_corners=False)  # fmt: skip
        return self.decoder["head"](y)


def body_shape(network: nn.Module) -> tuple[int, int, int]:
    """``(ndim, feature channels, total stride)`` of a ResNet's or SimpleCNN's convolutional body."""
    config = network.config
    if isinstance(network, ResNet):
        stages = len(config["blocks"])
        return config["ndim"], config["width"] * 2 ** (stages - 1), config["stem_stride"] * 2 * 2 ** (stages - 1)
    if isinstance(network, SimpleCNN):
        return config["ndim"], config["features"][-1], 2 ** (len(config["features"]) - 1)
    raise ValueError(f"network: expected a ResNet or SimpleCNN, got {type(network).__name__}")


def body_features(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A ResNet's or SimpleCNN's features before global pooling."""
    if isinstance(network, ResNet):
        return network.stages(network.stem(x))
    if isinstance(network, SimpleCNN):
        return network.levels(x)
    raise ValueError(f"network: expected a ResNet or SimpleCNN, got {type(network).__name__}")
