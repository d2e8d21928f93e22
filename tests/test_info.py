"""``segmorph info``: stored and loaded types, orientation, voxels per label, qform/sform disagreement."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, stored_pixel_type, write_image
from segmorph.readchecks import qform_sform_disagreement

SHAPE = (6, 5, 4)


def _mask() -> np.ndarray:
    mask = np.zeros(SHAPE, np.int64)
    mask[1:3, 1:4, 1:3] = 1  # 12 voxels
    mask[4:6, 0:2, 0:1] = 2  # 4 voxels
    return mask


def _info(capfd, *argv: str) -> tuple[int, str, str]:
    code = main(["info", *argv])
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def test_a_uint8_mask_says_uint8_on_disk_and_counts_its_labels(tmp_path, capfd):
    path = write_image(Image(torch.from_numpy(_mask()[None]), Affine.from_geometry((1.0, 1.0, 2.0)), is_label=True),
                       tmp_path / "mask.nii.gz")  # fmt: skip
    assert stored_pixel_type(path) == "uint8"
    code, out, err = _info(capfd, str(path))
    assert code == 0 and err == ""
    assert "uint8 on disk, float32 as loaded" in out
    assert "orientation LPS" in out
    assert "labels     3 value(s), voxels per value: 0: 104, 1: 12, 2: 4" in out


def test_labels_flag_reads_a_label_map_and_counts_any_values(tmp_path, capfd):
    values = _mask().astype(np.float32) * 300  # float on disk, beyond 0..255: not counted unless asked
    path = write_image(Image(torch.from_numpy(values[None]), Affine.from_geometry((1.0, 1.0, 1.0))),
                       tmp_path / "labels.nrrd")  # fmt: skip
    code, out, _ = _info(capfd, str(path))
    assert code == 0 and "float32 on disk, float32 as loaded" in out and "labels " not in out
    code, out, _ = _info(capfd, "--labels", str(path))
    assert code == 0 and "int64 as loaded" in out and "0: 104, 300: 12, 600: 4" in out


def test_orientation_code_of_a_ras_volume(tmp_path, capfd):
    affine = Affine.from_geometry((1.0, 1.0, 1.0), direction=np.diag([-1.0, -1.0, 1.0]))
    path = write_image(Image(torch.zeros((1, *SHAPE)), affine), tmp_path / "scan.nii.gz")
    code, out, _ = _info(capfd, str(path))
    assert code == 0 and "orientation RAS" in out and "float32 on disk" in out


def test_a_picture_has_no_physical_spacing(tmp_path, capfd):
    mask = np.zeros((7, 9), np.int64)
    mask[2:5, 3:6] = 255
    path = write_image(Image(torch.from_numpy(mask[None]), Affine.from_geometry((1.0, 1.0)), is_label=True),
                       tmp_path / "vessels.png")  # fmt: skip
    code, out, _ = _info(capfd, str(path))
    assert code == 0
    assert "uint8 on disk" in out and "px" in out and " mm" not in out
    assert "0: 54, 255: 9" in out


def _nifti_with_shifted_sform(path: Path, shift_mm: float) -> Path:
    """A .nii whose sform's x offset is ``shift_mm`` from the qform's (both codes set)."""
    write_image(Image(torch.zeros((1, *SHAPE)), Affine.from_geometry((1.0, 1.0, 1.0))), path)
    header = bytearray(path.read_bytes())
    assert struct.unpack("<2h", header[252:256]) == (1, 1)  # qform_code, sform_code
    srow_x_offset = struct.unpack("<f", header[292:296])[0]
    header[292:296] = struct.pack("<f", srow_x_offset + shift_mm)
    path.write_bytes(bytes(header))
    return path


def test_qform_and_sform_disagreeing_is_a_warning_after_the_header(tmp_path, capfd):
    path = _nifti_with_shifted_sform(tmp_path / "shifted.nii", 5.0)
    code, out, err = _info(capfd, str(path))
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: qform and sform disagree: ") and "shifted.nii" in lines[0]
    assert "5 mm apart" in lines[0]
    assert "shape      (6, 5, 4) x 1 channel(s)" in out and "spacing    (1, 1, 1) mm" in out
    assert "origin     (-5, 0, 0) mm (LPS)" in out  # the sform's, as SimpleITK reads it (RAS x + 5 -> LPS x - 5)
    assert "float32 on disk" in out and "voxels not loaded" in out


def test_other_commands_still_refuse_disagreeing_forms(tmp_path):
    path = _nifti_with_shifted_sform(tmp_path / "shifted.nii", 5.0)
    with pytest.raises(SegmorphError, match="qform and sform disagree.*5 mm apart"):
        read_image(path)
    assert qform_sform_disagreement(_nifti_with_shifted_sform(tmp_path / "same.nii", 0.0)) is None


def test_agreeing_forms_read_quietly(tmp_path, capfd):
    path = _nifti_with_shifted_sform(tmp_path / "same.nii", 0.0)
    code, _, err = _info(capfd, str(path))
    assert code == 0 and err == ""
