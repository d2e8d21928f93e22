"""Registration: transforms in world space, classical recovery of known motions, files, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import OBLIQUE, sphere_case
from segmorph.cli.main import main
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.metrics.registration import jacobian_determinant
from segmorph.metrics.segmentation import dice_score
from segmorph.registration import spatial
from segmorph.registration.classical import ClassicalConfig, register_classical
from segmorph.registration.transform import FieldStep, Transform, load_transform, save_transform, world_grid

SHAPE = (24, 20, 12)


def _rotation_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _rigid(degrees: float, translation, centre) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation_z(degrees)
    matrix[:3, 3] = centre - matrix[:3, :3] @ centre + np.asarray(translation)
    return matrix


def _smooth_velocity(affine: Affine, shape, amplitude: float = 3.0) -> torch.Tensor:
    """A Gaussian bump of velocity (mm) along world x and y around the grid centre."""
    grid = world_grid(affine, shape)
    centre = torch.tensor(affine.voxel_to_world((np.array(shape) - 1) / 2))[:, None, None, None]
    bump = torch.exp(-((grid - centre) ** 2).sum(0) / (2 * 6.0**2))
    return torch.stack([amplitude * bump, -amplitude * bump, 0 * bump]).float()


def test_zero_field_is_the_identity():
    image, _ = sphere_case(SHAPE)
    step = FieldStep.from_velocity(torch.zeros(3, *SHAPE), OBLIQUE)
    warped = Transform([step]).warp(image, OBLIQUE, SHAPE)
    assert torch.allclose(step.displacement, torch.zeros_like(step.displacement))
    assert torch.allclose(warped.data, image.data, atol=1e-3)
    assert warped.affine.allclose(OBLIQUE)


def test_integrated_smooth_velocity_has_positive_jacobian_and_inverts():
    velocity = _smooth_velocity(OBLIQUE, SHAPE, amplitude=4.0)
    transform = Transform([FieldStep.from_velocity(velocity, OBLIQUE)])
    displacement = transform.displacement_on(OBLIQUE, SHAPE)
    jacobian = jacobian_determinant(displacement[None].double(), OBLIQUE.matrix[:3, :3].copy())
    assert displacement.abs().max() > 2.0  # a real deformation (mm)
    assert jacobian.min() > 0
    grid = world_grid(OBLIQUE, SHAPE)
    round_trip = transform.inverse().map_points(transform.map_points(grid))
    error = (round_trip - grid).norm(dim=0)
    assert error.mean() < 0.02 and error.max() < 0.25  # mm; grid spacing 0.8-2.5 mm, 4 mm deformation


def test_affine_chain_inverse_and_point_mapping_are_exact():
    centre = np.array([3.0, -2.0, 5.0])
    matrix = _rigid(12.0, (1.5, -2.0, 0.7), centre)
    transform = Transform.from_matrix(matrix).then(Transform.from_matrix(np.diag([1.1, 0.9, 1.0, 1.0])))
    points = np.random.default_rng(0).uniform(-20, 20, (7, 3))
    mapped = transform.map_points(points).numpy()
    expected = (np.diag([1.1, 0.9, 1.0]) @ (matrix[:3, :3] @ points.T + matrix[:3, 3:])).T
    assert np.allclose(mapped, expected, atol=1e-9)
    assert np.allclose(transform.inverse().map_points(mapped).numpy(), points, atol=1e-9)


def _blobs(affine: Affine, shape, motion: np.ndarray | None = None) -> Image:
    """An asymmetric smooth image defined in world space: ``f(M p)`` for ``M = motion`` (identity when None).

    Sampled analytically, so a moving image made with a known motion carries no interpolation error.
    """
    rng = np.random.default_rng(7)
    grid = world_grid(affine, shape).numpy().reshape(3, -1).T
    points = grid if motion is None else grid @ motion[:3, :3].T + motion[:3, 3]
    centre = affine.voxel_to_world((np.array(shape) - 1) / 2)
    values = np.zeros(len(points))
    for _ in range(14):
        where = centre + rng.uniform(-9, 9, 3)
        values += rng.uniform(0.5, 1.5) * np.exp(-((points - where) ** 2).sum(1) / (2 * rng.uniform(2.5, 4.5) ** 2))
    return Image(torch.from_numpy(values.reshape(1, *shape)).float(), affine)


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_warp_samples_the_moving_image_at_mapped_world_points(interpolation):
    """warp(x) = moving(T(x)): a world translation of a world-defined image, on an oblique anisotropic grid."""
    shape = (32, 28, 16)
    shift = np.eye(4)
    shift[:3, 3] = [2.0, -1.5, 2.5]
    warped = Transform.from_matrix(shift).warp(_blobs(OBLIQUE, shape), OBLIQUE, shape, interpolation)
    expected = _blobs(OBLIQUE, shape, motion=shift)
    inner = (slice(None), slice(6, -6), slice(6, -6), slice(3, -3))  # points that stay inside the grid
    error = (warped.data - expected.data)[inner].abs().max() / expected.data.abs().max()
    assert error < (0.05 if interpolation == "linear" else 0.015)
    assert warped.affine.allclose(OBLIQUE)


def test_a_field_on_the_reference_grid_is_read_not_interpolated():
    """map_grid's shortcut (displacements read on the field's own grid) equals interpolating them there."""
    generator = torch.Generator().manual_seed(0)
    velocity = 2.0 * torch.randn(3, *SHAPE, generator=generator, dtype=torch.float32)
    step = FieldStep.from_velocity(velocity, OBLIQUE)
    transform = Transform([step, _rigid(10.0, [1.0, -2.0, 0.5], np.zeros(3))])
    grid, mapped = transform.map_grid(OBLIQUE, SHAPE)
    assert torch.allclose(grid, world_grid(OBLIQUE, SHAPE))
    assert torch.allclose(mapped, transform.map_points(grid), atol=1e-4)
    other = Affine.from_geometry((1.0, 1.0, 1.0))  # another grid: the general path
    grid, mapped = transform.map_grid(other, SHAPE)
    assert torch.allclose(mapped, transform.map_points(world_grid(other, SHAPE)))


def test_label_interpolation_moves_boundaries_by_fractions_of_a_voxel():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0]).view(1, 1, 8, 1).expand(1, 1, 8, 2).clone()

    def at(*positions: float) -> list[int]:
        coords = torch.tensor(positions, dtype=torch.float64).view(1, 1, -1, 1)
        coords = torch.cat([coords, torch.zeros_like(coords)], dim=1)
        return spatial.sample_labels(labels, coords)[0, 0, :, 0].tolist()

    assert at(*range(8)) == [0, 0, 1, 1, 1, 2, 2, 0]  # grid points: exact
    assert at(1.4, 1.6, 4.4, 4.6, 6.6, -0.6, 7.5, 9.0) == [0, 1, 1, 2, 0, 0, 0, 0]  # nearest weight wins; 0 outside
    channels = torch.cat([labels, labels.flip(2)], dim=1)  # two label channels, interpolated together
    coords = torch.stack(torch.meshgrid(torch.arange(8.0) + 0.4, torch.zeros(2), indexing="ij"))[None].double()
    both = spatial.sample_labels(channels, coords)
    assert torch.equal(both[:, :1], spatial.sample_labels(labels, coords))
    assert torch.equal(both[:, 1:], spatial.sample_labels(labels.flip(2), coords))
    nearest = spatial.sample_labels(labels.float(), torch.tensor([[[[1.6]], [[0.0]]]]), "nearest")
    assert nearest.dtype == torch.int64 and nearest.item() == 1
    with pytest.raises(ValueError, match="for labels"):
        spatial.sample_labels(labels, torch.zeros(1, 2, 1, 1), "cubic")


def test_label_interpolation_in_groups_of_labels_equals_all_at_once(monkeypatch):
    """Many labels are interpolated a group at a time (bounded memory); the labels chosen do not change."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (1, 1, 9, 8, 7), generator=generator)
    coords = spatial.identity_grid((9, 8, 7)) + 0.8 * torch.rand(1, 3, 9, 8, 7, generator=generator) - 0.4
    at_once = spatial.sample_labels(labels, coords)
    monkeypatch.setattr(spatial, "LABEL_GROUP_VOXELS", 2 * labels.numel())  # one label a group
    assert torch.equal(spatial.sample_labels(labels, coords), at_once)
    assert len(torch.unique(at_once)) == 7


