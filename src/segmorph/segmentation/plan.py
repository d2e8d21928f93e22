"""Self-configuration: a dataset fingerprint becomes a readable plan (plan.json, saved with the model).

The plan fixes preprocessing (target spacing, normalisation), the network (2D/3D, depth, width)
and training (patch, batch, optimiser, schedule) for the device AND the time budget: on a CPU a
short budget gets a narrow network that can see enough patches in time, not nnU-Net's GPU network.
A 2D plan for 3D scans (``network_dims=2``) trains a 2D network on slices across the through-plane axis
(``slice_axis``) and predicts slice by slice.
Every value can be overridden with a JSON/YAML file or ``key=value`` strings (``train.batch_size=4``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from segmorph.configs import apply_overrides as apply_config_overrides
from segmorph.configs import load_overrides_file as load_overrides_file
from segmorph.configs import parse_overrides as parse_overrides
from segmorph.engine.loop import TrainConfig
from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_text
from segmorph.nn.names import network_names
from segmorph.nn.registry import change_network_config, check_network_config
from segmorph.records import read_json
from segmorph.segmentation.datasets import DatasetSpec, class_count
from segmorph.segmentation.preprocess import PreprocessConfig, channels_after_steps
from segmorph.segmentation.semisupervised import SemiConfig

# Patch voxel budgets: what one step can afford. The CPU budgets were sized on a 2-core CPU with bf16
# autocast; a CPU without fast bf16 trains in float32 and takes several times longer per patch (step times
# in benchmarks/RESULTS.md).
PATCH_VOXELS = {("cpu", 3): 48 * 64 * 48, ("cpu", 2): 256 * 256, ("gpu", 3): 128**3, ("gpu", 2): 512 * 512}
BATCH_SIZE = {("cpu", 3): 2, ("cpu", 2): 4, ("gpu", 3): 2, ("gpu", 2): 12}
MIN_FEATURE_MAP = 4  # coarsest resolution keeps at least this many voxels per axis
MAX_LEVELS = 5


@dataclass(frozen=True)
class Plan:
    """Everything needed to preprocess, build, train and apply a model (saved as plan.json).

    Attributes:
        ndim: 2 or 3 spatial dimensions of the network (and of ``train.patch_size``).
        labels: Label value -> name (0 = background).
        channel_names: Names of the scan's channels (before ``preprocess.steps``).
        modalities: Modality per channel (CT, MRI, rgb, other).
        preprocess: Enhance steps, crop, resampling and normalisation (per channel the steps give).
        network: Constructor arguments of the network (``{"name": "unet", ...}``).
        train: Training settings.
        median_shape: Median preprocessed case shape in voxels (informative).
        slice_axis: For a 2D network on 3D scans: the spatial axis (0, 1 or 2 of the preprocessed ``(C, I, J, K)``
            volume) that slices are cut across; the patch is in-plane, along the other two axes in order. None:
            the network has the scans' dimensions.
        semi: Semi-supervised training settings, used when training is given unlabelled scans
            (:class:`segmorph.segmentation.semisupervised.SemiConfig`).
    """

    ndim: int
    labels: dict[int, str]
    channel_names: tuple[str, ...]
    modalities: tuple[str, ...]
    preprocess: PreprocessConfig
    network: dict[str, Any]
    train: TrainConfig
    median_shape: tuple[int, ...]
    slice_axis: int | None = None
    semi: SemiConfig = field(default_factory=SemiConfig)

    def __post_init__(self) -> None:
        name = self.network.get("name", "unet")
        if name not in network_names("segmentation"):
            raise SegmorphError(f"plan: network.name: expected one of {', '.join(network_names('segmentation'))}, "
                                f"got {name!r}")  # fmt: skip
        try:
            check_network_config(self.network)
        except ValueError as err:
            raise SegmorphError(network_error(err)) from None
        divisor = 2 ** (len(self.network.get("features", [0])) - 1)
        if any(p % divisor for p in self.train.patch_size):
            raise SegmorphError(
                f"train.patch_size {list(self.train.patch_size)} must be a multiple of {divisor} for a network with "
                f"{len(self.network['features'])} levels (network.features)"
            )
        if len(self.train.patch_size) != self.ndim:
            raise SegmorphError(f"train.patch_size {list(self.train.patch_size)} must have {self.ndim} values")
        self._check_slice_axis()
        try:
            channels = self.network_channels
        except SegmorphError as err:
            raise SegmorphError(f"plan: preprocess.steps: {err.problem}") from None
        if len(self.preprocess.normalization) != channels:
            raise SegmorphError(f"plan: preprocess.normalization has {len(self.preprocess.normalization)} entries for "
                                f"{channels} channel(s) (the scan's {len(self.channel_names)} after preprocess.steps)")  # fmt: skip
        if self.network.get("in_channels", channels) != channels:
            raise SegmorphError(f"plan: network.in_channels is {self.network['in_channels']}, the channel(s) after "
                                f"preprocess.steps are {channels}")  # fmt: skip

    def _check_slice_axis(self) -> None:
        if self.slice_axis is None:
            return
        if type(self.slice_axis) is not int or self.slice_axis not in (0, 1, 2) or self.ndim != 2:
            raise SegmorphError(f"plan: slice_axis {self.slice_axis!r}: slices of 3D scans are cut across axis 0, 1 "
                                f"or 2 for a 2D network (ndim 2, here {self.ndim})")  # fmt: skip
        spacing = self.preprocess.target_spacing
        if spacing is not None and len(spacing) != 3:
            raise SegmorphError(f"plan: slice_axis is for 3D scans; preprocess.target_spacing has {len(spacing)} "
                                "values")  # fmt: skip

    @property
    def image_ndim(self) -> int:
        """Spatial dimensions of the scans: ``ndim``, or 3 for a 2D network applied slice by slice (``slice_axis``)."""
        return self.ndim if self.slice_axis is None else 3

    @property
    def network_channels(self) -> int:
        """Channels the network takes: the scan's channels after ``preprocess.steps`` (``channel:green`` -> 1)."""
        return len(channels_after_steps(self.preprocess.steps, len(self.channel_names)))

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "ndim": self.ndim,
            "labels": {str(k): v for k, v in self.labels.items()},
            "channel_names": list(self.channel_names),
            "modalities": list(self.modalities),
            "preprocess": self.preprocess.to_dict(),
            "network": self.network,
            "train": self.train.to_dict(),
            "median_shape": list(self.median_shape),
            "semi": self.semi.to_dict(),
        } | ({} if self.slice_axis is None else {"slice_axis": self.slice_axis})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Plan:
        train = dict(values["train"])
        train["patch_size"] = tuple(train["patch_size"])
        return cls(
            ndim=int(values["ndim"]),
            labels={int(k): v for k, v in values["labels"].items()},
            channel_names=tuple(values["channel_names"]),
            modalities=tuple(values["modalities"]),
            preprocess=PreprocessConfig.from_dict(values["preprocess"]),
            network=dict(values["network"]),
            train=TrainConfig.from_dict(train),
            median_shape=tuple(values["median_shape"]),
            slice_axis=values.get("slice_axis"),  # checked by the plan: 0, 1 or 2
            semi=SemiConfig.from_dict(dict(values.get("semi", {}))),
        )

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan.json, refusing a tampered one (see :mod:`segmorph.records`) with one line naming it:
        non-finite numbers, missing or ill-typed keys, values out of range (a patch beyond the voxel budget too)."""
        path = Path(path)
        values = read_json(path, "plan", finite=True)
        try:
            plan = cls.from_dict(values)
        except KeyError as err:
            raise SegmorphError(f"invalid plan (missing key {err})", path) from None
        except (TypeError, ValueError, AttributeError, OverflowError) as err:
            raise SegmorphError(f"invalid plan ({str(err).splitlines()[0] if str(err) else type(err).__name__})",
                                path) from None  # fmt: skip
        except SegmorphError as err:  # a check of the plan itself (its network, its patch)
            raise SegmorphError(f"invalid plan ({err.problem})", path) from None
        return plan


def make_plan(
    spec: DatasetSpec, fingerprint: dict[str, Any], device: str = "cpu", time_budget_s: float = 1200.0,
    max_steps: int = 0, target_spacing: Sequence[float] | None = None, network_dims: int | None = None,
) -> Plan:  # fmt: skip
    """Turn a dataset fingerprint into a plan for ``device`` and a time budget.

    Args:
        spec: The dataset (labels, channels, modalities).
        fingerprint: Output of :func:`segmorph.segmentation.preprocess.fingerprint`.
        device: ``"cpu"``, ``"cuda"`` or ``"mps"`` (anything but CPU is planned as a GPU).
        time_budget_s: Training time in seconds (0 when ``max_steps`` limits training instead).
        max_steps: Training steps (0: the time budget alone limits).
        target_spacing: Voxel size in mm to work at, per axis (ITK x, y, z order) or one value for
            all; the patch and depth are planned for it (default: the dataset's median spacing).
        network_dims: 2 or 3 spatial dimensions of the network; None: the scans'. 2 for 3D scans plans a
            2D network trained on slices across the through-plane axis of the target spacing
            (:func:`slice_axis_for`): the patch of a 2D dataset with the slices' median in-plane shape, and a
            batch of the voxels per step of a 2D plan (:func:`slice_batch_size`).

    Raises:
        ValueError: A bad ``target_spacing`` or ``network_dims``.
    """
    kind = "cpu" if device == "cpu" else "gpu"
    shape = np.asarray(fingerprint["median_shape"], dtype=float)
    image_ndim = len(shape)
    if network_dims not in (None, 2, 3) or isinstance(network_dims, bool):
        raise ValueError(f"network_dims: expected 2 or 3, got {network_dims!r}")
    if (network_dims or 0) > image_ndim:
        raise ValueError(f"network_dims: a {network_dims}D network needs {network_dims}D scans; this dataset's are "
                         f"{image_ndim}D")  # fmt: skip
    spacing = np.asarray(fingerprint["median_spacing"], dtype=float)
    if target_spacing is not None:
        spacing = _spacing_for(target_spacing, image_ndim)
    target_spacing = tuple(float(s) for s in spacing)
    resampled = np.maximum(np.round(shape * np.asarray(fingerprint["median_spacing"]) / spacing), 1).astype(int)
    slice_axis = slice_axis_for(spacing) if network_dims == 2 and image_ndim == 3 else None
    in_plane = [axis for axis in range(image_ndim) if axis != slice_axis]
    ndim = len(in_plane)
    patch, levels = plan_patch(resampled[in_plane], spacing[in_plane], PATCH_VOXELS[(kind, ndim)])
    base = base_width(kind, time_budget_s, max_steps)
    features = [min(base * 2**level, 320) for level in range(levels)]
    num_classes = class_count(spec)
    network = {
        "name": "unet", "ndim": ndim, "in_channels": len(spec.channel_names), "num_classes": num_classes,
        "features": features, "residual": False, "deep_supervision": True,
    }  # fmt: skip
    preprocess = PreprocessConfig(
        target_spacing=target_spacing,
        normalization=tuple(_normalization(m) for m in spec.modalities),
        crop_to_nonzero=bool(fingerprint.get("crop_to_nonzero_suggested", False)),
        image_order=3,
        ct_stats=tuple(s if m == "CT" else None for m, s in zip(spec.modalities, fingerprint["intensity"])),
    )
    batch_size = BATCH_SIZE[(kind, ndim)]
    if slice_axis is not None:
        slices = int(fingerprint.get("num_cases", 1)) * int(resampled[slice_axis])
        batch_size = slice_batch_size(kind, patch, slices)
    train = TrainConfig(
        patch_size=tuple(patch), batch_size=batch_size, time_budget_s=float(time_budget_s),
        max_steps=int(max_steps), steps_per_epoch=100 if kind == "cpu" else 250,
    )  # fmt: skip
    return Plan(ndim, dict(spec.labels), tuple(spec.channel_names), tuple(spec.modalities), preprocess, network,
                train, tuple(int(s) for s in resampled), slice_axis)  # fmt: skip


def slice_batch_size(kind: str, patch: Sequence[int], slices: int) -> int:
    """Batch of a 2D plan of 3D scans: the voxels per step of a 2D plan (its patch budget times its batch) in
    slices of ``patch``, at most 5% of the dataset's ``slices`` (nnU-Net's cap), at least a 2D plan's batch.

    Slices are often far smaller than a 2D picture's patch budget; a picture's batch of them would leave each
    step mostly overhead (and validation longer than an epoch of training).

    Example:
        >>> slice_batch_size("cpu", (40, 56), slices=260 * 36)  # hippocampus: 2,240-voxel slices
        117
    """
    budget = PATCH_VOXELS[(kind, 2)] * BATCH_SIZE[(kind, 2)] // max(1, math.prod(patch))
    return max(BATCH_SIZE[(kind, 2)], min(budget, round(0.05 * slices)))


def slice_axis_for(spacing: Sequence[float]) -> int:
    """The axis a 2D network's slices of a 3D scan are cut across: the through-plane axis, that of the largest
    spacing (mm per array axis); of axes within 0.1% of the largest, the last (``K`` for isotropic voxels).

    Example:
        >>> slice_axis_for((0.8, 0.8, 3.0)), slice_axis_for((1.0, 1.0, 1.0)), slice_axis_for((5.0, 0.7, 0.7))
        (2, 2, 0)
    """
    values = np.asarray(spacing, dtype=float)
    return int(np.flatnonzero(values >= values.max() * (1 - 1e-3))[-1])


def _spacing_for(values: Sequence[float], ndim: int) -> np.ndarray:
    """``values`` as a spacing of ``ndim`` axes (one value: isotropic); positive millimetres."""
    spacing = np.asarray([float(v) for v in values], dtype=float)
    if len(spacing) == 1:
        spacing = np.repeat(spacing, ndim)
    if len(spacing) != ndim or not np.all(spacing > 0):
        raise ValueError(f"target spacing: expected 1 or {ndim} positive values in mm, got {list(values)}")
    return spacing


def base_width(kind: str, time_budget_s: float, max_steps: int = 0) -> int:
    """Channels of the first U-Net level for a device kind and a time budget.

    A training step costs several times more as the first level widens from 16 to 24 and 32 channels
    (step times on a 2-core CPU in benchmarks/RESULTS.md): under 45 minutes the narrow network sees
    enough patches to converge and the wide ones do not. GPUs get nnU-Net's 32.
    """
    if kind != "cpu":
        return 32
    if max_steps > 0 and time_budget_s <= 0:
        return 16
    return 16 if time_budget_s <= 45 * 60 else 24 if time_budget_s <= 3 * 3600 else 32


def _normalization(modality: str) -> str:
    return {"CT": "ct", "rgb": "rgb"}.get(modality, "zscore")


def plan_patch(shape: Sequence[int], spacing: Sequence[float], max_voxels: int) -> tuple[list[int], int]:
    """Patch size (voxels) and number of resolution levels for a median case ``shape``.

    The patch starts at the median shape and, while over ``max_voxels``, shrinks the axis that is
    largest in mm; then the number of levels is the most halvings that keep every axis at least
    :data:`MIN_FEATURE_MAP` voxels (at least 2, at most :data:`MAX_LEVELS`), and each axis is rounded up to a
    multiple of ``2 ** (levels - 1)`` (two per axis at the coarsest level where it would hold a single voxel:
    images of a voxel or a few are padded up to it).
    """
    patch = np.asarray(shape, dtype=float).copy()
    spacing_arr = np.asarray(spacing, dtype=float)
    while np.prod(patch) > max_voxels:
        axis = int(np.argmax(patch * spacing_arr))
        patch[axis] = max(patch[axis] * 0.9, MIN_FEATURE_MAP)
    levels = 1
    while levels < MAX_LEVELS and (patch / 2**levels >= MIN_FEATURE_MAP).all():
        levels += 1
    levels = max(levels, 2)  # a U-Net needs two levels, even where the coarser one is under MIN_FEATURE_MAP
    divisor = 2 ** (levels - 1)
    rounded = [int(math.ceil(p / divisor) * divisor) for p in patch]
    if math.prod(r // divisor for r in rounded) < 2:  # instance norm needs two voxels at the coarsest level
        rounded = [2 * divisor] * len(rounded)
    return rounded, levels


def network_error(err: ValueError) -> str:
    """The one line of a refused network section: ``plan: network.<argument>: <problem>`` where one is named."""
    first = str(err).split(":", 1)[0]
    return f"plan: network{'.' if ' ' not in first else ': '}{err}"


def apply_overrides(plan: Plan, overrides: dict[str, Any]) -> Plan:
    """Return a plan with dotted keys replaced, e.g. ``{"train.batch_size": 4, "network.features": [...]}``.

    See :func:`segmorph.configs.apply_overrides`. The network section takes the arguments of the network it
    names: ``network.name=fcn`` drops the U-Net's ``residual`` and ``deep_supervision`` (see
    :func:`segmorph.nn.registry.change_network_config`), and a bad network is refused here, in one line.

    Raises:
        SegmorphError: Unknown key, wrong type, or a value the plan or its network refuses.
    """
    overrides = _with_channels_of_steps(plan, overrides)
    network = {k.partition(".")[2]: v for k, v in overrides.items() if k.startswith("network.")}
    rest = {k: v for k, v in overrides.items() if not k.startswith("network.")}
    if network:
        valid = set(plan.network) | {"name"}
        if "name" not in network and not set(network) <= valid:
            unknown = sorted(set(network) - valid)[0]
            raise SegmorphError(f"unknown plan key 'network.{unknown}'; valid keys: "
                                f"{', '.join('network.' + k for k in plan.network)}")  # fmt: skip
        try:
            rest["network"] = change_network_config(plan.network, network)
        except ValueError as err:
            raise SegmorphError(network_error(err)) from None
    return apply_config_overrides(plan, rest, "plan")


def _with_channels_of_steps(plan: Plan, overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` plus the per-channel settings a change of ``preprocess.steps`` implies.

    A ``channel`` step (``channel:green``) leaves fewer channels: the plan's normalisation and CT statistics
    keep the entries of the channels left, and ``network.in_channels`` their count (unless set too).
    """
    steps = overrides.get("preprocess.steps")
    if not isinstance(steps, (list, tuple)) or not all(isinstance(s, str) for s in steps):
        return overrides  # not changed, or of a type the config refuses in one line itself
    try:
        before = channels_after_steps(plan.preprocess.steps, len(plan.channel_names))
        after = channels_after_steps(steps, len(plan.channel_names))
    except SegmorphError as err:
        raise SegmorphError(f"plan: preprocess.steps: {err.problem}") from None
    if after == before:
        return overrides
    position = {channel: i for i, channel in enumerate(before)}
    if not set(after) <= set(position):
        raise SegmorphError(f"plan: preprocess.steps: the plan's current steps leave channels {list(before)}; "
                            f"cannot bring back channels {sorted(set(after) - set(position))}")  # fmt: skip
    config = plan.preprocess
    derived = {"preprocess.normalization": [config.normalization[position[c]] for c in after],
               "network.in_channels": len(after)}  # fmt: skip
    if config.ct_stats is not None:
        derived["preprocess.ct_stats"] = [config.ct_stats[position[c]] if position[c] < len(config.ct_stats) else None
                                          for c in after]  # fmt: skip
    if "in_channels" not in plan.network:
        del derived["network.in_channels"]
    return {**derived, **overrides}


def with_budget(plan: Plan, time_budget_s: float | None = None, max_steps: int | None = None) -> Plan:
    """The same plan with another time budget or step limit."""
    train = plan.train
    if time_budget_s is not None:
        train = replace(train, time_budget_s=float(time_budget_s))
    if max_steps is not None:
        train = replace(train, max_steps=int(max_steps))
    return replace(plan, train=train)
