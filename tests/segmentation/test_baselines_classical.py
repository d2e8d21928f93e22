"""Classical baselines with known answers: confidence-connected growing, level sets, vesselness, field of view,
seeds from masks, ``segment`` with steps and masks, ``segment_folder`` and ``segmorph baseline``.

3D phantoms: a bright sphere in noise on an anisotropic, oblique grid. 2D phantoms: a bright disc (a fundus
photograph's field of view) on black, crossed by dark lines 2-3 pixels wide (vessels).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from helpers import oblique_direction
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.metrics.segmentation import dice_score
from segmorph.segmentation.baseline_files import RECORD_NAME, segment_folder
from segmorph.segmentation.baselines import (
    confidence_connected,
    field_of_view,
    level_set,
    seed_from_mask,
    segment,
    vessels,
)

SPACING = (0.8, 1.0, 2.0)
AFFINE = Affine.from_geometry(SPACING, origin=(-12.5, 30.25, 7.0), direction=oblique_direction())
SHAPE = (28, 24, 14)
CENTRE_MM = (11.2, 12.0, 14.0)
SEED = (14, 12, 7)  # the voxel at CENTRE_MM
DETACHED_MM = (19.2, 3.5, 23.0)  # a small second sphere, 9 mm or more from the first one's surface


def _ball(centre_mm, radius_mm: float, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    points = np.indices(shape, dtype=np.float64) * np.asarray(spacing)[:, None, None, None]
    return ((points - np.asarray(centre_mm)[:, None, None, None]) ** 2).sum(axis=0) <= radius_mm**2


def _sphere_phantom(noise: float = 0.15, seed: int = 0, centre_mm=CENTRE_MM, detached: bool = False):
    """Bright sphere (1.0, radius 7.5 mm) on 0.0 plus Gaussian noise; with ``detached``, a second bright sphere
    (radius 3 mm) apart from it. Returns the image and the first sphere's mask."""
    sphere = _ball(centre_mm, 7.5)
    bright = sphere | _ball(DETACHED_MM, 3.0) if detached else sphere
    values = bright + np.random.default_rng(seed).normal(0, noise, SHAPE)
    return Image(torch.from_numpy(values[None].astype(np.float32)), AFFINE), sphere


def _labels(mask: np.ndarray, affine: Affine = AFFINE) -> Image:
    return Image(torch.from_numpy(mask.astype(np.int64)[None]), affine, is_label=True)


# --- 2D: a field of view with vessels -----------------------------------------------------------------------------

SIZE = 96
AFFINE_2D = Affine.from_geometry((0.5, 0.6), origin=(3.0, -1.0), direction=[[0.9063, -0.4226], [0.4226, 0.9063]])


def _disc_and_lines() -> tuple[np.ndarray, np.ndarray]:
    """The disc (radius 42 px) and the dark lines across it: 3 px horizontal, 2 px vertical, a diagonal."""
    i, j = np.indices((SIZE, SIZE), dtype=np.float64)
    disc = (i - 47.5) ** 2 + (j - 47.5) ** 2 <= 42**2
    lines = np.zeros((SIZE, SIZE), dtype=bool)
    lines[30:33, :] = True
    lines[:, 58:60] = True
    lines |= np.abs(i - j - 10) <= 1.0
    return disc, lines & disc


def _fundus_values(seed: int = 0) -> np.ndarray:
    """Disc at 0.8, lines at 0.3, black outside, plus a little noise: ``(I, J)``."""
    disc, lines = _disc_and_lines()
    values = np.where(disc, 0.8, 0.0)
    values[lines] = 0.3
    return values + np.random.default_rng(seed).normal(0, 0.02, values.shape)


def _fundus() -> Image:
    return Image(torch.from_numpy(_fundus_values()[None].astype(np.float32)), AFFINE_2D)


# --- confidence_connected -----------------------------------------------------------------------------------------


def test_confidence_connected_recovers_sphere_and_keeps_geometry():
    image, sphere = _sphere_phantom()
    result = confidence_connected(image, seeds=[SEED])
    assert result.is_label and result.data.dtype == torch.int64 and result.data.shape == (1, *SHAPE)
    assert result.affine.allclose(AFFINE)
    assert dice_score(result.numpy()[0], sphere) > 0.9


def test_confidence_connected_refuses_bad_seeds_and_multiplier():
    image, _ = _sphere_phantom()
    with pytest.raises(ValueError, match="seeds"):
        confidence_connected(image, seeds=[(14, 12, 14)])  # k = 14 is one past the last slice
    with pytest.raises(ValueError, match="seeds"):
        confidence_connected(image, seeds=[(-1, 12, 7)])
    with pytest.raises(ValueError, match="multiplier"):
        confidence_connected(image, seeds=[SEED], multiplier=0)
    with pytest.raises(ValueError, match="multiplier"):
        confidence_connected(image, seeds=[SEED], multiplier=-2.5)


