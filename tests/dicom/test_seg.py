"""DICOM-SEG: write from a label map on a DICOM series, read back on its grid, predict --format dicom-seg."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid
from series_helpers import write_series

from helpers import OBLIQUE, require_dataset, sphere_case
from segmorph.cli.main import main
from segmorph.dicom.seg import (
    SEGMENTATION_STORAGE,
    SegmentCodes,
    is_segmentation,
    parse_segment_codes,
    read_segmentation,
    run_segment_codes,
    write_segmentation,
)
from segmorph.dicom.series import read_series_headers
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.registration.run import read_labels_like
from segmorph.segmentation.datasets import load_dataset, load_sample
from segmorph.segmentation.evaluate import evaluate_folders

NAMES = {0: "background", 1: "outer", 2: "core"}


@pytest.fixture
def series(tmp_path: Path) -> tuple[Path, Image]:
    """A sphere phantom written as an oblique, anisotropic DICOM series, and its label map."""
    image, labels = sphere_case(seed=3)
    write_series(image, tmp_path / "series")
    return tmp_path / "series", labels


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of dicom3tools' ``dciodvfy`` report on ``path`` that flag an error (warnings are allowed).

    Without dciodvfy: a failure where ``SEGMORPH_REQUIRE_DCIODVFY=1`` (CI), else a warning and no lines (the
    test's other checks still run).
    """
    if shutil.which("dciodvfy") is None:
        if os.environ.get("SEGMORPH_REQUIRE_DCIODVFY") == "1":
            pytest.fail("dciodvfy is not installed (Debian package dicom3tools)")
        warnings.warn("dciodvfy (Debian dicom3tools) is not installed: the SEG was not validated", stacklevel=2)
        return []
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]


def test_binary_seg_refers_to_its_series_and_reads_back_voxel_for_voxel(series, tmp_path):
    folder, labels = series
    out = write_segmentation(labels, folder, tmp_path / "out" / "case.dcm", NAMES, run_id="hippo-run")
    headers = read_series_headers(folder)
    seg = hd.seg.segread(out)
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.segmentation_type.value == "BINARY"
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert seg.PatientID == headers[0].PatientID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        h.SOPInstanceUID for h in headers
    }
    assert seg.SeriesInstanceUID != headers[0].SeriesInstanceUID
    assert seg.NumberOfFrames == 2 * len(headers)  # every slice keeps a frame per segment, empty or not
    assert [seg.get_segment_description(n).SegmentLabel for n in (1, 2)] == ["outer", "core"]
    description = seg.get_segment_description(1)
    assert description.segmented_property_type.value == "85756007"  # generic SCT Tissue
    algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "segmorph" and algorithm.AlgorithmVersion == __import__("segmorph").__version__
    assert "hippo-run" in algorithm.AlgorithmParameters
    # highdicom's frames by source instance, in the series' K order: (K, rows J, columns I)
    frames = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in headers], combine_segments=True)
    assert np.array_equal(frames.transpose(2, 1, 0), labels.numpy()[0])
    back = read_segmentation(out)
    assert back.same_grid(labels, atol_mm=1e-6) and torch.equal(back.data, labels.data)
    assert back.is_label and back.data.dtype == torch.int64
    assert dciodvfy_errors(out) == []


def test_fractional_seg_keeps_probabilities_to_one_step_and_the_most_likely_class(series, tmp_path):
    folder, labels = series
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.normal(size=(3, *labels.spatial_shape))) + 4 * torch.nn.functional.one_hot(
        labels.data[0], 3
    ).permute(3, 0, 1, 2)
    probabilities = torch.softmax(scores, 0).float()
    out = write_segmentation(labels, folder, tmp_path / "f.dcm", NAMES, probabilities=probabilities)
    seg = hd.seg.segread(out)
    assert seg.segmentation_type.value == "FRACTIONAL"
    volume = read_segmentation(out)
    headers = read_series_headers(folder)
    fractions = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in headers], rescale_fractional=True)
    stored = torch.from_numpy(fractions.transpose(3, 2, 1, 0).astype(np.float32))  # (segments, I, J, K)
    assert (stored - probabilities[1:]).abs().max() <= 0.5 / 255 + 1e-6
    clear = (probabilities.sort(0).values[-1] - probabilities.sort(0).values[-2]) > 2 / 255
    assert torch.equal(volume.data[0][clear], probabilities.argmax(0)[clear])
    assert dciodvfy_errors(out) == []


