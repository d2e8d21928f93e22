"""Every network by name, built from its stored constructor arguments (``{"name": ..., **arguments}``).

Checkpoints and plans store a network as that dict (JSON), so one function rebuilds any of them and one check
refuses a bad one while the settings are read, before anything is trained or written. Command-line choices
(``classify train --model``) read :func:`segmorph.nn.names.network_names`, which needs no torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from segmorph.nn.classifiers import Ensemble, ResNet, SimpleCNN
from segmorph.nn.fcn import FCN
from segmorph.nn.unet import UNet
from segmorph.readchecks import check_voxel_budget

NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet, "fcn": FCN, "simplecnn": SimpleCNN, "resnet": ResNet, "ensemble": Ensemble,
}  # fmt: skip
"""Network constructors by the ``name`` stored with their arguments."""

DEFAULT_NAME = "unet"  # plans written before networks carried a name are U-Nets


def network_arguments(name: str) -> tuple[list[str], list[str]]:
    """``(required, optional)`` constructor arguments of the network called ``name``.

    Raises:
        ValueError: Unknown name (the message lists the known ones).
    """
    if name not in NETWORKS:
        raise ValueError(f"name: unknown network {name!r}; known: {', '.join(NETWORKS)}")
    parameters = list(inspect.signature(NETWORKS[name]).parameters.values())
    required = [p.name for p in parameters if p.default is inspect.Parameter.empty]
    optional = [p.name for p in parameters if p.default is not inspect.Parameter.empty]
    return required, optional


def check_network_config(config: dict[str, Any]) -> None:
    """Refuse, with one line, a network config that would not build: unknown name, unknown or missing
    arguments, or values the constructor rejects (it is built on the ``meta`` device: no memory, no time).

    Raises:
        ValueError: Starting with the offending argument's name.
    """
    name = config.get("name", DEFAULT_NAME)
    required, optional = network_arguments(name)
    arguments = {k: v for k, v in config.items() if k != "name"}
    for key in arguments:
        if key not in required + optional:
            raise ValueError(
                f"{key}: {name} takes no argument {key!r}; its arguments: {', '.join(required + optional)}"
            )
    missing = [k for k in required if k not in arguments]
    if missing:
        raise ValueError(f"{missing[0]}: {name} needs it (required: {', '.join(required)})")
    for key in ("features", "blocks"):
        value = arguments.get(key)
        if value is not None and not (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            raise ValueError(f"{key}: expected a list of positive integers, got {value!r}")
    try:
        with torch.device("meta"):
            NETWORKS[name](**arguments)
    except (ValueError, TypeError, RuntimeError, IndexError, ZeroDivisionError) as err:
        message = str(err).splitlines()[0]
        if message.split(":", 1)[0] in arguments:  # the constructor named the argument
            raise ValueError(f"{message} ({name})") from None
        raise ValueError(f"{name} refuses its arguments ({message}): {arguments}") from None


def change_network_config(config: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``changes`` applied; a change of ``name`` keeps only the arguments the new network takes.

    ``{"name": "fcn"}`` on a U-Net config drops ``residual`` and ``deep_supervision`` (FCN has neither)
    and keeps ``ndim``, ``in_channels``, ``num_classes`` and ``features``. A changed argument the network
    does not take is refused by :func:`check_network_config`.
    """
    name = changes.get("name", config.get("name", DEFAULT_NAME))
    required, optional = network_arguments(name)
    kept = {k: v for k, v in config.items() if k in required + optional}
    return {"name": name, **kept, **{k: v for k, v in changes.items() if k != "name"}}


def build_network(config: dict[str, Any], **settings: Any) -> nn.Module:
    """Build a network from its stored constructor arguments (``{"name": "unet"|"fcn"|"resnet"|..., ...}``).

    Args:
        config: ``name`` (default ``"unet"``, as in early plans) and the constructor's arguments.
        settings: Arguments set only where the network takes them, e.g. ``deep_supervision=False`` for
            inference (FCN has no deep supervision to turn off).

    Raises:
        ValueError: Unknown name.
        SegmorphError: A network too large for the memory budget (counted on the meta device, before any
            weight is allocated: weights, gradients and the optimiser's two moments, four values a parameter).
    """
    name = config.get("name", DEFAULT_NAME)
    required, optional = network_arguments(name)
    arguments = {k: v for k, v in config.items() if k != "name"}
    arguments.update({k: v for k, v in settings.items() if k in required + optional})
    check_network_size(name, arguments)
    return NETWORKS[name](**arguments)


def check_network_size(name: str, arguments: dict[str, Any]) -> int:
    """The parameter count of network ``name`` built with ``arguments``, counted on the meta device (nothing is
    allocated); refused when weights, gradients and the optimiser's two moments (four values a parameter) would
    exceed the memory budget (:func:`segmorph.readchecks.check_voxel_budget`).

    Raises:
        SegmorphError: The network is too large.
    """
    with torch.device("meta"):
        parameters = sum(p.numel() for p in NETWORKS[name](**arguments).parameters())
    check_voxel_budget(4.0 * parameters, f"{name} network of {parameters:,} parameters (with gradients and "
                       "optimiser state)", None)  # fmt: skip
    return parameters
