"""PNG pictures of a registration: checkerboards, differences, the deformed grid, the Jacobian map.

Display follows :func:`segmorph.plots.overlay_slices`: a 2D slice ``s[a, b]`` is drawn with its first
array axis across (columns, left to right) and its second down (rows, top to bottom), one square per
voxel (no spacing aspect). A 3D volume is shown as three orthogonal slices through the middle of the
fixed grid's array, index ``S[d] // 2`` along each axis ``d`` (titled e.g. ``K = 8``); a 2D image as
it is. Only the first channel of an image is shown. Files are written atomically (:mod:`segmorph.plots`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D

from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.metrics.registration import folding_fraction, jacobian_determinant, log_jacobian_std
from segmorph.plots import LABEL_COLOURS, normalise_for_display, plt, save_figure
from segmorph.registration.transform import Transform, world_to_voxel_vectors

AXIS_NAMES = "IJK"
View = tuple[str, tuple[int, int], np.ndarray]  # title, in-plane array axes, the slice


def checkerboard(a: np.ndarray, b: np.ndarray, squares: int = 8) -> np.ndarray:
    """Tiles of ``a`` and ``b`` alternating like a chessboard, ``a`` in the first tile.

    Args:
        a: 2D array ``(P, Q)``.
        b: 2D array, same shape as ``a``.
        squares: Tiles along each axis (at least 1); tile ``t`` of an axis of length ``L`` covers
            indices ``i`` with ``i * squares // L == t``.

    Returns:
        ``(P, Q)`` float64 array.
    """
    a, b = _check_pair(a, b)
    if squares < 1:
        raise ValueError(f"squares: expected at least 1, got {squares}")
    tile_p, tile_q = (np.arange(size) * squares // size for size in a.shape)
    return np.where((tile_p[:, None] + tile_q[None, :]) % 2 == 0, a, b)


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute difference ``|a - b|`` of two 2D arrays of the same shape, float64."""
    a, b = _check_pair(a, b)
    return np.abs(a - b)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"a: expected a 2D array, got shape {a.shape}")
    if b.shape != a.shape:
        raise ValueError(f"b: expected the shape of a {a.shape}, got {b.shape}")
    return a, b


def plot_registration_views(
    fixed: Image, moving_resampled: Image, warped: Image, path: str | Path, title: str = ""
) -> Path:
    """Checkerboard and absolute difference against ``fixed``, before (row 1) and after (row 2).

    Each image is display-normalised (0.5-99.5 percentiles) as a whole before slicing.

    Args:
        fixed: ``(C, *S)`` fixed image.
        moving_resampled: Moving image resampled onto the fixed grid without registration (identity).
        warped: Moving image warped onto the fixed grid by the registration result.
        path: Output PNG.
        title: Figure title.
    """
    _check_same_grid(fixed, moving_resampled=moving_resampled, warped=warped)
    reference = _views(_display(fixed), fixed.ndim)
    figure, axes = plt.subplots(2, 2 * len(reference), figsize=(5.6 * len(reference), 5.8), squeeze=False)
    for row, (name, image) in enumerate([("before", moving_resampled), ("after", warped)]):
        for column, ((view, _, a), (_, _, b)) in enumerate(zip(reference, _views(_display(image), image.ndim))):
            grey = {"cmap": "gray", "vmin": 0, "vmax": 1}
            _show(axes[row][2 * column], checkerboard(a, b), f"{name}: checkerboard {view}", **grey)
            heat = {"cmap": "magma", "vmin": 0, "vmax": 1}
            _show(axes[row][2 * column + 1], difference(a, b), f"{name}: |difference| {view}", **heat)
    figure.suptitle(title)
    return save_figure(figure, path)


