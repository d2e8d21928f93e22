"""Malformed-input cases: hostile DICOM for anonymize and the series reader (classes 4, 6, 7).

Each case is a :class:`malformed.BadInput`; :func:`malformed.corpus` gathers ``CASES``.
"""

from __future__ import annotations

from malformed import BadInput

CASES: tuple[BadInput, ...] = ()
