"""Every malformed input of the corpus (tests/malformed.py) fails cleanly on the command line.

Clean means: exit code 1, exactly one stderr line ``error: <file>: <problem>`` naming the offending file
and the problem, no traceback, and the requested output absent or unchanged. ``capfd`` is used rather
than ``capsys`` so that warnings printed by the C++ libraries (ITK, GDCM) straight to the process's
stderr count as extra lines too.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from malformed import BadInput, _dataset, _dicom_series, corpus
from segmorph.cli.main import main
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image


def _snapshot(path: Path | None) -> dict[str, bytes | None] | None:
    """Everything under ``path`` (names and bytes), or None when it does not exist."""
    if path is None or not os.path.lexists(path):
        return None
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


CORPUS = corpus()


def test_corpus_has_at_least_120_distinct_cases():
    assert len(CORPUS) >= 120
    assert len({case.name for case in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_malformed_input_fails_with_one_clear_line(case: BadInput, tmp_path, capfd, request):
    reason = case.skip_reason() if case.skip_reason else None
    if reason:
        pytest.skip(reason)
    run = request.getfixturevalue("trained_run") if case.needs_model else None
    prepared = case.build(tmp_path, run)
    before = _snapshot(prepared.out)
    inputs_before = _snapshot(tmp_path), _snapshot(run)
    capfd.readouterr()
    code = main(prepared.argv)
    captured = capfd.readouterr()
    lines = captured.err.splitlines()
    assert code == 1, captured
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    assert prepared.names in lines[0], lines
    assert case.fragment in lines[0], lines
    assert "Traceback" not in captured.out + captured.err
    assert _snapshot(prepared.out) == before, "the command left partial output"
    assert (_snapshot(tmp_path), _snapshot(run)) == inputs_before, "an input or a pre-existing file changed"


def test_dicom_folder_with_a_stray_non_dicom_file_is_read(tmp_path, capfd):
    folder = _dicom_series(tmp_path / "series", [0.0, 1.5, 3.0, 4.5])
    (folder / "notes.txt").write_text("scanned on Tuesday\n")
    (folder / "README.dcm").write_bytes(b"not DICOM at all" * 8)
    assert main(["info", str(folder)]) == 0
    captured = capfd.readouterr()
    assert "(8, 8, 4)" in captured.out and "(1, 1, 1.5) mm" in captured.out
    assert captured.err == ""


def test_one_empty_label_map_among_others_is_accepted(tmp_path):
    root = _dataset(tmp_path / "ds")
    label = read_image(root / "labelsTr" / "case_001.nii.gz", is_label=True)
    write_image(label.with_data(torch.zeros_like(label.data)), root / "labelsTr" / "case_001.nii.gz")
    assert main(["plan", str(root), "--out", str(tmp_path / "plan.json")]) == 0
    assert (tmp_path / "plan.json").is_file()


def test_nifti_header_check_accepts_a_file_with_trailing_bytes(tmp_path):
    """The gzip trailer shortcut falls back to inflating: extra bytes after the voxels are not truncation."""
    values = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
    path = tmp_path / "padded.nii.gz"
    write_image(Image(torch.from_numpy(values[None]), Affine.identity(3)), path)
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b"\0" * 16))
    assert np.array_equal(read_image(path).numpy()[0], values)
