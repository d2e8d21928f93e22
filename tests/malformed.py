"""A corpus of malformed inputs, generated at test time (nothing stored; each file a few KB at most).

The cases live here (readers, datasets, DICOM series, transforms, run folders: the first corpus) and in one
module per failure class (``malformed_<class>.py``, each exporting ``CASES``); :func:`corpus` gathers them.

Each :class:`BadInput` writes its files into a temporary folder and returns the command line that must
fail with exit code 1 and one ``error: <file>: <problem>`` line naming the offending file or folder.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from helpers import OBLIQUE, sphere_case, write_keeping_locale, write_msd_dataset
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image

SHAPE = (10, 8, 6)  # small enough that every file stays below a few KB


@dataclass(frozen=True)
class Prepared:
    """A malformed input written to disk.

    Attributes:
        argv: The command line (without the program name).
        names: Text the error line must contain: the offending file or folder name.
        out: The output the command was asked to write (must stay absent or unchanged), or None.
    """

    argv: list[str]
    names: str
    out: Path | None = None


@dataclass(frozen=True)
class BadInput:
    """One malformed input.

    Attributes:
        name: Test id.
        build: Writes the input under a folder; gets the trained run folder when ``needs_model``.
        fragment: Text the error line must contain: the problem.
        needs_model: The command needs a trained segmentation run.
        skip_reason: Returns why the case cannot be checked here (None: it can).
    """

    name: str
    build: Callable[[Path, Path | None], Prepared]
    fragment: str
    needs_model: bool = False
    skip_reason: Callable[[], str | None] | None = None


# -- small writers ---------------------------------------------------------------------------------


def _scan(path: Path, seed: int = 0, shape: Sequence[int] = SHAPE, affine: Affine = OBLIQUE) -> Path:
    image, _ = sphere_case(tuple(shape), seed=seed, affine=affine)
    write_image(image, path)
    return path


def _float_image(path: Path, values: np.ndarray, affine: Affine | None = None) -> Path:
    data = torch.from_numpy(np.asarray(values, dtype=np.float32)[None])
    write_image(Image(data, affine or Affine.identity(data.ndim - 1)), path)
    return path


def _patched_nifti(path: Path, gz: bool, **fields: tuple[str, int, object]) -> Path:
    """A valid small NIfTI-1 file with header fields overwritten: ``name=(struct format, offset, value)``."""
    plain = path.with_name("source.nii")
    _scan(plain)
    header = bytearray(plain.read_bytes())
    plain.unlink()
    for fmt, offset, value in fields.values():
        values = value if isinstance(value, tuple) else (value,)
        header[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(gzip.compress(bytes(header)) if gz else bytes(header))
    return path


def _dataset(root: Path, num_cases: int = 3) -> Path:
    return write_msd_dataset(root, num_cases=num_cases, shape=SHAPE)


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _plan(root: Path, tmp: Path, names: str, *extra: str) -> Prepared:
    out = tmp / "plan.json"
    return Prepared(["plan", str(root), "--out", str(out), *extra], names, out)


def _dicom_series(folder: Path, positions: Sequence[float], modalities: Sequence[str] | None = None) -> Path:
    """An axial 8x8 DICOM series, one file per slice at the given z positions (mm)."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.77"
    for index, z in enumerate(positions):
        slice_ = sitk.GetImageFromArray(np.full((8, 8), 10 * index, np.int16))
        tags = {
            "0008|0060": modalities[index] if modalities else "MR", "0020|000e": uid, "0020|000d": uid + ".0",
            "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": f"0\\0\\{z}", "0020|0013": str(index + 1),
            "0018|0050": "1", "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"{uid}.{index + 1}",
        }  # fmt: skip
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{index:03d}.dcm"))
        write_keeping_locale(writer, slice_)
    return folder


def _registration_folder(folder: Path) -> Path:
    """A registration folder as ``segmorph register`` writes it (identity transform), without registering."""
    from segmorph.registration.transform import Transform, save_transform

    image, _ = sphere_case(SHAPE)
    save_transform(Transform.from_matrix(np.eye(4)), folder, image.affine, image.spatial_shape)
    write_image(image, folder / "warped.nii.gz")
    return folder


# -- image files -----------------------------------------------------------------------------------


