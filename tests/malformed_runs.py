"""Malformed-input cases: tampered run folders, configs, JSON/CSV records, transforms, landmarks, labels CSVs (classes 2, 4, 6).

Each case is a :class:`malformed.BadInput`; :func:`malformed.corpus` gathers ``CASES``.
"""

from __future__ import annotations

from malformed import BadInput

CASES: tuple[BadInput, ...] = ()
