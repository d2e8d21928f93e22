"""``segmorph report`` of ``segmorph enhance`` and ``segmorph baseline`` folders: the records, the pages' steps,
metrics and pictures, inputs that vanished, and tampered records."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from helpers import sphere_case
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.processing.files import enhance_files
from segmorph.report import build_report, detect_kind
from segmorph.report.processing import intensity_figures
from segmorph.segmentation.evaluate import evaluate_folders

PLANE = Affine.from_geometry((0.7, 1.3), (4.0, -2.0))


def _sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


def _decoded(uri: str) -> PILImage.Image:
    return PILImage.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def _fundus(seed: int) -> Image:
    """A 24 x 20 RGB picture: a reddish background with a darker green disc."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(24), np.arange(20), indexing="ij")
    disc = (i - 12) ** 2 + (j - 10) ** 2 < 36
    rgb = np.stack([180 - 20 * disc, 90 - 40 * disc, 30 + 0 * disc]) + rng.integers(0, 8, (3, 24, 20))
    return Image(torch.from_numpy(rgb.astype(np.uint8)), Affine.identity(2))


@pytest.fixture
def enhanced_2d(tmp_path: Path) -> Path:
    for seed, name in enumerate(("21_training", "22_training")):
        write_image(_fundus(seed), tmp_path / "pictures" / f"{name}.png")
    enhance_files([tmp_path / "pictures"], tmp_path / "enhanced", "channel:green,clahe")
    return tmp_path / "enhanced"


# -- the enhance record ----------------------------------------------------------------------------


def test_enhance_writes_its_record(enhanced_2d: Path, tmp_path: Path) -> None:
    record = json.loads((enhanced_2d / "enhance.json").read_text(encoding="utf-8"))
    assert record == {"kind": "enhance", "steps": ["channel:green", "clahe"], "cases": [
        {"case": name, "input": str((tmp_path / "pictures" / f"{name}.png").resolve()), "output": f"{name}.png"}
        for name in ("21_training", "22_training")]}  # fmt: skip
    assert sorted(p.name for p in enhanced_2d.iterdir()) == ["21_training.png", "22_training.png", "enhance.json"]


def test_enhance_refuses_a_record_over_an_input(tmp_path: Path) -> None:
    image, _ = sphere_case()
    scan = write_image(image, tmp_path / "scans" / "case.nii.gz")
    (tmp_path / "out").mkdir()
    os.link(scan, tmp_path / "out" / "enhance.json")  # the record's path is the scan itself (a hard link)
    before = scan.read_bytes()
    with pytest.raises(SegmorphError, match="enhance.json"):
        enhance_files([scan], tmp_path / "out", "rescale")
    assert scan.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["enhance.json"]  # nothing written


# -- the enhance page ------------------------------------------------------------------------------


def test_intensity_figures_known_answers() -> None:
    ramp = np.arange(11, dtype=np.float32)[:, None].repeat(4, axis=1)  # 0..10 along I, spacing 0.7 mm
    figures = intensity_figures(Image(torch.from_numpy(ramp[None]), PLANE))
    assert figures["min"] == 0 and figures["max"] == 10 and figures["mean"] == pytest.approx(5)
    assert figures["std"] == pytest.approx(np.sqrt(10))
    # gradient 1 / 0.7 per mm everywhere; the 1st and 99th percentiles of 0..10 (each value 4 times) are 0 and 10
    assert figures["contrast"] == pytest.approx(1 / 0.7 / 10, rel=1e-6)
    scaled = intensity_figures(Image(torch.from_numpy(ramp[None] * 25.5 + 3), PLANE))
    assert scaled["contrast"] == pytest.approx(figures["contrast"], rel=1e-6)  # the intensity scale drops out