def test_label_warp_of_a_shifted_sphere_beats_nearest_neighbour():
    """Half-voxel shifts: label-wise interpolation keeps a sphere's volume, nearest neighbour rounds it."""
    grid = Affine.from_geometry((1.0, 1.0, 1.0))
    indices = np.indices((24, 24, 24)).astype(np.float64)
    labels = Image(torch.from_numpy((np.sqrt(((indices - 11.5) ** 2).sum(0)) < 6.3).astype(np.int64))[None], grid,
                   is_label=True)  # fmt: skip
    expected = np.sqrt(((indices - 12.0) ** 2).sum(0)) < 6.3  # warped(x) = labels(x - 0.5 voxel)
    shift = Transform.from_matrix(np.array([[1, 0, 0, -0.5], [0, 1, 0, -0.5], [0, 0, 1, -0.5], [0, 0, 0, 1.0]]))
    smooth = shift.warp(labels, grid, (24, 24, 24)).numpy()[0]
    nearest = shift.warp(labels, grid, (24, 24, 24), "nearest").numpy()[0]
    assert smooth.dtype == np.int64
    assert dice_score(smooth == 1, expected) > dice_score(nearest == 1, expected)
    assert dice_score(smooth == 1, expected) > 0.97


def test_cubic_interpolation_reproduces_a_quadratic_exactly_inside():
    grid = spatial.identity_grid((10, 10), torch.float64)
    image = (grid[:, :1] ** 2 + 0.5 * grid[:, 1:]).double()
    coords = grid[:, :, 2:7, 2:7] + 0.37
    values = spatial.sample(image, coords, "cubic")
    expected = coords[:, :1] ** 2 + 0.5 * coords[:, 1:]
    assert torch.allclose(values, expected, atol=0.02)  # Keys cubic is exact up to first order, near for x^2