def test_declared_segment_codes_are_written(series, tmp_path):
    folder, labels = series
    codes = {1: SegmentCodes(("SCT", "91723000", "Anatomical Structure"), ("SCT", "5366008", "Hippocampus"))}
    out = write_segmentation(labels, folder, tmp_path / "c.dcm", NAMES, codes=codes)
    seg = hd.seg.segread(out)
    assert seg.get_segment_description(1).segmented_property_type.meaning == "Hippocampus"
    assert seg.get_segment_description(1).segmented_property_category.value == "91723000"
    assert seg.get_segment_description(2).segmented_property_type.meaning == "Tissue"


def test_segment_codes_come_from_the_runs_dataset_json(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    entry = {"category": ["SCT", "91723000", "Anatomical Structure"], "type": ["SCT", "5366008", "Hippocampus"]}
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}, "segment_codes": {"2": entry}}))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"dataset": str(dataset)}))
    assert run_segment_codes(tmp_path / "run") == {
        2: SegmentCodes(("SCT", "91723000", "Anatomical Structure"), ("SCT", "5366008", "Hippocampus"))
    }
    (tmp_path / "run" / "run.json").write_text(json.dumps({"dataset": str(tmp_path / "moved")}))
    assert run_segment_codes(tmp_path / "run") == {}  # the dataset is gone: generic codes


def test_segment_codes_recorded_at_training_survive_the_dataset_and_reach_folds_and_ensembles(tmp_path):
    entry = {"category": ["SCT", "91723000", "Anatomical Structure"], "type": ["SCT", "5366008", "Hippocampus"]}
    expected = {1: SegmentCodes(("SCT", "91723000", "Anatomical Structure"), ("SCT", "5366008", "Hippocampus"))}
    fold = tmp_path / "cv" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "run.json").write_text(json.dumps({"dataset": str(tmp_path / "moved"), "segment_codes": {"1": entry}}))
    (tmp_path / "cv" / "crossval.json").write_text("{}")
    assert run_segment_codes(tmp_path / "cv") == expected
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "ensemble.json").write_text(json.dumps({"members": [str(tmp_path / "cv")]}))
    assert run_segment_codes(tmp_path / "best") == expected


def test_training_records_the_datasets_segment_codes(tmp_path):
    from helpers import write_msd_dataset
    from segmorph.segmentation.pipeline import TrainRequest, train_segmentation

    dataset = write_msd_dataset(tmp_path / "data", num_cases=3, shape=(16, 16, 8))
    meta = json.loads((dataset / "dataset.json").read_text())
    entry = {"category": ["SCT", "91723000", "Anatomical Structure"], "type": ["SCT", "5366008", "Hippocampus"]}
    (dataset / "dataset.json").write_text(json.dumps({**meta, "segment_codes": {"1": entry}}))
    request = TrainRequest(
        dataset=dataset,
        out=tmp_path / "run",
        time_budget_s=0,
        max_steps=1,
        fold=-1,
        check=False,
        overrides=(("network.features", [4, 8]), ("train.steps_per_epoch", 1)),
        show_progress=False,
    )
    train_segmentation(request)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["segment_codes"] == {"1": entry}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "expected an object of label values"),
        ({"0": {"category": ["SCT", "1", "a"], "type": ["SCT", "1", "a"]}}, "'0' is not a foreground label value"),
        ({"1": {"category": ["SCT", "1", "a"]}}, "expected an object with 'category' and 'type'"),
        ({"1": {"category": ["SCT", "1"], "type": ["SCT", "1", "a"]}}, "category: expected [scheme, value, meaning]"),
        ({"1": {"category": ["SCT", "1", "a"], "type": ["SCT", "", "a"]}}, "type: expected [scheme, value, meaning]"),
    ],
)
def test_malformed_segment_codes_are_refused_naming_the_file(raw, message):
    with pytest.raises(SegmorphError) as caught:
        parse_segment_codes(raw, "dataset.json")
    assert message in str(caught.value) and caught.value.path == "dataset.json"


