"""``segmorph check`` / :func:`segmorph.qc.quality.check_dataset` on tiny synthetic datasets with known answers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import OBLIQUE, oblique_direction, sphere_case
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.io import write_image
from segmorph.qc.quality import (
    NEAR_BITS,
    check_dataset,
    difference_hash,
    orientation_code,
    residual_correlation,
    robust_z,
)

SHAPE = (24, 20, 12)


def _write_dataset(root, num_cases=10):
    """MSD dataset: case_008 = case_001 (exact), case_009 = case_002 + faint noise (near), case_006 10x
    intensities, case_007 a label block far bigger than the spheres."""
    entries = []
    rng = np.random.default_rng(99)
    for index in range(num_cases):
        image, label = sphere_case(SHAPE, seed={8: 1, 9: 2}.get(index, index))
        if index == 9:
            noisy = image.data + torch.from_numpy(rng.normal(0, 0.5, image.data.shape).astype(np.float32))
            image = image.with_data(noisy)
        if index == 6:
            image = image.with_data(image.data * 10)
        if index == 7:
            block = torch.zeros_like(label.data)
            block[:, 2:22, 2:18, 1:11] = 1
            label = label.with_data(block)
        name = f"case_{index:03d}.nii.gz"
        write_image(image, root / "imagesTr" / name)
        write_image(label, root / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "spheres", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "outer", "2": "core"},
            "numTraining": num_cases, "training": entries}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _write_dataset(tmp_path_factory.mktemp("qc") / "spheres")


@pytest.fixture(scope="module")
def report(dataset):
    return check_dataset(dataset, show_progress=False)


def test_exact_and_near_duplicates_are_found(report):
    assert report.layout == "msd"
    assert report.exact_groups == [["case_001", "case_008"]]
    assert [(p.case_a, p.case_b) for p in report.near_pairs] == [("case_002", "case_009")]
    pair = report.near_pairs[0]
    assert pair.bits <= report.near_bits and report.near_correlation <= pair.correlation <= 1
    by_id = {case.case_id: case for case in report.cases}
    assert "exact duplicate of case_008" in by_id["case_001"].flags
    assert (f"near-duplicate of case_002 ({pair.bits} hash bits differ, residual correlation {pair.correlation:.3f})"
            in by_id["case_009"].flags)  # fmt: skip


def test_intensity_and_label_volume_outliers_are_flagged_with_their_reason(report):
    flagged = {case.case_id: case.flags for case in report.flagged}
    assert set(flagged) == {"case_001", "case_008", "case_002", "case_009", "case_006", "case_007"}
    assert flagged["case_006"] == [f for f in flagged["case_006"] if "intensity range" in f] != []
    assert "far above the median" in flagged["case_006"][0]
    assert len(flagged["case_007"]) == 1 and "label volume" in flagged["case_007"][0]
    assert "far above the median" in flagged["case_007"][0]
    assert not any("outlier" in f for f in flagged["case_001"] + flagged["case_009"])


def test_geometry_and_label_columns_on_an_oblique_grid(report):
    case = report.cases[0]
    _, label = sphere_case(SHAPE, seed=0)
    assert case.shape == SHAPE and case.channels == 1
    np.testing.assert_allclose(case.spacing, (0.8, 1.1, 2.5), atol=1e-6)
    assert case.orientation == "LPS"  # the oblique axes lie closest to L, P and S
    values, counts = np.unique(label.numpy(), return_counts=True)
    assert case.label_values == tuple(int(v) for v in values) == (0, 1, 2)
    assert case.label_voxels == {1: int(counts[1]), 2: int(counts[2])}
    # float32 spacing in NIfTI
    np.testing.assert_allclose(case.label_volumes[1], counts[1] * 0.8 * 1.1 * 2.5, rtol=1e-6)
    row = case.row()
    assert (row["shape_I"], row["shape_J"], row["shape_K"]) == ("24", "20", "12")
    assert (row["spacing_I"], row["spacing_K"], row["orientation"]) == ("0.8", "2.5", "LPS")
    assert float(row["p50"]) == pytest.approx(np.percentile(sphere_case(SHAPE, seed=0)[0].numpy(), 50), rel=1e-5)


def test_orientation_code_follows_flipped_axes():
    flipped = Affine.from_geometry((1.0, 1.0, 1.0), None, oblique_direction() @ np.diag([-1.0, -1.0, 1.0]))
    assert orientation_code(OBLIQUE) == "LPS"
    assert orientation_code(flipped) == "RAS"
    assert orientation_code(Affine.identity(2)) == "LP"


def test_difference_hash_ignores_brightness_and_robust_z_uses_the_mad():
    values = np.random.default_rng(0).random((1, 20, 24))
    assert np.array_equal(difference_hash(values), difference_hash(3 * values + 7))
    assert difference_hash(values).size == 256
    z = robust_z([1, 2, 3, 4, 100])
    assert z[2] == 0 and z[4] == pytest.approx(0.6745 * 97 / 1)
    assert np.all(robust_z([5, 5, 5, 5]) == 0)


def _fundus_like(seed: int, size: int = 128) -> np.ndarray:
    """A fundus-like picture: the same bright, unevenly lit disc on black for every seed, with four dark
    lines (2 pixels wide, 30 grey levels deep) placed by the seed."""
    rng = np.random.default_rng(seed)
    i, j = np.mgrid[:size, :size].astype(float)
    radius = np.hypot(i - (size - 1) / 2, j - (size - 1) / 2) / (0.45 * size)
    image = np.where(radius < 1, 150 + 140 * (0.4 * j / size - radius**2), 0.0)
    for _ in range(4):
        start, end = rng.uniform(0.1 * size, 0.9 * size, (2, 2))
        step = end - start
        t = np.clip(((i - start[0]) * step[0] + (j - start[1]) * step[1]) / (step @ step), 0, 1)
        on_line = np.hypot(i - start[0] - t * step[0], j - start[1] - t * step[1]) < 2.0
        image[on_line & (radius < 1)] -= 30
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def test_fundus_like_pictures_are_near_duplicates_only_of_their_own_copy(tmp_path):
    root = tmp_path / "fundus"
    eyes = [_fundus_like(seed) for seed in range(5)]
    for index, eye in enumerate(eyes):
        _png(root / f"eye_{index}.png", eye)
    # the copy of eye_0: shifted by one pixel, darker with a raised black level, saved as JPEG (quality 75)
    copy = np.clip(np.round(0.8 * np.roll(eyes[0].astype(float), 1, axis=1) + 20), 0, 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(copy), str(root / "copy.jpg"), True, 75)
    hashes = [difference_hash(eye.T[None]) for eye in eyes]
    hash_bits = [int(np.sum(a != b)) for k, a in enumerate(hashes) for b in hashes[k + 1 :]]
    assert max(hash_bits) <= NEAR_BITS  # the shared disc alone makes every two eyes hash candidates
    report = check_dataset(root, show_progress=False)
    assert report.layout == "images" and report.exact_groups == []
    assert [(p.case_a, p.case_b) for p in report.near_pairs] == [("copy", "eye_0")]
    assert report.near_pairs[0].correlation > 0.95
    assert {case.case_id for case in report.flagged} == {"copy", "eye_0"}


def test_residual_correlation_removes_the_shared_layout():
    rng = np.random.default_rng(3)
    layout = np.hypot(*np.mgrid[-8:8, -8:8]) < 6  # a disc shared by every thumbnail
    own = rng.normal(0, 0.1, (2, 16, 16))
    a, b = layout + own[0], layout + own[1]
    plain = np.corrcoef(a.ravel(), b.ravel())[0, 1]  # with no other case nothing is removed
    np.testing.assert_allclose(residual_correlation(np.stack([a, b]), [0], [1]), plain)
    assert np.corrcoef(a.ravel(), (layout - own[0]).ravel())[0, 1] > 0.9  # the plain correlation sees the disc
    thumbnails = np.stack([a, 2 * layout + own[0], layout - own[0], layout.astype(float)])
    np.testing.assert_allclose(residual_correlation(thumbnails, [0, 0], [1, 2]), [1.0, -1.0], atol=1e-9)
    assert residual_correlation(np.zeros((2, 4, 4)), [0], [1])[0] == 1.0


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def test_classification_csv_and_class_folders(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (20, 24)) for _ in range(4)]
    root = tmp_path / "pictures"
    rows = []
    for index, array in enumerate([*images, images[0]]):
        name = f"{'ab'[index % 2]}/img_{index}.png"
        _png(root / name, array)
        rows.append({"file": name, "class": "ab"[index % 2]})
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["file", "class"])
        writer.writeheader()
        writer.writerows(rows)
    from_csv = check_dataset(root, labels="labels.csv", show_progress=False)
    assert from_csv.layout == "labels-csv"
    assert from_csv.exact_groups == [["a/img_0", "a/img_4"]]
    assert [c.class_name for c in from_csv.cases] == ["a", "b", "a", "b", "a"]
    assert from_csv.cases[0].orientation == "LP" and from_csv.cases[0].label is None
    folders = check_dataset(root, show_progress=False)
    assert folders.layout == "class-folders" and len(folders.cases) == 5 and len(folders.exact_groups) == 1


def test_cli_writes_the_csv_and_a_picture(dataset, tmp_path, capfd):
    out = tmp_path / "qc.csv"
    assert main(["check", str(dataset), "--out", str(out)]) == 0
    printed = capfd.readouterr().out
    assert "10 case(s) (msd), 6 flagged" in printed and "case_007" in printed
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and sum(r["flagged"] == "yes" for r in rows) == 6
    assert (tmp_path / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _scaled_group_dataset(root, num_cases=20, group=5, lone=12):
    """Paired folders: the first ``group`` cases at 1000x intensities (another scanner's scale), case ``lone``
    at 1/30, the rest as drawn."""
    for index in range(num_cases):
        image, label = sphere_case(SHAPE, seed=index)
        scale = 1000.0 if index < group else 1 / 30 if index == lone else 1.0
        write_image(image.with_data(image.data * scale), root / "images" / f"case_{index:03d}.nii.gz")
        write_image(label, root / "labels" / f"case_{index:03d}.nii.gz")
    return root


def _intensity_outliers(report) -> list[str]:
    return [case.case_id for case in report.cases if any("outlier: intensity range" in f for f in case.flags)]


def test_many_cases_beyond_the_limit_on_one_side_are_a_group_not_outliers(tmp_path, capfd):
    root = _scaled_group_dataset(tmp_path / "scaled")
    report = check_dataset(root, show_progress=False)
    (group,) = report.groups
    assert (group.feature, group.side) == ("intensity range (p99 - p1)", "above")
    assert group.case_ids == tuple(f"case_{i:03d}" for i in range(5))
    assert _intensity_outliers(report) == ["case_012"]  # alone below: an outlier
    assert group.sentence().startswith("intensity range (p99 - p1): 5 cases far above the median ")
    out = tmp_path / "qc.csv"
    assert main(["check", str(root), "--out", str(out)]) == 0
    printed = capfd.readouterr().out
    assert "20 case(s) (folders)" in printed and "1 group(s) of cases" in printed
    assert f"group: {group.sentence()}: case_000, case_001, case_002, case_003, case_004" in printed
    with open(out, newline="") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert rows["case_003"]["groups"] == "intensity range (p99 - p1) above"
    assert "intensity range" not in rows["case_003"]["reasons"]
    assert rows["case_012"]["groups"] == "" and rows["case_012"]["flagged"] == "yes"


def test_two_cases_beyond_the_limit_stay_outliers(tmp_path):
    report = check_dataset(_scaled_group_dataset(tmp_path / "two", group=2), show_progress=False)
    assert report.groups == []
    assert _intensity_outliers(report) == ["case_000", "case_001", "case_012"]


def test_errors_are_one_line(tmp_path, capfd):
    assert main(["check", str(tmp_path / "missing")]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing" in err[0]
    with pytest.raises(SegmorphError, match="z_limit"):
        check_dataset(tmp_path, z_limit=0)
    with pytest.raises(SegmorphError, match="near_correlation"):
        check_dataset(tmp_path, near_correlation=1.5)
