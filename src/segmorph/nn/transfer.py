"""Transfer: start a network from the weights of another run (a pretraining, segmentation or classification run).

Every entry of the target network's ``state_dict()`` (parameters and buffers, e.g. batch-norm running
statistics) whose name and shape match an entry of the source checkpoint is copied; everything else keeps its
own initial value and is listed with the reason (:class:`TransferRecord`). So a U-Net pretrained as an
autoencoder (its heads predict the input channels) gives a segmentation U-Net of the same plan every layer but
its heads, and a classifier gives another classifier every layer but its final linear layer when the class
counts differ.

Sources (:func:`checkpoint_of`): a run folder (``checkpoint_best.pt``; a classification run's kept weights,
``classifier.pt``) or a checkpoint file. A pretraining checkpoint stores the network's weights under a prefix
(``config["transfer_prefix"]``, e.g. ``"network."`` beside a decoder of its own), removed before matching.

Example:
    >>> model = build_network(plan.network)
    >>> record = initialize_from(model, Path("runs/pretrain"))
    >>> print(record.summary())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segmorph.engine.checkpoints import load_checkpoint
from segmorph.errors import SegmorphError

BEST_CHECKPOINT = "checkpoint_best.pt"
CLASSIFIER_FILE = "classifier.pt"  # a classification run's kept weights (see segmorph.classification.pipeline)
CROSSVAL_FILE = "crossval.json"  # a cross-validation run (segmentation or classification)
SHOWN_SKIPPED = 3  # skipped names the summary line shows


@dataclass(frozen=True)
class TransferRecord:
    """What :func:`initialize_from` copied.

    Attributes:
        source: The checkpoint file read.
        loaded: Target parameter and buffer names whose values came from the source, in the network's order.
        skipped: Target name -> why it kept its own value (``"not in the source"``,
            ``"shape [3, 16, 1, 1, 1] in the source, [1, 16, 1, 1, 1] here"``).
    """

    source: str
    loaded: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``source``, ``loaded`` (list) and ``skipped`` (name -> reason)."""
        return {"source": self.source, "loaded": list(self.loaded), "skipped": dict(self.skipped)}

    def summary(self) -> str:
        """One console line: how many tensors came from where, and the first ones that did not."""
        total = len(self.loaded) + len(self.skipped)
        line = f"initialised {len(self.loaded)} of {total} tensors from {self.source}"
        if not self.skipped:
            return line + " (all)"
        shown = [f"{name} ({reason})" for name, reason in list(self.skipped.items())[:SHOWN_SKIPPED]]
        more = len(self.skipped) - len(shown)
        return line + f"; not loaded: {', '.join(shown)}" + (f" and {more} more" if more else "")


def checkpoint_of(source: Path) -> Path:
    """The checkpoint a transfer reads from ``source``.

    Args:
        source: A checkpoint file (itself), a classification run folder (``classifier.pt``, the weights it
            kept), or a pretraining or segmentation run folder (``checkpoint_best.pt``).

    Raises:
        SegmorphError: Missing path, a folder holding no checkpoint, or a cross-validation run folder (the
            message names a fold folder to give instead).
    """
    source = Path(source)
    if not source.exists():
        raise SegmorphError("not found: expected a run folder or a checkpoint file to initialise from", source)
    if source.is_file():
        return source
    if (source / CROSSVAL_FILE).is_file():
        folds = sorted(p for p in source.glob("fold_*") if p.is_dir())
        example = folds[0] if folds else source / "fold_0"
        raise SegmorphError(f"a cross-validation run holds one network per fold; give one fold's folder, e.g. {example}",
                            source)  # fmt: skip
    for name in (CLASSIFIER_FILE, BEST_CHECKPOINT):
        if (source / name).is_file():
            return source / name
    raise SegmorphError(f"no {BEST_CHECKPOINT} or {CLASSIFIER_FILE}: not a pretraining, segmentation or "
                        "classification run folder", source)  # fmt: skip


def source_network(source: Path) -> dict[str, Any]:
    """The network config (``{"name": ..., constructor arguments}``) stored with the checkpoint of ``source``.

    Raises:
        SegmorphError: As :func:`checkpoint_of`, an unreadable checkpoint, or one without network settings.
    """
    path = checkpoint_of(source)
    _, config, _ = load_checkpoint(path)
    return _network_of(config, path)


