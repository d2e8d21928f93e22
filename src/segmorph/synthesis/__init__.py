"""GAN synthesis: a label-conditioned generator that turns label maps into images, 2D and 3D.

Modules: ``networks`` (SPADE U-Net generator, PatchGAN discriminator), ``deform`` (random elastic deformation of
label maps), ``task`` (the GAN as a task of the engine's training loop), ``model`` (a trained generator loaded
from its run folder), ``pipeline`` (``segmorph synthesize train``), ``sampling`` (synthetic cases in memory and
``segmorph synthesize sample``), ``pictures`` (the real-vs-synthetic grid) and ``api``. Names below are imported
on first use, so that every ``segmorph`` command starts fast.
"""

from __future__ import annotations

from segmorph.lazy import lazy_exports

_EXPORTS = {
    "synthetic_cases": "segmorph.synthesis.sampling",
    "train_gan": "segmorph.synthesis.api",
    "sample": "segmorph.synthesis.api",
    "SynthesisRun": "segmorph.synthesis.api",
    "SynthesisModel": "segmorph.synthesis.model",
    "Deformation": "segmorph.synthesis.deform",
    "deform_labels": "segmorph.synthesis.deform",
    "GanSettings": "segmorph.synthesis.task",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
