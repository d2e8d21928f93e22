"""Classification datasets: which image has which class (a CSV or class folders), and images -> network inputs.

Layouts:

* **CSV**: one row per image with a file column (a path relative to the dataset folder, or absolute), a target
  column (the class, any text: ``0``/``1``, ``benign``...) and optionally a group column (images of one group,
  e.g. one patient or near-duplicates, are never split apart). Column names are arguments.
* **Class folders**: ``DATASET/<class>/<image files or DICOM series folders>``; each image is its own group.

Classes are sorted (numerically when every class name is a number), so for ``0``/``1`` targets class 1 is the
positive class of binary metrics.

Network inputs (:func:`prepare_image`), in this order:

1. Colour: pictures with 3 or 4 channels (RGB, RGBA) become grey, the mean of R, G and B; any other channel
   count is kept and must be the same for every image.
2. Size: the image is resized (bilinear in 2D with antialiasing, trilinear in 3D) so that its physical extent
   (voxels x spacing; pixels for pictures) fits the input size with its aspect ratio kept, then centred and
   padded to exactly the input size. The input size comes from the data (:func:`choose_input_size`).
3. Intensity: per-image, per-channel z-score over the resized content (padding excluded); padding then takes
   the image's lowest normalised value, so it looks like the dark background of most scans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segmorph.errors import SegmorphError
from segmorph.image import Image
from segmorph.io import list_images, read_image
from segmorph.progress import track
from segmorph.readchecks import check_voxel_budget
from segmorph.records import read_csv

SIZE_MULTIPLE = 8  # input sizes are rounded to this, so a few poolings divide them evenly
DEFAULT_MAX_SIDE = {2: 128, 3: 64}  # longest input side when chosen from the data (CPU-sized)
SURVEY_IMAGES = 64  # images read to choose the input size
_EPS = 1e-6


@dataclass(frozen=True)
class LabelledImage:
    """One image of a classification dataset.

    Attributes:
        path: Image file or DICOM series folder.
        label: Class index into the dataset's ``class_names``.
        group: Images sharing a group stay on one side of every split.
    """

    path: Path
    label: int
    group: str


@dataclass(frozen=True)
class ClassificationDataset:
    """Images with their classes.

    Attributes:
        root: Dataset folder.
        items: The images, in file order.
        class_names: Class index -> name.
    """

    root: Path
    items: tuple[LabelledImage, ...]
    class_names: tuple[str, ...]

    @property
    def labels(self) -> list[int]:
        return [item.label for item in self.items]

    @property
    def groups(self) -> list[str]:
        return [item.group for item in self.items]

    @property
    def paths(self) -> list[Path]:
        return [item.path for item in self.items]

    def class_counts(self) -> dict[str, int]:
        """Images per class name."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}


def sorted_class_names(names: set[str] | Sequence[str]) -> tuple[str, ...]:
    """Sorted class names: numerically when all are numbers (``"2" < "10"``), else alphabetically."""
    names = set(names)
    try:
        return tuple(sorted(names, key=float))
    except ValueError:
        return tuple(sorted(names))


def name_classes(
    dataset: ClassificationDataset, names: Sequence[str], source: str | Path | None = None
) -> ClassificationDataset:
    """``dataset`` with its classes called ``names``, given in the order of its class values (numbers sorted
    numerically: ``0, 1`` -> ``normal, lesion``); ``source`` (the labels CSV) is named in errors.

    Raises:
        SegmorphError: Not one distinct, non-empty name per class.
    """
    names = tuple(str(n).strip() for n in names)
    found = dataset.class_names
    if len(names) != len(found):
        raise SegmorphError(f"class names: {len(names)} given for {len(found)} classes ({', '.join(found)})", source)
    if "" in names or len(set(names)) != len(names):
        raise SegmorphError(f"class names: expected distinct, non-empty names, got {', '.join(names)}", source)
    return replace(dataset, class_names=names)


def resolve_labels_file(root: str | Path, labels: str | Path) -> Path:
    """``labels`` inside the dataset folder when it is there, else as given (absolute or relative to here)."""
    inside = Path(root) / labels
    return inside if inside.is_file() else Path(labels)


