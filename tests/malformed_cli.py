"""Malformed-input cases: the one-line contract: control characters in names, errors naming their file (class 5).

Each case is a :class:`malformed.BadInput`; :func:`malformed.corpus` gathers ``CASES``.
"""

from __future__ import annotations

from malformed import BadInput

CASES: tuple[BadInput, ...] = ()