def deformed_grid_positions(displacement: torch.Tensor, affine: Affine) -> list[tuple[str, np.ndarray]]:
    """Where each fixed voxel lands, ``index + u`` in voxel units of the fixed grid, per displayed slice.

    Args:
        displacement: ``(n, *S)`` world vectors in mm on the fixed grid.
        affine: The fixed grid's geometry.

    Returns:
        ``(title, positions)`` per displayed slice; ``positions`` is ``(2, P, Q)``: the landing
        positions along the slice's two array axes (the out-of-plane component is dropped).
    """
    _check_displacement(displacement, affine)
    voxels = world_to_voxel_vectors(displacement[None].detach().cpu().double(), affine)[0].numpy()
    positions = np.indices(voxels.shape[1:], dtype=np.float64) + voxels
    return [(title, view[list(plane)]) for title, plane, view in _views(positions, affine.ndim)]


def plot_deformation_grid(
    displacement: torch.Tensor,
    affine: Affine,
    path: str | Path,
    spacing_voxels: int = 4,
    background: np.ndarray | None = None,
) -> Path:
    """Lines of the fixed grid, every ``spacing_voxels`` voxels, drawn where the transform sends them.

    Args:
        displacement: ``(n, *S)`` world vectors in mm on the fixed grid (``T(x) = x + u(x)``).
        affine: The fixed grid's geometry.
        path: Output PNG.
        spacing_voxels: Voxels between drawn grid lines.
        background: Optional ``(*S)`` or ``(C, *S)`` image on the fixed grid drawn underneath.
    """
    if spacing_voxels < 1:
        raise ValueError(f"spacing_voxels: expected at least 1, got {spacing_voxels}")
    views = deformed_grid_positions(displacement, affine)
    backgrounds = [None] * len(views)
    if background is not None:
        backgrounds = [v[2] for v in _views(_background(background, displacement), affine.ndim)]
    figure, axes = plt.subplots(1, len(views), figsize=(4 * len(views), 4), squeeze=False)
    for axis, (title, positions), picture in zip(axes[0], views, backgrounds):
        if picture is not None:
            _show(axis, picture, title, cmap="gray", vmin=0, vmax=1)
        _draw_grid(axis, positions, spacing_voxels)
        axis.set_title(title, fontsize=9)
    figure.suptitle(f"deformed fixed grid, a line every {spacing_voxels} voxels")
    return save_figure(figure, path)


def _background(background: np.ndarray, displacement: torch.Tensor) -> np.ndarray:
    picture = np.asarray(background, dtype=np.float64)
    picture = picture[0] if picture.ndim == displacement.ndim else picture
    if picture.shape != tuple(displacement.shape[1:]):
        raise ValueError(
            f"background: expected (*S) or (C, *S) with S = {tuple(displacement.shape[1:])}, got {np.shape(background)}"
        )
    return normalise_for_display(picture)


def _draw_grid(axis: plt.Axes, positions: np.ndarray, step: int) -> None:
    across, down = positions
    style = {"color": "tab:orange", "linewidth": 0.8}
    for p in range(0, across.shape[0], step):
        axis.plot(across[p, :], down[p, :], **style)
    for q in range(0, across.shape[1], step):
        axis.plot(across[:, q], down[:, q], **style)
    axis.set_xlim(-0.5, across.shape[0] - 0.5)
    axis.set_ylim(across.shape[1] - 0.5, -0.5)  # second axis downwards, as imshow(origin="upper")
    axis.set_aspect("equal")
    axis.axis("off")


def plot_jacobian(displacement: torch.Tensor, affine: Affine, path: str | Path) -> dict[str, float]:
    """Map of ``det(dT/dx)``, diverging colours centred on 1, folded voxels (det <= 0) marked ×.

    Args:
        displacement: ``(n, *S)`` world vectors in mm on the fixed grid (``T(x) = x + u(x)``).
        affine: The fixed grid's geometry.
        path: Output PNG.

    Returns:
        ``{"folding_percent": % of all voxels with det <= 0, "log_jacobian_std": SD of log det}``,
        both over the whole grid (not only the drawn slices), as printed in the title.
    """
    _check_displacement(displacement, affine)
    linear = affine.matrix[: affine.ndim, : affine.ndim].copy()  # writable: torch warns on read-only arrays
    determinant = jacobian_determinant(displacement[None].detach().cpu().double(), linear)[0].numpy()
    stats = {"folding_percent": 100 * folding_fraction(determinant), "log_jacobian_std": log_jacobian_std(determinant)}
    half_range = max(float(np.abs(determinant - 1).max()), 0.05)
    norm = Normalize(1 - half_range, 1 + half_range)
    views = _views(determinant, affine.ndim)
    figure, axes = plt.subplots(1, len(views), figsize=(4 * len(views), 4), squeeze=False)
    for axis, (title, _, values) in zip(axes[0], views):
        shown = _show(axis, values, title, cmap="RdBu_r", norm=norm)
        across, down = np.nonzero(values <= 0)
        axis.scatter(across, down, marker="x", s=10, color="black", linewidths=0.7)
    figure.colorbar(shown, ax=list(axes[0]), label="det J (1: volume kept)", shrink=0.8)
    figure.suptitle(
        f"Jacobian determinant: folding {stats['folding_percent']:.2f} % (det ≤ 0, ×), "
        f"SD log det {stats['log_jacobian_std']:.3f}"
    )
    save_figure(figure, path)
    return stats


