"""A trained label-to-image generator: loaded from its run folder, applied to whole label maps.

Generation works in the preprocessed space of the segmentation plan the GAN was trained in (its target
spacing and normalisation): a label map ``(1, *S)`` on that grid becomes image channels ``(C, *S)`` in the
normalised intensity scale. Whole cases are generated tile by tile with the training patch
(:func:`segmorph.engine.sliding_window.sliding_window_logits` without softmax: the Gaussian-weighted mean of
the tiles' outputs), or slice by slice for a 2D generator of 3D scans; the noise channels are drawn for the
whole case from a seeded generator first, so a seed always gives the same image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segmorph.engine.checkpoints import load_checkpoint, model_from_checkpoint
from segmorph.engine.sliding_window import slicewise_logits, sliding_window_logits
from segmorph.errors import SegmorphError
from segmorph.records import read_json
from segmorph.segmentation.preprocess import PreprocessConfig
from segmorph.synthesis.networks import GENERATOR, build_synthesis_network

RUN_KIND = "synthesis"
"""``"kind"`` of the ``run.json`` and of the checkpoint config of a ``segmorph synthesize train`` run folder."""


def generator_input(labels: torch.Tensor, num_classes: int, noise: torch.Tensor) -> torch.Tensor:
    """The generator's input: one-hot ``labels`` ``(B, 1, *S)`` followed by ``noise`` ``(B, N, *S)``.

    Returns:
        ``(B, num_classes + N, *S)`` float32 on ``labels``' device.
    """
    one_hot = F.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).float()
    return torch.cat([one_hot, noise.to(one_hot.device, torch.float32)], dim=1)


@torch.inference_mode()
def generate_image(
    model: nn.Module, labels: torch.Tensor, patch_size: Sequence[int], generator: torch.Generator,
    device: str | torch.device = "cpu", amp: bool = False, slice_axis: int | None = None, overlap: float = 0.25,
) -> torch.Tensor:  # fmt: skip
    """Image channels for a whole label map in the generator's space.

    Args:
        model: A :class:`~segmorph.synthesis.networks.LabelToImageGenerator` on ``device``.
        labels: ``(1, *S)`` integer label map, values below the model's ``num_classes``.
        patch_size: Tile size in voxels (the training patch).
        generator: Draws the noise channels (CPU).
        device: Where the model runs.
        amp: bfloat16 autocast where it is fast (:mod:`segmorph.engine.autocast`).
        slice_axis: For a 2D model of 3D label maps: the axis the slices are cut across.
        overlap: Fraction of a tile shared with its neighbour.

    Returns:
        ``(C, *S)`` float32 on the CPU.
    """
    config = model.config
    noise = torch.randn((config["noise_channels"], *labels.shape[1:]), generator=generator)
    inputs = generator_input(labels[None].long().cpu(), config["num_classes"], noise[None])[0]
    settings = {"overlap": overlap, "batch_size": 2, "device": device, "amp": amp, "return_probabilities": False}
    if slice_axis is None:
        return sliding_window_logits(model, inputs, patch_size, **settings).cpu()
    return slicewise_logits(model, inputs, slice_axis, patch_size, **settings).cpu()


@dataclass(frozen=True)
class IntensityScale:
    """Per channel, the raw intensities a normalised value of 0 and 1 stand for: ``raw = mean + std * value``.

    Z-score (and ``rgb``) normalisation divides by a per-image standard deviation after subtracting a mean, so
    any such linear map of a synthetic image normalises back to the same values: the scale is used only where
    raw values are needed (pictures, CT in Hounsfield units) and to display images.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_raw(self, image: torch.Tensor) -> torch.Tensor:
        """``(C, *S)`` normalised -> raw scale."""
        shape = (-1, *[1] * (image.ndim - 1))
        return image * torch.tensor(self.std).view(shape) + torch.tensor(self.mean).view(shape)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