def _motion_error_mm(found: np.ndarray, truth: np.ndarray, affine: Affine, shape) -> np.ndarray:
    points = world_grid(affine, shape).numpy().reshape(3, -1).T
    return np.linalg.norm(points @ (found - truth)[:3, :3].T + (found - truth)[:3, 3], axis=1)


@pytest.mark.parametrize("similarity", ["ncc", "mse"])
def test_rigid_registration_recovers_a_known_rotation_and_translation(similarity):
    """8 degrees about z and (3, -2, 1) mm, recovered to within 0.3 mm mean over the whole grid."""
    shape = (40, 36, 20)
    centre = OBLIQUE.voxel_to_world((np.array(shape) - 1) / 2)
    truth = _rigid(8.0, (3.0, -2.0, 1.0), centre)
    fixed = _blobs(OBLIQUE, shape)
    moving = _blobs(OBLIQUE, shape, motion=np.linalg.inv(truth))  # moving(T(x)) == fixed(x)
    config = ClassicalConfig(similarity=similarity, init="none", rigid_iterations=(60, 40, 20),
                             affine_iterations=(0, 0, 0), deformable_iterations=(0, 0, 0))  # fmt: skip
    found = register_classical(fixed, moving, "rigid", config).matrix()
    error = _motion_error_mm(found, truth, OBLIQUE, shape)
    assert _motion_error_mm(np.eye(4), truth, OBLIQUE, shape).mean() > 3.0
    assert error.mean() < 0.3 and error.max() < 0.6