def initialize_from(model: nn.Module, source: Path) -> TransferRecord:
    """Copy into ``model`` every tensor of ``source``'s checkpoint whose name and shape match.

    Args:
        model: The network to initialise (changed in place); its other tensors keep their values.
        source: See :func:`checkpoint_of`.

    Returns:
        What was loaded and what was not (and why).

    Raises:
        SegmorphError: Naming the checkpoint: missing or unreadable, no network settings, a network of
            another dimensionality, an ensemble, or no parameter matching by name and shape.

    Example:
        >>> record = initialize_from(UNet(3, 1, 3), Path("runs/pretrain"))
        >>> record.skipped["heads.0.weight"]
        'shape [1, 16, 1, 1, 1] in the source, [3, 16, 1, 1, 1] here'
    """
    path = checkpoint_of(source)
    state, config, _ = load_checkpoint(path)
    network = _network_of(config, path)
    _check_dimensionality(network, model, path)
    weights = _strip_prefix(state, config.get("transfer_prefix", ""), path)
    matched: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    for name, tensor in model.state_dict().items():
        reason = _mismatch(weights.get(name), tensor)
        if reason is None:
            matched[name] = weights[name]
        else:
            skipped[name] = reason
    parameters = {name for name, _ in model.named_parameters()}
    if not parameters & set(matched):
        raise SegmorphError(f"no weight matches this network by name and shape (the source is a "
                            f"{network.get('name', 'unet')} {_describe(network)}; this run trains a "
                            f"{type(model).__name__} {_describe(getattr(model, 'config', {}))})", path)  # fmt: skip
    model.load_state_dict(matched, strict=False)
    return TransferRecord(str(path), tuple(matched), skipped)


def encoder_parameter_names(model: nn.Module) -> list[str]:
    """The parameters a frozen encoder keeps: a U-Net's (or FCN's) under ``encoder.``, a classifier's (ResNet,
    SimpleCNN) all but those of its final linear layer ``fc``.

    Raises:
        ValueError: A network with neither an ``encoder`` nor a final linear layer ``fc``.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if isinstance(getattr(model, "encoder", None), nn.Module):
        return [name for name, _ in model.named_parameters() if name.startswith("encoder.")]
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return [name for name, _ in model.named_parameters() if not name.startswith("fc.")]
    raise ValueError(f"freeze_encoder_steps: a {type(model).__name__} has no encoder to freeze (a U-Net's "
                     "encoder, or a classifier's layers before its final linear layer)")  # fmt: skip


def _network_of(config: dict[str, Any], path: Path) -> dict[str, Any]:
    network = config.get("network")
    if not isinstance(network, dict):
        raise SegmorphError("checkpoint config holds no network settings", path)
    if network.get("name") == "ensemble":
        members = len(network.get("members") or [])
        raise SegmorphError(f"an ensemble of {members} classifiers; give one member's checkpoint instead, e.g. "
                            f"{path.parent / 'member_0' / BEST_CHECKPOINT}", path)  # fmt: skip
    return network


def _model_ndim(model: nn.Module) -> int | None:
    """Spatial dimensions of ``model``: its stored ``config["ndim"]``, else its first convolution's, else None."""
    ndim = getattr(model, "config", {}).get("ndim") if isinstance(getattr(model, "config", None), dict) else None
    if isinstance(ndim, int):
        return ndim
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            return 3 if isinstance(module, nn.Conv3d) else 2
    return None


def _check_dimensionality(network: dict[str, Any], model: nn.Module, path: Path) -> None:
    source, target = network.get("ndim"), _model_ndim(model)
    if source is not None and target is not None and source != target:
        raise SegmorphError(f"a {source}D network; this run trains a {target}D one", path)


def _strip_prefix(state: dict[str, Any], prefix: Any, path: Path) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix``, named without it (all of them when it is empty)."""
    if not isinstance(prefix, str):
        raise SegmorphError(f"checkpoint config's transfer_prefix is not text: {prefix!r}", path)
    return {name.removeprefix(prefix): value for name, value in state.items() if name.startswith(prefix)}


def _mismatch(source: Any, target: torch.Tensor) -> str | None:
    """Why ``source`` cannot be copied into ``target`` (None: it can)."""
    if source is None:
        return "not in the source"
    if not isinstance(source, torch.Tensor):
        return "not a tensor in the source"
    if source.shape != target.shape:
        return f"shape {list(source.shape)} in the source, {list(target.shape)} here"
    if source.dtype.is_floating_point != target.dtype.is_floating_point:
        return f"type {source.dtype} in the source, {target.dtype} here"
    return None


def _describe(network: dict[str, Any]) -> str:
    """A few telling arguments of a network config, e.g. ``(ndim 3, in_channels 1, features [16, 32])``."""
    keys = ("ndim", "in_channels", "num_classes", "features", "width")
    shown = ", ".join(f"{key} {network[key]}" for key in keys if key in network)
    return f"({shown})" if shown else ""
