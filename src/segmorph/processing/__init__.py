"""Classical image processing: bias-field correction, denoising, contrast, CT windows, edges, vesselness and
morphology, as named steps (``"denoise:median"``, ``"window:40,400"``) that keep an image's geometry.

Modules: :mod:`~segmorph.processing.filters` (the filters, each ``Image -> Image``),
:mod:`~segmorph.processing.steps` (the step registry, :func:`~segmorph.processing.steps.parse_steps` and
:func:`~segmorph.processing.steps.enhance`), :mod:`~segmorph.processing.files` (files, folders and DICOM
series in, enhanced images and before/after pictures out).
"""