# --- level_set ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "iterations"), [("geodesic", 8), ("chan-vese", 25)])
def test_level_set_recovers_sphere_but_not_a_detached_one(model, iterations):
    image, sphere = _sphere_phantom(detached=True)
    detached = _ball(DETACHED_MM, 3.0)
    result = level_set(image, seeds=[SEED], model=model, iterations=iterations)
    inside = result.numpy()[0] > 0
    assert result.is_label and result.affine.allclose(AFFINE)
    assert dice_score(inside, sphere) > 0.85
    components, count = ndimage.label(inside)
    assert count == 1 and components[SEED] == 1
    assert not inside[detached].any()


def test_level_set_gives_the_same_answer_every_call():
    """scikit-image shares one smoothing cycle between all its level-set calls; the result must not depend on
    how many smoothing steps ran before (15 iterations x 1 step leaves that cycle at the other phase)."""
    image, _ = _sphere_phantom()
    for model in ("chan-vese", "geodesic"):
        first, second, third = (level_set(image, seeds=[SEED], model=model, iterations=15).numpy() for _ in range(3))
        assert np.array_equal(first, second) and np.array_equal(first, third)


@pytest.mark.parametrize("model", ["geodesic", "chan-vese"])
def test_level_set_on_a_single_slice_volume_equals_the_2d_level_set(model):
    image, _ = _sphere_phantom()
    plane = image.numpy()[:, :, :, 7:8]  # one slice through the sphere's centre
    volume = Image(torch.from_numpy(plane.copy()), AFFINE)
    flat = Image(torch.from_numpy(plane[..., 0].copy()), Affine.from_geometry(SPACING[:2]))
    on_volume = level_set(volume, seeds=[SEED[:2] + (0,)], model=model).numpy()[0]
    on_plane = level_set(flat, seeds=[SEED[:2]], model=model).numpy()[0]
    assert on_volume.shape == plane.shape[1:] and on_plane.sum() > 50
    assert np.array_equal(on_volume[..., 0], on_plane)
    with pytest.raises(ValueError, match="at least two axes longer than one voxel"):
        level_set(Image(torch.from_numpy(plane[:, :1].copy()), AFFINE), seeds=[(0, 0, 0)])


def test_level_set_unknown_model_lists_the_choices():
    image, _ = _sphere_phantom()
    with pytest.raises(ValueError, match="model.*geodesic or chan-vese"):
        level_set(image, seeds=[SEED], model="snake")
    with pytest.raises(ValueError, match="seeds"):
        level_set(image, seeds=[(0, 0, 99)])


# --- vessels and the field of view --------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", ["otsu", "top:12", 0.1, "0.1"])
def test_vessels_finds_dark_lines_inside_the_auto_field_of_view(threshold):
    disc, lines = _disc_and_lines()
    result = vessels(_fundus(), mask=None, threshold=threshold)
    found = result.numpy()[0] > 0
    assert result.is_label and result.data.dtype == torch.int64 and result.affine.allclose(AFFINE_2D)
    assert dice_score(found, lines) > 0.7
    assert not found[~disc].any()


def test_vessels_top_percent_keeps_that_share_of_the_mask():
    disc, _ = _disc_and_lines()
    found = vessels(_fundus(), mask=disc, threshold="top:12").numpy()[0] > 0
    assert found.sum() / disc.sum() == pytest.approx(0.12, abs=0.01)


@pytest.mark.parametrize("threshold", ["top:0", "top:100", "top:abc", "xyz", ""])
def test_vessels_bad_threshold_names_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        vessels(_fundus(), threshold=threshold)


def test_field_of_view_of_a_disc():
    disc, _ = _disc_and_lines()
    fov = field_of_view(_fundus())
    assert fov.dtype == bool and fov.shape == disc.shape
    assert (fov & disc).sum() / (fov | disc).sum() > 0.98


# --- seed_from_mask -----------------------------------------------------------------------------------------------


def test_seed_from_mask_ball_gives_its_centre():
    shape, centre = (15, 13, 9), (7, 6, 4)
    ball = _ball(np.multiply(centre, SPACING), 4.0, shape=shape)
    assert seed_from_mask(_labels(ball)) == centre
    assert seed_from_mask(_labels(ball.astype(np.int64) * 3)) == centre  # any label above 0 counts


