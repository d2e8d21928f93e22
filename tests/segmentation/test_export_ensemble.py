"""Exporting an ensemble (a cross-validation run or a find-best folder): one graph of the weighted mean of the
networks' softmax probabilities, or its members (logits) with combine.json; checked with onnxruntime."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble_helpers import copy_as_cross_validation, perturb_checkpoint, write_ensemble_folder
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.segmentation.crossval_layout import fold_folder
from segmorph.segmentation.export import COMBINE_FILE, check_onnx, export_run
from segmorph.segmentation.predict import Predictor

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def pair(trained_run: Path, tmp_path_factory) -> Path:
    """A 2-fold cross-validation run: fold_0 is the trained run, fold_1 the same with perturbed weights."""
    run = copy_as_cross_validation(trained_run, tmp_path_factory.mktemp("pair") / "cv", 2)
    perturb_checkpoint(fold_folder(run, 1))
    return run


def _example(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    """A random batch of two inputs of the exported shape ``(1, C, *P)``."""
    return torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(seed))


def _onnx(path: Path, example: torch.Tensor) -> tuple[str, np.ndarray]:
    """The ONNX graph's output name and its output for ``example``."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_outputs()[0].name, session.run(None, {"image": example.numpy()})[0]


def _mean_softmax(weighted: list[tuple[Path, float]], example: torch.Tensor) -> np.ndarray:
    """The weighted mean of the runs' softmax probabilities, from PyTorch."""
    with torch.no_grad():
        return sum(weight * Predictor(run).model(example).softmax(1).numpy() for run, weight in weighted)


def test_an_ensemble_of_identical_members_exports_the_single_runs_probabilities(trained_run, tmp_path) -> None:
    run = copy_as_cross_validation(trained_run, tmp_path / "cv", 3)
    done = export_run(run, "onnx", tmp_path / "ensemble.onnx")
    assert (done.path, done.networks, done.output) == (tmp_path / "ensemble.onnx", 3, "probabilities")
    example = _example(done.input_shape)
    with torch.no_grad():
        expected = Predictor(trained_run).model(example).softmax(1)
    name, actual = _onnx(done.path, example)
    assert name == "probabilities" and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected.numpy(), atol=1e-5, rtol=0)
    scripted = export_run(run, "torchscript", tmp_path / "ensemble.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(scripted.path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(example), expected, atol=1e-5, rtol=0)


def test_a_single_run_exports_its_logits(trained_run, tmp_path) -> None:
    done = export_run(trained_run, "onnx", tmp_path / "model.onnx")
    assert (done.networks, done.output) == (1, "logits")
    example = _example(done.input_shape)
    assert _onnx(done.path, example)[0] == "logits"
    assert check_onnx(done.path, Predictor(trained_run).model, example) < 1e-4


def test_the_exported_ensemble_is_the_mean_of_its_members_softmax(pair, tmp_path) -> None:
    done = export_run(pair, "onnx", tmp_path / "ensemble.onnx")
    example = _example(done.input_shape)
    first, second = (_mean_softmax([(fold_folder(pair, k), 1.0)], example) for k in (0, 1))
    assert np.abs(first - second).max() > 1e-2  # the members differ, so the mean is not either one
    _, actual = _onnx(done.path, example)
    np.testing.assert_allclose(actual, (first + second) / 2, atol=1e-4, rtol=0)
    np.testing.assert_allclose(actual.sum(1), 1.0, atol=1e-5)


def test_members_are_exported_one_file_each_with_how_to_combine_them(pair, tmp_path, capsys) -> None:
    out = tmp_path / "members"
    assert main(["export", str(pair), "--out", str(out), "--members"]) == 0
    assert capsys.readouterr().err.strip().endswith("(onnx, 2 networks, input shape [1, 1, "
                                                    f"{', '.join(map(str, _patch(pair)))}], output logits)")  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [COMBINE_FILE, "fold_0.onnx", "fold_1.onnx"]
    record = json.loads((out / COMBINE_FILE).read_text())
    assert [(m["file"], m["weight"]) for m in record["members"]] == [("fold_0.onnx", 0.5), ("fold_1.onnx", 0.5)]
    assert record["input"]["shape"] == [1, 1, *_patch(pair)] and record["labels"]["0"] == "background"
    example = _example(tuple(record["input"]["shape"]))
    combined = 0.0
    for member in record["members"]:
        name, logits = _onnx(out / member["file"], example)
        assert name == "logits"
        combined = combined + member["weight"] * torch.from_numpy(logits).softmax(1).numpy()
    expected = _mean_softmax([(fold_folder(pair, 0), 0.5), (fold_folder(pair, 1), 0.5)], example)
    np.testing.assert_allclose(combined, expected, atol=1e-4, rtol=0)


def _patch(run: Path) -> list[int]:
    return json.loads((fold_folder(run, 0) / "plan.json").read_text())["train"]["patch_size"]


def test_a_find_best_folder_exports_its_runs_weighted_as_it_predicts(trained_run, pair, tmp_path) -> None:
    folder = write_ensemble_folder(tmp_path / "best", [trained_run, pair])  # a single run and a 2-fold run
    done = export_run(folder, "onnx", tmp_path / "ensemble.onnx")
    assert (done.networks, done.output) == (3, "probabilities")
    example = _example(done.input_shape)
    expected = _mean_softmax([(trained_run, 0.5), (fold_folder(pair, 0), 0.25), (fold_folder(pair, 1), 0.25)], example)
    np.testing.assert_allclose(_onnx(done.path, example)[1], expected, atol=1e-4, rtol=0)
    export_run(folder, "torchscript", tmp_path / "members", members=True)
    record = json.loads((tmp_path / "members" / COMBINE_FILE).read_text())
    names = [(m["file"], m["weight"]) for m in record["members"]]
    assert names == [("member_0.pt", 0.5), ("member_1_fold_0.pt", 0.25), ("member_1_fold_1.pt", 0.25)]
    assert record["members"][0]["run"] == str(trained_run.resolve())


def test_members_whose_plans_differ_are_refused_in_one_line(trained_run, tmp_path, capsys) -> None:
    run = copy_as_cross_validation(trained_run, tmp_path / "cv", 2)
    plan_file = fold_folder(run, 1) / "plan.json"
    plan = json.loads(plan_file.read_text())
    plan["train"]["patch_size"] = [size + 4 for size in plan["train"]["patch_size"]]
    plan_file.write_text(json.dumps(plan))
    for extra in ([], ["--members"]):
        out = tmp_path / f"out{len(extra)}"
        assert main(["export", str(run), "--out", str(out), *extra]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and str(plan_file) in lines[0], lines
        assert "patch differs from" in lines[0] and "one input" in lines[0]
        assert not out.exists()


def test_members_of_a_single_run_are_refused(trained_run, tmp_path) -> None:
    with pytest.raises(SegmorphError, match="single model; export it without --members"):
        export_run(trained_run, "onnx", tmp_path / "members", members=True)
    assert not (tmp_path / "members").exists()
