"""The 2D (slice-wise) configuration for 3D scans: plan, slice patches, training, slice-by-slice prediction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import sphere_case, write_msd_dataset
from segmorph.engine.sliding_window import slicewise_logits, sliding_window_logits
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image, Sample, check_same_grid
from segmorph.io import read_image, write_image
from segmorph.nn import build_network
from segmorph.segmentation.api import Segmenter, cross_validate, plan, train
from segmorph.segmentation.datasets import DatasetSpec
from segmorph.segmentation.plan import Plan, make_plan, slice_axis_for
from segmorph.segmentation.predict import PredictOptions, Predictor, predict_files
from segmorph.segmentation.preprocess import preprocess_sample, undo_preprocessing
from segmorph.transforms import PatchSampler

# tiny and fast; the 16 x 12 tile is smaller than the 24 x 20 slices, so prediction slides within each slice
TINY = {"train.steps_per_epoch": 2, "network.features": [4, 8], "train.batch_size": 2, "train.patch_size": [16, 12]}
AFFINE_2D = Affine.from_geometry((0.8, 1.1), (3.0, -2.0))


@pytest.fixture(scope="module")
def slice_run(tmp_path_factory) -> Path:
    """A 2D-on-3D run trained for a few steps on the sphere dataset (spacing 0.8 x 1.1 x 2.5 mm)."""
    root = tmp_path_factory.mktemp("slices")
    dataset = write_msd_dataset(root / "dataset", num_cases=4)
    train(dataset, root / "run", network_dims=2, max_steps=4, val_cases=["case_000"], overrides=TINY,
          show_progress=False, check=False)  # fmt: skip
    return root / "run"


def test_the_slice_axis_is_the_through_plane_axis_and_the_last_of_ties():
    assert slice_axis_for((0.8, 1.1, 2.5)) == 2
    assert slice_axis_for((3.0, 0.7, 0.7)) == 0
    assert slice_axis_for((0.7, 3.0, 0.7)) == 1
    assert slice_axis_for((1.0, 1.0, 1.0)) == 2  # isotropic: K
    assert slice_axis_for((2.0, 2.0, 1.0)) == 1  # a tie of I and J: the later
    assert slice_axis_for((1.0, 2.0, 1.9999)) == 2  # within 0.1% counts as a tie


def test_a_2d_plan_of_3d_scans_records_its_slice_axis_and_an_in_plane_patch(msd_dataset, tmp_path):
    flat = plan(msd_dataset, network_dims=2, show_progress=False)
    assert (flat.ndim, flat.slice_axis, flat.image_ndim) == (2, 2, 3)  # spacing 0.8, 1.1, 2.5 mm: slices across K
    assert flat.network["ndim"] == 2 and len(flat.train.patch_size) == 2
    assert flat.train.patch_size == (24, 20) and flat.train.batch_size == 4  # the slices whole; a CPU 2D batch
    assert len(flat.preprocess.target_spacing) == 3 and len(flat.median_shape) == 3
    flat.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == flat
    coarse = plan(msd_dataset, network_dims=2, spacing=(3.0, 1.0, 1.0), show_progress=False)
    assert coarse.slice_axis == 0  # the coarsest axis of the spacing asked for
    default = plan(msd_dataset, show_progress=False)
    assert (default.ndim, default.slice_axis, default.image_ndim) == (3, None, 3)
    assert "slice_axis" not in default.to_dict()  # the 3D plan.json is unchanged
    assert plan(msd_dataset, network_dims=3, show_progress=False) == default


def test_a_2d_plan_batches_as_many_slices_as_a_2d_plan_has_voxels_per_step():
    spec = DatasetSpec(Path("hippocampus"), (), {0: "background", 1: "Anterior", 2: "Posterior"}, ("MRI",), ("MRI",))
    facts = {"num_cases": 260, "median_shape": [35, 50, 36], "median_spacing": [1.0, 1.0, 1.0], "intensity": [None]}
    flat = make_plan(spec, facts, "cpu", 1200, network_dims=2)
    assert (flat.slice_axis, flat.train.patch_size) == (2, (40, 56))  # isotropic: slices across K
    assert flat.train.batch_size == 117 == 256 * 256 * 4 // (40 * 56)  # the voxels of a CPU 2D step
    assert flat.network["features"] == [16, 32, 64, 128]
    assert make_plan(spec, facts, "cuda", 1200, network_dims=2).train.batch_size == 468  # 5% of 260 x 36 slices
    assert make_plan(spec, facts, "cpu", 1200).train.batch_size == 2  # the 3D plan as it was


def test_network_dims_and_slice_axis_are_checked_in_one_line(msd_dataset, tmp_path):
    with pytest.raises(SegmorphError, match="network_dims: expected 2 or 3, got 4"):
        plan(msd_dataset, network_dims=4, show_progress=False)
    pictures = tmp_path / "pictures"
    image, label = sphere_case()
    for index in range(2):
        write_image(Image(image.data[..., 6], AFFINE_2D), pictures / "images" / f"p{index}.nii.gz")
        write_image(Image(label.data[..., 6], AFFINE_2D, is_label=True), pictures / "labels" / f"p{index}.nii.gz")
    with pytest.raises(SegmorphError, match="a 3D network needs 3D scans; this dataset's are 2D"):
        plan(pictures, network_dims=3, show_progress=False)
    assert plan(pictures, network_dims=2, show_progress=False).slice_axis is None  # 2D scans: a 2D plan as ever
    values = plan(msd_dataset, network_dims=2, show_progress=False).to_dict()
    for bad in (3, True, "2", 2.0):
        (tmp_path / "bad.json").write_text(json.dumps({**values, "slice_axis": bad}))
        with pytest.raises(SegmorphError, match=r"invalid plan \(plan: slice_axis .*: slices of 3D scans are cut"):
            Plan.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(
        json.dumps({**values, "ndim": 3, "train": {**values["train"], "patch_size": [8, 8, 8]}})
    )
    with pytest.raises(SegmorphError, match=r"slice_axis 2: .* for a 2D network \(ndim 2, here 3\)"):
        Plan.load(tmp_path / "bad.json")


def _coordinate_volume(shape=(6, 7, 9)) -> torch.Tensor:
    """``(1, *S)`` whose voxel value encodes its index: ``100 i + 10 j + k`` (k < 10, j < 10)."""
    grid = torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")
    return (100 * grid[0] + 10 * grid[1] + grid[2]).float()[None]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_patches_are_slices_across_the_axis(axis):
    image = _coordinate_volume()
    label = torch.zeros_like(image, dtype=torch.int64)
    sampler = PatchSampler([image], [label], (4, 4), foreground_fraction=0.0, slice_axis=axis)
    patches, labels = sampler.sample(8, torch.Generator().manual_seed(0))
    assert patches.shape == (8, 1, 4, 4) and labels.shape == (8, 1, 4, 4)
    digits = [(patches // 100) % 10, (patches // 10) % 10, patches % 10]  # i, j, k of every voxel
    in_plane = [a for a in range(3) if a != axis]
    for patch in range(8):
        assert digits[axis][patch].unique().numel() == 1  # one slice
        first, second = digits[in_plane[0]][patch, 0], digits[in_plane[1]][patch, 0]
        assert torch.equal(first[:, 0] - first[0, 0], torch.arange(4.0))  # contiguous along the first in-plane axis
        assert torch.equal(second[0] - second[0, 0], torch.arange(4.0))  # and along the second


def test_slice_patches_hold_foreground_at_the_asked_fraction():
    image = torch.randn(1, 20, 20, 30)
    label = torch.zeros(1, 20, 20, 30, dtype=torch.int64)
    label[0, 12, 5, 17] = 1  # one foreground voxel in one slice of 30
    sampler = PatchSampler([image], [label], (8, 8), foreground_fraction=0.5, slice_axis=2)
    generator = torch.Generator().manual_seed(1)
    held = []
    for _ in range(50):
        _, labels = sampler.sample(4, generator)
        has = (labels > 0).flatten(1).any(1)
        assert has[2:].all()  # the foreground-centred half always holds it
        held.extend(has.tolist())
    assert 0.5 <= sum(held) / len(held) <= 0.55  # a random slice seldom does


def test_slice_mode_is_checked():
    image, label = torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="slice_axis: expected 0, 1 or 2 with a 2D patch_size"):
        PatchSampler([image], [label], (4, 4, 4), slice_axis=2)
    with pytest.raises(ValueError, match="slice_axis"):
        PatchSampler([image], [label], (4, 4), slice_axis=3)
    with pytest.raises(ValueError, match="patch_size: has 3 values but case 0 has 2 spatial axes"):
        PatchSampler([image[..., 0]], [label[..., 0]], (4, 4), slice_axis=2)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slicewise_logits_equal_a_2d_sliding_window_per_slice(axis, one_thread):
    torch.manual_seed(0)
    network = build_network({"name": "unet", "ndim": 2, "in_channels": 2, "num_classes": 3, "features": [4, 8],
                             "residual": False, "deep_supervision": False})  # fmt: skip
    volume = torch.randn(2, 7, 9, 5)
    stacked = slicewise_logits(network, volume, axis, (4, 6), mirror_axes=(0, 1), batch_size=5)
    by_hand = torch.stack([sliding_window_logits(network, volume.select(axis + 1, n), (4, 6), mirror_axes=(0, 1))
                           for n in range(volume.shape[axis + 1])], dim=axis + 1)  # fmt: skip
    assert stacked.shape == (3, 7, 9, 5)
    assert torch.allclose(stacked, by_hand, atol=1e-6)
    with pytest.raises(ValueError, match="image: expected a tensor"):
        slicewise_logits(network, volume[..., 0], axis, (4, 6))
    with pytest.raises(ValueError, match="mirror_axes"):
        slicewise_logits(network, volume, axis, (4, 6), mirror_axes=(2,))


def test_a_2d_run_of_3d_scans_trains_and_predicts_masks_on_the_scans_grid(slice_run, tmp_path):
    saved = Plan.load(slice_run / "plan.json")
    assert (saved.ndim, saved.slice_axis, saved.train.patch_size) == (2, 2, (16, 12))
    summary = json.loads((slice_run / "summary.json").read_text())
    assert summary["fit"]["steps"] == 4 and summary["validation"]["metrics"]["cases"] == 1
    image, _ = sphere_case(seed=7)
    mask = Segmenter(slice_run)(image)
    check_same_grid(mask, image, "mask", None)  # the scan's exact grid
    assert mask.is_label and mask.data.dtype == torch.uint8
    scan = tmp_path / "scan.nii.gz"
    write_image(image, scan)
    written = predict_files(slice_run, [scan], tmp_path / "masks", show_progress=False)
    on_disk = read_image(written[0], is_label=True)
    check_same_grid(on_disk, image, "mask", written[0])
    assert torch.equal(on_disk.data.to(mask.data.dtype), mask.data)


def test_a_2d_prediction_of_3d_scans_equals_stacking_slices_by_hand(slice_run, one_thread):
    predictor = Predictor(slice_run, options=PredictOptions(mirror=True, amp=False))  # float32, as by hand
    image, _ = sphere_case(seed=5)
    probabilities = predictor.probabilities(image)
    prepared, record = preprocess_sample(Sample("scan", image), predictor.plan.preprocess)
    volume = prepared.image.data
    assert volume.shape[3] == 12 and volume.shape[1:3] == (24, 20)  # slices larger than the 16 x 12 tile
    slices = [
        sliding_window_logits(predictor.model, volume[..., k], (16, 12), overlap=0.5, batch_size=4, mirror_axes=(0, 1))
        for k in range(volume.shape[3])
    ]  # fmt: skip
    by_hand = undo_preprocessing(torch.stack(slices, dim=3), record)
    assert probabilities.shape == (3, *image.spatial_shape)
    assert torch.allclose(probabilities, by_hand, atol=1e-5)
    with pytest.raises(SegmorphError, match="expected a 3D image, got 2D"):
        predictor.probabilities(Image(image.data[..., 0], AFFINE_2D))


def test_explain_refuses_a_2d_run_of_3d_scans_in_one_line(slice_run, tmp_path):
    from segmorph.interpret.explain import explain_files

    image, _ = sphere_case()
    write_image(image, tmp_path / "scan.nii.gz")
    with pytest.raises(SegmorphError, match="explain needs a network of the scans' dimensions") as caught:
        explain_files(slice_run, [tmp_path / "scan.nii.gz"], tmp_path / "explained", show_progress=False)
    assert Path(caught.value.path) == slice_run / "plan.json" and not (tmp_path / "explained").exists()


def test_the_registration_prior_refuses_a_2d_run_of_3d_scans(slice_run):
    from segmorph.registration.learned.prior import SegmentationPrior

    with pytest.raises(SegmorphError, match="needs a network of the scans' dimensions, not a 2D network on slices"):
        SegmentationPrior(slice_run)


def test_the_tensorboard_picture_of_a_2d_run_of_3d_scans(slice_run):
    from segmorph.engine.tracking import SlicePreview

    plan_ = Plan.load(slice_run / "plan.json")
    image, label = sphere_case()
    network = build_network({**plan_.network, "deep_supervision": False})
    picture = SlicePreview("case", image.data, label.data, plan_.train, plan_.slice_axis)(network, torch.device("cpu"))
    assert picture.ndim == 3 and picture.shape[2] == 3


def test_cross_validation_of_a_2d_configuration(tmp_path, one_thread):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=4)
    result = cross_validate(dataset, tmp_path / "cv", num_folds=2, max_steps=2, network_dims=2, overrides=TINY,
                            show_progress=False, check=False)  # fmt: skip
    assert result.folds == (0, 1) and result.cases == 4
    for fold in result.folds:
        assert Plan.load(tmp_path / "cv" / f"fold_{fold}" / "plan.json").slice_axis == 2
    image, _ = sphere_case(seed=9)
    probabilities = Segmenter(tmp_path / "cv").probabilities(image)
    check_same_grid(probabilities, image, "probabilities", None)


def test_the_cli_takes_network_dims(msd_dataset, tmp_path, capsys):
    from segmorph.cli.main import main

    assert main(["plan", str(msd_dataset), "--network-dims", "2", "--out", str(tmp_path / "plan.json")]) == 0
    written = json.loads((tmp_path / "plan.json").read_text())
    assert written["slice_axis"] == 2 and written["ndim"] == 2
    with pytest.raises(SystemExit):
        main(["train", str(msd_dataset), "--network-dims", "4", "--out", str(tmp_path / "run")])
    assert "--network-dims" in capsys.readouterr().err
