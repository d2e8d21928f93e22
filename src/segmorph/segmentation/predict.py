"""A predictor built from a run folder: preprocess, sliding window, undo, postprocess, write.

Masks are written on each scan's own grid with exactly its geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segmorph.engine.checkpoints import check_network_fits, load_checkpoint, model_from_checkpoint
from segmorph.engine.sliding_window import compile_for_inference, sliding_window_logits
from segmorph.errors import SegmorphError
from segmorph.image import Image, Sample
from segmorph.io import list_images, mask_file_name, read_image, strip_suffix, write_image
from segmorph.nn import build_network
from segmorph.outputs import Output, check_outputs
from segmorph.progress import track
from segmorph.segmentation.plan import Plan
from segmorph.segmentation.postprocess import keep_largest_component
from segmorph.segmentation.preprocess import preprocess_sample, undo_preprocessing


@dataclass(frozen=True)
class PredictOptions:
    """How to predict.

    Attributes:
        mirror: Test-time augmentation by mirroring along every spatial axis.
        overlap: Sliding-window overlap in [0, 1).
        batch_size: Tiles per forward pass.
        largest_component: Keep only the largest connected component of each class.
        amp: bfloat16 autocast where the device runs it fast (:mod:`segmorph.engine.autocast`).
        checkpoint: ``"best"`` or ``"last"``.
        compile: Compile the network with TorchInductor (see :func:`segmorph.engine.sliding_window.compile_for_inference`).
    """

    mirror: bool = True
    overlap: float = 0.5
    batch_size: int = 4
    largest_component: bool = False
    amp: bool = False
    checkpoint: str = "best"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.checkpoint not in ("best", "last"):
            raise SegmorphError(f"checkpoint: expected 'best' or 'last', got {self.checkpoint!r}")
        if not 0 <= self.overlap < 1:
            raise SegmorphError(f"overlap: expected a fraction in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise SegmorphError(f"batch_size: expected at least 1, got {self.batch_size}")


class Predictor:
    """Segment scans with the model saved in a run folder (plan.json + checkpoint)."""

    def __init__(self, run_dir: str | Path, device: str = "cpu", options: PredictOptions = PredictOptions()) -> None:
        self.run_dir = Path(run_dir)
        self.plan = Plan.load(self.run_dir / "plan.json")
        self.device = torch.device(device)
        self.options = options
        checkpoint = self.run_dir / f"checkpoint_{options.checkpoint}.pt"
        state, config, _ = load_checkpoint(checkpoint, self.device)
        check_network_fits(config, {"ndim": self.plan.ndim, "in_channels": self.plan.network_channels,
                                    "num_classes": self.plan.num_classes}, checkpoint)  # fmt: skip
        with model_from_checkpoint(checkpoint):
            self.model = build_network(config["network"], deep_supervision=False)
            self.model.load_state_dict(state)
        self.model.to(self.device).eval()
        self.network = compile_for_inference(self.model) if options.compile else self.model

    def probabilities(self, image: Image) -> torch.Tensor:
        """Class probabilities ``(K, *S)`` on the scan's own grid."""
        if image.num_channels != len(self.plan.channel_names):
            raise SegmorphError(f"expected {len(self.plan.channel_names)} channels, got {image.num_channels}")
        if image.ndim != self.plan.ndim:
            raise SegmorphError(f"expected a {self.plan.ndim}D image, got {image.ndim}D")
        prepared, record = preprocess_sample(Sample("scan", image), self.plan.preprocess)
        mirror_axes = tuple(range(self.plan.ndim)) if self.options.mirror else ()
        scores = sliding_window_logits(
            self.network, prepared.image.data, self.plan.train.patch_size, overlap=self.options.overlap,
            batch_size=self.options.batch_size, mirror_axes=mirror_axes, device=self.device, amp=self.options.amp,
        )  # fmt: skip
        del prepared  # the preprocessed copy of the scan: not needed to map the scores back
        return undo_preprocessing(scores.cpu(), record)

    def segment(self, image: Image) -> tuple[Image, torch.Tensor]:
        """Label map ``(1, *S)`` (uint8; int32 beyond 256 classes) with exactly ``image``'s geometry, and the
        probabilities ``(K, *S)``."""
        probabilities = self.probabilities(image)
        labels = most_likely_class(probabilities)
        if self.options.largest_component:
            labels = keep_largest_component(labels, [k for k in self.plan.labels if k > 0])
        mask = Image(torch.from_numpy(labels[None]), image.affine, is_label=True)
        return mask, probabilities


