"""Dataset quality check: per-case geometry, intensities and labels; exact and near-duplicate images; outliers.

One module for segmentation and classification datasets (it reads images only, never trains), so it is its
own package rather than part of either capability. Layouts understood (see :func:`find_cases`):

* MSD / nnU-Net folders and paired image/label folders (:func:`segmorph.segmentation.datasets.load_dataset`);
* classification datasets: a labels CSV (``--labels``) or class folders (:mod:`segmorph.classification.data`);
* a plain folder of images.

Per case (a :class:`CaseQuality` row):

* geometry: spatial shape (axes I, J[, K]), spacing (mm), the orientation code (three letters, DICOM/LPS
  convention: the world directions the array axes I, J, K point to, closest axis; ``LPS`` for an identity
  direction; two letters in 2D);
* intensity: minimum, maximum, mean, standard deviation and the 1st/5th/50th/95th/99th percentiles over all
  voxels of all channels; the intensity range is p99 - p1;
* labels (when the case has a label map): the label values present and, per value > 0, the number of voxels
  and the volume (mm³ in 3D; mm² in 2D, where a picture's pixel counts as 1 mm);
* duplicates: ``sha256`` of the decoded voxel values (with their shape and dtype): equal hashes are exact
  duplicates, whatever the file format. Near-duplicates use a difference hash (dHash): the image (channel
  mean; in 3D its middle slice along K) is resized with antialiasing (scikit-image) to
  ``hash_size x (hash_size + 1)`` pixels and each bit says whether a pixel is brighter than its right
  neighbour, ``hash_size²`` bits in all (256 by default). Two images whose hashes differ in at most
  ``near_bits`` bits (default 64, a quarter of the bits) are candidates. dHash ignores brightness, contrast
  and size; noise, small edits and a neighbouring frame of the same view change up to a few dozen bits, and
  unrelated images differ in about half the bits, but images that share a layout (fundus photos: a bright
  disc on black) differ in far fewer, because the layout sets most bits. So each candidate pair is confirmed on thumbnails: the same plane resized to
  ``THUMB_SIZE x THUMB_SIZE`` (32 x 32) pixels, each the mean of the pixels it covers, smoothed by a Gaussian
  (sigma 0.5 thumbnail pixels) and standardised (mean 0, standard deviation 1). The layout the dataset shares
  is removed first: the reference of a pair is the mean thumbnail of all other cases, and from each of the two
  thumbnails its least-squares fit by the reference and the reference's two gradients (the layout, also when
  slightly moved) is subtracted; with no other case nothing is. The pair is a near-duplicate when the Pearson
  correlation of the two residuals is at least ``near_correlation`` (default 0.9: each residual explains at
  least 81 % of the other's variance), that is when the two images are far more alike than either is like the
  rest of the dataset. The flag states the differing bits and this correlation. Recompression, brightness or
  contrast changes and shifts up to about 0.5 % of the image size keep copies above 0.9; larger shifts lower
  the correlation. When most cases are copies of one image the reference is that image, so those copies are
  not confirmed (exact copies are still found by ``sha256``).
* outliers: robust z-scores ``0.6745 (x - median) / MAD`` (Iglewicz & Hoaglin) over the dataset, on each
  spacing axis, each shape axis, the intensity range and the foreground volume. Ratios matter for these
  positive quantities, so the z-score is taken on ``log10`` of the value (rounded to 3 decimals, so float
  noise in spacings counts as equal). When the MAD is 0 (more than half the cases share one value) the scale
  is ``1.2533 x`` the mean absolute deviation instead; when that is 0 too, nothing is flagged. A case is
  flagged when ``|z| > z_limit`` (default 3.5), with the reason.
* groups: outliers are rare by nature. When the cases beyond the limit on one side of one feature are more than
  ``GROUP_SHARE`` (5 %) of the dataset and at least ``GROUP_MIN_CASES`` (3), they are a group of cases that
  differ from the rest (another scanner's intensity scale, another resolution), not outliers: the report
  lists the group once (:class:`CaseGroup`) and does not flag its cases for that feature.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter
from skimage.transform import resize, resize_local_mean

from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image, grid_difference
from segmorph.io import list_images, read_image, strip_suffix
from segmorph.progress import console, track
from segmorph.records import read_csv

Z_LIMIT = 3.5  # Iglewicz & Hoaglin's cut-off for modified z-scores
GROUP_SHARE = 0.05  # cases beyond the limit on one side of a feature: above this share of the dataset ...
GROUP_MIN_CASES = 3  # ... and at least this many, they are a group of cases, not outliers
HASH_SIZE = 16  # dHash grid: HASH_SIZE**2 bits
NEAR_BITS = 64  # near-duplicate candidates differ in at most this many of the HASH_SIZE**2 bits
THUMB_SIZE = 32  # side of the thumbnails that confirm near-duplicate candidates
NEAR_CORRELATION = 0.9  # near-duplicates: residual thumbnails correlate at least this much (r² = 0.81)
PERCENTILES = (1, 5, 50, 95, 99)
TARGET_COLUMNS = ("label", "class", "target", "diagnosis")  # tried in order when no target column is given
_MAD_SCALE = 0.6745  # MAD of a standard normal
_MEAN_AD_SCALE = 1.253314  # sqrt(pi / 2): mean absolute deviation -> standard deviation of a normal


@dataclass(frozen=True)
class CaseSource:
    """Where one case's files are.

    Attributes:
        case_id: Name of the case (file name without suffix; for CSV datasets the path relative to the root).
        images: One file (or DICOM folder) per input channel.
        label: Label map file, or None.
        class_name: The case's class in a classification dataset, or "".
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    class_name: str = ""


