"""Registration data: cases padded onto a common grid, and seeded pairs of them.

Inter-patient registration of cropped scans (e.g. MSD hippocampus, Learn2Reg 2020 task 4) compares
crops by their centres: each crop is padded (or cropped) symmetrically to one shape and all are
given one common geometry, so "no registration" means overlaying the centred crops.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.segmentation.datasets import DatasetSpec, load_sample


@dataclass
class RegistrationCase:
    """One scan on the common grid: image ``(C, *S)`` float32 and optional label map ``(1, *S)`` int64."""

    case_id: str
    image: Image
    label: Image | None


def pad_centred(data: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Pad with zeros (or crop) ``(C, *S)`` symmetrically to ``(C, *shape)``; odd extra voxels go last."""
    pads: list[int] = []
    for size, target in zip(reversed(data.shape[1:]), reversed(list(shape))):
        extra = target - size
        pads += [extra // 2, extra - extra // 2]
    return F.pad(data, pads)


def common_affine(reference: Affine) -> Affine:
    """The shared geometry: the reference's spacing and direction, origin 0."""
    return Affine.from_geometry(reference.spacing, None, reference.direction)


def load_registration_cases(
    spec: DatasetSpec, case_ids: Sequence[str], shape: Sequence[int] = (64, 64, 64)
) -> list[RegistrationCase]:
    """Read cases, pad each centred to ``shape`` and put all on one grid (the first case's spacing)."""
    by_id = {case.case_id: case for case in spec.cases}
    cases, grid = [], None
    for case_id in case_ids:
        sample = load_sample(by_id[case_id], spec)
        grid = grid or common_affine(sample.image.affine)
        image = Image(pad_centred(sample.image.data.float(), shape), grid)
        label = None
        if sample.label is not None:
            label = Image(pad_centred(sample.label.data, shape), grid, is_label=True)
        cases.append(RegistrationCase(case_id, image, label))
    return cases


def draw_pairs(count: int, num_cases: int, seed: int) -> list[tuple[int, int]]:
    """``count`` distinct ordered pairs ``(fixed, moving)`` of case indices, fixed != moving, seeded."""
    rng = random.Random(seed)
    every = [(a, b) for a in range(num_cases) for b in range(num_cases) if a != b]
    if count > len(every):
        raise ValueError(f"count: only {len(every)} pairs exist among {num_cases} cases")
    return rng.sample(every, count)


def normalise_intensity(data: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Scale intensities to about 0..1 by the 1st and 99th percentiles (of ``reference`` when given),
    clipped to -0.5..1.5.

    The percentiles are those of the non-zero voxels (of all voxels when every one is zero), so zero
    padding around a cropped scan, as on a common registration grid, does not change the scaling.
    """
    flat = (data if reference is None else reference).flatten()
    nonzero = flat[flat != 0]
    flat = nonzero if nonzero.numel() else flat
    sample = flat[:: max(1, flat.numel() // 50_000)]  # percentiles of a strided sample: fast, stable
    low, high = torch.quantile(sample.float(), torch.tensor([0.01, 0.99]))
    return ((data - low) / (high - low).clamp_min(1e-6)).clamp(-0.5, 1.5)
