"""Networks: U-Net (2D/3D), an FCN baseline and image classifiers, built from small blocks; one registry builds
any of them from its stored arguments (:mod:`segmorph.nn.registry`). Names below are imported on first use, so
that reading the network names (:mod:`segmorph.nn.names`) needs no torch."""

from __future__ import annotations

from segmorph.lazy import lazy_exports

_EXPORTS = {
    "FCN": "segmorph.nn.fcn",
    "NETWORKS": "segmorph.nn.registry",
    "UNet": "segmorph.nn.unet",
    "build_network": "segmorph.nn.registry",
    "check_network_config": "segmorph.nn.registry",
    "count_parameters": "segmorph.nn.unet",
    "network_names": "segmorph.nn.names",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