@dataclass
class CaseQuality:
    """One case's facts and flags.

    Attributes:
        case_id: Name of the case.
        image: First image file.
        label: Label file or None.
        class_name: Class (classification datasets) or "".
        shape: Spatial shape, axes I, J[, K].
        channels: Number of channels.
        spacing: Voxel size in mm per axis.
        orientation: Orientation code (``LPS`` for an identity direction).
        intensity: ``min``, ``max``, ``mean``, ``std``, ``p1`` ... ``p99``.
        label_values: Values present in the label map (empty without one).
        label_voxels: Voxels per label value > 0.
        label_volumes: mm³ (mm² in 2D) per label value > 0.
        sha256: Hash of the decoded voxel values, shape and dtype.
        dhash: Difference hash bits (``hash_size²`` booleans).
        flags: Reasons the case is flagged, one sentence each.
        thumbnail: The hashed plane as a ``(THUMB_SIZE, THUMB_SIZE)`` thumbnail (axes I, J; see the module
            doc), standardised (mean 0, standard deviation 1; zeros for a constant image); None when not
            measured.
    """

    case_id: str
    image: Path
    label: Path | None
    class_name: str
    shape: tuple[int, ...]
    channels: int
    spacing: tuple[float, ...]
    orientation: str
    intensity: dict[str, float]
    label_values: tuple[int, ...]
    label_voxels: dict[int, int]
    label_volumes: dict[int, float]
    sha256: str
    dhash: np.ndarray = field(repr=False)
    flags: list[str] = field(default_factory=list)
    thumbnail: np.ndarray | None = field(default=None, repr=False)

    @property
    def intensity_range(self) -> float:
        """p99 - p1 of the intensities."""
        return self.intensity["p99"] - self.intensity["p1"]

    @property
    def foreground_volume(self) -> float | None:
        """Volume of all labels > 0 (mm³; mm² in 2D), or None without a label map."""
        return None if self.label is None else float(sum(self.label_volumes.values()))

    def row(self) -> dict[str, str]:
        """The case as one CSV row (see :data:`CSV_COLUMNS`)."""
        axes = "IJK"
        row = {"case": self.case_id, "image": str(self.image), "label": "" if self.label is None else str(self.label),
               "class": self.class_name, "channels": str(self.channels), "orientation": self.orientation}  # fmt: skip
        for i in range(3):
            row[f"shape_{axes[i]}"] = str(self.shape[i]) if i < len(self.shape) else ""
            row[f"spacing_{axes[i]}"] = f"{self.spacing[i]:.6g}" if i < len(self.spacing) else ""
        row.update({k: f"{v:.6g}" for k, v in self.intensity.items()})
        row["label_values"] = " ".join(str(v) for v in self.label_values)
        row["label_voxels"] = " ".join(f"{k}:{v}" for k, v in self.label_voxels.items())
        row["label_volumes"] = " ".join(f"{k}:{v:.6g}" for k, v in self.label_volumes.items())
        volume = self.foreground_volume
        row["foreground_volume"] = "" if volume is None else f"{volume:.6g}"
        row["sha256"] = self.sha256
        row["flagged"] = "yes" if self.flags else "no"
        row["reasons"] = "; ".join(self.flags)
        row["groups"] = ""
        return row


