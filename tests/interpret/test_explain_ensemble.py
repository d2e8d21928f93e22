"""``segmorph explain`` on an ensemble (a cross-validation run or a find-best folder): TTA statistics over every
network's variants together, Grad-CAM maps averaged over the networks; known answers from identical members."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble_helpers import copy_as_cross_validation, perturb_checkpoint, write_ensemble_folder
from helpers import sphere_case
from segmorph.cli.main import main
from segmorph.interpret.explain import (
    ExplainOptions,
    NetworkMaps,
    explain_files,
    explain_image,
    explain_network,
    pool_networks,
)
from segmorph.io import read_image, write_image
from segmorph.segmentation.crossval_layout import fold_folder
from segmorph.segmentation.ensemble import load_predictor
from segmorph.segmentation.predict import Predictor

OPTIONS = ExplainOptions(tta=3)


@pytest.fixture(scope="module")
def pair(trained_run: Path, tmp_path_factory) -> Path:
    """A 2-fold cross-validation run: fold_0 is the trained run, fold_1 the same with perturbed weights."""
    run = copy_as_cross_validation(trained_run, tmp_path_factory.mktemp("explain_pair") / "cv", 2)
    perturb_checkpoint(fold_folder(run, 1))
    return run


def _scan(path: Path) -> Path:
    return write_image(sphere_case(seed=11)[0], path)


def _maps(case: Path) -> dict[str, np.ndarray]:
    return {p.name: read_image(p).data.numpy() for p in sorted(case.glob("*.nii.gz"))}


def _same_maps(actual: Path, expected: Path) -> None:
    found, wanted = _maps(actual), _maps(expected)
    assert sorted(found) == sorted(wanted) and len(found) >= 3  # prediction, uncertainty, a Grad-CAM per class
    for name, values in wanted.items():
        np.testing.assert_allclose(found[name], values, atol=1e-6, rtol=0, err_msg=name)


def test_an_ensemble_of_identical_members_explains_like_the_single_run(trained_run, tmp_path, one_thread) -> None:
    run = copy_as_cross_validation(trained_run, tmp_path / "cv", 3)
    scan = _scan(tmp_path / "scan.nii.gz")
    single = explain_files(trained_run, [scan], tmp_path / "single", OPTIONS, show_progress=False)[0]
    assert main(["explain", str(run), str(scan), "--out", str(tmp_path / "ensemble"), "--tta", "3", "--quiet"]) == 0
    ensemble = tmp_path / "ensemble" / "scan"
    _same_maps(ensemble, single)
    one, three = (json.loads((case / "explain.json").read_text()) for case in (single, ensemble))
    assert one["members"] == 1 and "member_networks" not in one
    assert three["members"] == 3 and "cam_window" not in three
    assert [(m["name"], m["cam_window"]) for m in three["member_networks"]] == [
        (f"fold_{k}", one["cam_window"]) for k in range(3)
    ]  # fmt: skip
    assert [m["weight"] for m in three["member_networks"]] == pytest.approx([1 / 3] * 3)
    assert three["uncertainty"] == pytest.approx(one["uncertainty"], abs=1e-6)
    assert three["tta"] == one["tta"]


def test_a_two_member_ensemble_pools_the_members_variants_and_averages_their_cams(pair, one_thread) -> None:
    image = sphere_case(seed=11)[0]
    classes = [1, 2]
    first, second = (explain_network(Predictor(fold_folder(pair, k)), image, classes, OPTIONS) for k in (0, 1))
    explained = explain_image(load_predictor(pair, postprocess="none"), image, classes, OPTIONS)
    # the variance over both members' variants together: the mean within-member variance plus the variance of the
    # members' mean foreground probabilities
    foreground = [1.0 - maps.probabilities[0] for maps in (first, second)]
    spread = ((foreground[0] - foreground[1]) / 2).square()
    expected = (first.variance + second.variance) / 2 + spread
    np.testing.assert_allclose(explained.uncertainty, expected.numpy(), atol=1e-6, rtol=0)
    assert float(spread.max()) > 1e-3  # the members disagree, and that disagreement is part of the uncertainty
    for row, value in enumerate(classes):
        np.testing.assert_allclose(explained.cams[value], ((first.cams[row] + second.cams[row]) / 2).numpy(), atol=1e-6)
    mean = (first.probabilities + second.probabilities) / 2
    top2 = mean.topk(2, dim=0).values
    decided = (top2[0] - top2[1]).numpy() > 1e-5  # leave out voxels where two classes tie to rounding
    assert np.array_equal(explained.prediction[decided], mean.argmax(0).numpy()[decided])
    assert [name for name, _, _ in explained.members] == ["fold_0", "fold_1"]


def test_a_find_best_folder_explains_as_its_runs_do_in_a_cross_validation_run(pair, tmp_path, one_thread) -> None:
    folder = write_ensemble_folder(tmp_path / "best", [fold_folder(pair, 0), fold_folder(pair, 1)])
    scan = _scan(tmp_path / "scan.nii.gz")
    from_folds = explain_files(pair, [scan], tmp_path / "folds", OPTIONS, show_progress=False)[0]
    from_runs = explain_files(folder, [scan], tmp_path / "runs", OPTIONS, show_progress=False)[0]
    _same_maps(from_runs, from_folds)
    record = json.loads((from_runs / "explain.json").read_text())
    assert record["members"] == 2
    assert [(m["name"], m["weight"]) for m in record["member_networks"]] == [("member_0", 0.5), ("member_1", 0.5)]


def _constant(foreground: list[float]) -> NetworkMaps:
    """A network's maps on a 1-voxel grid from its variants' foreground probabilities (two classes)."""
    values = torch.tensor(foreground, dtype=torch.float64)
    mean = float(values.mean())
    return NetworkMaps(
        probabilities=torch.tensor([[1 - mean], [mean]]), variance=torch.tensor([float(values.var(unbiased=False))]),
        cams=torch.tensor([[mean]]), window=((0,), (1,)), variants=[],
    )  # fmt: skip


@pytest.mark.parametrize(("weights", "variance"), [((0.5, 0.5), 0.05), ((0.25, 0.75), 0.04)])
def test_pooled_variance_is_the_variance_over_every_variant(weights, variance) -> None:
    # variants 0.2, 0.4 and 0.6, 0.8: equal weights give the variance of all four values, 0.05; weights 1/4 and 3/4
    # give mean 0.6 and 0.125 * (0.16 + 0.04) + 0.375 * (0 + 0.04) = 0.04
    pooled = pool_networks(zip(weights, [_constant([0.2, 0.4]), _constant([0.6, 0.8])]))
    assert float(pooled.variance[0]) == pytest.approx(variance, abs=1e-6)
    expected_mean = weights[0] * 0.3 + weights[1] * 0.7
    assert float(pooled.probabilities[1, 0]) == pytest.approx(expected_mean) == float(pooled.cams[0, 0])
    with pytest.raises(ValueError, match="at least one network"):
        pool_networks([])
