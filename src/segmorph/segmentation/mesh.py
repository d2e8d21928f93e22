"""Surface meshes of label maps: one closed triangle mesh per label, in world millimetres.

Each label is meshed by marching cubes (scikit-image, Lewiner's variant, which resolves the ambiguous cube
configurations so that the surface is a closed manifold) at the level 0.5 of its binary mask, padded by one
voxel of background so that a label touching the grid's edge is closed too. The surface is computed on the
voxel index grid and mapped through ``image.affine``, so anisotropic spacing and oblique directions land
where the voxels are; faces are wound counter-clockwise seen from outside (normals point outwards) whatever
the sign of the direction's determinant. Optional Taubin smoothing (a shrink and an inflate step per
iteration, which keeps the volume) removes the voxel terraces, whose area a curved surface's raw mesh
over-states by up to about 10 %.

Coordinates are LPS millimetres (x to the patient's Left, y Posterior, z Superior), what segmorph uses
everywhere; ``frame="RAS"`` turns them 180 degrees about z (x Right, y Anterior) for tools that expect RAS.
Every file states its frame: the STL header text, an OBJ comment, a PLY comment, the VTK header line.

Example:
    >>> meshes = mesh(read_image("mask.nii.gz", is_label=True), labels={1: "anterior", 2: "posterior"})
    >>> meshes[0].volume_mm3, meshes[0].watertight
    >>> meshes[0].write("anterior.stl")
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segmorph.errors import SegmorphError
from segmorph.image import Image
from segmorph.io import atomic_write_bytes, atomic_write_text, case_name, read_image
from segmorph.outputs import Output, check_outputs
from segmorph.segmentation.names import DEFAULT_SMOOTH, FORMATS

__all__ = ["FORMATS", "FRAMES", "LabelMesh", "MeshFiles", "close_surface", "draw_meshes", "label_values", "mesh",
           "mesh_files", "mesh_label", "vtk_polydata", "write_mesh"]  # fmt: skip

FRAMES = ("LPS", "RAS")
FRAME_AXES = {"LPS": ("Left", "Posterior", "Superior"), "RAS": ("Right", "Anterior", "Superior")}
# The iso-level on the 0/1 mask: a hair above one half. At exactly 0.5 the saddles of the cube faces and bodies
# between diagonal voxels tie with the level, and Lewiner's tables then leave holes; above it, voxels that touch
# only at an edge or a corner are meshed apart (the foreground's 6-connectivity). Vertices move 0.0001 voxel.
LEVEL = 0.5001
MAX_LABELS = 255  # more foreground values than this: a scan, not a label map
TAUBIN_SHRINK, TAUBIN_INFLATE = 0.5, 0.53  # Taubin's lambda and -mu: pass-band k = 1/0.5 - 1/0.53 = 0.11
PREVIEW_FACES = 60_000  # the picture draws at most about this many triangles in all (coarser meshes beyond)


@dataclass(frozen=True, eq=False)
class LabelMesh:
    """One label's closed surface.

    Attributes:
        value: The label value meshed.
        name: Its name (from the dataset or run; ``label_<value>`` when unnamed).
        vertices: ``(V, 3)`` float64 positions in mm, in ``frame``.
        faces: ``(F, 3)`` int64 vertex indices, counter-clockwise seen from outside (normals point outwards).
        frame: ``"LPS"`` or ``"RAS"``.
        volume_mm3: Volume the surface encloses (mm^3).
        surface_area_mm2: Area of the surface (mm^2).
        watertight: Every edge is shared by exactly two faces (a closed surface).
        voxels: Number of voxels holding the label.
        voxel_volume_mm3: ``voxels`` times the volume of one voxel, to compare with ``volume_mm3``.
        repairs: What was done to close the surface (empty when marching cubes gave a closed one).
    """

    value: int
    name: str
    vertices: np.ndarray
    faces: np.ndarray
    frame: str
    volume_mm3: float
    surface_area_mm2: float
    watertight: bool
    voxels: int
    voxel_volume_mm3: float
    repairs: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """The measures as a JSON-ready dict (no vertices)."""
        return {"name": self.name, "value": self.value, "vertices": int(len(self.vertices)),
                "faces": int(len(self.faces)), "volume_mm3": round(self.volume_mm3, 3),
                "surface_area_mm2": round(self.surface_area_mm2, 3), "watertight": self.watertight,
                "voxels": self.voxels, "voxel_volume_mm3": round(self.voxel_volume_mm3, 3),
                "coordinate_system": self.frame, "units": "mm", "repairs": list(self.repairs)}  # fmt: skip

    def write(self, path: str | Path, format: str | None = None) -> Path:
        """Write the mesh (atomically); the format from ``format`` or the file's suffix. See :func:`write_mesh`."""
        return write_mesh(self, path, format)


