"""Networks: U-Net (2D/3D) and an FCN baseline, built from small blocks."""

from segmorph.nn.fcn import FCN
from segmorph.nn.unet import UNet, build_network, count_parameters

__all__ = ["FCN", "UNet", "build_network", "count_parameters"]