def test_deformable_registration_improves_overlap_without_folding():
    shape = (32, 28, 16)
    fixed, fixed_labels = sphere_case(shape, seed=1, affine=OBLIQUE)
    truth = Transform([FieldStep.from_velocity(_smooth_velocity(OBLIQUE, shape, 3.0), OBLIQUE)])
    moving = truth.inverse().warp(fixed, OBLIQUE, shape)
    moving_labels = truth.inverse().warp(fixed_labels, OBLIQUE, shape)
    config = ClassicalConfig(similarity="mse", init="none", shrink=(2, 1), rigid_iterations=(0, 0),
                             affine_iterations=(0, 0), deformable_iterations=(80, 40), velocity_shrink=1)  # fmt: skip
    found = register_classical(fixed, moving, "deformable", config)
    warped = found.warp(moving_labels, OBLIQUE, shape)
    before = dice_score(moving_labels.numpy()[0] > 0, fixed_labels.numpy()[0] > 0)
    after = dice_score(warped.numpy()[0] > 0, fixed_labels.numpy()[0] > 0)
    displacement = found.displacement_on(OBLIQUE, shape)
    jacobian = jacobian_determinant(displacement[None].double(), OBLIQUE.matrix[:3, :3].copy())
    assert after > before + 0.05
    assert jacobian.min() > 0


def test_saved_transform_is_read_by_simpleitk_and_reloads(tmp_path):
    centre = np.zeros(3)
    matrix = _rigid(10.0, (1.0, 2.0, 3.0), centre)
    velocity = _smooth_velocity(OBLIQUE, SHAPE)
    transform = Transform([FieldStep.from_velocity(velocity, OBLIQUE), matrix])
    save_transform(transform, tmp_path, OBLIQUE, SHAPE)
    itk = sitk.ReadTransform(str(tmp_path / "affine.tfm"))
    point = [4.0, -3.0, 2.0]
    assert np.allclose(itk.TransformPoint(point), matrix[:3, :3] @ point + matrix[:3, 3], atol=1e-6)
    field = read_image(tmp_path / "displacement.nii.gz")
    assert field.num_channels == 3 and field.affine.allclose(OBLIQUE, atol=1e-5)
    itk_field = sitk.DisplacementFieldTransform(
        sitk.ReadImage(str(tmp_path / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    )
    voxel_centre = OBLIQUE.voxel_to_world(np.array([12, 10, 6]))
    assert np.allclose(itk_field.TransformPoint(voxel_centre.tolist()),
                       transform.map_points(voxel_centre[None]).numpy()[0], atol=1e-3)  # fmt: skip
    reloaded = load_transform(tmp_path)
    grid = world_grid(OBLIQUE, SHAPE)
    assert torch.allclose(reloaded.map_points(grid), transform.map_points(grid), atol=1e-4)


def _write_pair(tmp_path, shift_mm=(2.0, 0.0, 0.0)):
    """Fixed and moving blob images (and label maps by thresholds) related by a world translation."""
    shape = (28, 24, 14)
    motion = np.eye(4)
    motion[:3, 3] = -np.asarray(shift_mm)
    images = {"fixed": _blobs(OBLIQUE, shape), "moving": _blobs(OBLIQUE, shape, motion=motion)}
    paths = {}
    for name, image in images.items():
        paths[name] = write_image(image, tmp_path / f"{name}.nii.gz")
        top = image.data.max()
        labels = (image.data > 0.45 * top).long() + (image.data > 0.7 * top).long()
        paths[f"{name}_labels"] = write_image(Image(labels, OBLIQUE, is_label=True), tmp_path / f"{name}_labels.nii.gz")
    return paths


def test_register_cli_writes_folder_metrics_and_warp_reproduces_labels(tmp_path):
    paths = _write_pair(tmp_path)
    out = tmp_path / "reg"
    code = main(["register", str(paths["fixed"]), str(paths["moving"]), "--out", str(out), "--method", "affine",
                 "--moving-labels", str(paths["moving_labels"]), "--fixed-labels", str(paths["fixed_labels"])])  # fmt: skip
    assert code == 0
    assert {"warped.nii.gz", "warped_labels.nii.gz", "affine.tfm", "transform.json", "metrics.json",
            "registration.json"} <= {p.name for p in out.iterdir()}  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    fixed_labels = read_image(paths["fixed_labels"], is_label=True).numpy()[0]
    before = dice_score(read_image(paths["moving_labels"], is_label=True).numpy()[0] == 1, fixed_labels == 1)
    assert metrics["labels"][0]["dice"] > max(0.85, before + 0.2)  # nearest-neighbour labels on 2.5 mm slices
    assert metrics["folding_percent"] == 0.0
    warped = read_image(out / "warped_labels.nii.gz", is_label=True)
    assert warped.affine.allclose(read_image(paths["fixed"]).affine)
    again = tmp_path / "again.nii.gz"
    assert main(["warp", str(paths["moving_labels"]), "--transform", str(out), "--out", str(again), "--labels"]) == 0
    assert torch.equal(read_image(again, is_label=True).data, warped.data)
    assert main(["evaluate-registration", str(out), "--fixed-labels", str(paths["fixed_labels"])]) == 0


def test_register_pairs_csv_writes_one_folder_per_pair_and_a_summary(tmp_path):
    paths = _write_pair(tmp_path)
    rows = ["fixed,moving,fixed_labels,moving_labels", "fixed.nii.gz,moving.nii.gz,fixed_labels.nii.gz,moving_labels.nii.gz",
            "moving.nii.gz,fixed.nii.gz,moving_labels.nii.gz,fixed_labels.nii.gz"]  # fmt: skip
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    assert paths
    code = main(["register", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "regs"),
                 "--method", "rigid", "--quiet"])  # fmt: skip
    assert code == 0
    summary = (tmp_path / "regs" / "summary.csv").read_text().splitlines()
    assert len(summary) == 3
    assert len([p for p in (tmp_path / "regs").iterdir() if p.is_dir()]) == 2


def test_target_registration_error_from_landmark_files(tmp_path):
    paths = _write_pair(tmp_path, shift_mm=(3.0, 0.0, 0.0))
    out = tmp_path / "reg"
    assert main(["register", str(paths["fixed"]), str(paths["moving"]), "--out", str(out), "--method", "rigid"]) == 0
    fixed_points = OBLIQUE.voxel_to_world(np.array([[14.0, 12.0, 7.0], [8.0, 15.0, 5.0], [20.0, 6.0, 9.0]]))
    (tmp_path / "f.csv").write_text("x,y,z\n" + "\n".join(",".join(map(str, p)) for p in fixed_points))
    (tmp_path / "m.csv").write_text("\n".join(",".join(map(str, p + [3.0, 0, 0])) for p in fixed_points))
    assert (
        main(["evaluate-registration", str(out), "--landmarks", str(tmp_path / "f.csv"), str(tmp_path / "m.csv")]) == 0
    )
    tre = json.loads((out / "metrics.json").read_text())["tre"]
    assert tre["before_mean_mm"] == pytest.approx(3.0)
    assert tre["mean_mm"] < 1.0


def _expect_error(capsys, argv, *fragments):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0]


