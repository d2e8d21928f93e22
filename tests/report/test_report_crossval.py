"""``segmorph report`` of a cross-validation run and of a find-best ensemble folder: the tables read back."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from chromium import check_report_in_chromium
from helpers import write_msd_dataset
from segmorph.cli.main import main
from segmorph.report import build_report, detect_kind
from segmorph.segmentation.api import cross_validate
from segmorph.segmentation.find_best import find_best

TINY = {"train.steps_per_epoch": 3, "network.features": [4, 8], "train.batch_size": 2}


class Tables(HTMLParser):
    """The text of every table cell, per ``<section id=...>``: ``{section: [table: [row: [cell]]]}``."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[list[list[str]]]] = {}
        self.section = ""
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.section = dict(attrs).get("id", "")
        elif tag == "table":
            self.sections.setdefault(self.section, []).append([])
        elif tag == "tr":
            self.sections[self.section][-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.sections[self.section][-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def tables(page: Path) -> dict[str, list[list[list[str]]]]:
    parser = Tables()
    parser.feed(page.read_text())
    return parser.sections


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_cv")
    dataset = write_msd_dataset(root / "data", num_cases=5, shape=(16, 16, 8))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cross_validate(dataset, root / "cv", num_folds=5, max_steps=2, overrides=TINY, show_progress=False,
                              check=False).out  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def test_the_report_of_a_cross_validation_run_shows_out_of_fold_figures_and_the_postprocessing_decision(
    cv_run, tmp_path
):  # fmt: skip
    assert detect_kind(cv_run) == "segmentation cross-validation"
    out = build_report(cv_run, tmp_path / "cv.html", cases=2)
    found = tables(out)
    summary = json.loads((cv_run / "cross_validation.json").read_text())
    header, *rows = found["out-of-fold"][0]
    assert header[:3] == ["class", "cases", "out of fold"] and header[3:8] == [f"fold {k}" for k in range(5)]
    for row, (value, stats) in zip(rows, summary["classes"].items()):
        assert row[0] == f"{value}: {stats['name']}" and row[1] == "5"
        assert row[2] == f"{stats['dice_out_of_fold']:.4f} ± {stats['dice_std']:.4f}"
        per_fold = [stats["dice_per_fold"][str(k)] for k in range(5)]
        assert [float(v) for v in row[3:8]] == pytest.approx(per_fold, abs=1e-4)
    assert rows[-1][0] == "mean over classes" and float(rows[-1][2]) == pytest.approx(summary["mean_dice"], abs=1e-4)
    decision = json.loads((cv_run / "postprocessing.json").read_text())
    header, *rows = found["postprocessing"][0]
    chosen = {row[0]: row[1] for row in rows if row[-1] == "chosen"}
    names = {"none": "none (as predicted)", "largest_component": "keep the largest component"}
    assert chosen == {f"{k}: {c['name']}": names.get(c["method"], f"remove components under {c['min_voxels']} voxels")
                      for k, c in decision["classes"].items()}  # fmt: skip
    assert len(rows) == sum(len(c["candidates"]) for c in decision["classes"].values())
    fold_rows = found["folds"][0][1:]
    assert [r[0] for r in fold_rows] == [f"fold {k}" for k in range(5)] and {r[1] for r in fold_rows} == {"done"}
    case_rows = found["cases"][0][1:]
    assert sorted(r[1] for r in case_rows) == [f"case_{i:03d}" for i in range(5)]
    dice = [float(r[3]) for r in case_rows]
    assert dice == sorted(dice)  # worst first
    page = out.read_text()
    assert page.count('class="case"') == 2 and page.count("fold 0: loss, validation Dice") == 1


def test_the_cross_validation_report_in_chromium(cv_run, tmp_path):
    out = build_report(cv_run, tmp_path / "cv.html", cases=2)
    assert check_report_in_chromium(out, tmp_path / "cv.png")["sliders"] == 2  # the two worst cases drawn


def test_the_report_of_an_ensemble_folder_shows_the_comparison(cv_run, tmp_path):
    twin = shutil.copytree(cv_run, tmp_path / "twin")
    record = find_best([cv_run, twin], tmp_path / "best", show=False)
    assert detect_kind(tmp_path / "best") == "segmentation ensemble"
    assert main(["report", str(tmp_path / "best"), "--out", str(tmp_path / "best.html")]) == 0
    found = tables(tmp_path / "best.html")
    header, *rows = found["comparison"][0]
    assert header[:3] == ["rank", "candidate", "kind"] and header[-2] == "mean Dice"
    assert [r[1] for r in rows] == [c["name"] for c in record["candidates"]]
    assert [r[-1] for r in rows] == ["chosen", "", ""]  # identical runs: the first single run, never the pair
    assert rows[0][2] == "single run" and rows[0][1] == record["choice"]["name"]
    facts = dict(row for row in found["overview"][0][1:])
    assert facts["chosen"] == record["choice"]["name"] and facts["why"] == record["choice"]["reason"]
    assert any(row[-1] == "chosen" for row in found["postprocessing"][0][1:])
