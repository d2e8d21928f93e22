"""The Python API of registration: align two images in memory, measure the deformation.

``segmorph register`` reads the files, calls :func:`register` and writes the folder
(:mod:`segmorph.registration.run`). A :class:`~segmorph.registration.transform.Transform` maps fixed-world
points (mm, LPS) to moving-world points; ``transform.warp(moving, like=fixed)`` resamples the moving image
onto the fixed grid.

Example:
    >>> import segmorph as sm
    >>> fixed, moving = sm.read_image("fixed.nii.gz"), sm.read_image("moving.nii.gz")
    >>> T = sm.register(fixed, moving, method="deformable")
    >>> warped = T.warp(moving, like=fixed)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segmorph.errors import SegmorphError
from segmorph.image import Image, check_same_grid
from segmorph.metrics.registration import folding_fraction, jacobian_determinant, log_jacobian_std
from segmorph.registration.classical import ClassicalConfig, register_classical
from segmorph.registration.learned.config import check_passes, check_refine
from segmorph.registration.transform import Transform

if TYPE_CHECKING:
    from segmorph.registration.learned.model import LearnedRegistration

METHODS = ("rigid", "affine", "deformable", "learned", "structures")


@dataclass(frozen=True)
class DeformationQuality:
    """How regular a transform is on a grid (from the Jacobian determinant ``det(J)`` of ``x -> T(x)``).

    Attributes:
        folding_percent: Share of grid voxels where ``det(J) <= 0`` (the map folds), in percent.
        log_jacobian_std: Standard deviation of ``log det(J)`` (0 for a rigid or uniform map).
        jacobian_min: Smallest ``det(J)``.
    """

    folding_percent: float
    log_jacobian_std: float
    jacobian_min: float


def world_box(image: Image) -> tuple[np.ndarray, np.ndarray]:
    """World bounding box (mm) of the voxel centres of an image's grid: lowest and highest corner, ``(n,)`` each."""
    shape = np.array(image.spatial_shape) - 1
    corners = np.array(np.meshgrid(*[[0, s] for s in shape], indexing="ij")).reshape(image.ndim, -1).T
    points = image.affine.voxel_to_world(corners)
    return points.min(0), points.max(0)


def check_pair(fixed: Image, moving: Image, fixed_path: str | Path | None = None,
               moving_path: str | Path | None = None) -> None:  # fmt: skip
    """Refuse pairs that cannot be registered: 2D with 3D, or fields of view that do not overlap.

    Args:
        fixed: The fixed image.
        moving: The moving image.
        fixed_path: The fixed image's file, named in the message (default: ``fixed``).
        moving_path: The moving image's file, named by the error (default: the message names ``moving``).

    Raises:
        SegmorphError: The message names the moving file.
    """
    image = "the fixed image" if fixed_path is None else f"the fixed image {Path(fixed_path).name}"
    subject = "moving: " if moving_path is None else ""  # without a file to name, name the argument
    if fixed.ndim != moving.ndim:
        raise SegmorphError(f"{subject}is {moving.ndim}D but {image} is {fixed.ndim}D", moving_path)
    low_f, high_f = world_box(fixed)
    low_m, high_m = world_box(moving)
    if (np.minimum(high_f, high_m) < np.maximum(low_f, low_m)).any():
        raise SegmorphError(
            f"{subject}field of view does not overlap {image}'s "
            f"(fixed spans {_box(low_f, high_f)} mm, moving {_box(low_m, high_m)} mm)", moving_path,
        )  # fmt: skip


def _box(low: np.ndarray, high: np.ndarray) -> str:
    return " x ".join(f"[{a:.1f}, {b:.1f}]" for a, b in zip(low, high))


def _image(value: object, name: str) -> Image:
    if not isinstance(value, Image):
        raise SegmorphError(f"{name}: expected a segmorph Image (see segmorph.read_image), got {type(value).__name__}")
    return value


def load_registration_model(model: str | Path | LearnedRegistration, device: str = "cpu") -> LearnedRegistration:
    """A learned registration model: loaded from a ``train-registration`` run folder, or returned as given."""
    from segmorph.registration.learned.model import LearnedRegistration

    if isinstance(model, LearnedRegistration):
        return model
    if not isinstance(model, (str, Path)):
        raise SegmorphError(f"model: expected a train-registration run folder or a LearnedRegistration, "
                            f"got {type(model).__name__}")  # fmt: skip
    return LearnedRegistration.load(model, device)