def test_bad_registration_input_gives_one_clear_line(tmp_path, capsys):
    paths = _write_pair(tmp_path)
    far = read_image(paths["moving"])
    far = Image(far.data, Affine.from_geometry(far.spacing, far.affine.origin + 500.0, far.affine.direction))
    write_image(far, tmp_path / "far.nii.gz")
    flat = Image(torch.rand(1, 20, 20), Affine.identity(2))
    write_image(flat, tmp_path / "flat.nii.gz")
    small = Image(torch.zeros(1, 5, 5, 5, dtype=torch.int64), OBLIQUE, is_label=True)
    write_image(small, tmp_path / "small_labels.nii.gz")
    out = str(tmp_path / "reg")
    _expect_error(capsys, ["register", str(paths["fixed"]), str(tmp_path / "far.nii.gz"), "--out", out],
                  "far.nii.gz", "does not overlap")  # fmt: skip
    _expect_error(capsys, ["register", str(paths["fixed"]), str(tmp_path / "flat.nii.gz"), "--out", out],
                  "flat.nii.gz", "2D")  # fmt: skip
    _expect_error(capsys, ["register", str(paths["fixed"]), str(paths["moving"]), "--out", out,
                           "--moving-labels", str(tmp_path / "small_labels.nii.gz")], "small_labels.nii.gz", "grid")  # fmt: skip
    _expect_error(capsys, ["register", str(paths["fixed"]), str(paths["moving"]), "--out", out, "--method", "learned"],
                  "--model")  # fmt: skip
    _expect_error(capsys, ["register", str(paths["fixed"]), str(paths["moving"]), "--out", out, "--method", "affine",
                           "--refine", "2", "--passes", "3"], "--refine, --passes: only with --method learned")  # fmt: skip
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"fixed,moving\n{paths['fixed']},{paths['moving']}\n")
    _expect_error(capsys, ["register", "--pairs", str(pairs), "--out", out, "--moving-labels", str(paths["moving_labels"])],
                  "pairs.csv", "--moving-labels", "moving_labels columns")  # fmt: skip
    _expect_error(capsys, ["baseline", str(paths["fixed"]), "--method", "region_grow", "--seed-point", "a,b",
                           "--out", out], "--seed-point 'a,b'", "I,J[,K]")  # fmt: skip
    assert not (tmp_path / "reg").exists()