# -- meshing ----------------------------------------------------------------------------------------


def label_values(mask: Image, path: str | Path | None = None) -> list[int]:
    """The foreground values of a 3D label map, checked to be meshable.

    Raises:
        SegmorphError: Not a 3D one-channel label map, no foreground, or more than :data:`MAX_LABELS` values
            (a scan rather than a label map), naming ``path``.
    """
    if mask.ndim != 3:
        raise SegmorphError(f"meshes need a 3D label map, got a {mask.ndim}D image", path)
    if mask.data.shape[0] != 1:
        raise SegmorphError(f"a label map has one channel, got {mask.data.shape[0]}", path)
    array = mask.numpy()
    if not np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)) or array.min() < 0:
            raise SegmorphError("not a label map: holds values that are not whole numbers of at least 0", path)
    elif array.min() < 0:
        raise SegmorphError(f"not a label map: holds the negative value {array.min()}", path)
    values = [int(v) for v in np.unique(array) if v != 0]
    if not values:
        raise SegmorphError("label map holds no foreground label (every voxel is 0): nothing to mesh", path)
    if len(values) > MAX_LABELS:
        raise SegmorphError(f"not a label map: holds {len(values)} distinct foreground values (at most "
                            f"{MAX_LABELS} labels are meshed); is this a scan?", path)  # fmt: skip
    return values


def mesh_label(mask: Image, value: int, name: str | None = None, smooth: int = DEFAULT_SMOOTH,
               frame: str = "LPS") -> LabelMesh:  # fmt: skip
    """The closed surface of one label of a 3D label map, in world mm.

    Args:
        mask: Label map ``(1, I, J, K)`` with its geometry.
        value: The label to mesh (its voxels are the inside).
        name: The label's name (default ``label_<value>``).
        smooth: Taubin smoothing iterations (0: the raw marching-cubes surface).
        frame: ``"LPS"`` (segmorph's world) or ``"RAS"``.

    Returns:
        The mesh with its volume, area and the voxel volume of the label.

    Raises:
        SegmorphError: The label is absent, ``smooth`` is negative or ``frame`` unknown.
    """
    import trimesh
    from skimage.measure import marching_cubes

    if frame not in FRAMES:
        raise SegmorphError(f"frame: expected one of {', '.join(FRAMES)}, got {frame!r}")
    if smooth < 0:
        raise SegmorphError(f"smooth: expected at least 0 iterations, got {smooth}")
    inside = mask.numpy()[0] == value
    voxels = int(np.count_nonzero(inside))
    if not voxels:
        raise SegmorphError(f"label {value} is absent from the label map")
    start, stop = _bounding_box(inside)
    box = np.pad(inside[tuple(slice(a, b) for a, b in zip(start, stop))], 1).astype(np.float32)
    index, faces, _, _ = marching_cubes(box, LEVEL, gradient_direction="ascent")  # outward on the index grid
    linear = mask.affine.matrix[:3, :3]
    if np.linalg.det(linear) < 0:  # a mirroring grid turns the index grid's outward winding inwards
        faces = faces[:, ::-1]
    world = mask.affine.voxel_to_world(index + (start - 1))
    if frame == "RAS":
        world = world * np.array([-1.0, -1.0, 1.0])  # a half turn about z: the winding is kept
    surface = trimesh.Trimesh(world, faces, process=True)
    if smooth:
        trimesh.smoothing.filter_taubin(surface, lamb=TAUBIN_SHRINK, nu=TAUBIN_INFLATE, iterations=2 * smooth)
    repairs = close_surface(surface)
    return LabelMesh(value, name or f"label_{value}", np.asarray(surface.vertices, dtype=np.float64),
                     np.asarray(surface.faces, dtype=np.int64), frame, float(surface.volume), float(surface.area),
                     bool(surface.is_watertight), voxels, voxels * abs(float(np.linalg.det(linear))),
                     repairs)  # fmt: skip


