"""Two ``segmorph predict`` processes writing into one folder at once leave every mask whole and valid.

Masks are written to a unique hidden temporary file and renamed into place, so two writers of one name leave
one complete file; ``--continue`` skips only masks that read back whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segmorph.io import list_images, mask_file_name, read_image

pytestmark = pytest.mark.slow


def _predict(run: Path, scans: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "segmorph", "predict", str(run), str(scans), "--out", str(out), "--no-mirror",
               "--quiet", *extra]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_together(*processes: subprocess.Popen) -> None:
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err


def _check_masks(scans: Path, out: Path) -> None:
    for scan in list_images([scans]):
        image = read_image(scan)
        mask = read_image(out / mask_file_name(scan), is_label=True)
        assert mask.spatial_shape == image.spatial_shape
        assert mask.same_grid(image)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "temporary files were left behind"


def test_two_predicts_into_one_folder_and_two_racing_continues(trained_run, tmp_path):
    scans = trained_run.parent / "dataset" / "imagesTr"
    out = tmp_path / "masks"
    _run_together(_predict(trained_run, scans, out), _predict(trained_run, scans, out))
    _check_masks(scans, out)

    # a torn mask (a copy cut short) and a missing one: both --continue runs redo them, neither skips them
    first = out / mask_file_name(list_images([scans])[0])
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 3])
    (out / mask_file_name(list_images([scans])[-1])).unlink()
    _run_together(_predict(trained_run, scans, out, "--continue"), _predict(trained_run, scans, out, "--continue"))
    _check_masks(scans, out)
