"""A predictor built from a run folder: preprocess, sliding window, undo, postprocess, write.

Masks are written on each scan's own grid with exactly its geometry: as image files, or for DICOM series as a
DICOM-SEG or RT-STRUCT object referring to the series (:data:`OUTPUT_FORMATS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from segmorph.engine.checkpoints import check_network_fits, load_checkpoint, model_from_checkpoint
from segmorph.engine.sliding_window import compile_for_inference, slicewise_logits, sliding_window_logits
from segmorph.errors import SegmorphError
from segmorph.image import Image, Sample
from segmorph.io import is_segmentation_file, list_images, mask_file_name, read_image, strip_suffix, write_image
from segmorph.nn import build_network
from segmorph.outputs import Output, check_outputs
from segmorph.progress import track
from segmorph.segmentation.plan import Plan
from segmorph.segmentation.postprocess import keep_largest_component
from segmorph.segmentation.preprocess import preprocess_sample, undo_preprocessing

if TYPE_CHECKING:  # the ensemble module builds on this one
    from segmorph.segmentation.ensemble import EnsemblePredictor

# How masks are written: image files (suffix chosen by the scan or given), or DICOM objects referring to their
# series, named by the case id and these suffixes.
OUTPUT_FORMATS = ("image", "dicom-seg", "rtstruct")
DICOM_SUFFIXES = {"dicom-seg": ".dcm", "rtstruct": "_rtstruct.dcm"}


@dataclass(frozen=True)
class PredictOptions:
    """How to predict.

    Attributes:
        mirror: Test-time augmentation by mirroring along every spatial axis.
        overlap: Sliding-window overlap in [0, 1).
        batch_size: Tiles per forward pass.
        largest_component: Keep only the largest connected component of each class.
        amp: bfloat16 autocast where the device runs it fast (CUDA; CPUs with AMX or AVX512-BF16; a no-op elsewhere,
            see :mod:`segmorph.engine.autocast`). On by default: out of fold on 208 hippocampus cases it changed the
            mean Dice by +0.00001 (2.6e-5 of the voxels' labels) and halved the time a case (benchmarks/RESULTS.md);
            False for float32 everywhere (bit-exact work).
        checkpoint: ``"best"`` or ``"last"``.
        compile: Compile the network with TorchInductor (see :func:`segmorph.engine.sliding_window.compile_for_inference`).
    """

    mirror: bool = True
    overlap: float = 0.5
    batch_size: int = 4
    largest_component: bool = False
    amp: bool = True
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
        """Class probabilities ``(K, *S)`` on the scan's own grid.

        A 2D network of a 3D plan (``plan.slice_axis``) runs slice by slice across that axis of the preprocessed
        scan (tiles of several slices batched, a 2D sliding window within larger slices, mirroring along the two
        in-plane axes); the slices' probabilities, stacked on the preprocessed grid, are then mapped back as a 3D
        network's are.
        """
        if image.num_channels != len(self.plan.channel_names):
            raise SegmorphError(f"expected {len(self.plan.channel_names)} channels, got {image.num_channels}")
        if image.ndim != self.plan.image_ndim:
            raise SegmorphError(f"expected a {self.plan.image_ndim}D image, got {image.ndim}D")
        prepared, record = preprocess_sample(Sample("scan", image), self.plan.preprocess)
        scores = self.network_probabilities(prepared.image.data)
        del prepared  # the preprocessed copy of the scan: not needed to map the scores back
        return undo_preprocessing(scores.cpu(), record)

    def network_probabilities(self, volume: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(K, *S)`` of a preprocessed scan ``(C, *S)`` on its own (preprocessed) grid: the
        sliding window of the plan's tile, slice by slice across ``plan.slice_axis`` for a 2D network on 3D scans."""
        mirror_axes = tuple(range(self.plan.ndim)) if self.options.mirror else ()  # the in-plane axes of slices
        settings = {"overlap": self.options.overlap, "batch_size": self.options.batch_size, "mirror_axes": mirror_axes,
                    "device": self.device, "amp": self.options.amp}  # fmt: skip
        if self.plan.slice_axis is None:
            return sliding_window_logits(self.network, volume, self.plan.train.patch_size, **settings)
        return slicewise_logits(self.network, volume, self.plan.slice_axis, self.plan.train.patch_size, **settings)

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
    run_dir: str | Path | Predictor | EnsemblePredictor, inputs: Sequence[str | Path], out_dir: str | Path, device: str = "cpu",
    options: PredictOptions = PredictOptions(), skip_existing: bool = False, overlays: bool = False,
    save_probabilities: bool = False, suffix: str | None = None, show_progress: bool = True,
    folds: Sequence[int] | None = None, postprocess: str = "auto", format: str = "image",
) -> list[Path]:  # fmt: skip
    """Segment files, folders of files and DICOM series folders into ``out_dir``.

    Each scan is segmented by :meth:`Predictor.segment`, as :class:`segmorph.segmentation.api.Segmenter` does.

    Args:
        run_dir: Trained run folder (a cross-validation run predicts with its folds' ensemble, see
            :mod:`segmorph.segmentation.ensemble`), or a loaded predictor (e.g. a ``Segmenter``'s ``predictor``;
            ``device``, ``options``, ``folds`` and ``postprocess`` are then its own).
        inputs: Scans: files, folders of image files, DICOM series folders.
        out_dir: Where masks (``<case>.nii.gz``, or ``.png`` for PNG input) are written atomically.
        skip_existing: Leave cases whose mask already exists (continue an interrupted run).
        overlays: Also write ``<case>_overlay.png``: a few slices (a 2D image whole, at its own resolution)
            with the mask filled in and a legend of the run's label names (:func:`segmorph.plots.overlay_slices`).
        save_probabilities: Also write ``<case>_probabilities.nii.gz`` (K channels, float32); with format
            ``dicom-seg`` the SEG itself is FRACTIONAL instead (the probability of each foreground class).
        suffix: Force an output image format (e.g. ``.nrrd``); format ``image`` only.
        format: ``image``: mask image files. ``dicom-seg``: ``<case>.dcm``, a DICOM-SEG object
            (:func:`segmorph.dicom.seg.write_segmentation`; segment codes from the run's dataset.json);
            ``rtstruct``: ``<case>_rtstruct.dcm``, an RT Structure Set (:func:`segmorph.dicom.rtstruct.write_rtstruct`).
            Both refer to the source series, so every input must be a DICOM series folder; the run folder's name
            identifies the model in them.
        folds: For a cross-validation run, the folds to average (default: all it has).
        postprocess: For a cross-validation run: ``"auto"`` (the clean-up chosen out of fold) or ``"none"``.
    """
    from segmorph.segmentation.ensemble import load_predictor

    loaded = not isinstance(run_dir, (str, Path))
    run = run_dir.run_dir if loaded else Path(run_dir)
    scans = prediction_targets(run, inputs, out_dir, suffix, overlays, save_probabilities, format)
    codes = None
    if format == "dicom-seg":
        from segmorph.dicom.seg import run_segment_codes

        codes = run_segment_codes(run)  # a malformed dataset.json is refused before the model is loaded
    predictor = run_dir if loaded else load_predictor(run_dir, device, options, folds, postprocess)
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
        if save_probabilities and format != "dicom-seg":
            write_image(
                Image(probabilities.float(), image.affine), out_dir / f"{strip_suffix(target)}_probabilities.nii.gz"
            )
        if overlays:
            from segmorph.plots import overlay_slices

            overlay = out_dir / f"{strip_suffix(target)}_overlay.png"
            overlay_slices(image.numpy(), mask.numpy()[0], overlay, title=scan.name, label_names=predictor.plan.labels)
        if format == "image":
            written.append(write_image(mask, target))
        else:
            fractions = probabilities if save_probabilities else None
            written.append(write_dicom(format, mask, scan, target, predictor.plan.labels, run.resolve().name,
                                       fractions, codes))  # fmt: skip
    return written