def truncated_nii_gz(tmp: Path, run: Path | None) -> Prepared:
    path = _scan(tmp / "scan.nii.gz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return Prepared(["info", str(path)], "scan.nii.gz")


def truncated_nii(tmp: Path, run: Path | None) -> Prepared:
    path = _scan(tmp / "scan.nii")
    path.write_bytes(path.read_bytes()[:600])
    return Prepared(["info", str(path)], "scan.nii")


def wrong_magic(tmp: Path, run: Path | None) -> Prepared:
    path = _patched_nifti(tmp / "magic.nii", gz=False, magic=("4s", 344, b"xx1\0"))
    return Prepared(["info", str(path)], "magic.nii")


def gzip_of_text(tmp: Path, run: Path | None) -> Prepared:
    path = tmp / "text.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image\n" * 40))
    return Prepared(["info", str(path)], "text.nii.gz")


def nifti_4d(tmp: Path, run: Path | None) -> Prepared:
    path = tmp / "scans" / "series4d.nii.gz"
    path.parent.mkdir()
    sitk.WriteImage(sitk.Image([10, 8, 6, 2], sitk.sitkFloat32), str(path))  # a time series
    out = tmp / "masks"
    return Prepared(["predict", str(run), str(path), "--out", str(out), "--quiet"], "series4d.nii.gz", out)


def zero_size_dimension(tmp: Path, run: Path | None) -> Prepared:
    path = _patched_nifti(tmp / "flat.nii.gz", gz=True, dim=("<8h", 40, (3, 10, 8, 0, 1, 1, 1, 1)))
    return Prepared(["info", str(path)], "flat.nii.gz")


def absurd_declared_size(tmp: Path, run: Path | None) -> Prepared:
    path = _patched_nifti(tmp / "huge.nii.gz", gz=True, dim=("<8h", 40, (3, 30000, 30000, 30000, 1, 1, 1, 1)))
    return Prepared(["info", str(path)], "huge.nii.gz")


def size_beyond_file(tmp: Path, run: Path | None) -> Prepared:
    """2.0e9 float32 voxels (8 GB) declared in a 1 KB file: under the voxel cap, refused by the file size."""
    path = _patched_nifti(tmp / "big.nii.gz", gz=True, dim=("<8h", 40, (3, 1200, 1200, 1400, 1, 1, 1, 1)))
    return Prepared(["info", str(path)], "big.nii.gz")


def nan_voxels(tmp: Path, run: Path | None) -> Prepared:
    image, _ = sphere_case(SHAPE)
    image.data[0, 2, 3, 1] = float("nan")
    path = tmp / "nan_scan.nii.gz"
    write_image(image, path)
    out = tmp / "masks"
    return Prepared(["predict", str(run), str(path), "--out", str(out), "--quiet"], "nan_scan.nii.gz", out)


def inf_voxels(tmp: Path, run: Path | None) -> Prepared:
    values = np.ones(SHAPE)
    values[1, 1, 1] = np.inf
    path = _float_image(tmp / "inf_scan.mha", values)
    out = tmp / "masks"
    return Prepared(["baseline", str(path), "--out", str(out)], "inf_scan.mha", out)


def non_utf8_file_name(tmp: Path, run: Path | None) -> Prepared:
    source = _scan(tmp / "scan.nii.gz")
    target = Path(os.fsdecode(os.fsencode(tmp) + b"/scan_\xff.nii.gz"))
    source.rename(target)
    return Prepared(["info", str(target)], "scan_\\xff.nii.gz")


def unreadable_file(tmp: Path, run: Path | None) -> Prepared:
    path = _scan(tmp / "locked.nii.gz")
    path.chmod(0)
    return Prepared(["info", str(path)], "locked.nii.gz")


def _reads_despite_chmod() -> str | None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "running as root: chmod 000 does not stop root from reading"
    return None


def png_that_is_text(tmp: Path, run: Path | None) -> Prepared:
    path = tmp / "picture.png"
    path.write_text("not a picture, just text\n")
    return Prepared(["info", str(path)], "picture.png")


def empty_folder(tmp: Path, run: Path | None) -> Prepared:
    (tmp / "empty").mkdir()
    out = tmp / "masks"
    return Prepared(["baseline", str(tmp / "empty"), "--out", str(out)], "empty", out)


