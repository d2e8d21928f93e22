"""``segmorph enhance`` on files, folders and DICOM series: outputs on the input's grid, previews, and one-line
errors (exit 1) for bad steps and unsafe outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import sphere_case, write_dicom_series
from segmorph.cli.main import main
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image


@pytest.fixture
def scans(tmp_path):
    folder = tmp_path / "scans"
    for seed in (0, 1):
        image, _ = sphere_case(seed=seed)
        write_image(image, folder / f"case_{seed}.nii.gz")
    return folder


def test_enhance_a_folder_keeps_each_grid_and_writes_previews(scans, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["enhance", str(scans), "--out", str(out), "--steps", "denoise:median,window:40,400",
                 "--steps", "clahe", "--preview"]) == 0  # fmt: skip
    for name in ("case_0", "case_1"):
        before = read_image(scans / f"{name}.nii.gz")
        after = read_image(out / f"{name}.nii.gz")
        assert after.same_grid(before) and after.affine.allclose(before.affine, atol=1e-5)
        assert float(after.data.min()) >= 0 and float(after.data.max()) <= 1
        assert (out / f"{name}_preview.png").stat().st_size > 1000
    assert "denoise:median > window:40,400 > clahe" in capsys.readouterr().err


def test_enhance_a_dicom_series_and_a_png(tmp_path):
    image, _ = sphere_case()
    write_dicom_series(image.with_data(image.data.round()), tmp_path / "series")
    picture = Image(torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 24, 20)).astype(np.uint8)),
                    Affine.identity(2))  # fmt: skip
    write_image(picture, tmp_path / "fundus.png")
    out = tmp_path / "out"
    assert main(["enhance", str(tmp_path / "series"), "--out", str(out), "--steps", "n4:shrink=2,gradient"]) == 0
    assert read_image(out / "series.nii.gz").same_grid(read_image(tmp_path / "series"))
    assert main(["enhance", str(tmp_path / "fundus.png"), "--out", str(out), "--steps", "channel:green,clahe",
                 "--preview"]) == 0  # fmt: skip
    green = read_image(out / "fundus.png")
    assert green.num_channels == 1 and green.spatial_shape == (24, 20) and float(green.data.max()) == 255


def test_morphology_on_masks_with_labels(tmp_path):
    _, labels = sphere_case()
    write_image(labels, tmp_path / "masks" / "m.nii.gz")
    out = tmp_path / "out"
    assert main(["enhance", str(tmp_path / "masks"), "--labels", "--out", str(out), "--steps",
                 "open:1,fill-holes,largest-component"]) == 0  # fmt: skip
    result = read_image(out / "m.nii.gz", is_label=True)
    assert result.same_grid(labels) and set(np.unique(result.numpy())) <= {0, 1, 2}


@pytest.mark.parametrize(("steps", "words"), [
    ("clahe,blur", "step 'blur': unknown step 'blur'"),
    ("window:40", "step 'window:40': expected a preset"),
    ("open:two", "step 'open:two': radius (voxels) must be a whole number"),
    ("denoise:loud", "step 'denoise:loud': expected one of denoise:"),
    ("clip:p99,p1", "step 'clip:p99,p1': percentiles must satisfy"),
    ("largest-component", "step 'largest-component': largest-component works on label maps"),
    ("channel:blue", "step 'channel:blue': channel 2 asked of an image with 1 channel"),
])  # fmt: skip
def test_bad_steps_give_one_line_and_exit_1(scans, tmp_path, capsys, steps, words):
    out = tmp_path / "out"
    assert main(["enhance", str(scans), "--out", str(out), "--steps", steps]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err


def test_parse_errors_come_before_any_output(scans, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["enhance", str(scans), "--out", str(out), "--steps", "median"]) == 1
    assert not out.exists()
    capsys.readouterr()


def test_outputs_are_checked_before_any_work(scans, capsys):
    before = {p.name: p.read_bytes() for p in scans.iterdir()}
    assert main(["enhance", str(scans), "--out", str(scans), "--steps", "rescale"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert {p.name: p.read_bytes() for p in scans.iterdir()} == before