def plot_label_contours(
    fixed_labels: Image,
    before: Image,
    after: Image,
    path: str | Path,
    before_labels: Image | None = None,
    after_labels: Image | None = None,
    label_names: Mapping[int, str] | None = None,
) -> Path:
    """Fixed label contours (solid) over the moving image before (row 1) and after (row 2) registration.

    A legend below the panels gives each label's colour and name, and which line style is which image.

    Args:
        fixed_labels: ``(1, *S)`` integer labels of the fixed image.
        before: Moving image resampled onto the fixed grid without registration (identity).
        after: Moving image warped onto the fixed grid.
        path: Output PNG.
        before_labels: Optional moving labels resampled like ``before``; contours dashed.
        after_labels: Optional moving labels warped like ``after``; contours dashed.
        label_names: Label value -> name for the legend (0, the background, is never listed); a value
            without a name is called ``label <value>``.
    """
    _check_same_grid(fixed_labels, before=before, after=after, before_labels=before_labels, after_labels=after_labels)
    reference = _views(fixed_labels.numpy()[0], fixed_labels.ndim)
    size = (3.6 * len(reference), 7)
    figure, axes = plt.subplots(2, len(reference), figsize=size, squeeze=False, layout="constrained")
    for row, (name, image, labels) in enumerate([("before", before, before_labels), ("after", after, after_labels)]):
        moved = [None] * len(reference) if labels is None else _views(labels.numpy()[0], labels.ndim)
        pictures = _views(_display(image), image.ndim)
        for axis, fixed_view, picture, moved_view in zip(axes[row], reference, pictures, moved):
            _show(axis, picture[2], f"{name} {fixed_view[0]}", cmap="gray", vmin=0, vmax=1)
            _draw_contours(axis, fixed_view[2], "solid")
            if moved_view is not None:
                _draw_contours(axis, moved_view[2], "dashed")
    figure.suptitle("labels: fixed solid, moving dashed")
    maps = [fixed_labels] + [m for m in (before_labels, after_labels) if m is not None]
    values = {int(v) for m in maps for v in np.unique(m.numpy())}
    handles = label_legend_handles(values, label_names, moving=len(maps) > 1)
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    return save_figure(figure, path)


def label_legend_handles(values: Iterable[int], names: Mapping[int, str] | None, moving: bool) -> list[Line2D]:
    """Legend lines: one per foreground label (its contour colour and name), then the fixed and moving styles.

    Args:
        values: Label values present (0 and below are skipped).
        names: Label value -> name; every named foreground value is listed, present or not.
        moving: Add the dashed "moving" style line.
    """
    named = {int(v): str(n) for v, n in (names or {}).items() if int(v) > 0}
    shown = sorted(named.keys() | {int(v) for v in values if int(v) > 0})
    handles = [Line2D([], [], color=LABEL_COLOURS[min(v, len(LABEL_COLOURS) - 1)], linewidth=2,
                      label=named.get(v, f"label {v}")) for v in shown]  # fmt: skip
    handles.append(Line2D([], [], color="grey", linestyle="solid", label="fixed"))
    if moving:
        handles.append(Line2D([], [], color="grey", linestyle="dashed", label="moving"))
    return handles


