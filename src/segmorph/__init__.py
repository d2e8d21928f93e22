"""segmorph: medical image segmentation, registration and classification (the public Python API).

Every name below is imported on first use (PEP 562), so ``import segmorph`` stays cheap: torch,
SimpleITK and the networks load only when a function or class that needs them is touched.

Example:
    >>> import segmorph as sm
    >>> run = sm.train("Task04_Hippocampus", out="runs/h", time_budget="20m")
    >>> mask = sm.Segmenter("runs/h")(sm.read_image("scan.nii.gz"))
    >>> T = sm.register(fixed, moving, method="deformable")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from segmorph.threads import prefer_passive_waiting

__version__ = "0.1.0"

prefer_passive_waiting()  # before anything imports torch, which reads it once (see segmorph.threads)

# Public name -> (module, attribute in that module).
_EXPORTS: dict[str, tuple[str, str]] = {
    "train": ("segmorph.segmentation.api", "train"),
    "cross_validate": ("segmorph.segmentation.api", "cross_validate"),
    "find_best": ("segmorph.segmentation.find_best", "find_best"),
    "plan": ("segmorph.segmentation.api", "plan"),
    "Segmenter": ("segmorph.segmentation.api", "Segmenter"),
    "evaluate": ("segmorph.segmentation.api", "evaluate"),
    "register": ("segmorph.registration.api", "register"),
    "Transform": ("segmorph.registration.transform", "Transform"),
    "train_registration": ("segmorph.registration.learned.training", "train_registration_run"),
    "train_classifier": ("segmorph.classification.api", "train_classifier"),
    "Classifier": ("segmorph.classification.api", "Classifier"),
    "cross_validate_classifier": ("segmorph.classification.api", "cross_validate_classifier"),
    "read_image": ("segmorph.io", "read_image"),
    "write_image": ("segmorph.io", "write_image"),
    "Image": ("segmorph.image", "Image"),
    "Sample": ("segmorph.image", "Sample"),
    "Affine": ("segmorph.geometry", "Affine"),
    "SegmorphError": ("segmorph.errors", "SegmorphError"),
    "check_dataset": ("segmorph.qc.quality", "check_dataset"),
    "enhance": ("segmorph.processing.steps", "enhance"),
    "baseline": ("segmorph.segmentation.baselines", "segment"),
    "view": ("segmorph.report.view_files", "write_view"),
    "mesh": ("segmorph.segmentation.mesh", "mesh"),
    "pretrain": ("segmorph.pretraining.api", "pretrain"),
}

__all__ = [
    "Affine", "Classifier", "Image", "Sample", "SegmorphError", "Segmenter", "Transform", "baseline", "check_dataset",
    "cross_validate", "enhance", "find_best", "evaluate", "mesh", "plan", "pretrain", "view",
    "cross_validate_classifier", "read_image", "register", "train", "train_classifier", "train_registration",
    "write_image",
]  # fmt: skip

if TYPE_CHECKING:  # for type checkers and editors; at run time the names come from __getattr__
    from segmorph.classification.api import Classifier, cross_validate_classifier, train_classifier
    from segmorph.errors import SegmorphError
    from segmorph.geometry import Affine
    from segmorph.image import Image, Sample
    from segmorph.io import read_image, write_image
    from segmorph.pretraining.api import pretrain
    from segmorph.processing.steps import enhance
    from segmorph.qc.quality import check_dataset
    from segmorph.registration.api import register
    from segmorph.registration.learned.training import train_registration_run as train_registration
    from segmorph.registration.transform import Transform
    from segmorph.report.view_files import write_view as view
    from segmorph.segmentation.api import Segmenter, cross_validate, evaluate, plan, train
    from segmorph.segmentation.baselines import segment as baseline
    from segmorph.segmentation.find_best import find_best
    from segmorph.segmentation.mesh import mesh


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it in the module (later look-ups are plain attributes)."""
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'segmorph' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (and the version), whether imported yet or not."""
    return sorted([*__all__, "__version__"])