def _bounding_box(inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last index along each axis of the True voxels (at least one)."""
    others = [tuple(a for a in range(inside.ndim) if a != d) for d in range(inside.ndim)]
    spans = [np.flatnonzero(inside.any(axis=axes)) for axes in others]
    return np.array([span[0] for span in spans]), np.array([span[-1] + 1 for span in spans])


def close_surface(surface: Any) -> tuple[str, ...]:
    """Close a ``trimesh.Trimesh`` in place when it is open: fill its holes and make its winding consistent.

    Returns:
        What was done (empty when the surface was closed already); ``"still open after repair"`` last when
        filling could not close it.
    """
    import trimesh

    if surface.is_watertight:
        return ()
    repairs = []
    if trimesh.repair.fill_holes(surface):
        repairs.append("filled holes")
    trimesh.repair.fix_normals(surface)
    repairs.append("made the winding consistent")
    if not surface.is_watertight:
        repairs.append("still open after repair")
    return tuple(repairs)


def mesh(
    mask: Image | str | Path,
    labels: Mapping[int, str] | None = None,
    *,
    labels_from: str | Path | None = None,
    smooth: int = DEFAULT_SMOOTH,
    frame: str = "LPS",
) -> list[LabelMesh]:
    """One closed surface per foreground label of a 3D label map, in world mm, with volume and area.

    Args:
        mask: A label map ``(1, I, J, K)`` or the path of one.
        labels: Label value -> name; values it does not name are called ``label_<value>``.
        labels_from: A run folder, dataset folder or its ``plan.json`` / ``dataset.json`` naming the labels
            (when ``labels`` is None).
        smooth: Taubin smoothing iterations (0: the raw marching-cubes surface, whose area over-states a curved
            surface's by up to about 10 %; the default 10 brings a sphere's area within about 1.5 %).
        frame: ``"LPS"`` (segmorph's world: x Left, y Posterior, z Superior) or ``"RAS"``.

    Returns:
        The meshes in increasing label value.

    Raises:
        SegmorphError: Not a 3D label map, no foreground, unreadable label names.

    Example:
        >>> import segmorph as sm
        >>> for m in sm.mesh("mask.nii.gz", labels={1: "anterior", 2: "posterior"}):
        ...     print(m.name, m.volume_mm3, m.surface_area_mm2, m.watertight)
    """
    path = Path(mask) if isinstance(mask, (str, Path)) else None
    image = read_image(path, is_label=True) if path is not None else mask
    if labels is None and labels_from is not None:
        from segmorph.segmentation.evaluate import read_label_names

        labels = read_label_names(labels_from)
    names = dict(labels or {})
    return [mesh_label(image, value, names.get(value), smooth, frame) for value in label_values(image, path)]


# -- files ------------------------------------------------------------------------------------------


def _header(mesh: LabelMesh) -> str:
    x, y, z = FRAME_AXES[mesh.frame]
    return (f"segmorph mesh of label {mesh.value} ({mesh.name}); coordinates {mesh.frame} mm "
            f"(x {x}, y {y}, z {z})")  # fmt: skip


def write_mesh(mesh: LabelMesh, path: str | Path, format: str | None = None) -> Path:
    """Write a mesh atomically as binary STL, OBJ, binary PLY or legacy ASCII VTK POLYDATA.

    The coordinate frame and the label are stated in the file: the STL header's 80 bytes, an OBJ comment, a
    PLY comment, the VTK header line.

    Args:
        mesh: The mesh.
        path: The file to write.
        format: ``stl``, ``obj``, ``ply`` or ``vtk``; default the file's suffix.

    Raises:
        SegmorphError: An unknown format or a failed write.
    """
    path = Path(path)
    format = (format or path.suffix.lstrip(".")).lower()
    if format not in FORMATS:
        raise SegmorphError(f"unknown mesh format {format!r}: expected one of {', '.join(FORMATS)}", path)
    if format == "vtk":
        return atomic_write_text(path, vtk_polydata(mesh))
    import trimesh

    surface = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    header = _header(mesh)
    if format == "obj":
        return atomic_write_text(path, surface.export(file_type="obj", header=header, include_normals=False))
    payload = surface.export(file_type=format)
    if format == "stl":  # 80 header bytes; "solid" at the start would announce an ASCII file
        text = header.encode("ascii", "replace")[:80]
        payload = text.ljust(80, b" ") + payload[80:]
    else:  # ply: one comment line after the format line
        start, end = payload.index(b"\n", payload.index(b"format")) + 1, payload.index(b"end_header")
        lines = [ln for ln in payload[start:end].split(b"\n") if ln and not ln.startswith(b"comment")]
        comment = b"comment " + header.encode("ascii", "replace")
        payload = payload[:start] + b"\n".join([comment, *lines]) + b"\n" + payload[end:]
    return atomic_write_bytes(path, payload)


def vtk_polydata(mesh: LabelMesh) -> str:
    """The mesh as a legacy VTK file (ASCII ``POLYDATA``: ``POINTS`` in mm, triangle ``POLYGONS``)."""
    buffer = io.StringIO()
    buffer.write(f"# vtk DataFile Version 3.0\n{_header(mesh)[:255]}\nASCII\nDATASET POLYDATA\n")
    buffer.write(f"POINTS {len(mesh.vertices)} double\n")
    np.savetxt(buffer, mesh.vertices, fmt="%.9g")
    buffer.write(f"POLYGONS {len(mesh.faces)} {4 * len(mesh.faces)}\n")
    np.savetxt(buffer, np.column_stack([np.full(len(mesh.faces), 3), mesh.faces]), fmt="%d")
    return buffer.getvalue()


def file_stem(name: str, value: int) -> str:
    """A label name made safe for a file name: letters, digits, ``-``, ``_`` and ``.``; ``label_<value>`` if none."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or f"label_{value}"


@dataclass(frozen=True)
class MeshFiles:
    """What :func:`mesh_files` wrote.

    Attributes:
        meshes: The meshes, in increasing label value.
        files: One mesh file per mesh, in the same order.
        record: ``<case>_meshes.json``.
        preview: ``<case>_meshes.png``, or None without ``preview``.
    """

    meshes: list[LabelMesh]
    files: list[Path]
    record: Path
    preview: Path | None


def mesh_files(
    mask: str | Path,
    out_dir: str | Path,
    *,
    format: str = "stl",
    smooth: int = DEFAULT_SMOOTH,
    labels_from: str | Path | None = None,
    preview: bool = False,
    frame: str = "LPS",
) -> MeshFiles:
    """Mesh every label of a label map file into ``out_dir`` (what ``segmorph mesh`` runs).

    Writes ``<case>_<label name>.<format>`` per label, ``<case>_meshes.json`` (per label: name, value, vertex
    and face counts, volume_mm3, surface_area_mm2, watertight, voxel_volume_mm3, coordinate system) and, with
    ``preview``, ``<case>_meshes.png``, each atomically. ``<case>`` is the mask's file name without its suffix.

    Args:
        mask: A label map file (or DICOM folder).
        out_dir: The folder to write into (created when missing).
        format: ``stl``, ``obj``, ``ply`` or ``vtk``.
        smooth: Taubin smoothing iterations (see :func:`mesh`).
        labels_from: A run folder, dataset folder, ``plan.json`` or ``dataset.json`` naming the labels.
        preview: Also draw the meshes.
        frame: ``"LPS"`` or ``"RAS"``.

    Raises:
        SegmorphError: Bad input (before anything is written), or an output that would overwrite an input.
    """
    mask, out_dir = Path(mask), Path(out_dir)
    if format not in FORMATS:
        raise SegmorphError(f"unknown mesh format {format!r}: expected one of {', '.join(FORMATS)}", out_dir)
    case = case_name(mask)
    inputs = [mask, labels_from]
    record_path, preview_path = out_dir / f"{case}_meshes.json", out_dir / f"{case}_meshes.png"
    check_outputs([Output.folder(out_dir), record_path, *([preview_path] if preview else [])], inputs=inputs)
    image = read_image(mask, is_label=True)
    values = label_values(image, mask)
    names = _names(values, labels_from)
    stems = _unique_stems(values, names)
    paths = [out_dir / f"{case}_{stems[value]}.{format}" for value in values]
    check_outputs([Output.folder(out_dir), *paths, record_path], inputs=inputs)
    meshes = [mesh_label(image, value, names[value], smooth, frame) for value in values]
    for item, path in zip(meshes, paths):
        write_mesh(item, path, format)
    drawn = draw_meshes(meshes, preview_path, title=f"{case}: surface meshes") if preview else None
    record = {"mask": str(mask), "coordinate_system": frame, "units": "mm", "format": format,
              "smooth_iterations": smooth, "labels": [dict(m.record(), file=p.name) for m, p in zip(meshes, paths)]}  # fmt: skip
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return MeshFiles(meshes, paths, record_path, drawn)


def _names(values: Sequence[int], labels_from: str | Path | None) -> dict[int, str]:
    known: dict[int, str] = {}
    if labels_from is not None:
        from segmorph.segmentation.evaluate import read_label_names

        known = read_label_names(labels_from)
    return {value: known.get(value) or f"label_{value}" for value in values}


def _unique_stems(values: Sequence[int], names: Mapping[int, str]) -> dict[int, str]:
    stems = {value: file_stem(names[value], value) for value in values}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1  # case-insensitive file systems too
    return {value: stem if counts[stem.lower()] == 1 else f"{stem}_{value}" for value, stem in stems.items()}


# -- preview ----------------------------------------------------------------------------------------


def draw_meshes(meshes: Sequence[LabelMesh], path: str | Path, title: str = "surface meshes") -> Path:
    """A PNG of the meshes seen from the front and from the side, shaded, with a legend and axes in mm.

    Meshes with many triangles are drawn from a coarser copy (vertices merged on a grid) so that the picture
    holds at most about :data:`PREVIEW_FACES` triangles; the files keep every triangle.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    from segmorph.plots import save_figure

    total = sum(len(m.faces) for m in meshes)
    frame = meshes[0].frame if meshes else "LPS"
    names = {"x": f"x (mm, to {FRAME_AXES[frame][0]})", "y": f"y (mm, to {FRAME_AXES[frame][1]})"}
    front, left = (-90, 0) if frame == "LPS" else (90, 180)  # camera azimuths: anterior and the patient's left
    figure = plt.figure(figsize=(11, 5.5))
    low, high = _bounds(meshes)
    for column, (words, azimuth, depth) in enumerate((("front", front, "y"), ("left", left, "x"))):
        axes = figure.add_subplot(1, 2, column + 1, projection="3d")
        light = _light(elevation=15, azimuth=azimuth)
        for item in meshes:
            vertices, faces = _coarser(item.vertices, item.faces, PREVIEW_FACES * len(item.faces) // max(total, 1))
            triangles = vertices[faces]
            normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
            normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
            shade = 0.3 + 0.7 * np.clip(normals @ light, 0, 1)
            colours = shade[:, None] * _colour(item.value)  # edges too: no hairline gaps between triangles
            axes.add_collection3d(Poly3DCollection(triangles, facecolors=colours, edgecolors=colours, linewidths=0.2))
        axes.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]), zlim=(low[2], high[2]))
        axes.set_zlabel("z (mm, to Superior)", labelpad=12)  # clear of the tick labels
        axes.set_box_aspect(tuple(high - low))
        axes.view_init(elev=15, azim=azimuth)
        for axis in "xy":  # the axis along the line of sight is seen end-on: no labels
            getattr(axes, f"set_{axis}label")("" if axis == depth else names[axis])
            if axis == depth:
                getattr(axes, f"set_{axis}ticklabels")([])
        axes.set_title(f"seen from the {words} ({frame} mm)")
    handles = [Patch(color=_colour(m.value), label=f"{m.name} ({m.value}): {m.volume_mm3:,.0f} mm³") for m in meshes]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4) or 1, frameon=False)
    figure.suptitle(title)
    return save_figure(figure, path)


def _colour(value: int) -> np.ndarray:
    """The label's colour in segmorph's other pictures (the palette repeats after its sixth colour)."""
    from segmorph.plots import LABEL_COLOURS

    return LABEL_COLOURS[1 + (value - 1) % (len(LABEL_COLOURS) - 1)]


def _light(elevation: float, azimuth: float) -> np.ndarray:
    """A unit vector towards a light above and to the left of a camera at ``elevation``, ``azimuth`` (degrees)."""
    e, a = np.deg2rad(elevation), np.deg2rad(azimuth)
    camera = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    side = np.array([-np.sin(a), np.cos(a), 0.0])  # the camera's left, in the horizontal plane
    light = camera + 0.6 * np.array([0.0, 0.0, 1.0]) + 0.4 * side
    return light / np.linalg.norm(light)


def _bounds(meshes: Sequence[LabelMesh]) -> tuple[np.ndarray, np.ndarray]:
    """A box around every mesh with equal margins; at least 1 mm a side."""
    if not meshes:
        return np.zeros(3), np.ones(3)
    points = np.concatenate([m.vertices for m in meshes])
    low, high = points.min(0), points.max(0)
    margin = 0.05 * (high - low).max() + 0.5
    return low - margin, high + margin


def _coarser(vertices: np.ndarray, faces: np.ndarray, most: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertex clustering: vertices merged on a grid whose cells double until at most ``most`` faces are left."""
    cell = (vertices.max(0) - vertices.min(0)).max() / 256 if len(vertices) else 1.0
    while len(faces) > max(most, 100) and cell > 0:
        keys = np.floor((vertices - vertices.min(0)) / cell).astype(np.int64)
        _, first, cluster = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        merged = cluster.reshape(-1)[faces]
        keep = (merged[:, 0] != merged[:, 1]) & (merged[:, 1] != merged[:, 2]) & (merged[:, 0] != merged[:, 2])
        vertices, faces, cell = vertices[first], merged[keep], cell * 2
    return vertices, faces
