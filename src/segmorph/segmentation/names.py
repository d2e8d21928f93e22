"""Segmentation choices the command line offers, without importing torch: surface-mesh file formats and the
default smoothing of ``segmorph mesh`` (:mod:`segmorph.segmentation.mesh`), the classical baselines and their
level-set models (:mod:`segmorph.segmentation.baselines`), the default share of GAN-made training patches."""

from __future__ import annotations

FORMATS = ("stl", "obj", "ply", "vtk")
"""Surface-mesh file formats."""
DEFAULT_SMOOTH = 10
"""Taubin smoothing iterations of a mesh by default."""
BASELINE_METHODS = ("otsu", "region_grow", "confidence_connected", "level_set", "vessels")
"""Classical segmentation methods of ``segmorph baseline`` (:data:`segmorph.segmentation.baselines.METHODS`)."""
LEVEL_SET_MODELS = ("geodesic", "chan-vese")
"""Level-set models of the ``level_set`` baseline."""
DEFAULT_SYNTHETIC_SHARE = 0.3
"""Probability of a training patch coming from GAN-made pairs (``segmorph train --synthetic``)."""
