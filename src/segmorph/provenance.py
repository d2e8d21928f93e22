"""Provenance of a training run: ``run.json`` with the command, versions, seeds and a data fingerprint.

The data fingerprint is a SHA-256 over every file of the dataset (``dataset.json`` when there is one, each
case's image channels and label map, the files of a DICOM series folder), sorted by their path relative to
the dataset folder, each entry being ``relative path | size | SHA-256 of the file's bytes``. Contents are
hashed rather than modification times because a copied dataset (``cp`` without ``-p``, a download, a
container layer) gets new times but is the same data; reading every byte once costs less than the
preprocessing that reads and decompresses the same files. Moving the dataset folder keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from segmorph.io import atomic_write_text
from segmorph.records import read_json_if_present
from segmorph.segmentation.datasets import DatasetSpec

FINGERPRINT_METHOD = "sha256 over sorted 'relative path|size|sha256(contents)' of every data file"
RUN_FILE = "run.json"


def dataset_files(spec: DatasetSpec) -> list[Path]:
    """Every file the dataset's cases are read from (DICOM folders expanded), plus ``dataset.json``."""
    paths = [spec.root / "dataset.json"] if (spec.root / "dataset.json").is_file() else []
    for case in spec.cases:
        paths.extend(Path(p) for p in (*case.images, case.label) if p is not None)
    return _expand_folders(paths)


def data_fingerprint(spec: DatasetSpec) -> dict[str, Any]:
    """The dataset's fingerprint (see the module docstring): ``sha256``, ``method``, ``files``, ``bytes``."""
    return files_fingerprint(dataset_files(spec), spec.root)


def files_fingerprint(paths: Sequence[Path], root: Path) -> dict[str, Any]:
    """Fingerprint of any list of files (folders: every file below), by their paths relative to ``root``."""
    entries, total = [], 0
    for path in _expand_folders(paths):
        size = path.stat().st_size
        total += size
        entries.append(f"{_relative(path, root)}|{size}|{_file_sha256(path)}")
    digest = hashlib.sha256("\n".join(sorted(entries)).encode("utf-8")).hexdigest()
    return {"sha256": digest, "method": FINGERPRINT_METHOD, "files": len(entries), "bytes": total}


def _expand_folders(paths: Sequence[Path]) -> list[Path]:
    """The files themselves, and every file below each folder (a DICOM series)."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()  # a case file outside the dataset folder


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of Python, the libraries that change results, segmorph and the platform."""
    from segmorph import __version__

    return {
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "simpleitk": sitk.Version_VersionString(), "segmorph": __version__, "platform": platform.platform(),
    }  # fmt: skip


def write_run_record(
    out: Path, facts: dict[str, Any], fingerprint: dict[str, Any], resume: bool = False
) -> dict[str, Any]:
    """Write ``out/run.json``: ``facts`` plus the command line, the time, :func:`versions` and the data
    ``fingerprint`` (:func:`data_fingerprint` or :func:`files_fingerprint`).

    On ``resume`` the record of the first run is kept and this invocation is appended to its ``resumes``
    list (command, time, versions, fingerprint), so the command that started the run is never lost.

    Returns:
        The record written.
    """
    now = {"command": list(sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **versions(),
           "data_fingerprint": fingerprint}  # fmt: skip
    previous = _read_record(out / RUN_FILE) if resume else None
    if previous is None:
        record = {**now, **facts}
    else:
        record = {**previous, "resumes": [*previous.get("resumes", []), now]}
    atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2) + "\n")
    return record


def data_changed(record: dict[str, Any]) -> bool:
    """True when the last resume of a run record saw other data than the run's start did."""
    resumes = record.get("resumes") or []
    first = record.get("data_fingerprint", {}).get("sha256")
    return bool(resumes) and resumes[-1]["data_fingerprint"]["sha256"] != first


def _read_record(path: Path) -> dict[str, Any] | None:
    """The run record being resumed, or None when there is none; a tampered one is refused, not replaced."""
    return read_json_if_present(path, "run record")
