"""Networks: U-Net (2D/3D), an FCN baseline and image classifiers, built from small blocks; one registry builds
any of them from its stored arguments (:mod:`segmorph.nn.registry`)."""

from segmorph.nn.fcn import FCN
from segmorph.nn.registry import NETWORKS, build_network, check_network_config, network_names
from segmorph.nn.unet import UNet, count_parameters

__all__ = [
    "FCN", "NETWORKS", "UNet", "build_network", "check_network_config", "count_parameters", "network_names",
]  # fmt: skip
