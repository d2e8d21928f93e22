"""``segmorph train`` runs the dataset check first: one warning line naming flagged cases, data and split untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import sphere_case, write_msd_dataset
from segmorph.classification.pipeline import train_classifier
from segmorph.classification.request import ClassifyRequest
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.qc import quality
from segmorph.qc.quality import CaseGroup, CaseQuality, QualityReport, summary_line

TRAIN = ["--max-steps", "2", "--quiet", "--no-validate", "--set", "network.features=[4,8]",
         "--set", "train.batch_size=1"]  # fmt: skip


def _scaled_dataset(root: Path, case: int = 2, factor: float = 1000.0) -> Path:
    """The tiny sphere dataset (5 cases) with one case's intensities multiplied by ``factor``."""
    write_msd_dataset(root, num_cases=5)
    image, _ = sphere_case(seed=case)
    write_image(image.with_data(image.data * factor), root / "imagesTr" / f"case_{case:03d}.nii.gz")
    return root


def _files_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def _train(dataset: Path, out: Path, capsys, *extra: str) -> tuple[list[str], dict]:
    assert main(["train", str(dataset), "--out", str(out), *TRAIN, *extra]) == 0
    return _warnings(capsys.readouterr().err), json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def scaled_dataset(tmp_path_factory) -> Path:
    return _scaled_dataset(tmp_path_factory.mktemp("check") / "spheres")


def test_train_warns_in_one_line_naming_the_scaled_case(scaled_dataset, tmp_path, capsys, one_thread):
    before = _files_digest(scaled_dataset)
    warnings, record = _train(scaled_dataset, tmp_path / "run", capsys)
    assert len(warnings) == 1, warnings
    line = warnings[0]
    assert line.startswith("warning: segmorph check flags 1 of 5 cases (case_002: outlier: intensity range")
    assert "far above the median" in line
    assert line.endswith(f"run segmorph check {scaled_dataset} for the table")
    assert record["quality_check"] == {"ran": True, "flagged_cases": ["case_002"]}
    assert _files_digest(scaled_dataset) == before  # the check reads, never writes


def test_no_check_trains_the_same_data_plan_and_split(scaled_dataset, tmp_path, capsys, one_thread):
    checked_warnings, checked = _train(scaled_dataset, tmp_path / "checked", capsys)
    skipped_warnings, skipped = _train(scaled_dataset, tmp_path / "skipped", capsys, "--no-check")
    assert len(checked_warnings) == 1 and skipped_warnings == []
    assert skipped["quality_check"] == {"ran": False, "flagged_cases": []}
    for key in ("train_cases", "val_cases", "preprocess_steps", "data_fingerprint"):
        assert checked[key] == skipped[key], key
    assert "case_002" in checked["train_cases"] + checked["val_cases"]  # a flagged case is never dropped
    plans = [json.loads((tmp_path / run / "plan.json").read_text()) for run in ("checked", "skipped")]
    assert plans[0] == plans[1]
    cached = [sorted(p.name for p in (tmp_path / run / "preprocessed").rglob("*") if p.is_file())
              for run in ("checked", "skipped")]  # fmt: skip
    assert cached[0] == cached[1] != []


def test_a_clean_dataset_trains_without_a_warning(tmp_path, capsys, one_thread):
    dataset = write_msd_dataset(tmp_path / "clean", num_cases=5)
    warnings, record = _train(dataset, tmp_path / "run", capsys)
    assert warnings == []
    assert record["quality_check"] == {"ran": True, "flagged_cases": []}


def test_resume_does_not_check_again(scaled_dataset, tmp_path, capsys, one_thread):
    _train(scaled_dataset, tmp_path / "run", capsys)
    args = ["train", str(scaled_dataset), "--out", str(tmp_path / "run"), "--resume", "--max-steps", "3", "--quiet",
            "--no-validate"]  # fmt: skip
    assert main(args) == 0
    assert _warnings(capsys.readouterr().err) == []
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["quality_check"] == {"ran": True, "flagged_cases": ["case_002"]} and len(record["resumes"]) == 1


def test_a_failing_check_warns_in_one_line_and_training_goes_on(scaled_dataset, tmp_path, capsys, monkeypatch,
                                                                one_thread):  # fmt: skip
    def refuse(path, *args, **kwargs):
        raise SegmorphError("cannot read something the check needs", Path(path) / "odd.file")

    monkeypatch.setattr(quality, "check_dataset", refuse)
    warnings, record = _train(scaled_dataset, tmp_path / "run", capsys)
    assert warnings == [f"warning: segmorph check could not check the dataset: {scaled_dataset}/odd.file: "
                        "cannot read something the check needs"]  # fmt: skip
    assert record["quality_check"]["ran"] is False and "odd.file" in record["quality_check"]["problem"]
    assert (tmp_path / "run" / "checkpoint_last.pt").is_file()