def register(
    fixed: Image,
    moving: Image,
    method: str = "deformable",
    *,
    similarity: str = "ncc",
    model: str | Path | LearnedRegistration | None = None,
    moving_labels: Image | None = None,
    structures: tuple[Image, Image] | None = None,
    refine: int = 0,
    passes: int | None = None,
    prealign: str | None = None,
    config: ClassicalConfig | None = None,
    device: str = "cpu",
) -> Transform:
    """Align ``moving`` to ``fixed``; returns the fixed → moving :class:`Transform` (world mm, LPS).

    Args:
        fixed: Reference image ``(C, *S)``; its grid is where the warped images land.
        moving: Image to align (any grid overlapping ``fixed`` in the world; same number of axes).
        method: ``"rigid"``, ``"affine"``, ``"deformable"`` (affine, then a diffeomorphic velocity field),
            ``"learned"`` (needs ``model``) or ``"structures"`` (label maps only, needs ``structures``).
        similarity: Classical image similarity: ``"ncc"`` (same modality), ``"mse"``, ``"mi"`` or
            ``"mind"`` (multi-modal).
        model: A learned model: a ``train-registration`` run folder or a loaded ``LearnedRegistration``.
        moving_labels: The moving image's label map (its grid): guides a learned model trained with
            label guidance; other methods ignore it.
        structures: Segmentations of the fixed and the moving image (each on its image's grid, same
            label values), e.g. from :class:`segmorph.Segmenter`: aligned by label centroids and overlap, on
            their own with ``"structures"``, else as the starting point.
        refine: Learned: instance-optimisation steps polishing one network pass's field.
        passes: Learned: network passes instead of the model's.
        prealign: Learned: ``"auto"``, ``"prior"``, ``"affine"``, ``"com"`` or ``"none"`` instead of the model's.
        config: Classical optimiser settings (``similarity`` replaces its similarity).
        device: Where classical optimisation runs and a model given as a folder is loaded.

    Returns:
        The :class:`Transform`; ``T.warp(moving, like=fixed)`` gives the aligned image.

    Raises:
        SegmorphError: Not Images, 2D with 3D, fields of view that do not overlap, labels off their
            image's grid, or a method without what it needs.

    Example:
        >>> T = register(fixed, moving, method="affine")
        >>> T.matrix()  # (4, 4) world matrix, fixed -> moving
    """
    fixed, moving = _image(fixed, "fixed"), _image(moving, "moving")
    if method not in METHODS:
        raise SegmorphError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    check_pair(fixed, moving)
    if moving_labels is not None:
        labels = _image(moving_labels, "moving_labels")
        check_same_grid(labels, moving, "moving_labels: grid differs from the moving image's", None)
    start = None
    if structures is not None:
        aligned = _align_structures(fixed, moving, structures)
        if method == "structures":
            return aligned
        start = aligned.matrix()
    elif method == "structures":
        raise SegmorphError("method 'structures' needs structures=(fixed_labels, moving_labels)")
    if method == "learned":
        if model is None:
            raise SegmorphError("method 'learned' needs model= (a train-registration run folder or loaded model)")
        try:
            check_refine(refine)
            check_passes(1 if passes is None else passes)
        except ValueError as err:
            raise SegmorphError(str(err)) from None
        learned = load_registration_model(model, device)
        return learned.register(fixed, moving, refine=refine, matrix=start, prealign=prealign, passes=passes,
                                moving_labels=moving_labels)  # fmt: skip
    try:
        config = replace(config or ClassicalConfig(), similarity=similarity)
    except ValueError as err:
        raise SegmorphError(f"similarity: {err}") from None
    return register_classical(fixed, moving, method, config, start=start, device=device)


def _align_structures(fixed: Image, moving: Image, structures: tuple[Image, Image]) -> Transform:
    from segmorph.registration.structure import align_structures

    if not isinstance(structures, (tuple, list)) or len(structures) != 2:
        raise SegmorphError("structures: expected (fixed_labels, moving_labels)")
    fixed_labels, moving_labels = _image(structures[0], "structures[0]"), _image(structures[1], "structures[1]")
    check_same_grid(fixed_labels, fixed, "structures[0]: grid differs from the fixed image's", None)
    check_same_grid(moving_labels, moving, "structures[1]: grid differs from the moving image's", None)
    return align_structures(fixed_labels, moving_labels, method="affine")


def measure_deformation(transform: Transform, like: Image) -> DeformationQuality:
    """Folding and the spread of ``log det(J)`` of the whole transform on ``like``'s grid.

    Args:
        transform: A fixed → moving transform.
        like: The image whose grid is measured (usually the fixed image).

    Example:
        >>> measure_deformation(T, fixed).folding_percent  # 0.0 for a diffeomorphism
    """
    displacement = transform.displacement_on(like.affine, like.spatial_shape)
    jacobian = jacobian_determinant(displacement[None].double(), like.affine.matrix[:-1, :-1])
    return DeformationQuality(
        folding_percent=100.0 * folding_fraction(jacobian), log_jacobian_std=log_jacobian_std(jacobian),
        jacobian_min=float(jacobian.min()),
    )  # fmt: skip