CSV_COLUMNS = ("case", "image", "label", "class", "channels", "orientation", "shape_I", "shape_J", "shape_K",
               "spacing_I", "spacing_J", "spacing_K", "min", "max", "mean", "std",
               *[f"p{p}" for p in PERCENTILES], "label_values", "label_voxels", "label_volumes",
               "foreground_volume", "sha256", "flagged", "reasons", "groups")  # fmt: skip


class NearPair(NamedTuple):
    """Two near-duplicate cases (not exact duplicates).

    Attributes:
        case_a: The earlier case in dataset order.
        case_b: The later case.
        bits: Difference-hash bits that differ (at most ``near_bits``).
        correlation: Pearson correlation of the two residual thumbnails (at least ``near_correlation``; see
            the module doc).
    """

    case_a: str
    case_b: str
    bits: int
    correlation: float


@dataclass(frozen=True)
class CaseGroup:
    """Cases that lie together beyond the outlier limit on one side of a feature: too many to be outliers.

    Attributes:
        feature: The feature's name, as in the outlier flags (``"intensity range (p99 - p1)"``, ``"spacing K"``).
        side: ``"above"`` or ``"below"`` the dataset median.
        case_ids: The group's cases, in dataset order.
        median: The median value of the group's cases, as printed (with its unit).
        dataset_median: The median over all cases, as printed.
    """

    feature: str
    side: str
    case_ids: tuple[str, ...]
    median: str
    dataset_median: str

    def sentence(self) -> str:
        """The group in words: ``intensity range (p99 - p1): 45 cases far below the median 841.8 (theirs 98)``."""
        return (f"{self.feature}: {len(self.case_ids)} cases far {self.side} the median {self.dataset_median} "
                f"(theirs {self.median})")  # fmt: skip


@dataclass
class QualityReport:
    """The result of :func:`check_dataset`.

    Attributes:
        root: The dataset folder.
        layout: ``"msd"``/``"folders"`` (segmentation), ``"labels-csv"``/``"class-folders"`` (classification)
            or ``"images"``.
        cases: One row per case, in dataset order.
        exact_groups: Groups of case ids with identical decoded images (each of 2 or more).
        near_pairs: Near-duplicates not already exact duplicates (:class:`NearPair`).
        hash_size: dHash grid side; the hashes have ``hash_size²`` bits.
        near_bits: Hamming distance limit of near-duplicate candidates.
        z_limit: Robust z-score limit of outliers.
        near_correlation: Residual thumbnail correlation limit of near-duplicates.
        groups: Groups of cases beyond the outlier limit on one side of a feature (:class:`CaseGroup`), listed
            once instead of flagging each case.
    """

    root: Path
    layout: str
    cases: list[CaseQuality]
    exact_groups: list[list[str]]
    near_pairs: list[NearPair]
    hash_size: int = HASH_SIZE
    near_bits: int = NEAR_BITS
    z_limit: float = Z_LIMIT
    near_correlation: float = NEAR_CORRELATION
    groups: list[CaseGroup] = field(default_factory=list)

    @property
    def flagged(self) -> list[CaseQuality]:
        """The cases with at least one flag."""
        return [case for case in self.cases if case.flags]

    def rows(self) -> list[dict[str, str]]:
        """One CSV row per case; ``groups`` names the case's groups (``intensity range (p99 - p1) below``)."""
        rows = [case.row() for case in self.cases]
        member = {case.case_id: row for case, row in zip(self.cases, rows)}
        for group in self.groups:
            for case_id in group.case_ids:
                row = member[case_id]
                row["groups"] = "; ".join(filter(None, [row["groups"], f"{group.feature} {group.side}"]))
        return rows

    def csv_text(self) -> str:
        """The report as CSV text (header :data:`CSV_COLUMNS`)."""
        import csv
        from io import StringIO

        buffer = StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return buffer.getvalue()


