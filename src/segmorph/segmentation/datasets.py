"""Dataset layouts -> lists of case files -> Samples, and train/validation splits.

Two layouts are understood:

* **MSD / nnU-Net**: ``dataset.json`` beside ``imagesTr/`` and ``labelsTr/``. ``modality`` (MSD) or
  ``channel_names`` (nnU-Net v2) name the input channels; ``labels`` maps values to names in either
  direction (``{"0": "background"}`` or ``{"background": 0}``). Cases come from the ``training`` list or,
  without one, from pairing ``imagesTr``/``labelsTr`` by case id; a ``numTraining`` that is not the number of
  cases found is a warning (:class:`~segmorph.errors.SegmorphWarning`), not an error. Channels stored as separate files carry
  nnU-Net's ``_0000``, ``_0001``... suffix and are stacked as input channels.
* **Paired folders**: images and labels in two folders (given, or found among ``imagesTr/labelsTr``,
  ``images/labels``, ``images/masks``, ``image/label``), paired by case id. Label values are then not
  declared: ``spec.labels`` is empty until :func:`infer_labels` reads the label files.

A ``dataset.json`` may declare an **ignore label** for partial annotations: a top-level ``"ignore": 255``, or
nnU-Net v2's ``labels`` entry named ``"ignore"`` (``{"background": 0, "A": 1, "ignore": 2}``, the highest
value). It is not a class: ``spec.labels`` leaves it out and ``spec.ignore`` holds it. :func:`load_sample` turns
its voxels into :data:`IGNORE` (-1), the value losses, metrics, the patch sampler and validation skip.

A label file may be a DICOM-SEG (``case.dcm``), decoded on the grid of the series it segments.

Modalities are one of :data:`MODALITIES`, derived from the channel names; they tell the planner how to
normalise (CT: dataset-wide clipping; rgb: pictures; anything else: per-image z-score).
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmorph.errors import SegmorphError, SegmorphWarning
from segmorph.image import Image, Sample, check_same_grid
from segmorph.io import (
    MAX_LABEL_VALUES,
    PICTURE_SUFFIXES,
    folder_files,
    image_suffix,
    is_segmentation_file,
    read_image,
    read_label_map,
    strip_suffix,
)
from segmorph.records import read_json

MODALITIES = ("CT", "MRI", "rgb", "other")
FOLDER_PAIRS = (("imagesTr", "labelsTr"), ("images", "labels"), ("images", "masks"), ("image", "label"))
_MR_NAMES = {"MRI", "MR", "T1", "T1W", "T1GD", "T1C", "T2", "T2W", "FLAIR", "ADC", "DWI", "PD", "T2STAR"}
_CHANNEL_SUFFIX = re.compile(r"^(.+)_(\d{4})$")
IGNORE = -1
"""Value of ignored (unannotated) voxels in every label tensor the training code sees."""
IGNORE_NAME = "ignore"
"""Name of the ``labels`` entry that declares the ignore value (nnU-Net v2)."""


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: Identifier (file name without suffix and channel suffix).
        images: One file per input channel, in channel order.
        label: The label map file, or None for an unlabelled case.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's cases are and what their channels and labels mean.

    Attributes:
        root: The dataset folder.
        cases: The cases, sorted by case id.
        labels: Label value -> name, including 0 (background); empty when not declared.
        channel_names: One name per input channel (after stacking).
        modalities: One of :data:`MODALITIES` per input channel.
        ignore: The label value the label files use for unannotated voxels (not a class), or None.
    """

    root: Path
    cases: tuple[CaseFiles, ...]
    labels: dict[int, str]
    channel_names: tuple[str, ...]
    modalities: tuple[str, ...]
    ignore: int | None = None

    @property
    def case_ids(self) -> list[str]:
        return [case.case_id for case in self.cases]

    def case(self, case_id: str) -> CaseFiles:
        """The case called ``case_id`` (SegmorphError when unknown)."""
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise SegmorphError(f"no case called {case_id!r} in this dataset", self.root)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (paths as strings, label values as string keys; ``ignore`` only when declared)."""
        values = {
            "root": str(self.root),
            "cases": [
                {"case_id": c.case_id, "images": [str(p) for p in c.images], "label": c.label and str(c.label)}
                for c in self.cases
            ],
            "labels": {str(k): v for k, v in self.labels.items()},
            "channel_names": list(self.channel_names),
            "modalities": list(self.modalities),
        }
        return values if self.ignore is None else {**values, "ignore": self.ignore}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DatasetSpec:
        """Inverse of :meth:`to_dict`."""
        cases = tuple(
            CaseFiles(c["case_id"], tuple(Path(p) for p in c["images"]), c["label"] and Path(c["label"]))
            for c in values["cases"]
        )
        labels = {int(k): str(v) for k, v in values["labels"].items()}
        ignore = values.get("ignore")
        return cls(Path(values["root"]), cases, labels, tuple(values["channel_names"]), tuple(values["modalities"]),
                   None if ignore is None else int(ignore))  # fmt: skip


def modality_of(channel_name: str) -> str:
    """Map a channel name (``"CT"``, ``"T2"``, ``"FLAIR"``, ``"rgb"``...) to one of :data:`MODALITIES`."""
    name = channel_name.strip().upper().replace("-", "").replace("_", "")
    if name == "CT":
        return "CT"
    if name in ("RGB", "RED", "GREEN", "BLUE"):
        return "rgb"
    return "MRI" if name in _MR_NAMES else "other"


def load_dataset(
    root: str | Path, images_dir: str | Path | None = None, labels_dir: str | Path | None = None
) -> DatasetSpec:
    """Find the cases of a dataset folder.

    Args:
        root: The dataset folder.
        images_dir: Folder of images (relative to ``root`` or absolute); when given, ``dataset.json`` is ignored.
        labels_dir: Folder of label maps; with ``images_dir`` but without ``labels_dir`` the cases are unlabelled.

    Returns:
        The dataset's :class:`DatasetSpec`, cases sorted by case id.

    Raises:
        SegmorphError: Missing or empty folders, a bad ``dataset.json``, unpaired or missing files.
    """
    root = Path(root)
    if not root.is_dir():
        raise SegmorphError("no such dataset folder", root)
    if images_dir is None and (root / "dataset.json").exists():
        return _load_msd(root)
    if images_dir is None:
        found = [(root / i, root / lab) for i, lab in FOLDER_PAIRS if (root / i).is_dir() and (root / lab).is_dir()]
        if not found:
            names = ", ".join(f"{i}/{lab}" for i, lab in FOLDER_PAIRS)
            raise SegmorphError(f"no dataset.json and no image/label folders ({names}); give the folders", root)
        image_folder, label_folder = found[0]
    else:
        image_folder = root / images_dir
        label_folder = None if labels_dir is None else root / labels_dir
    cases = _pair_folders(image_folder, label_folder)
    channels = channels_of_first_case(cases[0])
    return DatasetSpec(root, cases, {}, channels, tuple(modality_of(n) for n in channels))


def infer_labels(spec: DatasetSpec) -> DatasetSpec:
    """Read every label file and declare the values found (0 is ``background``, others ``label_<v>``; the
    declared ignore value is not a class)."""
    values: set[int] = {0}
    for case in spec.cases:
        if case.label is not None:
            values.update(int(v) for v in torch.unique(read_image(case.label, is_label=True).data))
    values.discard(spec.ignore)
    labels = {v: "background" if v == 0 else f"label_{v}" for v in sorted(values)}
    return replace(spec, labels=labels)


def class_count(spec: DatasetSpec) -> int:
    """The output channels a network needs for ``spec``'s labels: the highest label value + 1 (a label's value is its
    channel), 2 when no label is known. Label values that are not consecutive leave channels that are never
    trained: a :class:`SegmorphWarning` says so (0/255 masks give 256 channels; relabel them 0/1).

    Raises:
        SegmorphError: A label value of :data:`segmorph.io.MAX_LABEL_VALUES` or more, naming the dataset.
    """
    if not spec.labels:
        return 2
    top = max(spec.labels)
    if top >= MAX_LABEL_VALUES:
        raise SegmorphError(f"label value {top}: a label's value is its network output channel, at most "
                            f"{MAX_LABEL_VALUES - 1}; relabel to consecutive values 0, 1, 2, ...", spec.root)  # fmt: skip
    values = sorted(set(spec.labels) | {0})
    unused = top + 1 - len(values)
    if unused:
        shown = ", ".join(map(str, values))
        warnings.warn(SegmorphWarning(f"label values {shown} are not consecutive: {unused} of the network's {top + 1} "
                                      "output channels are never trained; relabel to 0, 1, 2, ...", spec.root),
                      stacklevel=2)  # fmt: skip
    return top + 1


def _load_msd(root: Path) -> DatasetSpec:
    path = root / "dataset.json"
    meta = read_json(path, "dataset.json")
    names = meta.get("channel_names", meta.get("modality"))
    if not isinstance(names, dict) or not names:
        raise SegmorphError("missing key 'modality' or 'channel_names' (a non-empty object)", path)
    if not isinstance(meta.get("labels"), dict):
        raise SegmorphError("missing key 'labels' (an object of label values and names)", path)
    channels = tuple(str(names[k]) for k in sorted(names, key=lambda k: int(k) if str(k).isdigit() else 0))
    labels = dict(sorted({0: "background", **parse_label_names(meta["labels"], path)}.items()))
    ignore = declared_ignore(meta, path)
    suffix = meta.get("file_ending")
    if "training" in meta:
        cases = _cases_from_list(root, meta["training"], len(channels), path)
    else:
        cases = _pair_folders(root / "imagesTr", root / "labelsTr", suffix)
    for case in cases:
        if len(case.images) != len(channels):
            raise SegmorphError(
                f"case {case.case_id} has {len(case.images)} channel files, "
                f"dataset.json names {len(channels)} channels",
                case.images[0],
            )
    _check_case_count(meta.get("numTraining"), len(cases), path)
    return DatasetSpec(root, cases, labels, channels, tuple(modality_of(n) for n in channels), ignore)


def _check_case_count(declared: Any, found: int, path: Path) -> None:
    """Warn (:class:`SegmorphWarning`) when ``numTraining`` is not the number of cases found; the cases found are
    used either way (``numTraining`` is optional)."""
    if declared is None:
        return
    if isinstance(declared, bool) or not isinstance(declared, int):
        warnings.warn(SegmorphWarning(f"numTraining is not a whole number ({declared!r}); ignored", path), stacklevel=3)
    elif declared != found:
        warnings.warn(SegmorphWarning(f"numTraining is {declared} but {found} training cases were found; "
                                      f"using the {found} found", path), stacklevel=3)  # fmt: skip


def _label_entries(raw: dict, path: str | Path) -> list[tuple[int, str]]:
    """Every entry of a ``labels`` object as ``(value, name)``, the ``ignore`` entry included."""
    entries = []
    for key, value in raw.items():
        if isinstance(value, str) and str(key).isdigit():
            entries.append((int(key), value))
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            entries.append((value, str(key)))
        else:
            raise SegmorphError(f"labels: cannot read entry {key!r}: {value!r} (region labels are not supported)", path)
    return entries


def parse_label_names(raw: dict, path: str | Path) -> dict[int, str]:
    """Label value -> name from a ``labels`` object: MSD ``{"1": "Anterior"}`` or nnU-Net v2 ``{"Anterior": 1}``.

    The entry named ``"ignore"`` (nnU-Net v2's ignore label) is not a class and is left out (see
    :func:`declared_ignore`).

    Raises:
        SegmorphError: An entry is neither form (region labels, negative values), naming ``path``.
    """
    labels = {value: name for value, name in _label_entries(raw, path) if name != IGNORE_NAME}
    return dict(sorted(labels.items()))


def declared_ignore(meta: dict, path: str | Path) -> int | None:
    """The ignore value a ``dataset.json`` declares: top-level ``"ignore": 255`` or a ``labels`` entry named
    ``"ignore"`` (nnU-Net v2, which must be the highest label value); None when neither is there.

    Args:
        meta: The parsed ``dataset.json``.
        path: The file, named in errors.

    Raises:
        SegmorphError: The value is not a whole number >= 1, it is also a class value, the ``labels`` entry is not
            the highest value, or the two forms disagree.
    """
    entries = _label_entries(meta["labels"], path) if isinstance(meta.get("labels"), dict) else []
    named = [value for value, name in entries if name == IGNORE_NAME]
    classes = {value: name for value, name in entries if name != IGNORE_NAME}
    if len(named) > 1:
        raise SegmorphError(f"labels: {len(named)} entries named 'ignore' ({named}); declare one", path)
    if named and named[0] <= max(classes, default=0):
        raise SegmorphError(f"labels: the 'ignore' entry ({named[0]}) must be the highest label value "
                            f"(as in nnU-Net), above label {max(classes, default=0)}", path)  # fmt: skip
    top = meta.get("ignore")
    if top is None:
        return named[0] if named else None
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise SegmorphError(f"ignore: expected a label value (a whole number >= 1; 0 is the background), got {top!r}",
                            path)  # fmt: skip
    if named and named[0] != top:
        raise SegmorphError(f"ignore: {top} disagrees with the labels entry 'ignore': {named[0]}", path)
    if top in classes:
        raise SegmorphError(f"ignore: {top} is also the value of label {classes[top]!r}", path)
    return top


def _cases_from_list(root: Path, entries: Any, num_channels: int, path: Path) -> tuple[CaseFiles, ...]:
    if not isinstance(entries, list) or not entries:
        raise SegmorphError("'training' must be a non-empty list of {image, label} entries", path)
    cases = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise SegmorphError(f"training[{index}]: expected an object with an 'image' path", path)
        label = entry.get("label")
        if label is not None and not isinstance(label, str):
            raise SegmorphError(f"training[{index}]: 'label' must be a path, got {label!r}", path)
        images = _channel_files(root / entry["image"], num_channels, f"training[{index}] of {path.name}")
        label_path = None if label is None else root / label
        if label_path is not None and not label_path.is_file():
            raise SegmorphError(f"label file of case {_case_id(images[0])} is missing "
                                f"(listed in training[{index}] of {path.name})", label_path)  # fmt: skip
        cases.append(CaseFiles(_case_id(images[0]), images, label_path))
    return _sorted_unique(cases, path)


def _channel_files(image: Path, num_channels: int, listed: str) -> tuple[Path, ...]:
    """The image file itself, or its ``_0000``, ``_0001``... siblings (nnU-Net); ``listed`` says where it is named."""
    if image.is_file():
        return (image,)
    stem, suffix = strip_suffix(image), image_suffix(image)
    files = tuple(image.parent / f"{stem}_{c:04d}{suffix}" for c in range(num_channels))
    if not files[0].is_file():
        raise SegmorphError(f"image file missing (nor {files[0].name} found; listed in {listed})", image)
    for channel, file in enumerate(files):
        if not file.is_file():
            raise SegmorphError(f"channel {channel} file of case {stem} is missing (listed in {listed})", file)
    return files


def _case_id(path: Path) -> str:
    name = strip_suffix(path)
    match = _CHANNEL_SUFFIX.match(name)
    return match.group(1) if match else name


def _sorted_unique(cases: Iterable[CaseFiles], where: Path) -> tuple[CaseFiles, ...]:
    ordered = sorted(cases, key=lambda c: c.case_id)
    for first, second in itertools.pairwise(ordered):
        if first.case_id == second.case_id:
            raise SegmorphError(f"case id {first.case_id} appears twice", where)
    return tuple(ordered)


def _image_files(folder: Path, suffix: str | None, segmentations: bool = False) -> list[Path]:
    """Image files of ``folder`` (``segmentations``: DICOM-SEG files too), hidden files left out."""
    if not folder.is_dir():
        raise SegmorphError("no such folder", folder)
    files = folder_files(folder, lambda p: bool(image_suffix(p)) or (segmentations and is_segmentation_file(p)))
    if suffix and files and not any(p.name.endswith(suffix) for p in files):
        raise SegmorphError(f"holds no {suffix} files, the file_ending of dataset.json (it holds {files[0].name}...)",
                            folder)  # fmt: skip
    if suffix:
        files = [p for p in files if p.name.endswith(suffix)]
    if not files:
        raise SegmorphError("folder holds no image files", folder)
    return files


def group_channels(files: list[Path]) -> dict[str, list[Path]]:
    """Group files into cases; ``_0000``-style suffixes count as channels only if every case has a ``_0000``."""
    groups: dict[str, dict[int, Path]] = {}
    matches = [_CHANNEL_SUFFIX.match(strip_suffix(p)) for p in files]
    if all(matches):
        for file, match in zip(files, matches):
            groups.setdefault(match.group(1), {})[int(match.group(2))] = file
        if all(0 in channels for channels in groups.values()):
            return {case_id: _complete_channels(case_id, channels, groups) for case_id, channels in groups.items()}
    return {strip_suffix(p): [p] for p in files}


def _complete_channels(case_id: str, channels: dict[int, Path], groups: dict[str, dict[int, Path]]) -> list[Path]:
    count = max(max(c) + 1 for c in groups.values())
    first = channels[0]
    for channel in range(count):
        if channel not in channels:
            missing = first.parent / f"{case_id}_{channel:04d}{image_suffix(first)}"
            raise SegmorphError(f"channel {channel} file of case {case_id} is missing", missing)
    return [channels[c] for c in range(count)]


def _pair_folders(images: Path, labels: Path | None, suffix: str | None = None) -> tuple[CaseFiles, ...]:
    grouped = group_channels(_image_files(images, suffix))
    if labels is None:
        return _sorted_unique((CaseFiles(k, tuple(v)) for k, v in grouped.items()), images)
    label_files = {strip_suffix(p): p for p in _image_files(labels, suffix, segmentations=True)}
    unlabelled = sorted(set(grouped) - set(label_files))
    if unlabelled:
        names = ", ".join(grouped[k][0].name for k in unlabelled[:5])
        raise SegmorphError(f"{len(unlabelled)} image(s) have no label file in {labels}: {names}", images)
    orphans = sorted(set(label_files) - set(grouped))
    if orphans:
        names = ", ".join(label_files[k].name for k in orphans[:5])
        raise SegmorphError(f"{len(orphans)} label file(s) have no image in {images}: {names}", labels)
    return _sorted_unique((CaseFiles(k, tuple(v), label_files[k]) for k, v in grouped.items()), images)


def channels_of_first_case(case: CaseFiles) -> tuple[str, ...]:
    """Channel names of a folder dataset: RGB pictures give three, otherwise one per file."""
    if len(case.images) == 1 and image_suffix(case.images[0]) in PICTURE_SUFFIXES:
        if read_image(case.images[0]).num_channels == 3:
            return ("red", "green", "blue")
        return ("gray",)
    return tuple(f"channel_{c}" for c in range(len(case.images)))


def load_sample(case: CaseFiles, spec: DatasetSpec) -> Sample:
    """Read one case: channels stacked, label checked against the image and the declared labels.

    Returns:
        A :class:`Sample` whose image is ``(C, I, J[, K])`` float32 and label ``(1, I, J[, K])`` int64
        (None when the case has no label file), voxels of the declared ignore value holding :data:`IGNORE`.
        ``meta`` holds the source paths.

    Raises:
        SegmorphError: Naming the file whose shape or geometry disagrees, or that holds undeclared labels.
    """
    channels = [read_image(path) for path in case.images]
    first = channels[0]
    for path, channel in zip(case.images[1:], channels[1:]):
        check_same_grid(channel, first, f"channel differs from {case.images[0].name}", path)
    image = Image(torch.cat([c.data for c in channels], dim=0), first.affine)
    if spec.channel_names and image.num_channels != len(spec.channel_names):
        raise SegmorphError(
            f"case has {image.num_channels} channels, the dataset declares {len(spec.channel_names)}", case.images[0]
        )
    meta: dict[str, Any] = {"image_paths": [str(p) for p in case.images], "label_path": None}
    if case.label is None:
        return Sample(case.case_id, image, None, meta)
    label = read_label_map(case.label, like=image)
    check_same_grid(label, image, f"label differs from image {case.images[0].name}", case.label)
    if spec.labels:
        undeclared = sorted(set(torch.unique(label.data).tolist()) - set(spec.labels) - {spec.ignore})
        if undeclared:
            raise SegmorphError(
                f"label values {undeclared} are not declared (declared: {sorted(spec.labels)})", case.label
            )
    if spec.ignore is not None:
        label = label.with_data(label.data.masked_fill(label.data == spec.ignore, IGNORE))
    meta["label_path"] = str(case.label)
    return Sample(case.case_id, image, label, meta)


def with_declared_ignore(label: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """``label`` with :data:`IGNORE` voxels given back the dataset's declared ignore value, to write a label file
    (label files hold no negative values); ``label`` itself when the dataset declares none.

    Args:
        label: ``(1, *S)`` integer label map as :func:`load_sample` returns it.
        spec: The dataset.
    """
    if spec.ignore is None:
        return label
    return label.masked_fill(label == IGNORE, spec.ignore)


def split_cases(
    case_ids: Sequence[str], fold: int, num_folds: int = 5, seed: int = 0, dataset: str | Path | None = None
) -> tuple[list[str], list[str]]:
    """K-fold split after a seeded shuffle; the same ids, fold and seed always give the same split.

    Args:
        case_ids: All case ids (order does not matter; they are sorted first).
        fold: Which fold to hold out for validation, ``0 <= fold < num_folds``; -1 trains on every case.
        num_folds: Number of folds.
        seed: Seed of the shuffle.
        dataset: The folder the cases come from, named in errors.

    Returns:
        ``(train_ids, val_ids)``, each sorted.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise SegmorphError("case ids must be unique", dataset)
    if fold == -1:
        return ids, []
    if num_folds < 2 or num_folds > len(ids):
        raise SegmorphError(f"{len(ids)} cases cannot make {num_folds} folds: the number of folds (--num-folds) must "
                            f"be between 2 and the number of cases", dataset)  # fmt: skip
    if not 0 <= fold < num_folds:
        raise SegmorphError(f"fold must be -1 or in 0..{num_folds - 1}, got {fold}", dataset)
    order = np.random.default_rng(seed).permutation(len(ids))
    val_index = set(np.array_split(order, num_folds)[fold].tolist())
    train = [c for i, c in enumerate(ids) if i not in val_index]
    return train, [c for i, c in enumerate(ids) if i in val_index]


def split_from_list(
    case_ids: Sequence[str], val_ids: Iterable[str], dataset: str | Path | None = None
) -> tuple[list[str], list[str]]:
    """Split with an explicit validation list; every validation id must be a known case of ``dataset``
    (the folder the error names)."""
    ids = sorted(set(case_ids))
    val = set(val_ids)
    unknown = sorted(val - set(ids))
    if unknown:
        raise SegmorphError(f"validation ids not in the dataset: {', '.join(unknown[:10])}", dataset)
    return [c for c in ids if c not in val], sorted(val)