def test_enhance_page_shows_steps_figures_and_pictures(enhanced_2d: Path, tmp_path: Path) -> None:
    assert detect_kind(enhanced_2d) == "enhance"
    out = tmp_path / "r.html"
    assert main(["report", str(enhanced_2d), "--out", str(out), "--cases", "1"]) == 0
    page = out.read_text(encoding="utf-8")
    assert "channel:green &gt; clahe" in page
    assert "21_training" in page and "22_training" in page  # both in the table
    assert "local contrast (1/mm)" in page
    assert page.count("<h3>") == 1  # --cases 1: one case drawn
    sources = _sources(page)
    assert len(sources) == 2 and all(s.startswith("data:image/") for s in sources)
    assert [_decoded(s).mode for s in sources] == ["RGB", "L"]  # RGB input, green-channel output
    shown = np.asarray(_decoded(sources[0]))  # (J, I, 3): the input's own colours, I across
    assert np.array_equal(shown, _fundus(0).numpy().transpose(2, 1, 0))
    assert " → 255<" in page  # the 8-bit output's maximum


def test_enhance_page_of_a_3d_scan_and_a_vanished_input(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_image(sphere_case(seed=seed)[0], tmp_path / "scans" / f"case_{seed}.nii.gz")
    enhance_files([tmp_path / "scans"], tmp_path / "enhanced", "denoise:median,rescale")
    page = build_report(tmp_path / "enhanced", tmp_path / "r.html").read_text(encoding="utf-8")
    assert len(_sources(page)) == 4 and "middle slice K = 6" in page
    (tmp_path / "scans" / "case_1.nii.gz").unlink()
    page = build_report(tmp_path / "enhanced", tmp_path / "r.html").read_text(encoding="utf-8")
    assert len(_sources(page)) == 2
    assert f"input not found: {(tmp_path / 'scans' / 'case_1.nii.gz').resolve()}" in page


@pytest.mark.parametrize(("change", "words"), [
    (lambda r: r.pop("steps"), "steps"),
    (lambda r: r.update(cases="case_0"), "cases: expected a list"),
    (lambda r: r["cases"][0].update(input=3), "cases[0].input: expected text"),
    (lambda r: r["cases"][0].pop("output"), "output"),
    (lambda r: r["cases"][0].update(output="../../secret.nii.gz"), "expected a file name inside the folder"),
    (lambda r: r.update(kind="baseline"), "kind is 'baseline'"),
])  # fmt: skip
def test_a_tampered_enhance_record_is_one_error_line(enhanced_2d: Path, tmp_path: Path, change, words) -> None:
    record = json.loads((enhanced_2d / "enhance.json").read_text(encoding="utf-8"))
    change(record)
    (enhanced_2d / "enhance.json").write_text(json.dumps(record))
    with pytest.raises(SegmorphError, match="records are not laid out") as caught:
        build_report(enhanced_2d, tmp_path / "r.html")
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "r.html").exists()


# -- baseline --------------------------------------------------------------------------------------


def _baseline_folder(root: Path) -> Path:
    """Three 2D cases against a 10 x 10 reference square: a perfect mask, half the square (Dice 2/3), none."""
    square = np.zeros((20, 16), np.int64)
    square[5:15, 3:13] = 1
    half = square.copy()
    half[10:15] = 0
    out, record_cases = root / "masks", []
    for seed, (case, mask) in enumerate((("perfect", square), ("half", half), ("empty", 0 * square))):
        scan = np.random.default_rng(seed).normal(100, 5, square.shape) + 60 * square
        scan_path = write_image(Image(torch.from_numpy(scan[None].astype(np.float32)), PLANE),
                                root / "scans" / f"{case}.nii.gz")  # fmt: skip
        write_image(Image(torch.from_numpy(square[None]), PLANE, is_label=True), root / "refs" / f"{case}.nii.gz")
        write_image(Image(torch.from_numpy(mask[None]), PLANE, is_label=True), out / f"{case}.nii.gz")
        record_cases.append({"case": case, "input": str(scan_path.resolve()), "output": f"{case}.nii.gz"})
    evaluate_folders(out, root / "refs", out / "metrics.csv", labels={1: "lesion"}, console=False)
    record = {"kind": "baseline", "method": "otsu", "params": {"classes": 2, "fill_holes": True},
              "steps": ["denoise:median"], "reference": str((root / "refs").resolve()), "cases": record_cases}  # fmt: skip
    (out / "baseline.json").write_text(json.dumps(record))
    return out


