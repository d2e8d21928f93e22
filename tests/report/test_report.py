"""``segmorph report``: page content per kind of run folder, and the page in a real browser (Chromium, CDP)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from chromium import check_report_in_chromium
from helpers import sphere_case, write_msd_dataset
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.report import build_report, detect_kind

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    """A segmentation run trained for a handful of steps on four tiny sphere cases (about 3 s)."""
    from segmorph.segmentation.pipeline import TrainRequest, train_segmentation

    root = tmp_path_factory.mktemp("report_seg")
    dataset = write_msd_dataset(root / "dataset", num_cases=4)
    request = TrainRequest(
        dataset=dataset, out=root / "run", time_budget_s=0, max_steps=6, val_cases=("case_000", "case_001"),
        overrides=(("train.steps_per_epoch", 3), ("network.features", [4, 8]), ("train.batch_size", 1)),
        show_progress=False,
    )  # fmt: skip
    train_segmentation(request)
    return root / "run"


def _image_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


# -- folder kinds and errors -----------------------------------------------------------------------


def test_unknown_or_missing_folder_is_one_error_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(SegmorphError, match="not a segmorph run folder"):
        build_report(tmp_path, tmp_path / "r.html")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {tmp_path}: not a segmorph run folder")
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")]) == 1
    assert "no such run folder" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_cases_must_be_positive(seg_run: Path, tmp_path: Path) -> None:
    with pytest.raises(SegmorphError, match="cases"):
        build_report(seg_run, tmp_path / "r.html", cases=0)


def test_segmentation_page_is_self_contained(seg_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.html"
    assert main(["report", str(seg_run), "--out", str(out), "--cases", "1"]) == 0
    page = out.read_text(encoding="utf-8")
    assert detect_kind(seg_run) == "segmentation"
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    assert "http://" not in page and "https://" not in page
    sources = _image_sources(page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert page.count('type="range"') == 1  # --cases 1: one viewer, one slider
    for section in ("Plan", "Training curves", "Validation metrics", "outer", "core", "case_000", "case_001"):
        assert section in page
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary file left behind


def _synthetic_seg_run(root: Path, ndim: int = 3) -> Path:
    """A run folder written by hand: plan, run record, and validation masks of known quality (no metrics file)."""
    if ndim == 3:
        image, reference = sphere_case()
    else:
        affine = Affine.from_geometry((0.7, 1.3), (4.0, -2.0))
        labels = np.zeros((20, 16), np.int64)
        labels[5:15, 4:12] = 1
        labels[8:12, 6:10] = 2
        image = Image(torch.from_numpy(labels[None].astype(np.float32) * 50 + 10), affine)
        reference = Image(torch.from_numpy(labels[None]), affine, is_label=True)
    ref = reference.numpy()
    (root / "validation" / "reference").mkdir(parents=True)
    damaged = ref.copy()
    damaged[damaged == 2] = 0  # the core missed
    shifted = np.roll(ref, 1, axis=1)
    for case, mask in (("good", ref), ("awful", damaged * 0), ("middling", shifted), ("bad", damaged)):
        write_image(reference.with_data(torch.from_numpy(mask)), root / "validation" / f"{case}.nii.gz")
        write_image(reference, root / "validation" / "reference" / f"{case}.nii.gz")
    dataset = root / "dataset"
    write_image(image, dataset / "imagesTr" / "good.nii.gz")
    write_image(reference, dataset / "labelsTr" / "good.nii.gz")
    labels = {"0": "background", "1": "outer", "2": "core"}
    (root / "plan.json").write_text(json.dumps({"ndim": ndim, "labels": labels}))
    (root / "run.json").write_text(json.dumps({"dataset": str(dataset), "val_cases": ["good"]}))
    return root


def test_worst_case_listed_first_with_computed_metrics(tmp_path: Path) -> None:
    run = _synthetic_seg_run(tmp_path / "run")
    page = build_report(run, tmp_path / "r.html", cases=3).read_text(encoding="utf-8")
    order = [page.index(f">#{rank} {case}:") for rank, case in enumerate(("awful", "bad", "middling"), start=1)]
    assert order == sorted(order)
    assert ">#4 " not in page  # only the three worst are drawn
    assert "good" in page  # ... but every case is listed
    assert page.count('type="range"') == 3
    assert "labels drawn without the scan" in page  # the damaged cases have no scan in the dataset


def test_two_dimensional_cases_have_no_slider(tmp_path: Path) -> None:
    run = _synthetic_seg_run(tmp_path / "run", ndim=2)
    page = build_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'type="range"' not in page
    assert page.count('class="viewer"') == 4


# -- registration ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reg_pair(tmp_path_factory) -> Path:
    """One deformable registration of two sphere phantoms, with labels, without pictures."""
    from segmorph.registration.run import PairRequest, register_pair

    root = tmp_path_factory.mktemp("report_reg")
    fixed, fixed_labels = sphere_case(seed=0)
    moving, moving_labels = sphere_case(seed=3)
    for name, image in (("fixed", fixed), ("fixed_labels", fixed_labels), ("moving", moving),
                        ("moving_labels", moving_labels)):  # fmt: skip
        write_image(image, root / f"{name}.nii.gz")
    request = PairRequest(root / "fixed.nii.gz", root / "moving.nii.gz", root / "pair", root / "moving_labels.nii.gz",
                          root / "fixed_labels.nii.gz", method="deformable")  # fmt: skip
    register_pair(request)
    return root / "pair"


def test_registration_pair_page_draws_missing_pictures(reg_pair: Path, tmp_path: Path) -> None:
    assert detect_kind(reg_pair) == "registration"
    page = build_report(reg_pair, tmp_path / "r.html").read_text(encoding="utf-8")
    assert not EXTERNAL.search(page)
    assert "drawn by the report" in page  # views, grid and Jacobian pictures made from the images
    for text in ("Dice", "HD95", "folding %", "SD of log det J", "checkerboard", 'type="range"'):
        assert text in page
    assert all(s.startswith("data:image/") for s in _image_sources(page))


def test_registration_pairs_page_lists_worst_pair_first(reg_pair: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pairs"
    for name, dice in (("pair_000_a_b", 0.9), ("pair_001_c_d", 0.4), ("pair_002_e_f", 0.7)):
        shutil.copytree(reg_pair, folder / name)
        metrics = json.loads((folder / name / "metrics.json").read_text(encoding="utf-8"))
        (folder / name / "metrics.json").write_text(json.dumps({**metrics, "mean_dice": dice}))
    (folder / "summary.csv").write_text("pair,fixed,moving,method,seconds,mean_dice,folding_percent\n")
    assert detect_kind(folder) == "registration pairs"
    page = build_report(folder, tmp_path / "r.html", cases=2).read_text(encoding="utf-8")
    assert page.index(">#1 pair_001_c_d<") < page.index(">#2 pair_002_e_f<")
    assert ">#3 " not in page and "pair_000_a_b" in page


def test_registration_training_page(tmp_path: Path) -> None:
    run = tmp_path / "regrun"
    run.mkdir()
    split = {"train": ["a", "b", "c"], "monitor": ["d", "e"], "held_out": ["f"]}
    (run / "run.json").write_text(json.dumps({"kind": "registration", "dataset": "/data", "split": split}))
    (run / "summary.json").write_text(
        json.dumps({"monitor_score": "Dice", "best_monitor_score": 0.81, "best_epoch": 2, "steps": 200})
    )
    (run / "train_log.csv").write_text("epoch,step,elapsed_s,lr,train_loss,val_dice\n1,100,1,0.001,0.5,0.7\n"
                                       "2,200,2,0.0005,0.4,0.81\n")  # fmt: skip
    assert detect_kind(run) == "registration training"
    page = build_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "0.81" in page and "best monitor Dice" in page and "3 / 2 / 1" in page
    assert len(_image_sources(page)) == 1  # the curves


# -- classification --------------------------------------------------------------------------------


def test_classification_page_shows_the_most_confidently_wrong_first(tmp_path: Path) -> None:
    dataset, run = tmp_path / "data", tmp_path / "cls"
    rows = [("a.png", "0", "0", 0.9, 0.1), ("b.png", "0", "1", 0.3, 0.7), ("c.png", "1", "0", 0.95, 0.05),
            ("d.png", "1", "1", 0.2, 0.8)]  # fmt: skip
    for name, *_ in rows:
        picture = np.random.default_rng(0).uniform(0, 255, (1, 40, 30)).astype(np.float32)
        write_image(Image(torch.from_numpy(picture), Affine.identity(2)), dataset / name)
    run.mkdir()
    with open(run / "val_predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "group", "true", "predicted", "p_0", "p_1"])
        writer.writerows([name, i, *rest] for i, (name, *rest) in enumerate(rows))
    summary = {"validation": {"n": 4, "auc": 0.5, "accuracy": 0.5, "threshold": 0.5,
                              "confusion_matrix": [[1, 1], [1, 1]]}, "class_names": ["0", "1"]}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "run.json").write_text(json.dumps({"dataset": str(dataset), "class_names": ["0", "1"]}))
    assert detect_kind(run) == "classification"
    page = build_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.index("#1 </b>c.png") < page.index("#2 </b>b.png")
    assert "a.png" not in page and "d.png" not in page
    assert len(_image_sources(page)) == 2 and not EXTERNAL.search(page)
    for k, epochs in ((0, 2), (1, 3)):  # an ensemble run: one training log per member
        (run / f"member_{k}").mkdir()
        log = "epoch,step,elapsed_s,lr,train_loss,val_auc\n" + "".join(
            f"{e},{10 * e},{e},0.001,0.5,0.{6 + e}\n" for e in range(1, epochs + 1)
        )
        (run / f"member_{k}" / "train_log.csv").write_text(log)
    page = build_report(run, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "train_log.csv: 2 epochs" in page and "train_log.csv: 3 epochs" in page
    assert len(_image_sources(page)) == 4


def test_report_in_chromium(seg_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(seg_run), "--out", str(out)]) == 0
    seen = check_report_in_chromium(out, tmp_path / "report.png")
    assert seen["sliders"] == 2  # both validation cases drawn