def test_a_label_map_off_the_series_grid_is_refused(series, tmp_path):
    folder, labels = series
    shifted = Affine.from_geometry(OBLIQUE.spacing, OBLIQUE.origin + 1.0, OBLIQUE.direction)
    with pytest.raises(SegmorphError, match="label map is not on the series grid: origin") as caught:
        write_segmentation(Image(labels.data, shifted, is_label=True), folder, tmp_path / "x.dcm", NAMES)
    assert caught.value.path == str(folder)
    cropped = Image(labels.data[:, :, :, :-1], labels.affine, is_label=True)
    with pytest.raises(SegmorphError, match="shape"):
        write_segmentation(cropped, folder, tmp_path / "x.dcm", NAMES)
    empty_names = Image(torch.zeros_like(labels.data), labels.affine, is_label=True)
    with pytest.raises(SegmorphError, match="no foreground label"):
        write_segmentation(empty_names, folder, tmp_path / "x.dcm", {0: "background"})
    assert not (tmp_path / "x.dcm").exists()


def test_an_empty_prediction_still_covers_the_series(series, tmp_path):
    folder, labels = series
    empty = Image(torch.zeros_like(labels.data), labels.affine, is_label=True)
    out = write_segmentation(empty, folder, tmp_path / "e.dcm", NAMES)
    assert hd.seg.segread(out).NumberOfFrames == 2 * labels.spatial_shape[2]
    assert torch.equal(read_segmentation(out).data, empty.data)


def test_reading_onto_a_reference_grid(series, tmp_path):
    folder, labels = series
    out = write_segmentation(labels, folder, tmp_path / "s.dcm", NAMES)
    on_series = read_segmentation(out, reference=read_image(folder))
    assert torch.equal(on_series.data, labels.data)
    # a larger grid holding the series grid two voxels in: the segments land there, zeros around
    larger_affine = Affine(labels.affine.matrix @ _translation(-2, -2, -2))
    larger = Image(torch.zeros(1, 28, 24, 16), larger_affine)
    padded = read_segmentation(out, reference=larger)
    assert torch.equal(padded.data[:, 2:26, 2:22, 2:14], labels.data) and padded.data.sum() == labels.data.sum()
    half_voxel = Image(torch.zeros(1, *labels.spatial_shape), Affine(labels.affine.matrix @ _translation(0.5, 0, 0)))
    with pytest.raises(SegmorphError, match="does not lie on the reference grid") as caught:
        read_segmentation(out, reference=half_voxel)
    assert caught.value.path == str(out) and "\n" not in str(caught.value)
    smaller = Image(torch.zeros(1, 24, 20, 3), labels.affine)  # the first 3 slices: the sphere lies beyond them
    with pytest.raises(SegmorphError, match="segments outside the reference grid"):
        read_segmentation(out, reference=smaller)


def _translation(i: float, j: float, k: float) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = (i, j, k)
    return matrix


def test_overlapping_segments_read_as_the_higher_label(series, tmp_path):
    folder, labels = series
    headers = read_series_headers(folder)
    outer = (labels.numpy()[0] > 0).transpose(2, 1, 0)  # (K, J, I): label 1 covers the core too
    core = (labels.numpy()[0] == 2).transpose(2, 1, 0)
    descriptions = [
        hd.seg.SegmentDescription(n, name, hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
                                  hd.sr.CodedConcept("85756007", "SCT", "Tissue"), "MANUAL")
        for n, name in ((1, "outer"), (2, "core"))
    ]  # fmt: skip
    seg = hd.seg.Segmentation(
        headers, np.stack([outer, core], -1).astype(np.uint8), "BINARY", descriptions, generate_uid(), 5,
        generate_uid(), 1, "test", "test", "1", "1",
    )  # fmt: skip
    seg.save_as(tmp_path / "overlap.dcm")
    # highdicom left out the empty frames: alone, the SEG spans the slices that hold a segment
    alone = read_segmentation(tmp_path / "overlap.dcm")
    present = np.flatnonzero(labels.numpy()[0].any(axis=(0, 1)))
    first, last = int(present[0]), int(present[-1])
    assert torch.equal(alone.data, labels.data[..., first : last + 1])
    assert alone.affine.allclose(Affine(labels.affine.matrix @ _translation(0, 0, first)), atol=1e-6)
    # on the series grid it lands whole, as it does where evaluate pairs it with a mask
    on_series = read_segmentation(tmp_path / "overlap.dcm", reference=read_image(folder))
    assert torch.equal(on_series.data, labels.data)
    (tmp_path / "refs").mkdir()
    seg.save_as(tmp_path / "refs" / "case.dcm")
    write_image(labels, tmp_path / "preds" / "case.nii.gz")
    result = evaluate_folders(tmp_path / "preds", tmp_path / "refs", None, labels=NAMES, console=False)
    assert result["mean_over_classes"]["dice"] == pytest.approx(1.0)
    moving_labels = read_labels_like(tmp_path / "overlap.dcm", read_image(folder), folder)  # register --moving-labels
    assert torch.equal(moving_labels.data, labels.data)


