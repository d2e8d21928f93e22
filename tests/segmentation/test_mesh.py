"""Surface meshes of label maps: known answers on a sphere, placement over the mask in world coordinates, the
four file formats read back, the command line's outputs and errors, and a real hippocampus label map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy import ndimage

import segmorph as sm
from helpers import oblique_direction, require_dataset, sphere_case
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image
from segmorph.segmentation.mesh import (
    LabelMesh,
    close_surface,
    draw_meshes,
    file_stem,
    label_values,
    mesh,
    mesh_files,
    mesh_label,
    write_mesh,
)

RADIUS = 20.0  # mm
SPACING = (1.0, 1.2, 0.8)


def sphere_mask(direction: np.ndarray, radius: float = RADIUS) -> tuple[Image, np.ndarray]:
    """A ball of ``radius`` mm (label 1) on an anisotropic grid with ``direction``; its centre in world mm."""
    spacing = np.asarray(SPACING)
    shape = tuple(int(np.ceil(2 * radius / s)) + 6 for s in spacing)
    affine = Affine.from_geometry(spacing, (10.0, -5.0, 3.0), direction)
    index = np.indices(shape, dtype=np.float64)
    centre = (np.array(shape) - 1) / 2 + 0.3  # off the voxel grid's symmetry
    inside = np.linalg.norm((index - centre[:, None, None, None]) * spacing[:, None, None, None], axis=0) <= radius
    return Image(torch.from_numpy(inside.astype(np.int64)[None]), affine, is_label=True), affine.voxel_to_world(centre)


MIRRORED = oblique_direction() @ np.diag([1.0, -1.0, 1.0])  # determinant -1: the grid is a mirror image


@pytest.mark.parametrize("direction", [oblique_direction(), MIRRORED], ids=["oblique", "oblique-mirrored"])
@pytest.mark.parametrize("frame", ["LPS", "RAS"])
def test_sphere_volume_and_area_within_two_percent_watertight_and_facing_out(direction, frame):
    image, centre = sphere_mask(direction)
    (ball,) = mesh(image, frame=frame)
    assert ball.watertight and ball.repairs == ()
    assert ball.volume_mm3 == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.02)
    assert ball.surface_area_mm2 == pytest.approx(4 * np.pi * RADIUS**2, rel=0.02)
    if frame == "RAS":
        centre = centre * np.array([-1.0, -1.0, 1.0])
    radii = np.linalg.norm(ball.vertices - centre, axis=1)
    assert np.abs(radii - RADIUS).max() < 1.0  # round, centred where the voxels are, in mm
    triangles = ball.vertices[ball.faces]
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    outward = np.einsum("ij,ij->i", normals, triangles.mean(1) - centre)
    assert (outward > 0).all()  # counter-clockwise seen from outside, whatever the direction's determinant


def test_raw_surface_keeps_the_volume_and_smoothing_removes_the_terraces_area():
    image, _ = sphere_mask(oblique_direction())
    raw, smoothed = mesh_label(image, 1, smooth=0), mesh_label(image, 1)
    assert raw.volume_mm3 == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.01)
    assert raw.surface_area_mm2 > 1.05 * 4 * np.pi * RADIUS**2  # the voxel terraces
    assert smoothed.surface_area_mm2 < raw.surface_area_mm2
    assert smoothed.voxel_volume_mm3 == pytest.approx(raw.voxels * np.prod(SPACING))


def vertices_over_mask(item: LabelMesh, labels: Image) -> np.ndarray:
    """For each vertex, whether the voxel it falls in (mapped back through the affine) is in the label's mask
    dilated by one voxel (26 neighbours); the grid is padded so that vertices beyond its edge count too."""
    inside = np.pad(labels.numpy()[0] == item.value, 1)
    dilated = ndimage.binary_dilation(inside, structure=np.ones((3, 3, 3), bool))
    points = item.vertices * (np.array([-1.0, -1.0, 1.0]) if item.frame == "RAS" else 1.0)
    index = np.rint(labels.affine.world_to_voxel(points)).astype(int) + 1
    return dilated[tuple(index.T)]


@pytest.mark.parametrize("smooth", [0, 10])
@pytest.mark.parametrize("frame", ["LPS", "RAS"])
def test_mesh_lies_over_its_mask_in_world_coordinates(smooth, frame):
    _, labels = sphere_case((24, 20, 12), seed=3)  # oblique grid, spacing 0.8 x 1.1 x 2.5
    labels.data[0, :3] = 1  # a slab touching the grid's edge: closed by the padding
    meshes = mesh(labels, {2: "core"}, smooth=smooth, frame=frame)
    assert [(m.value, m.name) for m in meshes] == [(1, "label_1"), (2, "core")]
    for item in meshes:
        assert item.watertight
        assert vertices_over_mask(item, labels).all()
        voxels = np.argwhere(labels.numpy()[0] == item.value)
        centroid = labels.affine.voxel_to_world(voxels.mean(0)) * (np.array([-1, -1, 1]) if frame == "RAS" else 1)
        assert np.linalg.norm(trimesh.Trimesh(item.vertices, item.faces).center_mass - centroid) < 0.5  # mm
    shifted = Image(labels.data, Affine.from_geometry(labels.affine.spacing, labels.affine.origin + 7.0,
                                                       labels.affine.direction), is_label=True)  # fmt: skip
    moved = mesh(shifted, smooth=smooth, frame=frame)[0].vertices - meshes[0].vertices
    assert np.allclose(moved, np.array([7.0, 7.0, 7.0]) * (np.array([-1, -1, 1]) if frame == "RAS" else 1))


def test_voxels_touching_at_an_edge_or_corner_are_closed_apart():
    labels = np.zeros((6, 6, 6), np.int64)
    labels[1, 1, 1] = labels[2, 2, 1] = labels[3, 3, 2] = 1  # an edge, then a corner, in common
    item = mesh_label(Image(torch.from_numpy(labels[None]), Affine.identity(), is_label=True), 1, smooth=0)
    assert item.watertight
    assert len(trimesh.Trimesh(item.vertices, item.faces).split(only_watertight=True)) == 3


def test_random_label_maps_give_closed_surfaces():
    rng = np.random.default_rng(0)
    affine = Affine.from_geometry(SPACING, direction=MIRRORED)
    for _ in range(20):
        noise = (rng.random((10, 9, 8)) < rng.uniform(0.1, 0.7)) * rng.integers(1, 4, (10, 9, 8))
        for item in mesh(Image(torch.from_numpy(noise[None]), affine, is_label=True), smooth=0):
            assert item.watertight and item.repairs == () and item.volume_mm3 > 0


def test_an_open_surface_is_closed_and_says_so():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    opened = trimesh.Trimesh(sphere.vertices, sphere.faces[1:])
    assert not opened.is_watertight
    repairs = close_surface(opened)
    assert repairs[0] == "filled holes" and "still open after repair" not in repairs
    assert opened.is_watertight and opened.volume == pytest.approx(sphere.volume)


def read_vtk(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A legacy ASCII VTK POLYDATA file of triangles: header lines, points (N, 3), faces (F, 3)."""
    lines = path.read_text().splitlines()
    assert lines[0] == "# vtk DataFile Version 3.0" and lines[2:4] == ["ASCII", "DATASET POLYDATA"]
    kind, count, dtype = lines[4].split()
    assert (kind, dtype) == ("POINTS", "double")
    points = np.loadtxt(lines[5 : 5 + int(count)], ndmin=2)
    polygons, faces, size = lines[5 + int(count)].split()
    assert polygons == "POLYGONS" and int(size) == 4 * int(faces)
    cells = np.loadtxt(lines[6 + int(count) : 6 + int(count) + int(faces)], dtype=np.int64, ndmin=2)
    assert (cells[:, 0] == 3).all() and len(lines) == 6 + int(count) + int(faces)
    return lines[:2], points, cells[:, 1:]