def most_likely_class(probabilities: torch.Tensor, slab_voxels: int = 1 << 22) -> np.ndarray:
    """Argmax over classes of ``(K, *S)`` as a uint8 map ``(*S)`` (int32 beyond 256 classes).

    Slab by slab of the first spatial axis: an int64 argmax of the whole volume would take twice the
    memory of one float32 class map.
    """
    labels = torch.empty(probabilities.shape[1:], dtype=torch.uint8 if probabilities.shape[0] <= 256 else torch.int32)
    step = max(1, slab_voxels // max(1, labels[0].numel()))
    for start in range(0, labels.shape[0], step):
        labels[start : start + step] = probabilities[:, start : start + step].argmax(0)
    return labels.numpy()


def predict_files(
    run_dir: str | Path | Predictor, inputs: Sequence[str | Path], out_dir: str | Path, device: str = "cpu",
    options: PredictOptions = PredictOptions(), skip_existing: bool = False, overlays: bool = False,
    save_probabilities: bool = False, suffix: str | None = None, show_progress: bool = True,
) -> list[Path]:  # fmt: skip
    """Segment files, folders of files and DICOM series folders into ``out_dir``.

    Each scan is segmented by :meth:`Predictor.segment`, as :class:`segmorph.segmentation.api.Segmenter` does.

    Args:
        run_dir: Trained run folder, or a loaded :class:`Predictor` (e.g. a ``Segmenter``'s ``predictor``;
            ``device`` and ``options`` are then its own).
        inputs: Scans: files, folders of image files, DICOM series folders.
        out_dir: Where masks (``<case>.nii.gz``, or ``.png`` for PNG input) are written atomically.
        skip_existing: Leave cases whose mask already exists (continue an interrupted run).
        overlays: Also write ``<case>_overlay.png``: a few slices (a 2D image whole, at its own resolution)
            with the mask filled in and a legend of the run's label names (:func:`segmorph.plots.overlay_slices`).
        save_probabilities: Also write ``<case>_probabilities.nii.gz`` (K channels, float32).
        suffix: Force an output format (e.g. ``.nrrd``).
    """
    run = run_dir.run_dir if isinstance(run_dir, Predictor) else Path(run_dir)
    scans = prediction_targets(run, inputs, out_dir, suffix, overlays, save_probabilities)
    predictor = run_dir if isinstance(run_dir, Predictor) else Predictor(run_dir, device, options)
    out_dir = Path(out_dir)
    written = []
    for scan, target in track(scans, "predict", total=len(scans), enabled=show_progress):
        if skip_existing and is_complete(target):
            continue
        image = read_image(scan)
        try:
            mask, probabilities = predictor.segment(image)
        except SegmorphError as err:
            raise SegmorphError(err.problem, err.path or scan) from None
        if save_probabilities:
            write_image(Image(probabilities.float(), image.affine), out_dir / f"{strip_suffix(target)}_probabilities.nii.gz")
        if overlays:
            from segmorph.plots import overlay_slices

            overlay = out_dir / f"{strip_suffix(target)}_overlay.png"
            overlay_slices(image.numpy(), mask.numpy()[0], overlay, title=scan.name, label_names=predictor.plan.labels)
        written.append(write_image(mask, target))
    return written


def prediction_targets(
    run_dir: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, suffix: str | None = None,
    overlays: bool = False, save_probabilities: bool = False,
) -> list[tuple[Path, Path]]:  # fmt: skip
    """The scans of ``inputs`` and the mask each will be written to, checked before any work.

    Refuses (see :func:`segmorph.outputs.check_outputs`) a mask, overlay or probability map that would
    overwrite a scan, a file of the run folder or of a scan folder, or another output (two scans with one case
    name, ``k.nii.gz`` beside ``k_0000.nii.gz``), an output folder that is an input folder or the run folder,
    and an output folder that is a file or not writable. No image is read and no model loaded.

    Returns:
        ``(scan, mask path)`` pairs in input order.
    """
    scans = list_images(inputs)
    out_dir = Path(out_dir)
    targets = [(scan, out_dir / mask_file_name(scan, suffix)) for scan in scans]
    outputs = [Output.folder(out_dir)]
    for scan, target in targets:
        outputs.append(Output.file(target, scan))
        if save_probabilities:
            outputs.append(Output.file(out_dir / f"{strip_suffix(target)}_probabilities.nii.gz", scan))
        if overlays:
            outputs.append(Output.file(out_dir / f"{strip_suffix(target)}_overlay.png", scan))
    check_outputs(outputs, inputs=[run_dir, *inputs, *scans])
    return targets


def is_complete(mask: Path) -> bool:
    """True when ``mask`` exists and reads back whole (``--continue`` skips only such cases).

    Masks are renamed into place when complete, but a file left by another program, a copy cut short or a
    crash of an older version may not be.
    """
    if not mask.is_file():
        return False
    try:
        read_image(mask, is_label=True)
    except SegmorphError:
        return False
    return True
