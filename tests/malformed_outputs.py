"""Malformed-input cases: outputs that would overwrite an input, a run folder's file, or each other (class 1 and 8).

Each case is a :class:`malformed.BadInput`; :func:`malformed.corpus` gathers ``CASES``.
"""

from __future__ import annotations

from malformed import BadInput

CASES: tuple[BadInput, ...] = ()