def test_is_segmentation_is_cheap_and_strict(series, tmp_path):
    folder, labels = series
    out = write_segmentation(labels, folder, tmp_path / "s.dcm", NAMES)
    assert is_segmentation(out)
    assert not is_segmentation(next(folder.iterdir()))  # an MR slice
    write_image(labels, tmp_path / "mask.nii.gz")
    assert not is_segmentation(tmp_path / "mask.nii.gz")
    assert not is_segmentation(tmp_path / "missing.dcm") and not is_segmentation(folder)
    os.mkfifo(tmp_path / "fifo.dcm")
    assert not is_segmentation(tmp_path / "fifo.dcm")  # never opened: it would block
    (tmp_path / "short.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    assert not is_segmentation(tmp_path / "short.dcm")
    with pytest.raises(SegmorphError, match="not a DICOM-SEG file") as caught:
        read_segmentation(next(folder.iterdir()))
    assert caught.value.path == str(next(folder.iterdir()))


def test_read_image_decodes_a_seg_as_a_label_map_within_the_voxel_budget(series, tmp_path):
    folder, labels = series
    out = write_segmentation(labels, folder, tmp_path / "s.dcm", NAMES)
    back = read_image(out, is_label=True)
    assert torch.equal(back.data, labels.data) and back.same_grid(read_image(folder))
    with pytest.raises(SegmorphError, match="beyond the memory budget|voxel budget|budget") as caught:
        read_image(out, is_label=True, voxel_budget=1000)
    assert caught.value.path == str(out)


def test_evaluate_and_datasets_accept_seg_label_maps(series, tmp_path):
    folder, labels = series
    image = read_image(folder)
    write_segmentation(labels, folder, tmp_path / "refs" / "case_a.dcm", NAMES)
    write_image(labels, tmp_path / "preds" / "case_a.nii.gz")
    result = evaluate_folders(tmp_path / "preds", tmp_path / "refs", None, labels=NAMES, console=False)
    assert result["cases"] == 1 and result["mean_over_classes"]["dice"] == pytest.approx(1.0)
    write_image(image, tmp_path / "data" / "images" / "case_a.nii.gz")
    write_segmentation(labels, folder, tmp_path / "data" / "labels" / "case_a.dcm", NAMES)
    spec = load_dataset(tmp_path / "data")
    assert [case.label.name for case in spec.cases] == ["case_a.dcm"]
    sample = load_sample(spec.cases[0], spec)
    assert torch.equal(sample.label.data, labels.data)


def test_predict_writes_a_seg_equal_to_the_nifti_mask_of_the_same_series(trained_run, tmp_path):
    """The acceptance check: an oblique, anisotropic series -> predict --format dicom-seg -> highdicom decodes the
    NIfTI prediction of the same series voxel for voxel, and dciodvfy reports no error."""
    image, _ = sphere_case(seed=11)
    slices = write_series(image, tmp_path / "scans" / "case_7")
    run, scans = str(trained_run), str(tmp_path / "scans" / "case_7")
    assert main(["predict", run, scans, "--out", str(tmp_path / "nifti"), "--quiet"]) == 0
    seg_args = ["--out", str(tmp_path / "seg"), "--format", "dicom-seg", "--view", "--quiet"]
    assert main(["predict", run, scans, *seg_args]) == 0
    assert "case_7" in (tmp_path / "seg" / "view.html").read_text()  # the page shows the SEG over its series
    mask = read_image(tmp_path / "nifti" / "case_7.nii.gz", is_label=True)
    assert set(np.unique(mask.numpy())) == {0, 1, 2}  # the run finds both labels: the comparison means something
    seg_path = tmp_path / "seg" / "case_7.dcm"
    seg = hd.seg.segread(seg_path)
    uids = [pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in slices]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True)  # (K, J, I)
    assert np.array_equal(frames.transpose(2, 1, 0), mask.numpy()[0])
    assert [seg.get_segment_description(n).SegmentLabel for n in (1, 2)] == ["outer", "core"]
    algorithm = seg.get_segment_description(1).SegmentationAlgorithmIdentificationSequence[0]
    assert trained_run.name in algorithm.AlgorithmParameters
    decoded = read_image(seg_path, is_label=True)
    assert decoded.same_grid(mask) and torch.equal(decoded.data, mask.data)
    assert dciodvfy_errors(seg_path) == []
    # --probabilities: a fractional SEG instead of a binary one, no NIfTI probability map beside it
    out = tmp_path / "fractional"
    assert main(["predict", run, scans, "--out", str(out), "--format", "dicom-seg", "--probabilities", "--quiet"]) == 0
    assert hd.seg.segread(out / "case_7.dcm").segmentation_type.value == "FRACTIONAL"
    assert sorted(p.name for p in out.iterdir()) == ["case_7.dcm"]
    assert dciodvfy_errors(out / "case_7.dcm") == []
    # evaluate takes the SEG as a reference (view.html beside it is no label map)
    assert main(["evaluate", str(tmp_path / "nifti"), str(tmp_path / "seg"), "--out", str(tmp_path / "m.csv")]) == 0
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["mean_over_classes"]["dice"] == pytest.approx(1.0)


