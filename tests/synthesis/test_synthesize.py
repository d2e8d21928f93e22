"""``segmorph synthesize train|sample`` and ``synthetic_cases`` on tiny datasets: outputs keep the label maps' grid
and geometry, the datasets written are readable, bad input is one line with nothing written."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import OBLIQUE, sphere_case, write_msd_dataset
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.segmentation.datasets import load_dataset, load_sample
from segmorph.segmentation.plan import Plan
from segmorph.segmentation.preprocess import PreprocessConfig
from segmorph.synthesis import synthetic_cases, train_gan
from segmorph.synthesis.task import GanSettings

TINY = GanSettings(generator_width_cap=8, discriminator_width=4, validation_cases=1)


@pytest.fixture(scope="module")
def gan(tmp_path_factory) -> tuple[Path, Path]:
    """A GAN trained two steps at 1.5 mm (so sampling resamples) on the oblique, anisotropic sphere dataset."""
    root = tmp_path_factory.mktemp("gan")
    dataset = write_msd_dataset(root / "dataset", num_cases=4)
    train_gan(dataset, root / "gan", max_steps=2, spacing=(1.5,), fold=0, num_folds=2, show_progress=False,
              settings=TINY)  # fmt: skip
    return dataset, root / "gan"


def test_training_writes_a_gan_run_folder(gan):
    _, run = gan
    for name in ("checkpoint_best.pt", "checkpoint_last.pt", "plan.json", "run.json", "train_log.csv", "curves.png",
                 "summary.json", "samples.png"):  # fmt: skip
        assert (run / name).is_file(), name
    assert json.loads((run / "run.json").read_text())["kind"] == "synthesis"
    assert Plan.load(run / "plan.json").preprocess.target_spacing == (1.5, 1.5, 1.5)


def test_sampled_pairs_keep_the_source_label_maps_grid_and_geometry(gan, tmp_path, capfd):
    dataset, run = gan
    out = tmp_path / "synthetic"
    assert main(["synthesize", "sample", str(run), "--labels", str(dataset / "labelsTr"), "--out", str(out),
                 "--count", "3", "--seed", "4", "--quiet"]) == 0  # fmt: skip
    assert "wrote 3 synthetic pairs" in capfd.readouterr().err
    spec = load_dataset(out)
    assert len(spec.cases) == 3 and spec.channel_names == ("MRI",) and set(spec.labels) == {0, 1, 2}
    record = json.loads((out / "dataset.json").read_text())["synthetic"]
    for case in spec.cases:
        sample = load_sample(case, spec)  # the loader's own checks: label and image on one grid
        source = read_image(record["sources"][case.case_id], is_label=True)
        assert sample.image.spatial_shape == source.spatial_shape == (24, 20, 12)
        assert sample.image.affine.allclose(OBLIQUE, atol=1e-5) and sample.label.affine.allclose(OBLIQUE, atol=1e-5)
        assert set(sample.label.data.unique().tolist()) <= {0, 1, 2}
        assert not torch.equal(sample.label.data, source.data)  # deformed
        assert torch.isfinite(sample.image.data).all() and sample.image.data.std() > 0
    assert not list(tmp_path.glob(".synthetic.partial-*"))


def test_synthetic_cases_live_in_the_plans_space(gan):
    dataset, run = gan
    plan = Plan.load(run / "plan.json")
    labels = [torch.zeros(1, 16, 15, 20, dtype=torch.long) for _ in range(2)]
    labels[0][0, 4:10, 4:10, 5:12] = 1
    labels[1][0, 6:12, 3:9, 8:15] = 2
    pairs = synthetic_cases(run, labels, plan, count=3, seed=7)
    again = synthetic_cases(run, labels, plan, count=3, seed=7)
    assert len(pairs) == 3
    for (image, label), (image_again, label_again) in zip(pairs, again):
        assert image.shape == (1, 16, 15, 20) and image.dtype == torch.float32
        assert label.shape == (1, 16, 15, 20) and label.dtype == torch.int64
        assert set(label.unique().tolist()) <= {0, 1, 2}
        assert torch.equal(image, image_again) and torch.equal(label, label_again)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda p: replace(p, preprocess=replace(p.preprocess, target_spacing=(1.0, 1.0, 1.0))), "target spacing"),
        (lambda p: replace(p, preprocess=replace(p.preprocess, normalization=("none",))), "normalisation"),
        (
            lambda p: replace(
                p,
                channel_names=("T1", "T2"),
                modalities=("MRI", "MRI"),
                preprocess=replace(p.preprocess, normalization=("zscore", "zscore")),
                network={**p.network, "in_channels": 2},
            ),
            "channel",
        ),  # fmt: skip
    ],
)
def test_synthetic_cases_refuse_a_gan_that_does_not_fit_the_plan(gan, change, problem):
    _, run = gan
    plan = change(Plan.load(run / "plan.json"))
    with pytest.raises(SegmorphError, match=problem) as caught:
        synthetic_cases(run, [torch.zeros(1, 8, 8, 8, dtype=torch.long)], plan, count=1, seed=0)
    assert caught.value.path == str(run) and len(str(caught.value).splitlines()) == 1


def test_synthetic_cases_refuse_unknown_label_values(gan):
    _, run = gan
    plan = Plan.load(run / "plan.json")
    with pytest.raises(SegmorphError, match=r"label values \[5\] are unknown"):
        synthetic_cases(run, [torch.full((1, 8, 8, 8), 5, dtype=torch.long)], plan, count=1, seed=0)


def _one_error_line(capfd, path: Path) -> str:
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    return lines[0]


def test_sample_refuses_a_label_map_with_values_the_gan_does_not_know(gan, tmp_path, capfd):
    _, run = gan
    _, label = sphere_case()
    label.data[label.data == 2] = 7
    write_image(label, tmp_path / "labels" / "odd.nii.gz")
    out = tmp_path / "out"
    assert main(["synthesize", "sample", str(run), "--labels", str(tmp_path / "labels"), "--out", str(out)]) == 1
    assert "label values [7] are unknown" in _one_error_line(capfd, tmp_path / "labels" / "odd.nii.gz")
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_sample_refuses_a_label_map_of_another_dimensionality(gan, tmp_path, capfd):
    _, run = gan
    flat = tmp_path / "flat.nii.gz"
    write_image(Image(torch.zeros(1, 8, 8, dtype=torch.long), Affine.identity(2), is_label=True), flat)
    out = tmp_path / "out"
    assert main(["synthesize", "sample", str(run), "--labels", str(flat), "--out", str(out)]) == 1
    assert "a 2D label map; the GAN" in _one_error_line(capfd, flat)
    assert not out.exists()


def test_sample_refuses_a_run_of_another_kind_and_a_missing_gan(gan, tmp_path, capfd):
    dataset, _ = gan
    other = tmp_path / "pretrained"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"kind": "pretraining"}))
    out = tmp_path / "out"
    assert main(["synthesize", "sample", str(other), "--labels", str(dataset), "--out", str(out)]) == 1
    assert "not a GAN run" in _one_error_line(capfd, other / "run.json")
    assert main(["synthesize", "sample", str(tmp_path / "nowhere"), "--labels", str(dataset), "--out", str(out)]) == 1
    assert "no such GAN run folder" in _one_error_line(capfd, tmp_path / "nowhere")
    assert not out.exists()


def test_sample_refuses_a_count_out_of_range_or_beyond_the_free_disk(gan, tmp_path, capfd, monkeypatch):
    from segmorph.synthesis import sampling

    dataset, run = gan
    out = tmp_path / "synthetic"
    command = ["synthesize", "sample", str(run), "--labels", str(dataset / "labelsTr"), "--out", str(out), "--quiet"]
    assert main([*command, "--count", "100001"]) == 1
    assert "count: expected 1 to 100,000 pairs, got 100001" in capfd.readouterr().err
    real = sampling.shutil.disk_usage
    monkeypatch.setattr(sampling.shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    assert main([*command, "--count", "5"]) == 1  # 5 x 5,760 voxels x 0.5 bytes > 1,000 bytes
    line = _one_error_line(capfd, out)
    assert "need at least 14.1 KiB and the disk has 1000 bytes free; ask for fewer pairs (--count)" in line
    assert not out.exists() and not list(tmp_path.glob(".synthetic*"))


def test_sample_refuses_a_folder_that_is_not_empty(gan, tmp_path, capfd):
    dataset, run = gan
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["synthesize", "sample", str(run), "--labels", str(dataset), "--out", str(out)]) == 1
    assert "not empty" in _one_error_line(capfd, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_train_refuses_a_missing_folder_and_a_folder_without_images(tmp_path, capfd):
    out = tmp_path / "gan"
    assert main(["synthesize", "train", str(tmp_path / "nowhere"), "--out", str(out), "--max-steps", "1"]) == 1
    assert "no such dataset folder" in _one_error_line(capfd, tmp_path / "nowhere")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    assert main(["synthesize", "train", str(tmp_path / "empty"), "--out", str(out), "--max-steps", "1"]) == 1
    assert "holds no image files" in _one_error_line(capfd, tmp_path / "empty" / "images")
    assert not out.exists()


def test_train_under_torchrun_is_refused_before_anything_is_written(tmp_path, capfd, monkeypatch):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "gan"
    assert main(["synthesize", "train", str(dataset), "--out", str(out), "--max-steps", "1", "--quiet"]) == 1
    lines = capfd.readouterr().err.splitlines()
    assert lines == ["error: synthesize train runs in one process: start it without torchrun"]
    assert not out.exists()


def test_train_refuses_a_label_map_on_another_grid_than_its_image(tmp_path, capfd):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=3)
    bad = dataset / "labelsTr" / "case_001.nii.gz"
    label = read_image(bad, is_label=True)
    write_image(Image(label.data, Affine.from_geometry((0.9, 1.1, 2.5), OBLIQUE.origin, OBLIQUE.direction), True), bad)
    out = tmp_path / "gan"
    assert main(["synthesize", "train", str(dataset), "--out", str(out), "--max-steps", "1", "--quiet"]) == 1
    assert "label differs from image" in _one_error_line(capfd, bad)
    assert not out.exists()


def test_train_refuses_unlabelled_images(tmp_path, capfd):
    image, _ = sphere_case()
    write_image(image, tmp_path / "data" / "scans" / "a.nii.gz")
    out = tmp_path / "gan"
    assert main(["synthesize", "train", str(tmp_path / "data"), "--images", "scans", "--out", str(out)]) == 1
    assert "no label map" in _one_error_line(capfd, tmp_path / "data" / "scans" / "a.nii.gz")
    assert not out.exists()


def _pictures(root: Path, count: int = 3) -> Path:
    """Paired folders of RGB PNG pictures (uint8) and 0/1 vessel-like label pictures."""
    rng = np.random.default_rng(0)
    for index in range(count):
        label = np.zeros((40, 36), dtype=np.int64)
        label[5 + index : 9 + index, :] = 1
        label[:, 20:23] = 1
        colour = np.stack([150 - 80 * label, 60 - 30 * label, 20 + 0 * label]) + rng.integers(0, 10, (3, 40, 36))
        write_image(
            Image(torch.from_numpy(colour.astype(np.uint8)), Affine.identity(2)), root / "images" / f"{index}.png"
        )
        write_image(Image(torch.from_numpy(label[None]), Affine.identity(2), True), root / "labels" / f"{index}.png")
    return root


def test_pictures_in_pictures_out(tmp_path, capfd):
    """A 2D RGB dataset: the synthetic pairs are PNG pictures (one file per channel) on the label maps' pixel grid."""
    data = _pictures(tmp_path / "pictures")
    run = tmp_path / "gan"
    train_gan(data, run, max_steps=2, fold=-1, images_dir="images", labels_dir="labels", show_progress=False,
              settings=TINY)  # fmt: skip
    assert main(["synthesize", "sample", str(run), "--labels", str(data / "labels"), "--out", str(tmp_path / "syn"),
                 "--count", "2", "--quiet"]) == 0  # fmt: skip
    spec = load_dataset(tmp_path / "syn")
    assert spec.channel_names == ("red", "green", "blue") and spec.modalities == ("rgb",) * 3
    sample = load_sample(spec.cases[0], spec)
    assert sample.image.spatial_shape == sample.label.spatial_shape == (40, 36)
    assert sorted(p.suffix for p in (tmp_path / "syn" / "imagesTr").iterdir()) == [".png"] * 6
    red, green, blue = sample.image.data.mean(dim=(1, 2)).tolist()  # the training pictures' raw colour scale
    assert red > green > blue


