"""Checkpoints: weights plus a JSON config, saved atomically and loaded without unpickling objects."""

from __future__ import annotations

import contextlib
import io as _io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_bytes
from segmorph.records import parse_json


def save_checkpoint(path: str | Path, model_state: dict, config: dict[str, Any], **extra_states: Any) -> Path:
    """Write ``{"model": state_dict, "config_json": str, **extra_states}`` atomically.

    Args:
        path: Destination ``.pt`` file.
        model_state: The network's ``state_dict()`` (tensors only).
        config: JSON-serialisable facts needed to rebuild the network and resume (stored as a string,
            so loading needs no pickled Python objects).
        extra_states: Optimizer state dicts, counters: tensors, numbers, strings, lists and dicts only.
    """
    payload = {"model": model_state, "config_json": json.dumps(config), **extra_states}
    buffer = _io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, dict, dict]:
    """Load a checkpoint safely (``weights_only=True``).

    Returns:
        ``(model_state, config, extras)``.

    Raises:
        SegmorphError: Missing file, or a file that is not a plain-weights segmorph checkpoint
            (for example a pickle holding arbitrary objects).
    """
    path = Path(path)
    if not path.is_file():
        raise SegmorphError("checkpoint not found", path)
    if not _looks_like_torch_file(path):
        raise SegmorphError("not a PyTorch checkpoint (neither a zip archive nor a pickle)", path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: the error says enough
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 -- torch raises UnpicklingError, RuntimeError, EOFError, ...
        if "PytorchStreamReader" in str(err) or isinstance(err, EOFError):
            raise SegmorphError("checkpoint is corrupt or truncated (its archive cannot be read)", path) from None
        raise SegmorphError(f"refused to load checkpoint: not a plain-weights file ({_refusal(err)})", path) from None
    if not isinstance(payload, dict) or "model" not in payload or "config_json" not in payload:
        raise SegmorphError("not a segmorph checkpoint (no model weights and config)", path)
    if not isinstance(payload["model"], dict) or not isinstance(payload["config_json"], str):
        raise SegmorphError("not a segmorph checkpoint (its weights are not a state dict or its config not text)", path)
    try:
        config = parse_json(payload["config_json"], path, "checkpoint config")
    except SegmorphError as err:
        raise SegmorphError(f"the config stored in the checkpoint: {err.problem}", path) from None
    extras = {k: v for k, v in payload.items() if k not in ("model", "config_json")}
    return payload["model"], config, extras


def _looks_like_torch_file(path: Path) -> bool:
    """Whether ``path`` starts as ``torch.save`` writes: a zip archive, or a pickle (the legacy format)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise SegmorphError(f"cannot read checkpoint ({err.strerror or err})", path) from None
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _refusal(err: Exception) -> str:
    """The line of a failed safe load that says why (torch's own advice on unsafe loading left out)."""
    text, marker = str(err), "WeightsUnpickler error:"
    if marker in text:
        rest = text.split(marker, 1)[1].strip()
        if rest:
            return rest.splitlines()[0].split(". ")[0].strip()[:160]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:160]


def check_network_fits(config: dict[str, Any], expected: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose stored network does not fit the run that uses it (e.g. a 2D network in a 3D run).

    Args:
        config: The checkpoint's config (as :func:`load_checkpoint` returns it), with a ``network`` mapping.
        expected: Network arguments the run needs, e.g. ``{"ndim": 3, "in_channels": 1, "num_classes": 2}``.
        path: The checkpoint, named in the error.

    Raises:
        SegmorphError: No ``network`` mapping, or an argument that differs from ``expected``.
    """
    network = config.get("network")
    if not isinstance(network, dict):
        raise SegmorphError("checkpoint config holds no network settings", path)
    for key, value in expected.items():
        if network.get(key) != value:
            raise SegmorphError(f"checkpoint's network has {key} {network.get(key)!r}, the run needs {value!r}", path)


@contextlib.contextmanager
def model_from_checkpoint(path: str | Path) -> Iterator[None]:
    """Rebuilding a network from a checkpoint's facts and weights: a checkpoint whose facts or weights do not
    fit this version of segmorph (missing keys, unknown settings, other tensor shapes) becomes one
    :class:`SegmorphError` naming the file, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SegmorphError(f"checkpoint does not fit this segmorph's models ({detail})", path) from None