def load_labels_csv(
    root: str | Path,
    csv_path: str | Path,
    target: str = "label",
    group: str | None = None,
    file_column: str = "file",
    class_names: Sequence[str] | None = None,
) -> ClassificationDataset:
    """Read a labels CSV.

    Args:
        root: Dataset folder; relative paths in the file column are taken from here.
        csv_path: The CSV (comma separated, with a header row).
        target: Column holding the class.
        group: Column holding the group, or None (each image its own group).
        file_column: Column holding the image path.
        class_names: The allowed classes in index order; None: every value found, sorted.

    Raises:
        SegmorphError: Missing CSV, column, image file, an empty cell or a class not in ``class_names``;
            the message names the file (and row).
    """
    root, csv_path = Path(root), Path(csv_path)
    if not csv_path.is_file() and not csv_path.is_dir():
        raise SegmorphError("labels file not found", csv_path)
    table = read_csv(csv_path, kind="labels file", allow_empty=True)
    for role, name in (("file", file_column), ("target", target), ("group", group)):
        if name is not None and name not in table.columns:
            raise SegmorphError(f"no {role} column {name!r} (columns: {', '.join(table.columns)})", csv_path)
    if not table.rows:
        raise SegmorphError("labels file has no rows", csv_path)
    rows, lines = table.rows, table.lines
    values = [class_value(_cell(row, target, number, csv_path)) for number, row in zip(lines, rows)]
    names = tuple(class_value(n) for n in class_names) if class_names else sorted_class_names(values)
    items, seen = [], {}
    for number, row, value in zip(lines, rows, values):
        if value not in names:
            raise SegmorphError(f"row {number}: unknown class {value!r} (expected one of {', '.join(names)})", csv_path)
        path = _image_path(root, _cell(row, file_column, number, csv_path), csv_path, number)
        key = path.resolve()
        if key in seen:
            first_line, first_value = seen[key]
            same = "again" if first_value == value else f"with class {value!r}, and with {first_value!r}"
            raise SegmorphError(f"row {number}: image {_cell(row, file_column, number, csv_path)!r} is listed {same} "
                                f"on row {first_line}", csv_path)  # fmt: skip
        seen[key] = (number, value)
        group_name = _cell(row, group, number, csv_path) if group else f"image:{number}"
        items.append(LabelledImage(path, names.index(value), group_name))
    return ClassificationDataset(root, tuple(items), names)


def class_value(text: str) -> str:
    """A class as written in a labels CSV, with numbers in one form: ``0``, ``0.0`` and ``+0`` are all ``"0"``,
    ``1.50`` is ``"1.5"``; other text is kept (stripped)."""
    text = str(text).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def _cell(row: dict, column: str, number: int, csv_path: Path) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise SegmorphError(f"row {number}: empty {column!r} cell", csv_path)
    return value


def _image_path(root: Path, value: str, csv_path: Path, number: int) -> Path:
    path = Path(value) if Path(value).is_absolute() else root / value
    if not path.exists():
        raise SegmorphError(f"image listed in {csv_path.name} row {number} does not exist", path)
    return path


def load_class_folders(root: str | Path) -> ClassificationDataset:
    """Read a ``root/<class>/<images>`` layout; every sub-folder that is not hidden is a class.

    Raises:
        SegmorphError: ``root`` is missing, has fewer than two class folders, or one holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise SegmorphError("dataset folder not found", root)
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    names = sorted_class_names([p.name for p in folders])
    items = []
    for folder in folders:
        files = list_images([folder])
        items.extend(LabelledImage(path, names.index(folder.name), f"image:{path}") for path in files)
    if len(names) < 2:
        raise SegmorphError("need at least two class folders holding images (or give --labels CSV)", root)
    return ClassificationDataset(root, tuple(items), names)


@dataclass(frozen=True)
class InputSpec:
    """How images become network inputs (stored with the model; see the module docstring).

    Attributes:
        size: Spatial input size in voxels, ``(I, J)`` or ``(I, J, K)``.
        channels: Input channels after the colour rule (1 for grey pictures).
        normalisation: ``"zscore"`` (per image and channel, padding excluded); the only one so far.
    """

    size: tuple[int, ...]
    channels: int = 1
    normalisation: str = "zscore"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if len(self.size) not in (2, 3) or min(self.size) < 1:
            raise ValueError(f"size: expected 2 or 3 positive values, got {self.size}")
        if self.normalisation != "zscore":
            raise ValueError(f"normalisation: expected 'zscore', got {self.normalisation!r}")

    @property
    def ndim(self) -> int:
        return len(self.size)

    def to_dict(self) -> dict:
        return {**asdict(self), "size": list(self.size)}

    @classmethod
    def from_dict(cls, values: dict) -> InputSpec:
        return cls(tuple(values["size"]), int(values["channels"]), values["normalisation"])


@dataclass(frozen=True)
class Placement:
    """Where an image's content sits in the padded input grid, to map maps back to the image.

    Attributes:
        start: First input voxel of the content per spatial axis.
        shape: Content size in input voxels per spatial axis.
        original_shape: The image's own spatial shape.
    """

    start: tuple[int, ...]
    shape: tuple[int, ...]
    original_shape: tuple[int, ...]


def as_grey(image: Image) -> torch.Tensor:
    """``(C, *S)`` float32 data with the colour rule applied: RGB(A) pictures -> ``(1, *S)`` mean of R, G, B."""
    data = image.data.float()
    if image.ndim == 2 and data.shape[0] in (3, 4):
        return data[:3].mean(0, keepdim=True)
    return data


def content_shape(shape: Sequence[int], spacing: Sequence[float], size: Sequence[int]) -> tuple[int, ...]:
    """Size of an image of ``shape`` voxels and ``spacing`` mm fitted into ``size`` with its aspect ratio kept."""
    extent = np.asarray(shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    scale = float(np.min(np.asarray(size) / extent))
    return tuple(int(min(max(round(e * scale), 1), s)) for e, s in zip(extent, size))


def prepare_image(image: Image, spec: InputSpec, path: str | Path | None = None) -> tuple[torch.Tensor, Placement]:
    """One image as a network input.

    Args:
        image: Data ``(C, I, J[, K])``.
        spec: Input size, channels and normalisation.
        path: Named in error messages.

    Returns:
        ``(input (spec.channels, *spec.size) float32, placement)``.

    Raises:
        SegmorphError: Wrong number of spatial dimensions or channels.
    """
    if image.ndim != spec.ndim:
        raise SegmorphError(f"expected a {spec.ndim}D image, got {image.ndim}D", path)
    data = as_grey(image)
    if data.shape[0] != spec.channels:
        raise SegmorphError(f"expected {spec.channels} channel(s) after the colour rule, got {data.shape[0]}", path)
    shape = content_shape(image.spatial_shape, image.spacing, spec.size)
    mode = "bilinear" if spec.ndim == 2 else "trilinear"
    resized = F.interpolate(data[None], size=shape, mode=mode, align_corners=False, antialias=spec.ndim == 2)[0]
    axes = (-1,) + (1,) * spec.ndim  # per-channel statistics, broadcast over the spatial axes
    flat = resized.flatten(1)
    normalised = (resized - flat.mean(1).view(axes)) / flat.std(1, unbiased=False).clamp_min(_EPS).view(axes)
    start = tuple((s - c) // 2 for s, c in zip(spec.size, shape))
    background = normalised.flatten(1).amin(1).view(axes)
    out = background.expand(spec.channels, *spec.size).clone()
    out[(slice(None), *(slice(a, a + c) for a, c in zip(start, shape)))] = normalised
    return out, Placement(start, shape, image.spatial_shape)


def to_original_grid(values: torch.Tensor, placement: Placement) -> torch.Tensor:
    """Map a map on the input grid ``(*size)`` back onto the image's own grid ``(*original_shape)`` (linear)."""
    content = values[tuple(slice(a, a + c) for a, c in zip(placement.start, placement.shape))]
    mode = "bilinear" if values.ndim == 2 else "trilinear"
    return F.interpolate(content[None, None].float(), size=placement.original_shape, mode=mode, align_corners=False)[
        0, 0
    ]