def test_seed_from_mask_shell_gives_a_voxel_of_the_shell():
    shape = (15, 13, 9)
    centre_mm = np.multiply((7, 6, 4), SPACING)
    shell = _ball(centre_mm, 5.0, shape=shape) & ~_ball(centre_mm, 3.5, shape=shape)
    assert not shell[7, 6, 4]  # the centre of mass lies in the hole
    seed = seed_from_mask(_labels(shell))
    assert len(seed) == 3 and shell[seed]


def test_seed_from_mask_empty_raises():
    with pytest.raises(ValueError, match="seed mask"):
        seed_from_mask(_labels(np.zeros((6, 5, 4), dtype=bool)))


# --- segment ------------------------------------------------------------------------------------------------------


def test_segment_channel_step_picks_the_object_seen_in_green():
    """Square A is bright in green only; square B in red and blue only. Otsu on the green channel finds A
    exactly, on the red channel B exactly, and on the channel mean (no steps) both."""
    a = np.zeros((40, 40), dtype=bool)
    a[5:15, 5:15] = True
    b = np.zeros((40, 40), dtype=bool)
    b[20:35, 22:38] = True
    rgb = np.stack([b, a, b]).astype(np.float32) * 200 + 20
    image = Image(torch.from_numpy(rgb), AFFINE_2D)
    green = segment(image, "otsu", steps="channel:green").numpy()[0]
    assert np.array_equal(green, a)
    assert np.array_equal(segment(image, "otsu", steps=["channel:red"]).numpy()[0], b)
    assert np.array_equal(segment(image, "otsu").numpy()[0], a | b)  # the mean shows both squares


def test_segment_mask_zeroes_everything_outside():
    image, sphere = _sphere_phantom()
    half = np.zeros(SHAPE, dtype=bool)
    half[: SEED[0] + 1] = True  # the half with i <= the seed's
    unmasked = segment(image, "confidence_connected", seeds=[SEED]).numpy()[0]
    masked = segment(image, "confidence_connected", mask=half, seeds=[SEED]).numpy()[0]
    assert masked[~half].sum() == 0 and unmasked[~half].sum() > 0
    assert np.array_equal(masked, unmasked * half)
    thresholded = segment(image, "otsu", mask=_labels(half)).numpy()[0]
    assert thresholded[~half].sum() == 0
    assert dice_score(thresholded, sphere & half) > 0.95


def test_segment_unknown_param_is_named():
    image, _ = _sphere_phantom()
    with pytest.raises(ValueError, match="tolerance"):
        segment(image, "vessels", tolerance=0.3)
    with pytest.raises(ValueError, match="multiplier"):
        segment(image, "level_set", seeds=[SEED], multiplier=2.0)
    with pytest.raises(ValueError, match="mask"):
        segment(image, "otsu", mask="everything")


# --- segment_folder -----------------------------------------------------------------------------------------------

CASES = ("case_a", "case_b", "case_c")


def _write_cases(root: Path) -> dict[str, Path]:
    """Three scans with the sphere shifted along j, their spheres as seed masks and as references."""
    folders = {name: root / name for name in ("scans", "seeds", "refs")}
    for index, case in enumerate(CASES):
        centre = (CENTRE_MM[0], CENTRE_MM[1] + index - 1, CENTRE_MM[2])
        image, sphere = _sphere_phantom(seed=index, centre_mm=centre)
        write_image(image, folders["scans"] / f"{case}.nii.gz")
        write_image(_labels(_ball(centre, 2.0)), folders["seeds"] / f"{case}.nii.gz")
        write_image(_labels(sphere), folders["refs"] / f"{case}.nii.gz")
    return folders


def test_segment_folder_writes_masks_record_and_metrics(tmp_path: Path):
    folders = _write_cases(tmp_path)
    out = tmp_path / "out"
    written = segment_folder([folders["scans"]], out, "confidence_connected", seed_masks=folders["seeds"],
                             reference=folders["refs"], multiplier=2.5)  # fmt: skip
    assert [p.name for p in written] == [f"{case}.nii.gz" for case in CASES]
    dice = {}
    for case, path in zip(CASES, written, strict=True):
        scan = read_image(folders["scans"] / f"{case}.nii.gz")
        mask = read_image(path, is_label=True)
        assert mask.spatial_shape == SHAPE and mask.affine.allclose(scan.affine, atol=1e-5)
        dice[case] = dice_score(mask.numpy()[0], read_image(folders["refs"] / path.name, is_label=True).numpy()[0])
        assert dice[case] > 0.9
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["kind"] == "baseline" and record["method"] == "confidence_connected"
    assert record["params"] == {"multiplier": 2.5} and record["steps"] == [] and record["mask"] is None
    assert record["seed_masks"] == str(folders["seeds"].resolve())
    assert record["reference"] == str(folders["refs"].resolve())
    assert [c["case"] for c in record["cases"]] == list(CASES)
    for entry in record["cases"]:
        assert Path(entry["input"]).is_absolute()
        assert entry["input"] == str((folders["scans"] / f"{entry['case']}.nii.gz").resolve())
    with open(out / "metrics.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case"] for row in rows] == list(CASES)
    for row in rows:
        assert float(row["dice"]) == pytest.approx(dice[row["case"]], abs=1e-9)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["cases"] == 3
    assert summary["classes"]["1"]["dice"]["mean"] == pytest.approx(np.mean(list(dice.values())), abs=1e-9)


