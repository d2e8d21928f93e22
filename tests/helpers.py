"""Helpers shared by the tests: tiny synthetic volumes with anisotropic spacing and an oblique direction,
datasets written from them, and a DICOM series writer."""

from __future__ import annotations

import json
import locale
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import to_sitk, write_image

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"  # ../shared/datasets beside the clone
# the label names of write_msd_dataset's dataset.json (JSON keys: label values as strings)
MSD_LABELS = {"0": "background", "1": "outer", "2": "core"}


def require_dataset(name: str, marker: str = "") -> Path:
    """The real dataset ``DATASETS / name``; skips the test (or, called at module level, the module) when
    ../shared/datasets is not beside the clone. Where that folder is present the dataset must be too: a
    misspelt name or a moved folder fails here instead of skipping quietly.

    Args:
        name: Folder of the dataset in ../shared/datasets, e.g. ``"msd_hippocampus"``.
        marker: A file the dataset must hold, relative to its folder (e.g. ``"dataset.json"``; "": none).
    """
    if not DATASETS.is_dir():
        pytest.skip(f"real data not present: no {DATASETS}", allow_module_level=True)
    folder = DATASETS / name
    if not (folder / marker).exists():
        present = sorted(p.name for p in DATASETS.iterdir())
        pytest.fail(f"{folder / marker} is missing (../shared/datasets holds {present})", pytrace=False)
    return folder


def oblique_direction() -> np.ndarray:
    """A rotation of 20 degrees about z then 10 about x: no axis aligned with the world."""
    a, b = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rx @ rz


OBLIQUE = Affine.from_geometry((0.8, 1.1, 2.5), (-12.5, 30.25, 7.0), oblique_direction())


def sphere_case(shape=(24, 20, 12), seed: int = 0, affine: Affine = OBLIQUE) -> tuple[Image, Image]:
    """An MR-like image with a bright ellipsoid (label 1) holding a brighter core (label 2)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    centre = np.array(shape) / 2 + rng.uniform(-1.5, 1.5, 3)
    spacing = affine.spacing
    distance = np.linalg.norm((grid - centre) * spacing, axis=-1)
    labels = np.zeros(shape, dtype=np.int64)
    labels[distance < 7.0] = 1
    labels[distance < 4.0] = 2
    image = 100 + 60 * (labels > 0) + 40 * (labels == 2) + rng.normal(0, 8, shape)
    return (
        Image(torch.from_numpy(image[None].astype(np.float32)), affine),
        Image(torch.from_numpy(labels[None]), affine, is_label=True),
    )


def write_msd_dataset(root: Path, num_cases: int = 6, shape=(24, 20, 12)) -> Path:
    """A tiny MSD-layout dataset with oblique geometry."""
    entries = []
    for index in range(num_cases):
        image, label = sphere_case(shape, seed=index)
        name = f"case_{index:03d}.nii.gz"
        write_image(image, root / "imagesTr" / name)
        write_image(label, root / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "spheres", "modality": {"0": "MRI"}, "labels": MSD_LABELS,
            "numTraining": num_cases, "training": entries}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def write_dicom_series(image: Image, folder: Path) -> None:
    """Write a 3D image as a DICOM series (one file per k slice) with its geometry in the tags."""
    folder.mkdir(parents=True)
    itk = sitk.Cast(sitk.RescaleIntensity(to_sitk(image), 0, 1000), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = itk.GetDirection()
    orientation = "\\".join(
        f"{v:.10f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
    )
    for k in range(itk.GetDepth()):
        slice_ = itk[:, :, k]
        for tag, value in {
            "0008|0060": "MR", "0020|000e": "1.2.826.0.1.3680043.2.1125.1.42", "0020|000d": "1.2.3.4",
            "0020|0037": orientation, "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10f}" for v in itk.TransformIndexToPhysicalPoint((0, 0, k))),
            "0018|0050": f"{itk.GetSpacing()[2]:.10f}", "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.1.42.{k + 1}",
        }.items():  # fmt: skip
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        write_keeping_locale(writer, slice_)


def write_keeping_locale(writer: sitk.ImageFileWriter, image: sitk.Image) -> None:
    """``writer.Execute(image)``, then the process's character locale as it was: GDCM's DICOM writer switches
    it to "C", after which ``open()`` without an encoding reads ASCII only (a later test reading README.md fails)."""
    ctype = locale.setlocale(locale.LC_CTYPE)
    try:
        writer.Execute(image)
    finally:
        locale.setlocale(locale.LC_CTYPE, ctype)
