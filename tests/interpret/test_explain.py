"""``segmorph explain``: Grad-CAM and TTA uncertainty maps on each scan's own grid, CLI wiring and bad input.

The known-answer test of Grad-CAM itself (the map peaks on the object) is in test_gradcam.py.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import OBLIQUE, sphere_case, write_msd_dataset
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.interpret.explain import ExplainOptions, cam_window, draw_variants, explain_files, resolve_classes
from segmorph.io import read_image, write_image

NIFTI_UINT8, NIFTI_FLOAT32 = 2, 16
# another oblique grid: 25 degrees about x then 15 about y; its spacing differs from the plan's on every axis
SCAN_AFFINE = Affine.from_geometry(
    (0.6, 1.3, 2.0),
    (5.5, -20.0, 11.25),
    np.array([[1, 0, 0], [0, np.cos(0.44), -np.sin(0.44)], [0, np.sin(0.44), np.cos(0.44)]])
    @ np.array([[np.cos(0.26), 0, np.sin(0.26)], [0, 1, 0], [-np.sin(0.26), 0, np.cos(0.26)]]),
)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 3-level segmentation run trained for 6 steps on four tiny sphere cases (patch 24x20x12; about 2 s)."""
    from segmorph.segmentation.pipeline import TrainRequest, train_segmentation

    root = tmp_path_factory.mktemp("explain_run")
    request = TrainRequest(
        dataset=write_msd_dataset(root / "dataset", num_cases=4), out=root / "run", time_budget_s=0, max_steps=6,
        val_cases=("case_000", "case_001"), validate_with_predictor=False, show_progress=False,
        overrides=(("train.steps_per_epoch", 3), ("network.features", [4, 8, 16]), ("train.batch_size", 1)),
    )  # fmt: skip
    train_segmentation(request)
    return root / "run"


def _scan(path: Path, shape=(20, 16, 10), affine: Affine = SCAN_AFFINE, seed: int = 3) -> Path:
    image, _ = sphere_case(shape, seed=seed, affine=affine)
    return write_image(image, path)


def _nifti_datatype(path: Path) -> int:
    with gzip.open(path, "rb") as handle:
        return struct.unpack_from("<h", handle.read(348), 70)[0]


def _only_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_outputs_keep_the_scan_geometry(run: Path, tmp_path: Path, capsys, one_thread) -> None:
    scan = _scan(tmp_path / "scan_0000.nii.gz")  # resampled to the plan's spacing and back
    assert main(["explain", str(run), str(scan), "--out", str(tmp_path / "out"), "--tta", "3", "--quiet"]) == 0
    assert "explained 1 scan(s)" in capsys.readouterr().err
    case = tmp_path / "out" / "scan"  # the case id drops the _0000 channel suffix, as predict does
    maps = ["prediction", "uncertainty", "gradcam_outer", "gradcam_core"]
    assert sorted(p.name for p in case.iterdir()) == sorted(
        [f"{m}.nii.gz" for m in maps] + [f"{m}.png" for m in maps[1:]] + ["explain.json"]
    )
    reference = read_image(scan)
    for name in maps:
        image = read_image(case / f"{name}.nii.gz")
        assert image.spatial_shape == reference.spatial_shape and image.num_channels == 1
        assert image.affine.allclose(reference.affine, atol=1e-6), (name, image.affine, reference.affine)
    assert _nifti_datatype(case / "prediction.nii.gz") == NIFTI_UINT8
    for name in maps[1:]:
        assert _nifti_datatype(case / f"{name}.nii.gz") == NIFTI_FLOAT32
    for name in maps[2:]:
        cam = read_image(case / f"{name}.nii.gz").numpy()
        assert cam.min() >= 0 and cam.max() <= 1 and cam.max() > 0
    uncertainty = read_image(case / "uncertainty.nii.gz").numpy()
    assert uncertainty.min() >= 0 and uncertainty.max() <= 0.25
    facts = json.loads((case / "explain.json").read_text(encoding="utf-8"))
    assert facts["classes"] == {"1": "outer", "2": "core"} and len(facts["tta"]) == 3
    for name in ("outer", "core"):
        cam = read_image(case / f"gradcam_{name}.nii.gz").numpy()[0]
        peak = facts["cam_peaks"][name]
        assert cam[tuple(peak["voxel"])] == cam.max()
        assert np.allclose(peak["mm"], reference.affine.voxel_to_world(peak["voxel"]), atol=1e-3)
    assert set(facts["uncertainty"]) >= {"mean_inside", "mean_outside"}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["scan"]  # no staging folder left


def test_cam_window_is_the_whole_volume_or_a_patch_around_the_foreground() -> None:
    foreground = torch.zeros(60, 20, 12, dtype=torch.bool)
    assert cam_window((15, 19, 8), (24, 20, 12), 4, foreground[:15, :19, :8]) == ((0, 0, 0), (15, 19, 8), (16, 20, 8))
    assert cam_window((1, 1, 1), (24, 20, 12), 4, foreground[:1, :1, :1]) == ((0, 0, 0), (1, 1, 1), (24, 20, 12))
    foreground[40:46, 5:9, 2:4] = True  # centre (42.5, 6.5, 2.5)
    assert cam_window((60, 20, 12), (24, 20, 12), 4, foreground) == ((31, 0, 0), (24, 20, 12), (24, 20, 12))
    foreground[:] = False
    foreground[57:, 0, 0] = True  # at the border: the window is shifted inside the volume
    assert cam_window((60, 20, 12), (24, 20, 12), 4, foreground)[0] == (36, 0, 0)
    foreground[:] = False  # nothing predicted: the centre
    assert cam_window((60, 20, 12), (16, 16, 12), 4, foreground)[:2] == ((22, 2, 0), (16, 16, 12))