def test_segment_folder_missing_reference_writes_nothing(tmp_path: Path):
    folders = _write_cases(tmp_path)
    (folders["refs"] / "case_b.nii.gz").unlink()
    out = tmp_path / "out"
    with pytest.raises(SegmorphError, match="case_b") as caught:
        segment_folder([folders["scans"]], out, "confidence_connected", seed_masks=folders["seeds"],
                       reference=folders["refs"])  # fmt: skip
    assert caught.value.path == str(folders["refs"])
    assert not out.exists() or not any(out.iterdir())


def test_segment_folder_mask_on_another_grid_is_named(tmp_path: Path):
    folders = _write_cases(tmp_path)
    other = write_image(_labels(np.ones((10, 10, 10), dtype=bool)), tmp_path / "fov.nii.gz")
    with pytest.raises(SegmorphError, match="grid") as caught:
        segment_folder([folders["scans"]], tmp_path / "out", "otsu", mask=other)
    assert caught.value.path == str(other)


def test_segment_folder_seeded_method_needs_seeds(tmp_path: Path):
    folders = _write_cases(tmp_path)
    for method in ("region_grow", "confidence_connected", "level_set"):
        with pytest.raises(SegmorphError, match="seed"):
            segment_folder([folders["scans"]], tmp_path / "out", method)
    assert not (tmp_path / "out").exists()


def test_segment_folder_refuses_to_write_into_its_scans(tmp_path: Path):
    folders = _write_cases(tmp_path)
    before = {p.name: p.read_bytes() for p in folders["scans"].iterdir()}
    with pytest.raises(SegmorphError):
        segment_folder([folders["scans"]], folders["scans"], "otsu")
    assert {p.name: p.read_bytes() for p in folders["scans"].iterdir()} == before


# --- segmorph baseline --------------------------------------------------------------------------------------------


def _one_line_error(capfd) -> str:
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_cli_refuses_an_option_of_another_method(tmp_path: Path, capfd):
    scan = write_image(_sphere_phantom()[0], tmp_path / "scan.nii.gz")
    assert main(["baseline", str(scan), "--out", str(tmp_path / "out"), "--method", "otsu", "--tolerance", "0.3"]) == 1
    assert "--tolerance" in _one_line_error(capfd)
    assert main(["baseline", str(scan), "--out", str(tmp_path / "out"), "--method", "vessels", "--sigmas", "1,x"]) == 1
    assert "--sigmas" in _one_line_error(capfd)
    assert not (tmp_path / "out").exists()


def test_cli_vessels_on_pictures_with_steps_auto_mask_and_reference(tmp_path: Path, capfd):
    """RGB pictures whose vessels show in green; red and blue are flat inside the disc."""
    disc, lines = _disc_and_lines()
    for index in range(2):
        green = np.clip(_fundus_values(seed=index) * 255, 0, 255)
        flat = np.where(disc, 150.0, 0.0)
        rgb = np.stack([flat, green, flat]).astype(np.uint8)
        write_image(Image(torch.from_numpy(rgb), Affine.identity(2)), tmp_path / "scans" / f"eye_{index}.png")
        write_image(_labels(lines, Affine.identity(2)), tmp_path / "refs" / f"eye_{index}.png")
    out = tmp_path / "out"
    code = main(["baseline", str(tmp_path / "scans"), "--out", str(out), "--method", "vessels",
                 "--steps", "channel:green,clahe", "--mask", "auto", "--reference", str(tmp_path / "refs")])  # fmt: skip
    captured = capfd.readouterr()
    assert code == 0, captured.err
    match = re.search(r"foreground Dice (\d\.\d{4}) ± \d\.\d{4} over 2 cases", captured.out)
    assert match and float(match.group(1)) > 0.6
    for index in range(2):
        mask = read_image(out / f"eye_{index}.png", is_label=True).numpy()[0]
        assert not mask[~disc].any()
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["mask"] == "auto" and record["steps"] == ["channel:green", "clahe"]