def directory_instead_of_file(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    (tmp / "overrides.json").mkdir()
    return _plan(root, tmp, "overrides.json", "--config", str(tmp / "overrides.json"))


# -- datasets --------------------------------------------------------------------------------------


def _label_variant(tmp: Path, **label_kwargs) -> Prepared:
    """A dataset whose case_001 label was rewritten with ``sphere_case`` arguments."""
    root = _dataset(tmp / "ds")
    _, label = sphere_case(**{"shape": SHAPE, "seed": 1, **label_kwargs})
    write_image(label, root / "labelsTr" / "case_001.nii.gz")
    return _plan(root, tmp, "case_001.nii.gz")


def label_shape_mismatch(tmp: Path, run: Path | None) -> Prepared:
    return _label_variant(tmp, shape=(10, 8, 5))


def label_spacing_mismatch(tmp: Path, run: Path | None) -> Prepared:
    return _label_variant(tmp, affine=Affine.from_geometry((0.8, 1.1, 3.0), OBLIQUE.origin, OBLIQUE.direction))


def label_origin_mismatch(tmp: Path, run: Path | None) -> Prepared:
    return _label_variant(tmp, affine=Affine.from_geometry(OBLIQUE.spacing, (0.0, 0.0, 0.0), OBLIQUE.direction))


def label_direction_mismatch(tmp: Path, run: Path | None) -> Prepared:
    return _label_variant(tmp, affine=Affine.from_geometry(OBLIQUE.spacing, OBLIQUE.origin, np.eye(3)))


def _label_values(tmp: Path, values: np.ndarray, suffix: str = ".nii.gz") -> Prepared:
    """A dataset whose case_001 label holds ``values`` (written as a float image, so any value fits)."""
    root = _dataset(tmp / "ds")
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    _float_image(root / "labelsTr" / f"case_001{suffix}", values, OBLIQUE)
    _edit_json(root / "dataset.json", lambda m: m["training"][1].update(label=f"./labelsTr/case_001{suffix}"))
    return _plan(root, tmp, f"case_001{suffix}")


def undeclared_label_value(tmp: Path, run: Path | None) -> Prepared:
    values = np.zeros(SHAPE)
    values[2:4, 2:4, 2:4] = 5
    return _label_values(tmp, values)


def fractional_labels(tmp: Path, run: Path | None) -> Prepared:
    values = np.zeros(SHAPE)
    values[2:4, 2:4, 2:4] = 1.5
    return _label_values(tmp, values)


def negative_labels(tmp: Path, run: Path | None) -> Prepared:
    values = np.zeros(SHAPE)
    values[2:4, 2:4, 2:4] = -1
    return _label_values(tmp, values, ".mha")


def all_labels_empty(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    for path in (root / "labelsTr").iterdir():
        _, label = sphere_case(SHAPE)
        write_image(label.with_data(torch.zeros_like(label.data)), path)
    out = tmp / "run"
    return Prepared(["train", str(root), "--out", str(out), "--max-steps", "2", "--quiet"], "ds", out)


def dataset_json_without_training_or_folders(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    _edit_json(root / "dataset.json", lambda m: m.pop("training"))
    shutil.rmtree(root / "imagesTr")
    return _plan(root, tmp, "imagesTr")


def dataset_json_without_labels(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    _edit_json(root / "dataset.json", lambda m: m.pop("labels"))
    return _plan(root, tmp, "dataset.json")


def dataset_json_without_modality(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    _edit_json(root / "dataset.json", lambda m: m.pop("modality"))
    return _plan(root, tmp, "dataset.json")


def dataset_json_invalid(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    (root / "dataset.json").write_text('{"labels": {"0": "background",}')
    return _plan(root, tmp, "dataset.json")


def dataset_json_not_an_object(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    (root / "dataset.json").write_text("[1, 2, 3]")
    return _plan(root, tmp, "dataset.json")


def dataset_json_lists_missing_image(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    _edit_json(root / "dataset.json", lambda m: m["training"][0].update(image="./imagesTr/nowhere.nii.gz"))
    return _plan(root, tmp, "nowhere.nii.gz")


def dataset_json_lists_missing_label(tmp: Path, run: Path | None) -> Prepared:
    root = _dataset(tmp / "ds")
    _edit_json(root / "dataset.json", lambda m: m["training"][2].update(label="./labelsTr/gone.nii.gz"))
    return _plan(root, tmp, "gone.nii.gz")


def dataset_folder_missing(tmp: Path, run: Path | None) -> Prepared:
    return _plan(tmp / "no_dataset", tmp, "no_dataset")


def label_3d_for_2d_image(tmp: Path, run: Path | None) -> Prepared:
    root = tmp / "pairs"
    picture = np.zeros((12, 10), np.uint8)  # rows x columns: the image is (I, J) = (10, 12)
    picture[3:7, 2:6] = 1
    for index in range(2):
        sitk.WriteImage(sitk.GetImageFromArray(picture * 200), str(_parent(root / "images" / f"c{index}.png")))
    sitk.WriteImage(sitk.GetImageFromArray(picture), str(_parent(root / "labels" / "c0.png")))
    volume = torch.zeros((1, 10, 12, 4), dtype=torch.int64)
    volume[0, 2:6, 3:7] = 1
    write_image(Image(volume, Affine.identity(3), is_label=True), root / "labels" / "c1.nii.gz")
    return _plan(root, tmp, "c1.nii.gz")


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# -- DICOM -----------------------------------------------------------------------------------------


def dicom_missing_slice(tmp: Path, run: Path | None) -> Prepared:
    folder = _dicom_series(tmp / "series_gap", [0.0, 1.0, 2.0, 4.0, 5.0])
    return Prepared(["info", str(folder)], "series_gap")


def dicom_uneven_spacing(tmp: Path, run: Path | None) -> Prepared:
    folder = _dicom_series(tmp / "series_uneven", [0.0, 1.0, 2.0, 3.6, 4.6])
    return Prepared(["info", str(folder)], "series_uneven")


def dicom_mixed_modalities(tmp: Path, run: Path | None) -> Prepared:
    folder = _dicom_series(tmp / "series_mixed", [0.0, 1.0, 2.0, 3.0], ["MR", "MR", "CT", "MR"])
    out = tmp / "masks"
    return Prepared(["baseline", str(folder), "--out", str(out)], "series_mixed", out)


def dicom_folder_without_dicom(tmp: Path, run: Path | None) -> Prepared:
    folder = tmp / "not_dicom"
    folder.mkdir()
    (folder / "slice_000.dcm").write_bytes(b"garbage, not DICOM" * 8)
    (folder / "notes.txt").write_text("scanned on Tuesday\n")
    return Prepared(["info", str(folder)], "not_dicom")


def anonymize_corrupt_dicom(tmp: Path, run: Path | None) -> Prepared:
    folder = _dicom_series(tmp / "study", [0.0, 1.0])
    good = (folder / "slice_001.dcm").read_bytes()
    (folder / "slice_002.dcm").write_bytes(good[: len(good) - 100])  # sorts last: written files would be partial
    out = tmp / "anonymized"
    return Prepared(["anonymize", str(folder), "--out", str(out)], "slice_002.dcm", out)


# -- registration ----------------------------------------------------------------------------------


def register_2d_vs_3d(tmp: Path, run: Path | None) -> Prepared:
    fixed = _scan(tmp / "fixed.nii.gz")
    moving = _float_image(tmp / "moving2d.nii.gz", np.ones((10, 8)))
    out = tmp / "reg"
    return Prepared(["register", str(fixed), str(moving), "--out", str(out)], "moving2d.nii.gz", out)


def register_no_overlap(tmp: Path, run: Path | None) -> Prepared:
    fixed = _scan(tmp / "fixed.nii.gz")
    far = Affine.from_geometry(OBLIQUE.spacing, (400.0, 400.0, 400.0), OBLIQUE.direction)
    moving = _scan(tmp / "far_moving.nii.gz", affine=far)
    out = tmp / "reg"
    return Prepared(["register", str(fixed), str(moving), "--out", str(out), "--method", "rigid"],
                    "far_moving.nii.gz", out)  # fmt: skip


def _warp(tmp: Path, edit_record: Callable[[Path], None]) -> Prepared:
    folder = _registration_folder(tmp / "reg")
    edit_record(folder / "transform.json")
    image = _scan(tmp / "moving.nii.gz")
    out = tmp / "warped.nii.gz"
    return Prepared(["warp", str(image), "--transform", str(folder), "--out", str(out)], "transform.json", out)


def warp_transform_json_invalid(tmp: Path, run: Path | None) -> Prepared:
    return _warp(tmp, lambda path: path.write_text('{"steps": [{"type": "matrix", '))


def warp_transform_json_without_grid(tmp: Path, run: Path | None) -> Prepared:
    return _warp(tmp, lambda path: _edit_json(path, lambda m: m.pop("fixed_grid")))


def warp_transform_json_bad_matrix(tmp: Path, run: Path | None) -> Prepared:
    return _warp(tmp, lambda path: _edit_json(path, lambda m: m["steps"][0].update(matrix=[[1, 0], [0, 1]])))


def warp_transform_json_unknown_step(tmp: Path, run: Path | None) -> Prepared:
    return _warp(tmp, lambda path: _edit_json(path, lambda m: m["steps"][0].update(type="spline")))


def landmarks_with_text(tmp: Path, run: Path | None) -> Prepared:
    folder = _registration_folder(tmp / "reg")
    fixed = tmp / "fixed_points.csv"
    fixed.write_text("x,y,z\n1,2,3\n4,5,6\n")
    moving = tmp / "moving_points.csv"
    moving.write_text("x,y,z\n1,2,3\nfour,five,six\n")
    argv = ["evaluate-registration", str(folder), "--landmarks", str(fixed), str(moving)]
    return Prepared(argv, "moving_points.csv", folder)


# -- trained models --------------------------------------------------------------------------------


def predict_run_without_plan(tmp: Path, run: Path | None) -> Prepared:
    folder = tmp / "run"
    folder.mkdir()
    (folder / "checkpoint_best.pt").write_bytes(b"\0" * 64)
    scan = _scan(tmp / "scan.nii.gz")
    out = tmp / "masks"
    return Prepared(["predict", str(folder), str(scan), "--out", str(out), "--quiet"], "plan.json", out)


def predict_corrupt_checkpoint(tmp: Path, run: Path | None) -> Prepared:
    folder = tmp / "run"
    folder.mkdir()
    shutil.copy(run / "plan.json", folder / "plan.json")
    checkpoint = (run / "checkpoint_best.pt").read_bytes()
    (folder / "checkpoint_best.pt").write_bytes(checkpoint[:2000])
    scan = _scan(tmp / "scan.nii.gz")
    out = tmp / "masks"
    return Prepared(["predict", str(folder), str(scan), "--out", str(out), "--quiet"], "checkpoint_best.pt", out)


# -- classification --------------------------------------------------------------------------------


def _classify_dataset(root: Path, rows: list[str]) -> Path:
    for index in range(4):
        picture = np.full((12, 12), 40 * index, np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(picture), str(_parent(root / f"img{index}.png")))
    (root / "labels.csv").write_text("file,lesion\n" + "".join(f"{row}\n" for row in rows))
    return root


def classify_missing_image(tmp: Path, run: Path | None) -> Prepared:
    root = _classify_dataset(tmp / "cls", ["img0.png,0", "img1.png,1", "img9.png,0", "img3.png,1"])
    out = tmp / "run"
    argv = ["classify", "train", str(root), "--labels", "labels.csv", "--target", "lesion", "--out", str(out),
            "--max-steps", "1", "--quiet"]  # fmt: skip
    return Prepared(argv, "img9.png", out)


def classify_unknown_column(tmp: Path, run: Path | None) -> Prepared:
    root = _classify_dataset(tmp / "cls", ["img0.png,0", "img1.png,1", "img2.png,0", "img3.png,1"])
    out = tmp / "run"
    argv = ["classify", "train", str(root), "--labels", "labels.csv", "--target", "diagnosis", "--out", str(out),
            "--max-steps", "1", "--quiet"]  # fmt: skip
    return Prepared(argv, "labels.csv", out)


BASE_CASES: tuple[BadInput, ...] = (
    BadInput("truncated_nii_gz", truncated_nii_gz, "file is truncated"),
    BadInput("truncated_nii", truncated_nii, "file is truncated"),
    BadInput("wrong_magic_bytes", wrong_magic, "wrong magic bytes"),
    BadInput("gzip_of_text", gzip_of_text, "cannot read image"),
    BadInput("nifti_4d_where_3d_expected", nifti_4d, "expected a 2D or 3D image, got 4D", needs_model=True),
    BadInput("zero_size_dimension", zero_size_dimension, "zero-size dimension"),
    BadInput("absurd_declared_size", absurd_declared_size, "too large to load"),
    BadInput("declared_size_beyond_file", size_beyond_file, "can hold"),
    BadInput("nan_voxels", nan_voxels, "NaN or infinite voxels", needs_model=True),
    BadInput("inf_voxels", inf_voxels, "NaN or infinite voxels"),
    BadInput("non_utf8_file_name", non_utf8_file_name, "not valid UTF-8"),
    BadInput("unreadable_file", unreadable_file, "permission denied", skip_reason=_reads_despite_chmod),
    BadInput("png_that_is_text", png_that_is_text, "cannot read image"),
    BadInput("empty_folder", empty_folder, "holds no images"),
    BadInput("directory_instead_of_file", directory_instead_of_file, "Is a directory"),
    BadInput("label_shape_mismatch", label_shape_mismatch, "label differs from image case_001.nii.gz: shape"),
    BadInput("label_spacing_mismatch", label_spacing_mismatch, "spacing"),
    BadInput("label_origin_mismatch", label_origin_mismatch, "origin"),
    BadInput("label_direction_mismatch", label_direction_mismatch, "direction"),
    BadInput("undeclared_label_value", undeclared_label_value, "label values [5] are not declared"),
    BadInput("fractional_labels", fractional_labels, "non-integer"),
    BadInput("negative_labels", negative_labels, "negative value -1"),
    BadInput("all_labels_empty", all_labels_empty, "every label map is empty"),
    BadInput("dataset_json_without_training_or_folders", dataset_json_without_training_or_folders, "no such folder"),
    BadInput("dataset_json_without_labels", dataset_json_without_labels, "missing key 'labels'"),
    BadInput("dataset_json_without_modality", dataset_json_without_modality, "missing key 'modality'"),
    BadInput("dataset_json_invalid", dataset_json_invalid, "invalid JSON"),
    BadInput("dataset_json_not_an_object", dataset_json_not_an_object, "expected a JSON object"),
    BadInput("dataset_json_lists_missing_image", dataset_json_lists_missing_image, "image file missing"),
    BadInput("dataset_json_lists_missing_label", dataset_json_lists_missing_label, "is missing"),
    BadInput("dataset_folder_missing", dataset_folder_missing, "no such dataset folder"),
    BadInput("label_3d_for_2d_image", label_3d_for_2d_image, "shape"),
    BadInput("dicom_missing_slice", dicom_missing_slice, "missing slice"),
    BadInput("dicom_uneven_spacing", dicom_uneven_spacing, "uneven slice spacing"),
    BadInput("dicom_mixed_modalities", dicom_mixed_modalities, "mixes modalities CT, MR"),
    BadInput("dicom_folder_without_dicom", dicom_folder_without_dicom, "holds no DICOM series"),
    BadInput("anonymize_corrupt_dicom", anonymize_corrupt_dicom, "corrupt DICOM file"),
    BadInput("register_2d_vs_3d", register_2d_vs_3d, "is 2D but the fixed image fixed.nii.gz is 3D"),
    BadInput("register_no_overlap", register_no_overlap, "field of view does not overlap"),
    BadInput("warp_transform_json_invalid", warp_transform_json_invalid, "malformed transform record"),
    BadInput("warp_transform_json_without_grid", warp_transform_json_without_grid, "no valid fixed_grid"),
    BadInput("warp_transform_json_bad_matrix", warp_transform_json_bad_matrix, "matrix"),
    BadInput("warp_transform_json_unknown_step", warp_transform_json_unknown_step, "unknown step type"),
    BadInput("landmarks_with_text", landmarks_with_text, "landmarks must be rows of numbers"),
    BadInput("predict_run_without_plan", predict_run_without_plan, "plan not found"),
    BadInput(
        "predict_corrupt_checkpoint", predict_corrupt_checkpoint, "checkpoint is corrupt or truncated", needs_model=True
    ),
    BadInput("classify_missing_image", classify_missing_image, "does not exist"),
    BadInput("classify_unknown_column", classify_unknown_column, "no target column 'diagnosis'"),
)


def corpus() -> tuple[BadInput, ...]:
    """Every case: this module's and each ``malformed_<class>.py`` module's ``CASES``."""
    import importlib

    cases = list(BASE_CASES)
    for name in CLASS_MODULES:
        cases += importlib.import_module(name).CASES
    return tuple(cases)


# one module per failure class (see the docstring)
CLASS_MODULES = ("malformed_outputs", "malformed_readers", "malformed_runs", "malformed_dicom", "malformed_cli")