@pytest.mark.parametrize("frame", ["LPS", "RAS"])
def test_the_four_formats_read_back_with_their_frame_stated(tmp_path, frame):
    _, labels = sphere_case(seed=1)
    item = mesh(labels, {1: "outer"}, frame=frame)[0]
    for fmt in ("stl", "obj", "ply"):
        path = item.write(tmp_path / f"outer.{fmt}")
        back = trimesh.load(path, process=False)
        assert len(back.faces) == len(item.faces)
        assert np.allclose(np.asarray(back.vertices)[back.faces], item.vertices[item.faces], atol=1e-4)  # float32
        merged = trimesh.load(path)  # an STL holds separate triangles: its corners merged into vertices
        assert merged.is_watertight and merged.volume == pytest.approx(item.volume_mm3, rel=1e-5)
        head = path.read_bytes()[:200]
        assert f"coordinates {frame} mm".encode() in head and b"label 1 (outer)" in head
    assert not (tmp_path / "outer.stl").read_bytes().startswith(b"solid")  # binary STL
    header, points, faces = read_vtk(write_mesh(item, tmp_path / "outer.vtk"))
    assert f"coordinates {frame} mm" in header[1]
    assert np.allclose(points, item.vertices, rtol=1e-8, atol=1e-7) and np.array_equal(faces, item.faces)