def find_cases(
    root: str | Path,
    labels: str | Path | None = None,
    target: str | None = None,
    file_column: str = "file",
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
) -> tuple[str, list[CaseSource]]:
    """The cases of a dataset folder and its layout name.

    Order of detection: ``labels`` given -> labels CSV; ``images_dir`` given, ``dataset.json`` or an
    image/label folder pair -> segmentation dataset; two or more class folders -> class folders; else the
    images in the folder itself.

    Args:
        root: The dataset folder.
        labels: Labels CSV (inside ``root`` or as given), or None.
        target: Class column of the CSV; None: the first of :data:`TARGET_COLUMNS` present.
        file_column: Image path column of the CSV.
        images_dir: Image folder of a paired-folder dataset (relative to ``root``).
        labels_dir: Label folder of a paired-folder dataset.

    Raises:
        SegmorphError: A missing folder or CSV, or a layout the loaders refuse.
    """
    from segmorph.classification.data import load_class_folders, load_labels_csv, resolve_labels_file
    from segmorph.segmentation.datasets import FOLDER_PAIRS, load_dataset

    root = Path(root)
    if not root.is_dir():
        raise SegmorphError("no such dataset folder", root)
    if labels is not None:
        csv_path = resolve_labels_file(root, labels)
        if target is None:
            columns = read_csv(csv_path, kind="labels file", allow_empty=True).columns if csv_path.is_file() else ()
            target = next((c for c in TARGET_COLUMNS if c in columns), TARGET_COLUMNS[0])
        data = load_labels_csv(root, csv_path, target=target, file_column=file_column)
        return "labels-csv", _classification_cases(data)
    pairs = any((root / i).is_dir() and (root / lab).is_dir() for i, lab in FOLDER_PAIRS)
    if images_dir is not None or (root / "dataset.json").exists() or pairs:
        spec = load_dataset(root, images_dir, labels_dir)
        layout = "msd" if images_dir is None and (root / "dataset.json").exists() else "folders"
        return layout, [CaseSource(c.case_id, c.images, c.label) for c in spec.cases]
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(folders) >= 2:
        return "class-folders", _classification_cases(load_class_folders(root))
    return "images", [CaseSource(strip_suffix(p.name), (p,)) for p in list_images([root])]


def _classification_cases(data) -> list[CaseSource]:
    cases = []
    for item in data.items:
        try:
            name = item.path.resolve().relative_to(data.root.resolve())
        except ValueError:
            name = Path(item.path.name)
        case_id = (name.parent / strip_suffix(name.name)).as_posix()
        cases.append(CaseSource(case_id, (item.path,), None, data.class_names[item.label]))
    return cases


def check_dataset(
    path: str | Path,
    labels: str | Path | None = None,
    target: str | None = None,
    file_column: str = "file",
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    z_limit: float = Z_LIMIT,
    hash_size: int = HASH_SIZE,
    near_bits: int = NEAR_BITS,
    show_progress: bool = True,
    near_correlation: float = NEAR_CORRELATION,
) -> QualityReport:
    """Check every case of a dataset (read in place; nothing is written).

    Args:
        path: The dataset folder (layouts: :func:`find_cases`).
        labels: Labels CSV of a classification dataset, or None.
        target: Class column of the labels CSV (None: ``label``, ``class``, ``target`` or ``diagnosis``).
        file_column: Image path column of the labels CSV.
        images_dir: Image folder of a paired-folder dataset.
        labels_dir: Label folder of a paired-folder dataset.
        z_limit: Cases with a robust z-score beyond this are flagged (see the module doc).
        hash_size: dHash grid side (``hash_size²`` bits).
        near_bits: Near-duplicate candidates differ in at most this many hash bits.
        show_progress: Show a progress bar.
        near_correlation: Candidates are near-duplicates when their residual thumbnails correlate at least
            this much (-1 to 1; see the module doc).

    Returns:
        A :class:`QualityReport`: one row per case with its flags, exact-duplicate groups and
        near-duplicate pairs.

    Raises:
        SegmorphError: A bad layout or an unreadable image (naming the file), or bad arguments.
    """
    if not z_limit > 0:
        raise SegmorphError(f"z_limit must be above 0, got {z_limit}", path)
    if hash_size < 2 or near_bits < 0:
        raise SegmorphError(f"hash_size must be at least 2 and near_bits at least 0, got {hash_size}, {near_bits}",
                            path)  # fmt: skip
    if not -1 <= near_correlation <= 1:
        raise SegmorphError(f"near_correlation must be between -1 and 1, got {near_correlation}", path)
    layout, sources = find_cases(path, labels, target, file_column, images_dir, labels_dir)
    cases = [measure_case(source, hash_size) for source in track(sources, "checking cases", enabled=show_progress)]
    exact = _exact_groups(cases)
    near = _near_pairs(cases, exact, near_bits, near_correlation)
    _flag_duplicates(cases, exact, near)
    groups = _flag_outliers(cases, z_limit)
    return QualityReport(Path(path), layout, cases, exact, near, hash_size, near_bits, z_limit, near_correlation,
                         groups)  # fmt: skip