def test_a_failing_check_does_not_hide_other_errors(scaled_dataset, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the check")

    monkeypatch.setattr(quality, "check_dataset", broken)
    with pytest.raises(RuntimeError, match="a bug in the check"):
        quality.check_before_training(scaled_dataset)


def test_check_before_training_names_the_folders_in_its_command(tmp_path, capsys):
    root = tmp_path / "paired"
    for index in range(4):
        image, label = sphere_case(seed=index)
        if index == 1:
            image = image.with_data(image.data * 1000)
        write_image(image, root / "scans" / f"c{index}.nii.gz")
        write_image(label, root / "masks" / f"c{index}.nii.gz")
    facts = quality.check_before_training(root, images_dir="scans", labels_dir="masks")
    assert facts == {"ran": True, "flagged_cases": ["c1"]}
    (line,) = _warnings(capsys.readouterr().err)
    assert line.endswith(f"run segmorph check {root} --images scans --labels masks for the table")


def _picture(value: float, seed: int) -> Image:
    """A 2D float picture: noise with a bright disc, scaled by ``value``."""
    rng = np.random.default_rng(seed)
    ii, jj = np.meshgrid(np.arange(24), np.arange(24), indexing="ij")
    picture = rng.normal(60, 15, (24, 24)) + 100.0 * ((ii - 12) ** 2 + (jj - 12) ** 2 <= 16 + seed % 5)
    return Image(torch.from_numpy((value * picture)[None].astype(np.float32)), Affine.identity(2))


def test_classify_train_warns_in_one_line_and_records_the_flagged_image(tmp_path, capsys, one_thread):
    data = tmp_path / "classes"
    for index in range(12):
        name = f"{'lesion' if index % 2 else 'normal'}/img_{index:02d}.mha"
        write_image(_picture(1000.0 if index == 5 else 1.0, index), data / name)
    request = ClassifyRequest(
        dataset=data, out=tmp_path / "run", model="simplecnn", width=4, batch_size=4, max_steps=2, time_budget_s=0,
        steps_per_epoch=2, val_fraction=0.34, amp=False, show_progress=False,
    )  # fmt: skip
    train_classifier(request)
    (line,) = _warnings(capsys.readouterr().err)
    assert line.startswith("warning: segmorph check flags 1 of 12 cases (lesion/img_05: outlier: intensity range")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["quality_check"] == {"ran": True, "flagged_cases": ["lesion/img_05"]}


# -- summary_line ----------------------------------------------------------------------------------------------
def _case(case_id: str, *flags: str) -> CaseQuality:
    return CaseQuality(
        case_id=case_id, image=Path(f"{case_id}.nii.gz"), label=None, class_name="", shape=(4, 4, 4), channels=1,
        spacing=(1.0, 1.0, 1.0), orientation="LPS", intensity={"p1": 0.0, "p99": 1.0}, label_values=(),
        label_voxels={}, label_volumes={}, sha256="", dhash=np.zeros(4, dtype=bool), flags=list(flags),
    )  # fmt: skip


def _report(*cases: CaseQuality) -> QualityReport:
    return QualityReport(Path("data/set"), "msd", list(cases), [], [])


def test_summary_line_is_none_when_nothing_is_flagged():
    assert summary_line(_report(_case("a"), _case("b"))) is None
    assert summary_line(_report()) is None


def test_summary_line_names_each_case_with_its_first_reason():
    report = _report(_case("a"), _case("b", "first of b", "second of b"), _case("c", "only c"))
    assert summary_line(report) == ("segmorph check flags 2 of 3 cases (b: first of b; c: only c); "
                                    "run segmorph check data/set for the table")  # fmt: skip


def test_summary_line_names_at_most_max_cases_and_counts_the_rest():
    report = _report(*[_case(f"c{i}", f"reason {i}") for i in range(7)], _case("clean"))
    line = summary_line(report)
    assert line.startswith("segmorph check flags 7 of 8 cases (c0: reason 0; c1: reason 1; c2: reason 2; and 4 more)")
    assert "c3" not in line
    assert summary_line(report, max_cases=1).startswith("segmorph check flags 7 of 8 cases (c0: reason 0; and 6 more)")
    assert "(c0: reason 0; c1: reason 1; c2: reason 2; c3: reason 3; c4: reason 4; c5: reason 5; c6: reason 6)" in (
        summary_line(report, max_cases=10)
    )


def test_summary_line_names_the_groups_of_cases():
    group = CaseGroup("spacing K", "above", ("b", "c", "d"), "3 mm", "1 mm")
    report = _report(_case("a", "odd"), _case("b"), _case("c"), _case("d"))
    report.groups = [group]
    assert summary_line(report) == ("segmorph check flags 1 of 4 cases (a: odd) and finds 1 group of cases "
                                    "(spacing K: 3 cases far above the median 1 mm (theirs 3 mm)); "
                                    "run segmorph check data/set for the table")  # fmt: skip
    report.cases[0].flags.clear()
    assert summary_line(report).startswith("segmorph check finds 1 group of cases among 4 (spacing K: 3 cases")


def test_summary_line_takes_the_command_that_prints_the_table():
    command = "segmorph check x --images i --labels l"
    line = summary_line(_report(_case("a", "odd")), command=command)
    assert line == f"segmorph check flags 1 of 1 cases (a: odd); run {command} for the table"