def test_write_mesh_refuses_an_unknown_format(tmp_path):
    _, labels = sphere_case()
    with pytest.raises(SegmorphError, match="unknown mesh format 'gltf'"):
        write_mesh(mesh(labels)[0], tmp_path / "m.gltf")


@pytest.mark.parametrize(
    ("data", "affine", "message"),
    [
        (np.zeros((1, 6, 6, 6)), Affine.identity(), "no foreground label"),
        (np.full((1, 6, 6, 6), 0.5), Affine.identity(), "not whole numbers"),
        (np.ones((1, 6, 6)), Affine.identity(2), "need a 3D label map, got a 2D image"),
        (np.ones((2, 6, 6, 6)), Affine.identity(), "one channel"),
        (np.arange(1000).reshape(1, 10, 10, 10), Affine.identity(), "999 distinct foreground values"),
    ],
    ids=["empty", "fractional", "2d", "two-channels", "a-scan"],
)
def test_label_values_refuses_what_is_not_a_3d_label_map(data, affine, message):
    with pytest.raises(SegmorphError, match=message):
        label_values(Image(torch.from_numpy(data), affine))


def test_mesh_label_refuses_an_absent_label_and_bad_settings():
    _, labels = sphere_case()
    with pytest.raises(SegmorphError, match="label 7 is absent"):
        mesh_label(labels, 7)
    with pytest.raises(SegmorphError, match="frame: expected one of LPS, RAS"):
        mesh_label(labels, 1, frame="RSA")
    with pytest.raises(SegmorphError, match="smooth: expected at least 0"):
        mesh_label(labels, 1, smooth=-1)


def test_file_stems_are_safe_names():
    assert file_stem("Anterior", 1) == "Anterior"
    assert file_stem("left/right hippocampus", 3) == "left_right_hippocampus"
    assert file_stem("../..", 4) == "label_4"


def test_public_api_meshes_a_file_with_names_from_a_dataset(msd_dataset):
    meshes = sm.mesh(msd_dataset / "labelsTr" / "case_000.nii.gz", labels_from=msd_dataset)
    assert [(m.value, m.name) for m in meshes] == [(1, "outer"), (2, "core")]
    assert all(m.watertight and m.volume_mm3 > 0 for m in meshes)
    assert meshes[0].record()["coordinate_system"] == "LPS"


def test_preview_draws_many_triangles_from_a_coarser_copy(tmp_path, monkeypatch):
    import segmorph.segmentation.mesh as module

    image, _ = sphere_mask(oblique_direction(), radius=8.0)
    monkeypatch.setattr(module, "PREVIEW_FACES", 300)
    path = draw_meshes(mesh(image, {1: "ball"}), tmp_path / "ball.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- command line ------------------------------------------------------------------------------------


def test_cli_writes_a_mesh_per_label_the_measures_and_a_preview(msd_dataset, tmp_path, capsys):
    mask = msd_dataset / "labelsTr" / "case_001.nii.gz"
    out = tmp_path / "meshes"
    code = main(["mesh", str(mask), "--out", str(out), "--format", "ply", "--labels-from", str(msd_dataset),
                 "--preview", "--smooth", "4"])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_001_core.ply", "case_001_meshes.json",
                                                     "case_001_meshes.png", "case_001_outer.ply"]  # fmt: skip
    record = json.loads((out / "case_001_meshes.json").read_text())
    assert (record["coordinate_system"], record["units"], record["smooth_iterations"]) == ("LPS", "mm", 4)
    labels = read_image(mask, is_label=True)
    for entry in record["labels"]:
        assert set(entry) >= {"name", "value", "vertices", "faces", "volume_mm3", "surface_area_mm2", "watertight",
                              "voxel_volume_mm3", "coordinate_system"}  # fmt: skip
        back = trimesh.load(out / entry["file"], process=False)
        assert entry["watertight"] and len(back.faces) == entry["faces"]
        assert back.volume == pytest.approx(entry["volume_mm3"], rel=1e-4)
        voxels = int((labels.numpy() == entry["value"]).sum())
        assert entry["voxel_volume_mm3"] == pytest.approx(voxels * np.prod(labels.affine.spacing), rel=1e-6)
    printed = capsys.readouterr().out
    assert "outer (1):" in printed and "core (2):" in printed and "case_001_meshes.png" in printed