def choose_input_size(
    paths: Sequence[str | Path], max_side: int | None = None, survey: int = SURVEY_IMAGES
) -> tuple[tuple[int, ...], int]:
    """Input size and channel count from the data: the median physical extent, scaled to a CPU-sized input.

    Up to ``survey`` evenly spread images are read. The longest side is the median longest side in voxels,
    capped at ``max_side`` (default 128 in 2D, 64 in 3D); the other sides follow the median aspect ratio
    (in mm); every side is rounded to a multiple of 8.

    Returns:
        ``(size, channels)``.

    Raises:
        SegmorphError: Images of mixed dimensionality or channel counts.
    """
    picks = sorted({int(i) for i in np.linspace(0, len(paths) - 1, num=min(survey, len(paths)))})
    shapes, extents, kinds = [], [], {}
    for index in picks:
        image = read_image(paths[index])
        shapes.append(image.spatial_shape)
        extents.append(np.asarray(image.spatial_shape) * image.spacing)
        kinds.setdefault((image.ndim, int(as_grey(image).shape[0])), paths[index])
    if len(kinds) > 1:
        (first_kind, first), (kind, odd) = list(kinds.items())[:2]
        raise SegmorphError(f"is {kind[0]}D with {kind[1]} channel(s) but {Path(first).name} is {first_kind[0]}D "
                            f"with {first_kind[1]}: images must not mix", odd)  # fmt: skip
    ndim, channels = next(iter(kinds))
    longest = min(float(np.median([max(s) for s in shapes])), max_side or DEFAULT_MAX_SIDE[ndim])
    extent = np.median(np.stack(extents), axis=0)
    sides = extent / extent.max() * longest
    size = tuple(int(max(SIZE_MULTIPLE, SIZE_MULTIPLE * round(s / SIZE_MULTIPLE))) for s in sides)
    return size, channels


def load_inputs(paths: Sequence[str | Path], spec: InputSpec, show_progress: bool = True) -> torch.Tensor:
    """Read and prepare every image: ``(N, spec.channels, *spec.size)`` float32.

    Raises:
        SegmorphError: That array beyond the memory budget (checked before it is allocated), or a bad image.
    """
    values = float(len(paths)) * spec.channels * math.prod(spec.size)
    check_voxel_budget(values, f"{len(paths)} images at input size {list(spec.size)}", None)
    out = torch.empty((len(paths), spec.channels, *spec.size), dtype=torch.float32)
    for index, path in enumerate(track(paths, "load images", total=len(paths), enabled=show_progress)):
        out[index] = prepare_image(read_image(path), spec, path)[0]
    return out
