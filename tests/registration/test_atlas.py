"""Atlas-based segmentation: label fusion known answers, spheres registered and fused, the CLI layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import OBLIQUE, sphere_case
from segmorph.cli.main import build_parser
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.metrics.segmentation import dice_score
from segmorph.registration.atlas import (
    atlas_segment,
    locally_weighted_vote,
    majority_vote,
    run_atlas_segment,
)
from segmorph.registration.classical import ClassicalConfig
from segmorph.registration.learned.config import LearnedConfig
from segmorph.registration.learned.model import LearnedRegistration
from segmorph.registration.learned.network import build_registration_network
from segmorph.registration.transform import Transform

FAST = ClassicalConfig(
    shrink=(2, 1), rigid_iterations=(20, 0), affine_iterations=(20, 0), deformable_iterations=(20, 0)
)
AFFINE_ONLY = ClassicalConfig(
    shrink=(2, 1), rigid_iterations=(20, 0), affine_iterations=(20, 0), deformable_iterations=(0, 0)
)
# Atlas grids shifted against the scan's by a few voxels (world shifts of 2.2 to 2.5 mm per axis).
SHIFTS = ((1, (3, -2, 1)), (2, (-3, 2, 0)), (3, (2, 3, -1)))


def shifted_atlases() -> list[tuple[Image, Image]]:
    return [sphere_case(seed=seed, affine=OBLIQUE.shifted(offset)) for seed, offset in SHIFTS]


def mean_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([dice_score(pred == v, ref == v) for v in (1, 2)]))


# -- majority vote -------------------------------------------------------------------------------


def test_majority_vote_known_answer_with_ties_to_the_lowest_label():
    maps = [np.array([[0, 1, 2, 3], [5, 1, 0, 2]]), np.array([[0, 1, 1, 3], [4, 2, 0, 2]]),
            np.array([[1, 2, 1, 2], [3, 3, 2, 0]])]  # fmt: skip
    expected = np.array([[0, 1, 1, 3], [3, 1, 0, 2]])  # [1, 0]: three-way tie 5/4/3 -> 3; [1, 1]: tie 1/2/3 -> 1
    fused = majority_vote(maps)
    np.testing.assert_array_equal(fused, expected)
    assert fused.dtype == np.int64


def test_majority_vote_refuses_bad_input():
    with pytest.raises(ValueError, match="label_maps"):
        majority_vote([np.zeros((3, 3), int), np.zeros((3, 4), int)])
    with pytest.raises(ValueError, match="label_maps"):
        majority_vote([])


# -- locally weighted vote -----------------------------------------------------------------------


def test_weighted_vote_follows_the_atlas_that_matches_the_target_locally():
    """Block A is bright in the target and in atlas 0 only; atlas 0 labels it 1, atlases 1 and 2 leave it 0.

    A majority vote sides with the two mismatching atlases; the locally weighted vote with atlas 0.
    Block B is bright and labelled 2 everywhere.
    """
    shape = (16, 16)
    block_a, block_b = (slice(2, 8), slice(2, 8)), (slice(9, 14), slice(9, 14))
    target = torch.zeros(1, *shape)
    target[(0, *block_a)], target[(0, *block_b)] = 1.0, 1.0
    mismatched = target.clone()
    mismatched[(0, *block_a)] = 0.0
    labels_match, labels_other = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
    labels_match[block_a], labels_match[block_b], labels_other[block_b] = 1, 2, 2
    one_hot = lambda lab: torch.nn.functional.one_hot(lab, 3).movedim(-1, 0).float()  # noqa: E731
    images = [target.clone(), mismatched, mismatched.clone()]
    probabilities = [one_hot(labels_match), one_hot(labels_other), one_hot(labels_other)]

    fused = locally_weighted_vote(probabilities, images, target, sigma=0.1, window=3)
    majority = majority_vote([labels_match.numpy(), labels_other.numpy(), labels_other.numpy()])

    assert fused.shape == shape
    assert (fused[block_a] == 1).all() and (majority[block_a] == 0).all()
    assert (fused[block_b] == 2).all()
    assert fused.sum() == 1 * 36 + 2 * 25  # nothing labelled outside the blocks


def test_weighted_vote_refuses_mismatched_inputs():
    probabilities = [torch.zeros(2, 4, 4)]
    with pytest.raises(ValueError, match="warped_images"):
        locally_weighted_vote(probabilities, [torch.zeros(1, 4, 4)] * 2, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="label_probabilities"):
        locally_weighted_vote(probabilities, [torch.zeros(1, 4, 4)], torch.zeros(1, 5, 4))


# -- atlas_segment on spheres --------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["weighted", "majority"])
def test_atlas_segment_beats_unregistered_atlases_and_keeps_the_scan_grid(fusion):
    torch.manual_seed(0)
    scan, reference = sphere_case(seed=0)
    atlases = shifted_atlases()
    ref = reference.numpy()[0]
    unregistered = [
        mean_dice(Transform.identity().warp(lab, scan.affine, scan.spatial_shape).numpy()[0], ref) for _, lab in atlases
    ]

    result = atlas_segment(scan, atlases, "deformable", fusion, config=FAST, reference=reference, progress=False)

    fused = result.labels.numpy()[0]
    assert result.labels.is_label and result.labels.data.shape == scan.data.shape
    np.testing.assert_array_equal(result.labels.affine.matrix, scan.affine.matrix)
    assert mean_dice(fused, ref) > 0.75 > max(unregistered) + 0.25
    assert set(result.dice) == {1, 2} and result.dice[1] == pytest.approx(dice_score(fused == 1, ref == 1))
    assert len(result.atlas_labels) == len(result.atlas_dice) == 3


def test_atlas_segment_refuses_bad_atlases():
    scan, _ = sphere_case(seed=0)
    image, labels = sphere_case(seed=1)
    off_grid = Image(labels.data, OBLIQUE.shifted((1, 0, 0)), is_label=True)
    flat = Image(image.data[..., 0], Affine.identity(2))
    with pytest.raises(SegmorphError, match="no atlases"):
        atlas_segment(scan, [], progress=False)
    with pytest.raises(SegmorphError, match="atlas label grid") as err:
        atlas_segment(scan, [(image, off_grid)], names=["a_seg.nii.gz"], progress=False)
    assert err.value.path == "a_seg.nii.gz"
    with pytest.raises(SegmorphError, match="2D but the scan is 3D"):
        atlas_segment(scan, [(flat, Image(labels.data[..., 0], Affine.identity(2), True))], progress=False)


def test_weighted_vote_beyond_the_memory_budget_is_refused_before_registering(monkeypatch):
    scan, _ = sphere_case(seed=0)
    image, labels = sphere_case(seed=1)
    voxels, values = int(np.prod(scan.spatial_shape)), len(torch.unique(labels.data))  # background included
    monkeypatch.setenv("SEGMORPH_MAX_VOXELS", str(2 * values * voxels - 1))  # one value short for 2 atlases
    expected = rf"the weighted vote's label probabilities \(2 atlases x {values} labels"
    with pytest.raises(SegmorphError, match=expected) as err:
        atlas_segment(scan, [(image, labels)] * 2, names=["a_seg.nii.gz", "b_seg.nii.gz"], progress=False)
    assert err.value.path == "a_seg.nii.gz"


# -- files and command line ----------------------------------------------------------------------


def test_run_atlas_segment_names_a_malformed_or_missing_spec(tmp_path):
    scan_path = write_image(sphere_case(seed=0)[0], tmp_path / "scan.nii.gz")
    out = tmp_path / "seg.nii.gz"
    for spec in ("atlas.nii.gz", "a.nii.gz:b.nii.gz:c.nii.gz", ":b.nii.gz"):
        with pytest.raises(SegmorphError, match="IMAGE:LABELS") as err:
            run_atlas_segment(scan_path, [spec], out, progress=False)
        assert err.value.path == spec
    missing = f"{scan_path}:{tmp_path / 'nope.nii.gz'}"
    with pytest.raises(SegmorphError, match="does not exist") as err:
        run_atlas_segment(scan_path, [missing], out, progress=False)
    assert err.value.path == missing and not out.exists()


def test_atlas_command_writes_segmentation_and_metrics(tmp_path, capsys):
    scan, reference = sphere_case(seed=0)
    paths = {
        "scan": write_image(scan, tmp_path / "scan.nii.gz"),
        "ref": write_image(reference, tmp_path / "ref.nii.gz"),
    }
    specs = []
    for index, (image, labels) in enumerate(shifted_atlases()[:2]):
        image_path = write_image(image, tmp_path / f"atlas{index}.nii.gz")
        specs.append(f"{image_path}:{write_image(labels, tmp_path / f'atlas{index}_seg.nii.gz')}")
    parser = build_parser()
    out = tmp_path / "out" / "seg.nii.gz"
    args = parser.parse_args(["atlas-segment", str(paths["scan"]), "--atlases", *specs, "--out", str(out), "--method", "affine",
                              "--fusion", "majority", "--reference", str(paths["ref"]), "--quiet"])  # fmt: skip

    summary = run_atlas_segment(
        args.scan, args.atlases, args.out, args.method, args.fusion, reference_path=args.reference,
        progress=False, config=AFFINE_ONLY,
    )  # fmt: skip

    written = read_image(out, is_label=True)
    assert written.affine.allclose(read_image(paths["scan"]).affine, 1e-5)
    metrics = json.loads((tmp_path / "out" / "seg_metrics.json").read_text())
    assert [row["label"] for row in metrics["metrics"]] == [1, 2]
    assert metrics["metrics"][0]["dice"] == pytest.approx(summary["dice"][1]) and summary["dice"][1] > 0.6
    assert len(metrics["atlases"]) == 2 and set(metrics["atlases"][0]["dice"]) == {"1", "2"}
    with pytest.raises(SegmorphError, match="only with --method learned"):
        args = parser.parse_args(["atlas-segment", str(paths["scan"]), "--atlases", *specs, "--out", str(out),
                                  "--method", "affine", "--model", str(tmp_path)])  # fmt: skip
        args.handler(args)


def test_atlas_segment_with_a_learned_model_keeps_the_scan_grid():
    """Smoke test of the learned branch: an untrained network after centre-of-mass pre-alignment."""
    torch.manual_seed(0)
    config = LearnedConfig(features=(4, 8, 8), prealign="com")
    model = LearnedRegistration(build_registration_network(3, config), config)
    scan, _ = sphere_case(seed=0)
    with pytest.raises(ValueError, match="model"):
        atlas_segment(scan, shifted_atlases()[:1], "learned", progress=False)

    result = atlas_segment(scan, shifted_atlases()[:2], "learned", "weighted", model=model, progress=False)

    assert result.labels.data.shape == scan.data.shape and result.labels.affine is scan.affine
    assert set(np.unique(result.labels.numpy())) <= {0, 1, 2} and (result.labels.numpy() == 2).any()
    assert result.dice == {} and result.atlas_dice == []