def test_predict_rtstruct_writes_beside_the_case(trained_run, tmp_path):
    image, _ = sphere_case(seed=11)
    write_series(image, tmp_path / "scans" / "case_7")
    args = ["predict", str(trained_run), str(tmp_path / "scans"), "--out", str(tmp_path / "rt"), "--format", "rtstruct"]
    assert main([*args, "--quiet"]) == 0
    written = pydicom.dcmread(tmp_path / "rt" / "case_7_rtstruct.dcm")
    assert written.Modality == "RTSTRUCT"


def test_predict_dicom_formats_refuse_image_files_before_any_work(tmp_path, capsys):
    image, _ = sphere_case()
    write_image(image, tmp_path / "scan.nii.gz")
    (tmp_path / "run").mkdir()  # no plan, no checkpoint: the input is refused first
    for output in ("dicom-seg", "rtstruct"):
        argv = ["predict", str(tmp_path / "run"), str(tmp_path / "scan.nii.gz"), "--out", str(tmp_path / "o"),
                "--format", output]  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "DICOM series folders" in err[0] and "scan.nii.gz" in err[0]
    assert not (tmp_path / "o").exists()


def test_predict_view_refuses_rtstruct(tmp_path, capsys):
    (tmp_path / "series").mkdir()
    argv = ["predict", str(tmp_path / "run"), str(tmp_path / "series"), "--out", str(tmp_path / "o"),
            "--format", "rtstruct", "--view"]  # fmt: skip
    assert main(argv) == 1
    assert "--view" in capsys.readouterr().err


@pytest.mark.integration
def test_a_real_hippocampus_label_round_trips_through_a_seg(tmp_path):
    """MSD hippocampus case 004 given an oblique, anisotropic grid, written as a DICOM series with its reference
    label as a SEG: decoded voxel for voxel."""
    root = require_dataset("msd_hippocampus", "dataset.json")
    scan = read_image(root / "imagesTr" / "hippocampus_004.nii.gz")
    label = read_image(root / "labelsTr" / "hippocampus_004.nii.gz", is_label=True)
    scan, label = Image(scan.data, OBLIQUE), Image(label.data, OBLIQUE, is_label=True)
    write_series(scan, tmp_path / "series")
    names = {0: "background", 1: "Anterior", 2: "Posterior"}
    out = write_segmentation(label, tmp_path / "series", tmp_path / "hippocampus_004.dcm", names)
    back = read_segmentation(out, reference=read_image(tmp_path / "series"))
    assert torch.equal(back.data, label.data) and set(np.unique(back.numpy())) == {0, 1, 2}
    assert dciodvfy_errors(out) == []