def test_a_scan_larger_than_the_patch_is_explained_in_a_window(run: Path, tmp_path: Path, one_thread) -> None:
    scan = _scan(tmp_path / "big.nii.gz", shape=(48, 40, 16), affine=OBLIQUE)  # the plan's grid: no resampling
    options = ExplainOptions(classes=("core",), tta=2)
    case = explain_files(run, [scan], tmp_path / "out", options, show_progress=False)[0]
    window = json.loads((case / "explain.json").read_text(encoding="utf-8"))["cam_window"]
    assert window["size"] == [24, 20, 12]
    cam = read_image(case / "gradcam_core.nii.gz").numpy()[0]
    inside = np.zeros(cam.shape, dtype=bool)
    inside[tuple(slice(a, a + n) for a, n in zip(window["start"], window["size"]))] = True
    assert cam[inside].max() == pytest.approx(1.0) and not cam[~inside].any()
    assert read_image(case / "uncertainty.nii.gz").spatial_shape == (48, 40, 16)


def test_the_same_seed_gives_the_same_uncertainty(run: Path, tmp_path: Path, one_thread) -> None:
    scan = _scan(tmp_path / "scan.nii.gz")
    maps = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        options = ExplainOptions(tta=4, seed=seed, cam=False)
        case = explain_files(run, [scan], tmp_path / name, options, show_progress=False)[0]
        assert not list(case.glob("gradcam_*"))
        maps[name] = read_image(case / "uncertainty.nii.gz").numpy()
    assert np.array_equal(maps["a"], maps["b"])
    assert not np.array_equal(maps["a"], maps["c"])  # the jitter depends on the seed
    assert draw_variants(4, 3, 7) == draw_variants(4, 3, 7) != draw_variants(4, 3, 8)
    flips = [v.flip_axes for v in draw_variants(8, 3, 0)]
    assert len(set(flips)) == 8 and flips[0] == ()  # every flip combination once, identity first


def test_a_rerun_replaces_the_case_folder(run: Path, tmp_path: Path, one_thread) -> None:
    scan = _scan(tmp_path / "scan.nii.gz")
    explain_files(run, [scan], tmp_path / "out", ExplainOptions(tta=2), show_progress=False)
    case = explain_files(run, [scan], tmp_path / "out", ExplainOptions(("outer",), tta=2), show_progress=False)[0]
    assert not (case / "gradcam_core.nii.gz").exists() and (case / "gradcam_outer.nii.gz").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["scan"]


def test_classes_by_value_or_name() -> None:
    labels = {0: "background", 1: "outer", 2: "core"}
    assert resolve_classes((), labels) == [1, 2]
    assert resolve_classes(("CORE", "1", "2"), labels) == [2, 1]
    with pytest.raises(SegmorphError, match="unknown class 'liver'.*1 \\(outer\\)"):
        resolve_classes(("liver",), labels)


def _bad_scans(tmp_path: Path) -> dict[str, Path]:
    flat = Image(torch.rand(1, 20, 16), Affine.from_geometry((0.7, 1.2)))
    two_channels = Image(torch.rand(2, 20, 16, 10), SCAN_AFFINE)
    return {
        "expected a 3D image, got 2D": write_image(flat, tmp_path / "flat.nii.gz"),
        "expected 1 channel(s), got 2": write_image(two_channels, tmp_path / "pair.nii.gz"),
    }


def test_bad_scans_give_one_error_line_and_leave_nothing(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    for problem, scan in _bad_scans(tmp_path).items():
        assert main(["explain", str(run), str(scan), "--out", str(out), "--quiet"]) == 1
        assert _only_error_line(capsys) == f"error: {scan}: {problem}"
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize(
    "extra, problem",
    [(["--classes", "liver"], "unknown class 'liver'"), (["--tta", "1"], "needs at least 2 variants")],
)  # fmt: skip
def test_bad_options_give_one_error_line(run: Path, tmp_path: Path, capsys, extra, problem) -> None:
    scan = _scan(tmp_path / "scan.nii.gz")
    assert main(["explain", str(run), str(scan), "--out", str(tmp_path / "out"), "--quiet", *extra]) == 1
    assert problem in _only_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_missing_run_gives_one_error_line(tmp_path: Path, capsys) -> None:
    scan = _scan(tmp_path / "scan.nii.gz")
    assert main(["explain", str(tmp_path / "nope"), str(scan), "--out", str(tmp_path / "out")]) == 1
    assert _only_error_line(capsys) == f"error: {tmp_path / 'nope'}: no such run folder"


def test_a_failed_write_leaves_no_case_folder(run: Path, tmp_path: Path, monkeypatch) -> None:
    import segmorph.interpret.explain

    def fail(*args, **kwargs):
        raise SegmorphError("cannot write file (no space left on device)", "somewhere.png")

    monkeypatch.setattr(segmorph.interpret.explain, "save_cam_overlay", fail)
    with pytest.raises(SegmorphError, match="no space left"):
        explain_files(
            run, [_scan(tmp_path / "scan.nii.gz")], tmp_path / "out", ExplainOptions(tta=2), show_progress=False
        )
    assert list((tmp_path / "out").iterdir()) == []
