"""Using a trained classifier: load it from its run folder, score one image, classify many (with Grad-CAM maps).

A run folder of :func:`segmorph.classification.pipeline.train_classifier` keeps its network in ``classifier.pt``;
a cross-validation run is loaded as its folds' mean or its final model
(:func:`segmorph.classification.ensemble.load_run_classifier`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmorph.classification.data import InputSpec, Placement, prepare_image, to_original_grid
from segmorph.classification.pipeline import MODEL_FILE, probability_columns, threshold_text, write_csv
from segmorph.classification.task import predict_probabilities
from segmorph.engine.checkpoints import load_checkpoint, model_from_checkpoint
from segmorph.errors import SegmorphError
from segmorph.image import Image
from segmorph.interpret.gradcam import grad_cam, save_cam_overlay
from segmorph.io import list_images, read_image, strip_suffix
from segmorph.metrics.classification import predict_classes
from segmorph.nn import build_network
from segmorph.outputs import Output, check_outputs
from segmorph.progress import console, track


def load_classifier(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The trained classifier of a run folder (``classifier.pt``) in eval mode, and its ``classifier`` facts."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise SegmorphError(f"no {MODEL_FILE}: not a finished classification run", run_dir)
    state, config, _ = load_checkpoint(path, map_location=device)
    if "classifier" not in config:
        raise SegmorphError("not a classifier checkpoint", path)
    with model_from_checkpoint(path):
        model = build_network(config["network"])
        model.load_state_dict(state)
    return model.to(device).eval(), config["classifier"]


def image_probabilities(
    model: torch.nn.Module, facts: dict[str, Any], image: Image, device: str | torch.device = "cpu",
    path: str | Path | None = None,
) -> tuple[np.ndarray, torch.Tensor, Placement]:  # fmt: skip
    """Class probabilities of one image with a loaded classifier (see :func:`load_classifier`).

    The image is prepared as in training (``facts["input"]``: size, channels, normalisation) and scored over
    the run's views (mirror, shifts).

    Args:
        model: The classifier, in eval mode.
        facts: Its ``classifier`` facts.
        image: Data ``(C, I, J[, K])``.
        device: Where the network runs.
        path: Named in error messages.

    Returns:
        ``(probabilities (K,) in the order of facts["class_names"], network input (C, *size), placement)``.
    """
    prepared, placement = prepare_image(image, InputSpec.from_dict(facts["input"]), path)
    probabilities = predict_probabilities(model, prepared[None], device, mirror=facts.get("mirror", False),
                                          shift=facts.get("shift", 0.0))[0].numpy()  # fmt: skip
    return probabilities, prepared, placement


def predict_classifier(
    run_dir: str | Path, image_paths: Sequence[str | Path], out_csv: str | Path | None = None,
    cam_dir: str | Path | None = None, device: str = "cpu", show_progress: bool = True,
    folds: str | Sequence[int] | None = None, use: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Classify images with a trained run; optionally write a CSV and Grad-CAM overlays.

    Args:
        run_dir: A run folder of :func:`~segmorph.classification.pipeline.train_classifier`, or a
            cross-validation run folder: then the mean probabilities of its folds, or its final model, at the
            out-of-fold threshold (one line says which; see
            :func:`segmorph.classification.ensemble.load_run_classifier`).
        image_paths: Image files, folders of images or DICOM series folders.
        out_csv: CSV to write (one row per image; None: none).
        cam_dir: Folder for ``<image name>_cam.png`` Grad-CAM overlays of the predicted class (None: none).
        device: Where the network runs.
        show_progress: Progress bar.
        folds: Cross-validation runs: the folds to average (default: all the run trained).
        use: Cross-validation runs: ``"final"`` or ``"ensemble"`` (default: the final model when trained).

    Returns:
        One dict per image: ``file``, ``predicted`` (class name; two classes: ``p_<positive> >= threshold``),
        ``p_<class>`` for every class, and ``cam`` (the overlay path, when written).
    """
    paths = list_images(image_paths)
    outputs = [] if out_csv is None else [Output.file(out_csv)]
    if cam_dir is not None:
        outputs += [
            Output.folder(cam_dir),
            *(Output.file(Path(cam_dir) / f"{strip_suffix(p)}_cam.png", p) for p in paths),
        ]
    check_outputs(outputs, inputs=[run_dir, *image_paths, *paths])  # before the model loads
    from segmorph.classification.ensemble import load_run_classifier  # it builds on this module

    loaded = load_run_classifier(run_dir, device, folds, use)
    model, facts = loaded.model, loaded.facts
    if loaded.kind != "single":
        console.print(f"predicting with {loaded.description}, threshold {threshold_text(facts['threshold'])} "
                      "(chosen on out-of-fold predictions)", highlight=False, soft_wrap=True)  # fmt: skip
    names, threshold = facts["class_names"], facts["threshold"]
    rows = []
    for path in track(paths, "classify", total=len(paths), enabled=show_progress):
        image = read_image(path)
        probabilities, prepared, placement = image_probabilities(model, facts, image, device, path)
        predicted = int(predict_classes(probabilities[None], threshold)[0])
        row = {"file": str(path), "predicted": names[predicted], **probability_columns(probabilities, names)}
        if cam_dir is not None:
            cam = grad_cam(model, prepared[None], predicted)[0]
            row["cam"] = str(save_cam_overlay(image.data, to_original_grid(cam, placement),
                                              Path(cam_dir) / f"{strip_suffix(path)}_cam.png",
                                              title=f"{Path(path).name}: {names[predicted]}"))  # fmt: skip
        rows.append(row)
    if out_csv is not None:
        write_csv(out_csv, rows)
    return rows
