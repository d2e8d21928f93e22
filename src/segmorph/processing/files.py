"""``enhance`` on files: image files, folders of images and DICOM series in, enhanced images (and
before/after pictures) out, one per input, and ``enhance.json``, the record of the steps and cases that
``segmorph report`` reads; every output is checked before any work."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from segmorph.errors import SegmorphError
from segmorph.image import Image
from segmorph.io import (
    PICTURE_SUFFIXES,
    atomic_write_text,
    image_suffix,
    list_images,
    mask_file_name,
    read_image,
    write_image,
)
from segmorph.outputs import Output, check_outputs
from segmorph.processing.steps import Step, enhance, parse_steps

__all__ = ["RECORD_NAME", "enhance_files", "enhanced_name", "write_preview"]

RECORD_NAME = "enhance.json"


def enhanced_name(source: str | Path, suffix: str | None = None) -> str:
    """File name of the enhanced image for ``source``: its case name plus ``suffix`` (default: the input's
    own suffix; ``.nii.gz`` for a DICOM series)."""
    return mask_file_name(source, suffix or image_suffix(source) or ".nii.gz")


def _for_picture(image: Image) -> Image:
    """An image as 0..255 values for PNG/JPEG: [0, 1] is scaled by 255, values already in 0..255 are kept,
    anything else is min-max rescaled."""
    if image.is_label:
        return image
    array = image.numpy().astype(np.float64)
    low, high = float(array.min()), float(array.max())
    if low >= 0 and high <= 1:
        array = array * 255
    elif low < 0 or high > 255:
        array = (array - low) / max(high - low, 1e-12) * 255
    return image.with_data(torch.from_numpy(np.rint(array).astype(np.uint8)))


def enhance_files(
    paths: Sequence[str | Path], out: str | Path, steps: str | Sequence[str | Step], preview: bool = False,
    suffix: str | None = None, is_label: bool = False,
) -> list[Path]:  # fmt: skip
    """Enhance every image in ``paths`` and write the results into ``out``.

    Args:
        paths: Image files, folders of images and DICOM series folders.
        out: Output folder (created); each result is named after its input (see :func:`enhanced_name`). After
            the last image, ``out/enhance.json`` records the run: ``{"kind": "enhance", "steps": [...],
            "cases": [{"case", "input" (resolved absolute path), "output" (file name in out)}, ...]}``.
        steps: Processing steps (see :mod:`segmorph.processing.steps`).
        preview: Also write ``<case>_preview.png``, the input beside the result (middle slice along K in 3D).
        suffix: Output suffix (``.nii.gz``, ``.nrrd``, ``.png``...; default the input's).
        is_label: Read the inputs as label maps (for morphology on masks).

    Returns:
        The enhanced image files written.

    Raises:
        SegmorphError: Bad steps (before anything is read), an output that would overwrite an input or
            collide with another, an unreadable input, or a step that does not apply to an image.
    """
    parsed = parse_steps(steps)
    if not parsed:
        raise SegmorphError("no steps given (e.g. --steps denoise:median,clahe)")
    if suffix is not None and not image_suffix("x" + suffix):
        raise SegmorphError(f"unknown output format {suffix!r}")
    out = Path(out)
    sources = list_images(paths)
    targets = [out / enhanced_name(source, suffix) for source in sources]
    planned: list[Output] = [Output.folder(out)] + [Output.file(t, s) for t, s in zip(targets, sources, strict=True)]
    planned.append(Output.file(out / RECORD_NAME))
    if preview:
        planned += [Output.file(out / f"{mask_file_name(s, '')}_preview.png", s) for s in sources]
    check_outputs(planned, inputs=[*paths, *sources])
    written = []  # the folder appears with the first result written: an input that cannot be read leaves nothing
    for source, target in zip(sources, targets, strict=True):
        image = read_image(source, is_label=is_label)
        try:
            result = enhance(image, parsed)
        except SegmorphError as err:
            raise SegmorphError(err.problem, source) from None
        as_picture = image_suffix(target) in PICTURE_SUFFIXES
        written.append(write_image(_for_picture(result) if as_picture else result, target))
        if preview:
            write_preview(image, result, out / f"{mask_file_name(source, '')}_preview.png",
                          " > ".join(s.text for s in parsed))  # fmt: skip
    atomic_write_text(out / RECORD_NAME, _record_text(parsed, sources, written))
    return written


def _record_text(steps: Sequence[Step], sources: Sequence[Path], written: Sequence[Path]) -> str:
    """``enhance.json``: the steps, and per case its name, resolved input path and output file name."""
    cases = [{"case": mask_file_name(source, ""), "input": str(Path(source).resolve()), "output": target.name}
             for source, target in zip(sources, written, strict=True)]  # fmt: skip
    return json.dumps({"kind": "enhance", "steps": [s.text for s in steps], "cases": cases}, indent=2) + "\n"


def _display(image: Image) -> np.ndarray:
    """A 2D picture of an image: RGB (I, J, 3) for three-channel 2D images, else the first channel's middle
    slice along K, rescaled for display."""
    from segmorph.plots import normalise_for_display

    array = image.numpy().astype(np.float64)
    if image.ndim == 3:
        array = array[..., array.shape[-1] // 2]
    if array.shape[0] == 3:
        return np.stack([normalise_for_display(c) for c in array], axis=-1)
    return normalise_for_display(array[0])


def write_preview(before: Image, after: Image, path: str | Path, title: str = "") -> Path:
    """A PNG with the input (left) and the enhanced image (right), I down and J across, middle slice along K.

    Args:
        before: The input image.
        after: The enhanced image (same grid).
        path: PNG to write.
        title: Caption of the right panel (the steps).
    """
    import matplotlib.pyplot as plt

    from segmorph.plots import save_figure

    figure, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    for axis, image, caption in zip(axes, (before, after), ("before", title or "after"), strict=True):
        picture = _display(image)
        axis.imshow(picture, cmap=None if picture.ndim == 3 else "gray", interpolation="nearest")
        axis.set_title(caption, fontsize=9)
        axis.axis("off")
    return save_figure(figure, path)
