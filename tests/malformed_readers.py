"""Malformed-input cases: hostile image files: degenerate geometry, lying gzip streams, memory bombs, odd pixel types, odd paths (classes 2, 3, 6).

Each case is a :class:`malformed.BadInput`; :func:`malformed.corpus` gathers ``CASES``.
"""

from __future__ import annotations

from malformed import BadInput

CASES: tuple[BadInput, ...] = ()