def test_cli_ras_states_the_frame_and_turns_the_vertices(tmp_path):
    _, labels = sphere_case(seed=2)
    write_image(labels, tmp_path / "m.nii.gz")
    assert main(["mesh", str(tmp_path / "m.nii.gz"), "--out", str(tmp_path / "lps"), "--format", "vtk"]) == 0
    assert main(["mesh", str(tmp_path / "m.nii.gz"), "--out", str(tmp_path / "ras"), "--format", "vtk", "--ras"]) == 0
    _, lps, faces = read_vtk(tmp_path / "lps" / "m_label_1.vtk")
    header, ras, same_faces = read_vtk(tmp_path / "ras" / "m_label_1.vtk")
    assert "RAS" in header[1] and np.array_equal(faces, same_faces)
    assert np.allclose(ras, lps * np.array([-1, -1, 1]))
    assert json.loads((tmp_path / "ras" / "m_meshes.json").read_text())["coordinate_system"] == "RAS"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_refuses_an_empty_mask_and_a_scan_in_one_line_writing_nothing(tmp_path, capsys):
    empty = Image(torch.zeros((1, 6, 6, 6), dtype=torch.int64), Affine.identity(), is_label=True)
    write_image(empty, tmp_path / "empty.nii.gz")
    write_image(sphere_case()[0], tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    assert main(["mesh", str(tmp_path / "empty.nii.gz"), "--out", str(out)]) == 1
    line = _error_line(capsys)
    assert line.startswith("error: ") and "empty.nii.gz" in line and "no foreground label" in line
    assert main(["mesh", str(tmp_path / "scan.nii.gz"), "--out", str(out)]) == 1
    assert "non-integer values" in _error_line(capsys)
    assert main(["mesh", str(tmp_path / "missing.nii.gz"), "--out", str(out)]) == 1
    assert "missing.nii.gz" in _error_line(capsys)
    assert not out.exists()


def test_cli_never_writes_over_its_inputs(tmp_path, capsys):
    _, labels = sphere_case()
    mask = write_image(labels, tmp_path / "masks" / "m.nii.gz")
    before = mask.read_bytes()
    assert main(["mesh", str(mask), "--out", str(mask)]) == 1
    assert "is a file" in _error_line(capsys)
    assert main(["mesh", str(mask), "--out", str(mask.parent)]) == 1
    assert "holds the input" in _error_line(capsys)
    assert mask.read_bytes() == before and sorted(p.name for p in mask.parent.iterdir()) == ["m.nii.gz"]


def test_cli_usage_errors(tmp_path, capsys):
    for extra in (["--format", "gltf"], ["--smooth", "-1"], ["--smooth", "two"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["mesh", str(tmp_path / "m.nii.gz"), "--out", str(tmp_path / "o"), *extra])
        assert exit_info.value.code == 2
    capsys.readouterr()


# -- real data ---------------------------------------------------------------------------------------


def test_hippocampus_meshes_overlay_the_mask_with_its_volume(tmp_path):
    dataset = require_dataset("msd_hippocampus", "dataset.json")
    mask = dataset / "labelsTr" / "hippocampus_004.nii.gz"
    result = mesh_files(mask, tmp_path / "out", labels_from=dataset, preview=True)
    labels = read_image(mask, is_label=True)
    assert [m.name for m in result.meshes] == ["Anterior", "Posterior"]
    for item in result.meshes:
        assert item.watertight and vertices_over_mask(item, labels).all()
        assert item.volume_mm3 == pytest.approx(item.voxel_volume_mm3, rel=0.03)
    assert [p.name for p in result.files] == ["hippocampus_004_Anterior.stl", "hippocampus_004_Posterior.stl"]
    assert result.preview is not None and result.preview.is_file()
