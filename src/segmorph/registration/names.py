"""The names a user picks among for registration (methods, label fusions, pre-alignments, similarity losses),
without importing torch: the command line offers them as choices, the modules that implement them check against
them."""

from __future__ import annotations

METHODS = ("rigid", "affine", "deformable", "learned")
"""Registration methods of ``register`` and ``atlas-segment``."""
FUSIONS = ("weighted", "majority")
"""Label fusions of ``atlas-segment``."""
PREALIGNMENTS = ("auto", "prior", "affine", "com", "none")
"""Pre-alignments of learned registration (:mod:`segmorph.registration.learned.config`)."""
SIMILARITY_NAMES = ("mse", "ncc", "mi", "mind")
"""The similarity losses of :data:`segmorph.registration.similarity.SIMILARITIES`, in its order."""
MAX_PASSES = 20
"""The most network passes of learned registration (each pass after the first refines the field a little less)."""
MAX_OPTIMISATION_STEPS = 10_000
"""The most optimiser steps of one stage at one level (classical iterations, ``--refine`` of learned registration):
tens to hundreds are usual, ANTs' defaults are at most 100 a level."""