def test_the_report_shows_the_gan_run(gan, tmp_path):
    from segmorph.report import build_report, detect_kind

    _, run = gan
    assert detect_kind(run) == "synthesis"
    page = build_report(run, tmp_path / "report.html").read_text()
    assert "Real vs synthetic" in page and "samples.png" in page and "GAN settings" in page


def test_preprocess_config_of_the_gan_is_the_plans(gan):
    from segmorph.synthesis import SynthesisModel

    _, run = gan
    model = SynthesisModel(run)
    assert model.preprocess == PreprocessConfig.from_dict(Plan.load(run / "plan.json").preprocess.to_dict())
    assert model.ndim == 3 and model.labels == {0: "background", 1: "outer", 2: "core"}


def test_resume_keeps_the_runs_split_and_refuses_a_folder_of_another_kind(tmp_path, capfd):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=4)
    run = tmp_path / "gan"
    train_gan(dataset, run, max_steps=2, fold=0, num_folds=2, show_progress=False, settings=TINY)
    first = json.loads((run / "run.json").read_text())
    resumed = train_gan(dataset, run, max_steps=2, fold=1, num_folds=2, resume=True, show_progress=False)
    record = json.loads((run / "run.json").read_text())
    assert record["train_cases"] == first["train_cases"] and len(record["resumes"]) == 1
    assert resumed.steps == 2  # the run had finished: nothing more to train
    other = tmp_path / "segmentation"
    other.mkdir()
    (other / "run.json").write_text("{}")
    assert main(["synthesize", "train", str(dataset), "--out", str(other), "--resume"]) == 1
    assert "not a GAN run folder" in _one_error_line(capfd, other)


def test_labelled_cases_trains_on_the_cases_segmorph_train_keeps_labelled(tmp_path):
    from segmorph.segmentation.datasets import split_cases
    from segmorph.segmentation.few_labels import choose_labelled

    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=6)
    run = tmp_path / "gan"
    train_gan(dataset, run, max_steps=1, fold=0, num_folds=3, labelled_cases=2, seed=3, show_progress=False,
              settings=TINY)  # fmt: skip
    train_ids, _ = split_cases([f"case_{i:03d}" for i in range(6)], 0, 3, 3)
    record = json.loads((run / "run.json").read_text())
    assert record["train_cases"] == choose_labelled(train_ids, 2, 3) and len(record["train_cases"]) == 2
