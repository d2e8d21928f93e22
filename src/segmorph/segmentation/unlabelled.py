"""Scans without labels, gathered from whatever a user points at, as a :class:`DatasetSpec` of unlabelled cases.

Self-supervised pretraining and semi-supervised training read their scans through :func:`unlabelled_spec`, so
both take the same sources: image files, folders of image files, DICOM series folders (one series each), and
dataset folders. A dataset folder gives the images of its cases, labelled or not (its labels are left aside):
an MSD / nnU-Net folder (``dataset.json``) gives ``imagesTr`` and, when present, ``imagesTs``; a paired-folder
dataset gives its image folder. Files named ``<case>_0000``, ``<case>_0001``... are one case's channels, as in
the datasets. Every case must have the dimensionality (2D or 3D) and channel count of the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from segmorph.errors import SegmorphError
from segmorph.io import check_input_path, folder_files, is_dicom_folder, read_image_information, strip_suffix
from segmorph.segmentation.datasets import (
    FOLDER_PAIRS,
    CaseFiles,
    DatasetSpec,
    channels_of_first_case,
    group_channels,
    load_dataset,
    modality_of,
)


def unlabelled_spec(sources: Sequence[str | Path], like: DatasetSpec | None = None) -> DatasetSpec:
    """The scans of ``sources`` as unlabelled cases (``label`` None), sorted by case id.

    Args:
        sources: Image files, folders of image files, DICOM series folders, dataset folders, or folders of
            such folders (a classification dataset's class folders: one level down).
        like: A labelled dataset the scans will be used beside: its channel names and modalities are taken, and a
            scan with another number of channels or dimensionality is refused.

    Returns:
        A :class:`DatasetSpec` rooted at the first source. Case ids are the file names without suffix (a DICOM
        series: its folder's name); where two sources hold the same name, the parent folder's name is put in
        front (``scans_b__case_001``).

    Raises:
        SegmorphError: A missing source, a folder without images, a case of another dimensionality or channel
            count than the first (or than ``like``), a case id that stays ambiguous.
    """
    if not sources:
        raise SegmorphError("no scans given")
    groups: list[list[Path]] = []
    for source in map(Path, sources):
        groups.extend(_cases_of(source))
    cases = _unique_ids(groups)
    first = cases[0]
    channels = like.channel_names if like is not None else channels_of_first_case(first)
    modalities = like.modalities if like is not None else tuple(modality_of(n) for n in channels)
    _check_consistent(cases, like)
    return DatasetSpec(Path(sources[0]), tuple(sorted(cases, key=lambda c: c.case_id)), {}, channels, modalities)


def _cases_of(source: Path) -> list[list[Path]]:
    """The channel files of each case ``source`` holds."""
    check_input_path(source)
    if source.is_file() or is_dicom_folder(source):
        return [[source]]
    if _is_dataset_folder(source):
        return _dataset_images(source)
    cases = _folder_cases(source)
    if not cases:  # a folder of class folders (a classification dataset): the images of each
        inner = [p for p in sorted(source.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        cases = [case for folder in inner for case in _folder_cases(folder)]
    if not cases:
        raise SegmorphError("folder holds no images or DICOM series (nor do its sub-folders)", source)
    return cases


def _folder_cases(folder: Path) -> list[list[Path]]:
    """The channel files of each case directly in ``folder``: image files (not hidden), DICOM series folders."""
    files = folder_files(folder)
    series = [p for p in sorted(folder.iterdir()) if p.is_dir() and is_dicom_folder(p)]
    return list(group_channels(files).values()) + [[s] for s in series]


def _is_dataset_folder(folder: Path) -> bool:
    return (folder / "dataset.json").is_file() or any((folder / images).is_dir() for images, _ in FOLDER_PAIRS)


def _dataset_images(root: Path) -> list[list[Path]]:
    """A dataset folder's images: its cases' channel files, and ``imagesTs`` beside ``imagesTr`` when present."""
    if (root / "dataset.json").is_file():
        cases = [list(c.images) for c in load_dataset(root).cases]
    else:
        image_folder = next(root / images for images, _ in FOLDER_PAIRS if (root / images).is_dir())
        cases = [list(c.images) for c in load_dataset(root, image_folder).cases]
    tests = root / "imagesTs"
    if tests.is_dir():
        files = folder_files(tests)
        cases.extend(group_channels(files).values())
    return cases


def _case_id(files: Sequence[Path]) -> str:
    name = files[0].name if files[0].is_dir() else strip_suffix(files[0])
    return name[: -len("_0000")] if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit() else name


def _unique_ids(groups: list[list[Path]]) -> list[CaseFiles]:
    names = [_case_id(files) for files in groups]
    repeated = {n for n in names if names.count(n) > 1}
    ids = [f"{files[0].parent.name}__{n}" if n in repeated else n for n, files in zip(names, groups)]
    seen: dict[str, Path] = {}
    for case_id, files in zip(ids, groups):
        if case_id in seen and seen[case_id] != files[0]:
            raise SegmorphError(f"two scans are called {case_id!r} ({seen[case_id]} and this one); rename one",
                                files[0])  # fmt: skip
        seen[case_id] = files[0]
    unique = dict(zip(ids, groups))  # the same file given twice counts once
    return [CaseFiles(case_id, tuple(files)) for case_id, files in unique.items()]


def _dimensions_and_channels(case: CaseFiles) -> tuple[int, int]:
    first = case.images[0]
    if first.is_dir():
        return 3, len(case.images)
    shape, components, _ = read_image_information(first)
    return len(shape), components * len(case.images)


def _check_consistent(cases: Sequence[CaseFiles], like: DatasetSpec | None) -> None:
    """Refuse a case whose dimensionality or channel count differs from the first case's (or ``like``'s)."""
    reference = cases[0]
    ndim, channels = _dimensions_and_channels(reference)
    if like is not None and like.cases:
        ndim, channels = _dimensions_and_channels(like.cases[0])
        reference = like.cases[0]
    for case in cases:
        case_ndim, case_channels = _dimensions_and_channels(case)
        if case_ndim != ndim:
            raise SegmorphError(f"a {case_ndim}D scan among {ndim}D scans (like {reference.images[0].name})",
                                case.images[0])  # fmt: skip
        if case_channels != channels:
            raise SegmorphError(f"{case_channels} channel(s); {reference.images[0].name} has {channels}",
                                case.images[0])  # fmt: skip