def write_dicom(
    format: str, mask: Image, series_dir: Path, target: Path, label_names: dict[int, str], run_id: str,
    probabilities: torch.Tensor | None = None, codes: dict | None = None,
) -> Path:  # fmt: skip
    """Write ``mask`` (on the grid of ``series_dir``) as a DICOM-SEG (FRACTIONAL with ``probabilities``, else
    BINARY) or an RT-STRUCT (``format``: ``dicom-seg`` or ``rtstruct``) referring to the series, at ``target``."""
    if format == "rtstruct":
        from segmorph.dicom.rtstruct import write_rtstruct

        return write_rtstruct(mask, series_dir, target, label_names, run_id=run_id)
    from segmorph.dicom.seg import write_segmentation

    return write_segmentation(mask, series_dir, target, label_names, probabilities=probabilities, run_id=run_id,
                              codes=codes)  # fmt: skip


def prediction_targets(
    run_dir: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, suffix: str | None = None,
    overlays: bool = False, save_probabilities: bool = False, format: str = "image",
) -> list[tuple[Path, Path]]:  # fmt: skip
    """The scans of ``inputs`` and the mask each will be written to, checked before any work.

    Refuses (see :func:`segmorph.outputs.check_outputs`) a mask, overlay or probability map that would
    overwrite a scan, a file of the run folder or of a scan folder, or another output (two scans with one case
    name, ``k.nii.gz`` beside ``k_0000.nii.gz``), an output folder that is an input folder or the run folder,
    and an output folder that is a file or not writable; with a DICOM ``format`` (:data:`OUTPUT_FORMATS`), an input
    that is not a DICOM series folder. No image is read and no model loaded.

    Returns:
        ``(scan, mask path)`` pairs in input order.
    """
    if format not in OUTPUT_FORMATS:
        raise SegmorphError(f"format: expected one of {', '.join(OUTPUT_FORMATS)}, got {format!r}")
    if format != "image" and suffix is not None:
        raise SegmorphError(f"format {format} writes {DICOM_SUFFIXES[format]} files; give no output suffix")
    scans = list_images(inputs)
    for scan in scans:
        if format != "image" and not scan.is_dir():
            raise SegmorphError(f"format {format} refers to the slices of a DICOM series: give DICOM series "
                                "folders, not image files", scan)  # fmt: skip
    out_dir = Path(out_dir)
    targets = [(scan, out_dir / mask_file_name(scan, DICOM_SUFFIXES.get(format, suffix))) for scan in scans]
    outputs = [Output.folder(out_dir)]
    for scan, target in targets:
        outputs.append(Output.file(target, scan))
        if save_probabilities and format != "dicom-seg":
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
    if mask.name.lower().endswith(".dcm") and not is_segmentation_file(mask):  # an RT-STRUCT: a whole DICOM file
        import pydicom

        try:
            pydicom.dcmread(mask)
        except Exception:  # noqa: BLE001 -- pydicom raises several unrelated types for damaged files
            return False
        return True
    try:
        read_image(mask, is_label=True)
    except SegmorphError:
        return False
    return True