def test_a_pyramid_ending_coarser_than_the_fixed_grid_gives_a_field_on_the_fixed_grid():
    fixed, _ = sphere_case((24, 20, 12), seed=1)
    moving, _ = sphere_case((24, 20, 12), seed=2)
    config = ClassicalConfig(similarity="mse", init="none", shrink=(2,), rigid_iterations=(0,), affine_iterations=(0,),
                             deformable_iterations=(3,))  # fmt: skip
    transform = register_classical(fixed, moving, "deformable", config)
    field = transform.steps[0]
    assert isinstance(field, FieldStep) and tuple(field.displacement.shape) == (3, 24, 20, 12)
    assert transform.warp(moving, fixed.affine, fixed.spatial_shape).spatial_shape == fixed.spatial_shape


def test_structures_align_label_maps_by_centroids_and_overlap():
    from segmorph.registration.structure import align_structures, centroid_matrix, label_centroids

    shape = (32, 28, 16)
    _, fixed_labels = sphere_case(shape, seed=3)
    shift = np.eye(4)
    shift[:3, 3] = [-2.5, 1.5, 2.0]
    moving_labels = Transform.from_matrix(shift).warp(fixed_labels, OBLIQUE, shape)  # content moved by +shift
    translation = centroid_matrix(fixed_labels, moving_labels, "rigid")
    # Two concentric labels determine a translation; nearest-neighbour labels on 2.5 mm slices move centroids.
    assert np.allclose(translation[:3, 3], -shift[:3, 3], atol=1.25)
    aligned = align_structures(fixed_labels, moving_labels, "affine")
    warped = aligned.warp(moving_labels, OBLIQUE, shape)
    assert dice_score(warped.numpy()[0] == 1, fixed_labels.numpy()[0] == 1) > 0.9
    assert set(label_centroids(fixed_labels)) == {1, 2}


def test_register_cli_by_structures_alone(tmp_path):
    paths = _write_pair(tmp_path, shift_mm=(2.5, 0.0, 0.0))
    out = tmp_path / "reg"
    code = main(["register", str(paths["fixed"]), str(paths["moving"]), "--out", str(out), "--method", "structures",
                 "--fixed-structures", str(paths["fixed_labels"]), "--moving-structures", str(paths["moving_labels"])])  # fmt: skip
    assert code == 0
    matrix = read_affine(out)
    assert abs(matrix[0, 3] - 2.5) < 0.6


def read_affine(folder):
    from segmorph.io import read_affine_transform

    return read_affine_transform(folder / "affine.tfm")


@pytest.mark.parametrize("iterations", [(30, 0, -1), (30, 10_001, 0), (10**9, 0, 0)])
def test_classical_config_refuses_steps_outside_0_to_10000_a_level(iterations):
    with pytest.raises(ValueError, match=r"deformable_iterations: expected 0 to 10,000 steps a level"):
        ClassicalConfig(deformable_iterations=iterations)