def _draw_contours(axis: plt.Axes, labels: np.ndarray, style: str) -> None:
    for value in np.unique(labels):
        mask = labels == value
        if value <= 0 or mask.all():  # a contour needs both sides of the level
            continue
        colour = LABEL_COLOURS[min(int(value), len(LABEL_COLOURS) - 1)]
        axis.contour(mask.T.astype(float), levels=[0.5], colors=[colour], linestyles=style, linewidths=1.2)


def save_registration_pictures(
    folder: str | Path,
    fixed: Image,
    moving: Image,
    warped: Image,
    transform: Transform,
    fixed_labels: Image | None = None,
    warped_labels: Image | None = None,
    moving_labels: Image | None = None,
    label_names: Mapping[int, str] | None = None,
) -> list[Path]:
    """Write the pictures of one registration into ``folder``.

    ``views.png`` always; ``grid.png`` and ``jacobian.png`` when ``transform`` has a field step;
    ``labels.png`` when ``fixed_labels`` is given (moving labels drawn dashed where given).

    Args:
        folder: Output folder (created when missing).
        fixed: ``(C, *S)`` fixed image; its grid is the grid of every picture.
        moving: Moving image on its own grid.
        warped: ``moving`` warped onto the fixed grid by ``transform``.
        transform: The registration result, fixed world → moving world.
        fixed_labels: Optional ``(1, *S)`` labels of the fixed image.
        warped_labels: Optional moving labels warped onto the fixed grid.
        moving_labels: Optional moving labels on the moving grid (for the "before" row).
        label_names: Label value -> name for the legend of ``labels.png`` (default ``label <value>``).

    Returns:
        The paths written.
    """
    folder, grid, shape = Path(folder), fixed.affine, fixed.spatial_shape
    before = Transform.identity().warp(moving, grid, shape)
    written = [plot_registration_views(fixed, before, warped, folder / "views.png", "fixed vs moving")]
    if not transform.is_affine():
        displacement = transform.displacement_on(grid, shape)
        written.append(plot_deformation_grid(displacement, grid, folder / "grid.png", background=fixed.numpy()))
        plot_jacobian(displacement, grid, folder / "jacobian.png")
        written.append(folder / "jacobian.png")
    if fixed_labels is not None:
        before_labels = None if moving_labels is None else Transform.identity().warp(moving_labels, grid, shape)
        labels_path = folder / "labels.png"
        written.append(
            plot_label_contours(fixed_labels, before, warped, labels_path, before_labels, warped_labels, label_names)
        )
    return written


def _views(array: np.ndarray, ndim: int) -> list[View]:
    """The displayed slices of an array whose last ``ndim`` axes are spatial (leading axes kept)."""
    if ndim == 2:
        return [("", (0, 1), array)]
    lead = array.ndim - 3
    views = []
    for axis in range(3):
        middle = array.shape[lead + axis] // 2
        plane = tuple(d for d in range(3) if d != axis)
        views.append((f"{AXIS_NAMES[axis]} = {middle}", plane, np.take(array, middle, axis=lead + axis)))
    return views


def _show(axis: plt.Axes, values: np.ndarray, title: str, **style):
    """Draw a 2D slice, first array axis across and second down, as :func:`segmorph.plots.overlay_slices`."""
    shown = axis.imshow(values.T, origin="upper", **style)
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    return shown


def _display(image: Image) -> np.ndarray:
    """First channel, ``(*S)`` float64, scaled to 0..1 for display."""
    return normalise_for_display(image.numpy()[0].astype(np.float64))


def _check_same_grid(reference: Image, **others: Image | None) -> None:
    for name, image in others.items():
        if image is None:
            continue
        if not image.same_grid(reference):
            raise ValueError(
                f"{name}: expected the fixed grid {reference.spatial_shape} {reference.affine!r}, "
                f"got {image.spatial_shape} {image.affine!r}"
            )


def _check_displacement(displacement: torch.Tensor, affine: Affine) -> None:
    n = affine.ndim
    if displacement.ndim != n + 1 or displacement.shape[0] != n:
        raise ValueError(f"displacement: expected ({n}, *S) for a {n}D grid, got shape {tuple(displacement.shape)}")
