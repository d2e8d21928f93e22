"""One rule for settings read from JSON/YAML into dataclasses: unknown keys are refused by name."""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def refuse_unknown_keys(kind: type, values: dict[str, Any], name: str) -> None:
    """Raise ``ValueError`` naming ``name`` when ``values`` has keys that are not fields of dataclass ``kind``."""
    unknown = set(values) - {f.name for f in fields(kind)}
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}")
