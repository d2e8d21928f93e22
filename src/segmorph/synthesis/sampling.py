"""Synthetic labelled cases from a trained GAN: in memory for training, or written as a dataset folder.

Every pair is made the same way: a label map is drawn (seeded), deformed at random
(:mod:`segmorph.synthesis.deform`), and the generator makes the image from the deformed label map.

* :func:`synthetic_cases` works in a segmentation plan's preprocessed space: it deforms preprocessed label maps
  of training cases and returns ``(image, label)`` tensors to mix into training, refusing a GAN whose space does
  not fit the plan.
* :func:`write_synthetic_dataset` (``segmorph synthesize sample``) deforms label map files on their own grids,
  brings the deformed map into the GAN's space (resampled by nearest neighbour to its target spacing), generates
  the image there and resamples it linearly back, so that image and label map carry the source label map's
  grid and geometry (spacing, origin, direction). It writes an MSD-layout dataset: ``imagesTr/<id>_0000...``
  (one file per channel), ``labelsTr/<id>`` and ``dataset.json``, which ``segmorph train`` reads.

Intensities written: volumes keep the normalised scale of the GAN's plan for ``zscore`` (and ``none``)
channels: z-score normalisation, which ``segmorph train`` applies to such channels, is unchanged by a linear
map of intensities, so a training reads them back as the generator made them. ``ct`` channels are written in
Hounsfield units (the plan's dataset statistics undone), since their normalisation clips fixed HU values.
Pictures (PNG, 8 bits) are written in their raw 0..255 scale (the scale of the GAN's training images), which
``rgb`` normalisation (divide by 255, then z-score) also maps back, up to clipping and rounding.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmorph.errors import SegmorphError
from segmorph.image import Image
from segmorph.io import (
    PICTURE_SUFFIXES,
    atomic_write_text,
    image_suffix,
    list_images,
    read_label_map,
    strip_suffix,
    write_image,
)
from segmorph.outputs import Output, check_outputs
from segmorph.readchecks import check_voxel_budget
from segmorph.segmentation.datasets import load_dataset
from segmorph.segmentation.plan import Plan
from segmorph.segmentation.preprocess import (
    PreprocessConfig,
    UndoRecord,
    linear_resample,
    resample_array,
    resampled_shape,
)
from segmorph.synthesis.deform import Deformation, deform_label_image, deform_labels
from segmorph.synthesis.model import SynthesisModel

MAX_PAIRS = 100_000
# Floors of the bytes one generated intensity takes on disk, well under the rates of real outputs (about 3.7 for
# float32 hippocampus volumes in .nii.gz, 0.4 for DRIVE pictures): a dataset that needs more than the free space
# at these rates is sure not to fit.
MIN_BYTES_PER_VOXEL = {".nii.gz": 0.5, ".png": 0.1}


def synthetic_cases(
    gan_dir: Path, labels: Sequence[torch.Tensor], plan: Plan, count: int, seed: int, *,
    device: str | torch.device = "cpu", deformation: Deformation = Deformation(),
) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """``count`` synthetic ``(image, label)`` pairs in ``plan``'s preprocessed space.

    Each pair: one of ``labels`` drawn at random, deformed elastically on its grid (spacing: the plan's target
    spacing), and the image the GAN makes from the deformed label map.

    Args:
        gan_dir: A ``segmorph synthesize train`` run folder.
        labels: Preprocessed label maps ``(1, *S)`` of the training cases (negative values, ignored voxels,
            count as background).
        plan: The segmentation plan the pairs are for.
        count: Number of pairs.
        seed: Seed of the draws (label maps, deformations, noise): the same seed gives the same pairs.
        device: Where the generator runs.
        deformation: Magnitude and smoothness of the deformations.

    Returns:
        ``count`` pairs: image ``(C, *S)`` float32 in the plan's normalised scale and label ``(1, *S)`` int64, on
        the CPU.

    Raises:
        SegmorphError: The GAN's space does not fit ``plan`` (dimensionality, channels, target spacing,
            normalisation), a label map holds values the GAN does not know, or no label maps are given.

    Example:
        >>> pairs = synthetic_cases(Path("runs/gan"), [label for _, label in train_cases], plan, count=20, seed=0)
    """
    gan_dir = Path(gan_dir)
    if count < 0:
        raise SegmorphError(f"count: expected at least 0 synthetic cases, got {count}")
    model = SynthesisModel(gan_dir, device)
    check_fits_plan(model, plan, gan_dir)
    if count and not labels:
        raise SegmorphError("no label maps to make synthetic cases from", gan_dir)
    known = [label.detach().cpu().long().clamp_min(0) for label in labels]
    for index, label in enumerate(known):
        if label.ndim != plan.image_ndim + 1 or label.shape[0] != 1:
            raise SegmorphError(f"label map {index}: expected (1, *S) with {plan.image_ndim} spatial axes, got "
                                f"{tuple(label.shape)}", gan_dir)  # fmt: skip
        model.check_labels(label, f"{gan_dir} (label map {index})")
    spacing = plan.preprocess.target_spacing or (1.0,) * plan.image_ndim
    draws = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(count):
        label = known[int(torch.randint(len(known), (), generator=draws))]
        deformed = deform_labels(label, spacing, draws, deformation)
        pairs.append((model.generate(deformed, draws).float(), deformed))
    return pairs


def check_fits_plan(model: SynthesisModel, plan: Plan, where: Path) -> None:
    """Refuse a GAN whose space (dimensionality, channels, target spacing, normalisation) is not ``plan``'s.

    Raises:
        SegmorphError: One line naming ``where`` and the first difference.
    """
    ours, theirs = model.preprocess, plan.preprocess
    problems = []
    if model.ndim != plan.image_ndim:
        problems.append(f"the GAN makes {model.ndim}D images, the plan's scans are {plan.image_ndim}D")
    elif len(model.channel_names) != plan.network_channels:
        problems.append(f"the GAN makes {len(model.channel_names)} channel(s), the plan's network takes "
                        f"{plan.network_channels}")  # fmt: skip
    elif not _same_spacing(ours.target_spacing, theirs.target_spacing):
        problems.append(f"the GAN was trained at target spacing {_mm(ours.target_spacing)}, the plan uses "
                        f"{_mm(theirs.target_spacing)}")  # fmt: skip
    elif tuple(ours.normalization) != tuple(theirs.normalization) or ours.crop_to_nonzero != theirs.crop_to_nonzero:
        problems.append(f"the GAN was trained on normalisation {list(ours.normalization)} (crop to non-zero "
                        f"{ours.crop_to_nonzero}), the plan uses {list(theirs.normalization)} (crop to non-zero "
                        f"{theirs.crop_to_nonzero})")  # fmt: skip
    elif not _same_ct_statistics(ours, theirs):
        problems.append("the GAN's CT normalisation statistics differ from the plan's")
    if problems:
        raise SegmorphError(f"the GAN does not fit this training: {problems[0]}", where)


def _same_spacing(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=1e-3, atol=0))


def _mm(spacing: Sequence[float] | None) -> str:
    return "none (each case's own)" if spacing is None else f"{[round(float(s), 4) for s in spacing]} mm"


def _same_ct_statistics(ours: PreprocessConfig, theirs: PreprocessConfig) -> bool:
    for channel, scheme in enumerate(ours.normalization):
        if scheme != "ct":
            continue
        a, b = ours.ct_stats[channel], theirs.ct_stats[channel]
        if any(not np.isclose(a[k], b[k], rtol=1e-3, atol=1e-3) for k in ("mean", "std")):
            return False
    return True


# -- the synthetic dataset --------------------------------------------------------------------------


def label_files(sources: Sequence[str | Path]) -> list[Path]:
    """Label map files from files, folders of them, or dataset folders (their cases' label maps).

    Raises:
        SegmorphError: A missing source, a folder without images, a dataset without label maps.
    """
    if not sources:
        raise SegmorphError("no label maps given (--labels FILES_OR_DIR)")
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir() and (source / "dataset.json").is_file():
            found = [case.label for case in load_dataset(source).cases if case.label is not None]
            if not found:
                raise SegmorphError("dataset has no label maps", source)
            files.extend(found)
        else:
            files.extend(list_images([source]))
    return sorted(dict.fromkeys(files), key=str)


def to_model_grid(label: Image, preprocess: PreprocessConfig) -> tuple[torch.Tensor, UndoRecord]:
    """A label map resampled (nearest neighbour) to the GAN's target spacing, with the record that undoes it.

    The grid keeps its origin and direction, as :func:`segmorph.segmentation.preprocess.preprocess_sample`
    resamples (no crop: a label map alone has no image to crop to).

    Returns:
        ``(1, *S_pre)`` int64 and the :class:`UndoRecord` (original grid, resampled shape and spacing).
    """
    shape = label.spatial_shape
    spacing = label.affine.spacing
    target = preprocess.target_spacing
    whole = (tuple(0 for _ in shape), tuple(shape))
    if target is None or np.allclose(target, spacing, rtol=1e-3, atol=0):
        return label.data.long(), UndoRecord(label.affine, shape, *whole, shape, tuple(float(s) for s in spacing))
    scale = np.asarray(target, dtype=float) / spacing
    new_shape = resampled_shape(shape, scale)
    check_voxel_budget(float(np.prod(new_shape, dtype=np.float64)), f"label map resampled to {list(target)} mm, "
                       f"shape {list(new_shape)},", None)  # fmt: skip
    data = resample_array(label.numpy(), scale, new_shape, 0)
    record = UndoRecord(label.affine, shape, *whole, tuple(new_shape), tuple(float(t) for t in target))
    return torch.from_numpy(np.ascontiguousarray(data)).long(), record


def to_original_grid(image: torch.Tensor, record: UndoRecord) -> torch.Tensor:
    """``(C, *S_pre)`` image channels resampled linearly back to the record's original grid ``(C, *S_orig)``."""
    if not record.was_resampled:
        return image
    scale = record.original_affine.spacing / np.asarray(record.resampled_spacing)
    return linear_resample(image.float(), scale, record.original_shape)


def write_synthetic_dataset(
    gan_dir: str | Path, sources: Sequence[str | Path], out: str | Path, count: int, seed: int = 0, *,
    deformation: Deformation = Deformation(), device: str = "cpu", show_progress: bool = True,
) -> list[str]:  # fmt: skip
    """Write ``count`` synthetic pairs made from the label maps of ``sources`` as a dataset folder ``out``.

    Label maps are taken in a seeded random order, each once before any is taken again. Every input is read and
    checked before anything is written, and the folder appears whole: it is written beside ``out`` under a
    hidden name and renamed at the end (see the module docstring for the layout and intensities).

    Args:
        gan_dir: A ``segmorph synthesize train`` run folder.
        sources: Label map files, folders of them, or dataset folders (their label maps).
        out: The dataset folder to create (missing or empty).
        count: Number of pairs.
        seed: Seed of the draws.
        deformation: Magnitude and smoothness of the deformations.
        device: Where the generator runs.
        show_progress: A progress bar.

    Returns:
        The case ids written.

    Raises:
        SegmorphError: One line naming the file: a GAN run of another kind, a label map of another dimensionality
            or with values the GAN does not know, an output that would overwrite an input or a non-empty folder.
    """
    gan_dir, out = Path(gan_dir), Path(out)
    if not 1 <= count <= MAX_PAIRS:
        raise SegmorphError(f"count: expected 1 to {MAX_PAIRS:,} pairs, got {count}")
    files = label_files(sources)
    folders = [Path(s) for s in sources if Path(s).is_dir()]
    check_outputs([Output.folder(out)], inputs=[gan_dir, *sources], outside=[gan_dir, *folders])
    if out.is_dir() and any(out.iterdir()):
        raise SegmorphError("output folder is not empty; give a new folder for the synthetic dataset", out)
    model = SynthesisModel(gan_dir, device)
    suffix = _output_suffix(files)
    voxels = [math.prod(_read_checked(path, model).spatial_shape) for path in files]
    order = _draw_order(len(files), count, seed)
    _check_room(out, sum(voxels[index] for index in order) * len(model.channel_names), suffix)
    ids = [f"{strip_suffix(files[index])}_syn{number:03d}" for number, index in enumerate(order)]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # beside ``out``: the rename below stays on one file system
    try:
        _write_pairs(model, files, order, ids, staging, suffix, seed, deformation, show_progress)
        _write_dataset_json(staging, model, ids, [files[i] for i in order], suffix, seed, deformation)
        if out.is_dir():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ids


def _check_room(out: Path, image_voxels: int, suffix: str) -> None:
    """Refuse a dataset that cannot fit on ``out``'s file system: compressed, generated intensities take at least
    ``MIN_BYTES_PER_VOXEL`` of their suffix (label maps not counted), so a smaller free space is sure to run out."""
    folder = next(parent for parent in (out, *out.parents) if parent.exists())
    needed = image_voxels * MIN_BYTES_PER_VOXEL[suffix]
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise SegmorphError(f"the synthetic images need at least {_bytes_text(needed)} and the disk has "
                            f"{_bytes_text(free)} free; ask for fewer pairs (--count)", out)  # fmt: skip


def _bytes_text(size: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} bytes"


def _output_suffix(files: Sequence[Path]) -> str:
    """``.png`` when every label map is a picture (8-bit, 2D), else ``.nii.gz``; a mix is refused."""
    pictures = [image_suffix(f) in PICTURE_SUFFIXES for f in files]
    if any(pictures) and not all(pictures):
        other = files[pictures.index(not pictures[0])]
        raise SegmorphError(f"label maps mix pictures and volumes (like {files[0].name}); give one kind", other)
    return ".png" if all(pictures) else ".nii.gz"


def _read_checked(path: Path, model: SynthesisModel) -> Image:
    label = read_label_map(path)
    if label.ndim != model.ndim:
        raise SegmorphError(f"a {label.ndim}D label map; the GAN {model.run_dir} makes {model.ndim}D images", path)
    model.check_labels(label.data, path)
    return label


def _draw_order(files: int, count: int, seed: int) -> list[int]:
    """Indices of ``count`` label maps: seeded permutations of all of them, one after another."""
    draws = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < count:
        order.extend(torch.randperm(files, generator=draws).tolist())
    return order[:count]


def _write_pairs(model, files, order, ids, folder, suffix, seed, deformation, show_progress) -> None:
    from segmorph.progress import track

    draws = torch.Generator().manual_seed(seed + 1)
    for case_id, index in track(list(zip(ids, order)), "synthesize", total=len(ids), enabled=show_progress):
        label = _read_checked(files[index], model)
        deformed = deform_label_image(label, draws, deformation)
        on_model_grid, record = to_model_grid(deformed, model.preprocess)
        image = to_original_grid(model.generate(on_model_grid, draws), record)
        for channel, values in enumerate(_stored_values(image, model, suffix)):
            write_image(Image(values[None], label.affine), folder / "imagesTr" / f"{case_id}_{channel:04d}{suffix}")
        write_image(deformed, folder / "labelsTr" / f"{case_id}{suffix}")


def _stored_values(image: torch.Tensor, model: SynthesisModel, suffix: str) -> torch.Tensor:
    """The intensities written (see the module docstring): pictures in 0..255, CT in HU, others normalised."""
    if suffix == ".png":
        return model.scale.to_raw(image).round().clamp(0, 255).to(torch.uint8)
    raw = model.scale.to_raw(image)
    schemes = model.preprocess.normalization
    return torch.stack([raw[c] if scheme == "ct" else image[c] for c, scheme in enumerate(schemes)]).float()


def _write_dataset_json(folder: Path, model: SynthesisModel, ids: list[str], sources: list[Path], suffix: str,
                        seed: int, deformation: Deformation) -> None:  # fmt: skip
    meta: dict[str, Any] = {
        "name": f"synthetic pairs of {model.run_dir.resolve().name}",
        "description": "label maps deformed at random and images generated from them by a segmorph GAN",
        "channel_names": {str(c): name for c, name in enumerate(model.channel_names)},
        "labels": {str(k): v for k, v in sorted(model.labels.items())},
        "numTraining": len(ids), "file_ending": suffix,
        "training": [{"image": f"./imagesTr/{i}{suffix}", "label": f"./labelsTr/{i}{suffix}"} for i in ids],
        "synthetic": {**model.facts(), "seed": seed, "deformation": deformation.to_dict(),
                      "intensities": "pictures 0..255; CT channels in HU; other channels in the GAN's normalised "
                                     "scale (z-scores)",
                      "sources": {i: str(s) for i, s in zip(ids, sources)}},
    }  # fmt: skip
    atomic_write_text(folder / "dataset.json", json.dumps(meta, indent=2) + "\n")