def test_baseline_page_lists_metrics_and_draws_the_worst_cases(tmp_path: Path) -> None:
    folder = _baseline_folder(tmp_path)
    assert detect_kind(folder) == "baseline"
    page = build_report(folder, tmp_path / "r.html", cases=2).read_text(encoding="utf-8")
    for text in ("otsu", "denoise:median", "classes", "fill_holes", "1: lesion", "HD95 mm"):
        assert text in page, text
    assert ">0.6667<" in page  # the half mask's Dice
    assert "0.5556 ± 0.416" in page  # Dice over the three cases: (1 + 2/3 + 0) / 3, population std
    order = [page.index(f">#{rank} {case}: mean Dice") for rank, case in enumerate(("empty", "half"), start=1)]
    assert order == sorted(order) and ">#3 " not in page  # the two worst, worst first
    assert page.count('class="viewer"') == 2 and 'type="range"' not in page  # 2D: no slider
    assert page.count('alt="input + reference"') == 2 and page.count('alt="differences"') == 2


def test_baseline_page_without_reference_or_inputs(tmp_path: Path) -> None:
    folder = _baseline_folder(tmp_path)
    for name in ("refs/perfect.nii.gz", "refs/half.nii.gz", "refs/empty.nii.gz", "scans/empty.nii.gz"):
        (tmp_path / name).unlink()
    (tmp_path / "refs").rmdir()
    page = build_report(folder, tmp_path / "r.html", cases=3).read_text(encoding="utf-8")
    assert "reference folder not found" in page
    assert f"input not found: {(tmp_path / 'scans' / 'empty.nii.gz').resolve()}" in page
    assert page.count('class="viewer"') == 2 and 'alt="differences"' not in page  # input + mask only
    assert ">0.6667<" in page  # metrics.csv still read


def test_baseline_without_metrics_draws_the_first_cases_in_3d(tmp_path: Path) -> None:
    out, cases = tmp_path / "masks", []
    for seed in range(3):
        image, labels = sphere_case(seed=seed)
        scan = write_image(image, tmp_path / "scans" / f"case_{seed}.nii.gz")
        write_image(labels, out / f"case_{seed}.nii.gz")
        cases.append({"case": f"case_{seed}", "input": str(scan), "output": f"case_{seed}.nii.gz"})
    record = {"kind": "baseline", "method": "region_grow", "params": {}, "steps": [], "reference": None,
              "cases": cases}  # fmt: skip
    (out / "baseline.json").write_text(json.dumps(record))
    page = build_report(out, tmp_path / "r.html", cases=2).read_text(encoding="utf-8")
    assert "no metrics.csv" in page and "region_grow" in page
    assert "case_0" in page and "case_1" in page and "<h3>case_2" not in page
    assert page.count('type="range"') == 2 and page.count('alt="input + mask"') == 2


@pytest.mark.parametrize(("change", "words"), [
    (lambda r: r.update(params=["classes", 2]), "params: expected an object"),
    (lambda r: r.pop("method"), "method"),
    (lambda r: r.update(reference=7), "reference: expected text"),
    (lambda r: r.update(steps="clahe"), "steps: expected a list"),
])  # fmt: skip
def test_a_tampered_baseline_record_is_one_error_line(tmp_path: Path, change, words) -> None:
    folder = _baseline_folder(tmp_path)
    record = json.loads((folder / "baseline.json").read_text(encoding="utf-8"))
    change(record)
    (folder / "baseline.json").write_text(json.dumps(record))
    with pytest.raises(SegmorphError, match="records are not laid out") as caught:
        build_report(folder, tmp_path / "r.html")
    assert words in str(caught.value)


def test_a_metrics_file_without_dice_is_one_error_line(tmp_path: Path) -> None:
    folder = _baseline_folder(tmp_path)
    (folder / "metrics.csv").write_text("case,label,name,iou\nhalf,1,lesion,0.5\n")
    with pytest.raises(SegmorphError, match="records are not laid out.*metrics.csv: no column dice"):
        build_report(folder, tmp_path / "r.html")