class SynthesisModel:
    """The generator of a ``segmorph synthesize train`` run folder and what it was trained on.

    Attributes:
        run_dir: The run folder.
        generator: The network (eval mode, on ``device``).
        preprocess: The plan's preprocessing (target spacing, normalisation): the generator's space.
        labels: Label value -> name (0 background) the generator knows.
        channel_names: Names of the image channels it produces.
        modalities: Modality per channel.
        ndim: Spatial dimensions of the scans (3 for a 2D generator applied slice by slice).
        slice_axis: For a 2D generator of 3D scans, the axis slices are cut across; else None.
        patch_size: The training patch (the tile size of generation).
        scale: Raw intensity scale per channel (:class:`IntensityScale`).
        config: The checkpoint's whole config.

    Raises:
        SegmorphError: No such folder, a folder of another kind of run, or an unreadable checkpoint (one line
            naming the file).
    """

    def __init__(self, run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str = "best") -> None:
        self.run_dir = Path(run_dir)
        path = check_synthesis_run(self.run_dir) / f"checkpoint_{checkpoint}.pt"
        state, config, _ = load_checkpoint(path)
        if config.get("kind") != RUN_KIND or config.get("network", {}).get("name") != GENERATOR:
            raise SegmorphError(f"not a synthesis checkpoint (kind {config.get('kind')!r})", path)
        with model_from_checkpoint(path):
            self.generator = build_synthesis_network(config["network"])
            self.generator.load_state_dict(state)
            self.preprocess = PreprocessConfig.from_dict(config["preprocess"])
            self.labels = {int(k): str(v) for k, v in config["labels"].items()}
            self.channel_names = tuple(str(c) for c in config["channel_names"])
            self.modalities = tuple(str(m) for m in config["modalities"])
            self.ndim = int(config["ndim"])
            self.slice_axis = None if config.get("slice_axis") is None else int(config["slice_axis"])
            self.patch_size = tuple(int(p) for p in config["train"]["patch_size"])
            self.scale = IntensityScale(tuple(config["intensity"]["mean"]), tuple(config["intensity"]["std"]))
        self.device = torch.device(device)
        self.generator.to(self.device).eval()
        self.config = config
        self.path = path

    @property
    def num_classes(self) -> int:
        return int(self.generator.config["num_classes"])

    def check_labels(self, labels: torch.Tensor, where: str | Path) -> None:
        """Refuse a label map with values the generator was not trained on (naming ``where``)."""
        values = set(torch.unique(labels).tolist())
        unknown = sorted(v for v in values if v not in self.labels)
        if unknown:
            raise SegmorphError(f"label values {unknown} are unknown to the GAN {self.run_dir} (it knows "
                                f"{sorted(self.labels)})", where)  # fmt: skip

    def generate(self, labels: torch.Tensor, generator: torch.Generator, amp: bool = False) -> torch.Tensor:
        """``(C, *S)`` float32 normalised image for a ``(1, *S)`` label map in the generator's space."""
        return generate_image(self.generator, labels, self.patch_size, generator, self.device, amp, self.slice_axis)

    def facts(self) -> dict[str, Any]:
        """What a dataset made by this generator records about it."""
        return {"gan": str(self.run_dir.resolve()), "checkpoint": self.path.name,
                "target_spacing": list(self.preprocess.target_spacing or []),
                "normalization": list(self.preprocess.normalization)}  # fmt: skip


def check_synthesis_run(run_dir: Path) -> Path:
    """``run_dir`` when it is a ``segmorph synthesize train`` run folder; else one SegmorphError line naming it."""
    if not run_dir.is_dir():
        raise SegmorphError("no such GAN run folder", run_dir)
    record_path = run_dir / "run.json"
    if not record_path.is_file():
        raise SegmorphError("not a GAN run folder (no run.json; expected a segmorph synthesize train run)", run_dir)
    kind = read_json(record_path, "run record").get("kind")
    if kind != RUN_KIND:
        described = "a segmentation run" if kind is None else f"a run of kind {kind!r}"
        raise SegmorphError(f"{described}, not a GAN run (segmorph synthesize train)", record_path)
    return run_dir


def raw_scale(images: Sequence[np.ndarray], preprocess: PreprocessConfig) -> IntensityScale:
    """The raw intensity scale of normalised values (:class:`IntensityScale`), from a few raw training images.

    Per channel: ``"ct"`` uses the plan's dataset statistics (exactly what normalisation subtracts and divides
    by); the others the median over ``images`` of each image's mean and standard deviation, over the non-zero
    region where the plan crops to it (as :func:`segmorph.segmentation.preprocess.normalize` computes them).

    Args:
        images: Raw images ``(C, *S)`` as read, before preprocessing.
        preprocess: The plan's preprocessing.
    """
    means, stds = [], []
    for channel, scheme in enumerate(preprocess.normalization):
        stats = preprocess.ct_stats[channel] if preprocess.ct_stats and channel < len(preprocess.ct_stats) else None
        if scheme == "ct" and stats is not None:
            means.append(float(stats["mean"]))
            stds.append(float(stats["std"]))
            continue
        per_image = []
        for image in images:
            values = image[channel]
            if preprocess.crop_to_nonzero and scheme == "zscore" and (image != 0).any():
                values = values[(image != 0).any(axis=0)]
            per_image.append((float(values.mean()), float(values.std())))
        if scheme == "none" or not per_image:
            means.append(0.0)
            stds.append(1.0)
            continue
        means.append(float(np.median([m for m, _ in per_image])))
        stds.append(max(float(np.median([s for _, s in per_image])), 1e-8))
    return IntensityScale(tuple(means), tuple(stds))


def label_names(labels: Mapping[int, str]) -> dict[str, str]:
    """Label value -> name as JSON keys."""
    return {str(k): v for k, v in sorted(labels.items())}