def orientation_code(affine: Affine) -> str:
    """The closest orientation code of a grid (DICOM/LPS convention: ``LPS`` for an identity direction).

    Args:
        affine: The grid (2D or 3D); in 2D the direction is extended by the K axis and two letters returned.
    """
    direction = np.eye(3)
    n = affine.ndim
    direction[:n, :n] = affine.direction
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines([float(v) for v in direction.ravel()])
    return code[:n]


def difference_hash(values: np.ndarray, hash_size: int = HASH_SIZE) -> np.ndarray:
    """dHash of an image: ``hash_size²`` booleans (see the module doc).

    Args:
        values: ``(C, I, J[, K])`` voxel values; channels are averaged, a 3D image gives its middle K slice.
        hash_size: Side of the hash grid.
    """
    small = resize(_middle_plane(values), (hash_size, hash_size + 1), order=1, anti_aliasing=True,
                   preserve_range=True)  # fmt: skip
    return (small[:, 1:] > small[:, :-1]).ravel()


def _middle_plane(values: np.ndarray) -> np.ndarray:
    """The channel mean of ``(C, I, J[, K])`` values, in 3D its middle K slice: ``(I, J)`` float64."""
    values = np.asarray(values)
    if values.ndim == 4:
        values = values[..., values.shape[3] // 2]
    return values.astype(np.float64).mean(axis=0)


def _thumbnail(values: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """The middle plane as pixel means on a ``(size, size)`` grid, smoothed (Gaussian, sigma 0.5 pixels) and
    standardised: float32, axes I, J."""
    plane = _middle_plane(values)
    if plane.max() == plane.min():
        return np.zeros((size, size), dtype=np.float32)
    small = gaussian_filter(resize_local_mean(plane, (size, size)), 0.5, mode="nearest")
    small = small - small.mean()
    return (small / small.std()).astype(np.float32)


def measure_case(source: CaseSource, hash_size: int = HASH_SIZE) -> CaseQuality:
    """Read one case and measure it (no flags yet).

    Raises:
        SegmorphError: An unreadable file, or channels on different grids (naming the file).
    """
    channels = [read_image(p) for p in source.images]
    first = channels[0]
    for path, channel in zip(source.images[1:], channels[1:]):
        if channel.spatial_shape != first.spatial_shape:
            raise SegmorphError(f"channel shape {channel.spatial_shape} differs from {first.spatial_shape} of "
                                f"{source.images[0].name}", path)  # fmt: skip
    values = np.concatenate([c.numpy() for c in channels], axis=0)
    flat = values.astype(np.float64, copy=False).ravel()
    quantiles = np.percentile(flat, PERCENTILES)
    intensity = {"min": float(flat.min()), "max": float(flat.max()), "mean": float(flat.mean()),
                 "std": float(flat.std())}  # fmt: skip
    intensity.update({f"p{p}": float(q) for p, q in zip(PERCENTILES, quantiles)})
    digest = hashlib.sha256(f"{values.shape}|{values.dtype}|".encode())
    digest.update(np.ascontiguousarray(values).tobytes())
    flags: list[str] = []
    label_values: tuple[int, ...] = ()
    voxels: dict[int, int] = {}
    volumes: dict[int, float] = {}
    if source.label is not None:
        label = read_image(source.label, is_label=True)
        problem = grid_difference(label, first)
        if problem:
            flags.append(f"label grid differs from the image: {problem}")
        found, counts = np.unique(label.numpy(), return_counts=True)
        label_values = tuple(int(v) for v in found)
        voxel_size = float(np.prod(label.spacing))
        voxels = {int(v): int(n) for v, n in zip(found, counts) if v > 0}
        volumes = {v: n * voxel_size for v, n in voxels.items()}
    return CaseQuality(
        case_id=source.case_id, image=source.images[0], label=source.label, class_name=source.class_name,
        shape=tuple(int(s) for s in first.spatial_shape), channels=int(values.shape[0]),
        spacing=tuple(float(s) for s in first.spacing), orientation=orientation_code(first.affine),
        intensity=intensity, label_values=label_values, label_voxels=voxels, label_volumes=volumes,
        sha256=digest.hexdigest(), dhash=difference_hash(values, hash_size), flags=flags,
        thumbnail=_thumbnail(values),
    )  # fmt: skip


def _exact_groups(cases: Sequence[CaseQuality]) -> list[list[str]]:
    by_hash: dict[str, list[str]] = {}
    for case in cases:
        by_hash.setdefault(case.sha256, []).append(case.case_id)
    return [ids for ids in by_hash.values() if len(ids) > 1]


def _near_pairs(
    cases: Sequence[CaseQuality], exact: list[list[str]], near_bits: int, near_correlation: float
) -> list[NearPair]:
    """Hash candidates (at most ``near_bits`` apart) confirmed by their residual thumbnail correlation."""
    if len(cases) < 2:
        return []
    bits = np.stack([case.dhash for case in cases]).astype(np.int32)
    # Hamming distances of all pairs: a pair differs where exactly one of the two has the bit set
    distances = bits.sum(1)[:, None] + bits.sum(1)[None, :] - 2 * (bits @ bits.T)
    first, second = np.nonzero(np.triu(distances <= near_bits, k=1))
    thumbnails = np.stack([_case_thumbnail(case) for case in cases])
    correlations = residual_correlation(thumbnails, first, second)
    same_exact = {case_id: i for i, group in enumerate(exact) for case_id in group}
    pairs = []
    for a, b, correlation in zip(first, second, correlations):
        ida, idb = cases[a].case_id, cases[b].case_id
        if ida in same_exact and same_exact.get(idb) == same_exact[ida]:
            continue
        if correlation >= near_correlation:
            pairs.append(NearPair(ida, idb, int(distances[a, b]), float(correlation)))
    return pairs


def _case_thumbnail(case: CaseQuality) -> np.ndarray:
    if case.thumbnail is None:
        raise SegmorphError("case has no thumbnail for the near-duplicate check", case.image)
    return case.thumbnail


def residual_correlation(thumbnails: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pearson correlation of pairs of thumbnails after removing the layout the other cases share.

    The reference of the pair ``(a, b)`` is the mean of all other thumbnails; from each of the two, its
    least-squares fit by the reference and the reference's gradients along I and J is subtracted (with no
    other thumbnail, nothing). Two residuals that are both zero correlate 1; one zero residual, 0.

    Args:
        thumbnails: ``(cases, I, J)`` standardised thumbnails.
        first, second: ``(pairs,)`` indices of the two thumbnails of each pair.

    Returns:
        ``(pairs,)`` correlations in [-1, 1].
    """
    stack = np.asarray(thumbnails, dtype=np.float64)
    total, others = stack.sum(0), len(stack) - 2
    result = np.empty(len(first))
    for start in range(0, len(first), 1024):  # bounded memory: pairs x pixels x 3 at a time
        a, b = np.asarray(first[start : start + 1024]), np.asarray(second[start : start + 1024])
        left, right = stack[a].reshape(len(a), -1), stack[b].reshape(len(b), -1)
        if others > 0:
            reference = (total - stack[a] - stack[b]) / others
            basis = np.stack([reference, *np.gradient(reference, axis=(1, 2))], axis=-1).reshape(len(a), -1, 3)
            left, right = _remove_fit(left, basis), _remove_fit(right, basis)
        result[start : start + len(a)] = _pearson(left, right)
    return result


def _remove_fit(values: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``(pairs, pixels)`` values minus their least-squares fit by ``(pairs, pixels, k)`` basis vectors."""
    gram = np.einsum("npk,npl->nkl", basis, basis)
    coefficients = np.einsum("nkl,nl->nk", np.linalg.pinv(gram, rcond=1e-10), np.einsum("npk,np->nk", basis, values))
    return values - np.einsum("npk,nk->np", basis, coefficients)


def _pearson(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of ``(pairs, pixels)`` arrays (both rows constant: 1; one: 0)."""
    left = left - left.mean(1, keepdims=True)
    right = right - right.mean(1, keepdims=True)
    scale = float(max(np.abs(left).max(initial=0), np.abs(right).max(initial=0), 1.0))
    flat_left = np.abs(left).max(1, initial=0) <= 1e-9 * scale
    flat_right = np.abs(right).max(1, initial=0) <= 1e-9 * scale
    norms = np.sqrt((left * left).sum(1) * (right * right).sum(1))
    dots = (left * right).sum(1)
    out = (flat_left & flat_right).astype(np.float64)
    np.divide(dots, norms, out=out, where=~(flat_left | flat_right))
    return np.clip(out, -1.0, 1.0)


def _flag_duplicates(cases: Sequence[CaseQuality], exact: list[list[str]], near: list[NearPair]) -> None:
    by_id = {case.case_id: case for case in cases}
    for group in exact:
        for case_id in group:
            others = ", ".join(o for o in group if o != case_id)
            by_id[case_id].flags.append(f"exact duplicate of {others}")
    for a, b, distance, correlation in near:
        similarity = f"{distance} hash bits differ, residual correlation {correlation:.3f}"
        by_id[a].flags.append(f"near-duplicate of {b} ({similarity})")
        by_id[b].flags.append(f"near-duplicate of {a} ({similarity})")


def robust_z(values: Sequence[float]) -> np.ndarray:
    """Robust z-scores ``0.6745 (x - median) / MAD`` of values (NaN stays NaN).

    When the MAD is 0 the scale is ``1.2533 x`` the mean absolute deviation from the median; when that is 0
    too, every score is 0.
    """
    x = np.asarray(values, dtype=np.float64)
    z = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    if ok.sum() < 3:
        return np.where(ok, 0.0, np.nan)
    median = np.median(x[ok])
    deviation = np.abs(x[ok] - median)
    mad = np.median(deviation)
    if mad > 0:
        z[ok] = _MAD_SCALE * (x[ok] - median) / mad
    elif deviation.mean() > 0:
        z[ok] = (x[ok] - median) / (_MEAN_AD_SCALE * deviation.mean())
    else:
        z[ok] = 0.0
    return z


def _features(cases: Sequence[CaseQuality]) -> dict[str, tuple[np.ndarray, Callable[[float], str]]]:
    """Feature name -> (value per case, how to print one value)."""
    features: dict[str, tuple[np.ndarray, Callable[[float], str]]] = {}
    ndim = max(len(case.shape) for case in cases)
    for axis, name in zip(range(ndim), "IJK"):
        features[f"spacing {name}"] = (np.array([c.spacing[axis] if axis < len(c.spacing) else np.nan
                                                 for c in cases]), lambda v: f"{v:.4g} mm")  # fmt: skip
        features[f"shape {name}"] = (np.array([c.shape[axis] if axis < len(c.shape) else np.nan for c in cases],
                                              dtype=float), lambda v: f"{v:.0f}")  # fmt: skip
    features["intensity range (p99 - p1)"] = (np.array([c.intensity_range for c in cases]), lambda v: f"{v:.4g}")
    volumes = [c.foreground_volume for c in cases]
    if any(v is not None for v in volumes):
        unit = "mm³" if ndim == 3 else "mm²"
        features["label volume"] = (np.array([np.nan if v is None else v for v in volumes], dtype=float),
                                    lambda v: f"{v:.4g} {unit}")  # fmt: skip
    return features


def _flag_outliers(cases: Sequence[CaseQuality], z_limit: float) -> list[CaseGroup]:
    """Flag each feature's outliers; return the groups (too many cases beyond the limit on one side)."""
    if len(cases) < 3:
        return []
    groups = []
    group_size = max(GROUP_MIN_CASES, math.floor(GROUP_SHARE * len(cases)) + 1)
    for name, (values, show) in _features(cases).items():
        z = robust_z(_log_values(name, values))
        median = show(float(np.nanmedian(values)))
        beyond = np.abs(z) > z_limit  # NaN (no value) is never beyond
        for side, on_side in (("above", beyond & (z > 0)), ("below", beyond & (z < 0))):
            chosen = np.flatnonzero(on_side)
            if len(chosen) >= group_size:
                groups.append(CaseGroup(name, side, tuple(cases[i].case_id for i in chosen),
                                        show(float(np.median(values[chosen]))), median))  # fmt: skip
                continue
            for i in chosen:
                cases[i].flags.append(f"outlier: {name} {show(float(values[i]))} far {side} the median {median} "
                                      f"(robust z {z[i]:+.1f} on log10)")  # fmt: skip
    return groups


def _log_values(name: str, values: np.ndarray) -> np.ndarray:
    """``log10`` of the positive values, rounded to 3 decimals (NaN for the others)."""
    positive = np.where(values > 0, values, np.nan)
    logs = np.round(np.log10(positive), 3)
    # a zero label volume has no log: give it the log of a tenth of the smallest positive volume
    if name == "label volume" and np.any(values == 0) and np.any(values > 0):
        logs = np.where(values == 0, np.round(np.log10(np.nanmin(positive) / 10), 3), logs)
    return logs


def _without_details(reason: str) -> str:
    """A flag's reason without its parenthesised details (z-scores, hash bits), for one-line summaries."""
    return re.sub(r" \([^()]*\)", "", reason)


def summary_line(report: QualityReport, max_cases: int = 3, command: str | None = None) -> str | None:
    """One line naming the flagged cases and the groups of cases, or None when there are neither.

    Example: ``segmorph check flags 5 of 208 cases (case_017: <its first reason>; ...; and 2 more) and finds 1
    group of cases (intensity range (p99 - p1): 45 cases far below the median 841.8); run segmorph check
    DATASET for the table``.

    Args:
        report: The check's result.
        max_cases: At most this many cases are named (in report order), each with its first reason (without
            the parenthesised details).
        command: The command that prints the full table (default ``segmorph check <report.root>``).
    """
    flagged = report.flagged
    if not flagged and not report.groups:
        return None
    parts = []
    if flagged:
        named = [f"{case.case_id}: {_without_details(case.flags[0])}" for case in flagged[: max(max_cases, 0)]]
        if len(flagged) > len(named):
            named.append(f"and {len(flagged) - len(named)} more")
        parts.append(f"flags {len(flagged)} of {len(report.cases)} cases ({'; '.join(named)})")
    if report.groups:
        sentences = "; ".join(group.sentence() for group in report.groups)
        count = len(report.groups)
        where = "" if flagged else f" among {len(report.cases)}"
        parts.append(f"finds {count} group{'s' if count > 1 else ''} of cases{where} ({sentences})")
    command = command or f"segmorph check {report.root}"
    return f"segmorph check {' and '.join(parts)}; run {command} for the table"


def check_before_training(
    path: str | Path,
    labels: str | Path | None = None,
    target: str | None = None,
    file_column: str = "file",
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The dataset check as training runs it: read only, it prints one warning line and changes nothing.

    When cases are flagged the line is :func:`summary_line`; when the check refuses the dataset (a
    :class:`SegmorphError`) the line names the problem and training goes on.

    Args:
        path, labels, target, file_column, images_dir, labels_dir: As for :func:`check_dataset`, the same
            layout training reads.

    Returns:
        Facts for ``run.json``: ``{"ran": True, "flagged_cases": [case ids]}``, or ``{"ran": False,
        "flagged_cases": [], "problem": "<the check's error>"}`` when the check failed.
    """
    try:
        report = check_dataset(path, labels, target, file_column, images_dir, labels_dir, show_progress=False)
    except SegmorphError as err:
        console.print(f"warning: segmorph check could not check the dataset: {err}", highlight=False, soft_wrap=True)
        return {"ran": False, "flagged_cases": [], "problem": str(err)}
    options = {"--images": images_dir, "--labels": labels_dir if labels is None else labels}
    if labels is not None:
        options.update({"--target": target, "--file-column": None if file_column == "file" else file_column})
    command = " ".join(["segmorph check", str(path), *(f"{flag} {value}" for flag, value in options.items() if value)])
    line = summary_line(report, command=command)
    if line is not None:
        console.print(f"warning: {line}", highlight=False, soft_wrap=True)
    return {"ran": True, "flagged_cases": [case.case_id for case in report.flagged]}


def flagged_table(report: QualityReport) -> list[tuple[str, str]]:
    """(case, reasons) of the flagged cases, for printing."""
    return [(case.case_id, "; ".join(case.flags)) for case in report.flagged]


def plot_flagged(report: QualityReport, path: str | Path, max_cases: int = 24) -> Path | None:
    """A PNG of the flagged cases (middle slice, label outline when present), or None when none is flagged.

    Args:
        report: The check's result.
        path: PNG file to write (atomically).
        max_cases: At most this many flagged cases are drawn (in report order).
    """
    import matplotlib.pyplot as plt

    from segmorph.plots import LABEL_COLOURS, normalise_for_display, save_figure

    flagged = report.flagged[:max_cases]
    if not flagged:
        return None
    columns = min(6, len(flagged))
    rows = math.ceil(len(flagged) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, case in zip(axes.ravel(), flagged):
        image = _display_slice(read_image(case.image))
        axis.imshow(normalise_for_display(image), cmap="gray")
        if case.label is not None:
            label = _display_slice(read_image(case.label, is_label=True))
            if label.shape == image.shape and label.max() > 0:
                colours = LABEL_COLOURS[np.clip(label.astype(int), 0, len(LABEL_COLOURS) - 1)]
                axis.imshow(np.dstack([colours, 0.35 * (label > 0)]))
        reason = case.flags[0] if len(case.flags) == 1 else f"{case.flags[0]} (+{len(case.flags) - 1})"
        axis.set_title(f"{case.case_id}\n{_wrap(reason, 38)}", fontsize=6)
    figure.suptitle(f"segmorph check: {len(report.flagged)} flagged case(s) of {len(report.cases)}", fontsize=9)
    return save_figure(figure, path)


def _display_slice(image: Image) -> np.ndarray:
    values = image.numpy().astype(np.float64).mean(axis=0)
    return values[:, :, values.shape[2] // 2] if values.ndim == 3 else values


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:3])
