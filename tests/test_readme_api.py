"""README.md's "## Python API" section runs: every ```python block under that heading is executed.

How: each block runs with ``exec`` in a fresh namespace, in a temporary working directory that holds tiny
synthetic stand-ins under the very names the README uses (``Task04_Hippocampus/``, ``scan.nii.gz``,
``fixed.nii.gz``, ``busi_ultrasound/`` with ``labels.csv``, ...). The code run is the README's and the
library's: nothing is monkeypatched.

The one change: training budgets. The README trains for minutes on real data; :data:`SHORTER` replaces each
budget, as exact README text, by a step limit and a tiny network given through the same documented
arguments (``max_steps``, ``overrides``). Every entry must be found in the section, so a README edit that
changes a training call fails here (update the entry with it) instead of training for twenty minutes.
A block that raises, or a section without blocks, fails the test.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import torch

from helpers import sphere_case, write_msd_dataset
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Python API"

# README text -> what the test runs instead (the same call with a step limit and a tiny network).
SHORTER = {
    'out="runs/hippo", time_budget="20m"':
        'out="runs/hippo", max_steps=6, show_progress=False, '
        'overrides={"train.steps_per_epoch": 3, "network.features": [4, 8]}',
    'group="dup_group", time_budget="15m"':
        'group="dup_group", max_steps=4, show_progress=False, '
        'overrides={"model.name": "simplecnn", "model.width": 4, "train.batch_size": 8, '
        '"train.steps_per_epoch": 2, "train.amp": False, "data.val_fraction": 0.34}',
}  # fmt: skip


def section_blocks(text: str, heading: str = HEADING) -> list[str]:
    """The ```python blocks between ``heading`` and the next heading (lines in code blocks are not headings)."""
    lines = text.splitlines()
    if heading not in lines:
        raise AssertionError(f"README.md has no {heading!r} section")
    blocks: list[str] = []
    current: list[str] | None = None
    fenced = False
    for line in lines[lines.index(heading) + 1 :]:
        if line.startswith("```"):
            if fenced:
                if current is not None:
                    blocks.append("\n".join(current) + "\n")
                current, fenced = None, False
            else:
                fenced = True
                current = [] if line.strip() == "```python" else None
            continue
        if fenced:
            if current is not None:
                current.append(line)
        elif re.match(r"#{1,6} ", line):
            break
    return blocks


def shortened(block: str, used: set[str]) -> str:
    for old, new in SHORTER.items():
        if old in block:
            block = block.replace(old, new)
            used.add(old)
    return block


def write_stand_ins(root: Path) -> None:
    """Tiny data under the README's names: an MSD dataset, scans, a registration pair, a BUSI-like folder."""
    write_msd_dataset(root / "Task04_Hippocampus", num_cases=5, shape=(16, 16, 8))
    write_image(sphere_case((16, 16, 8), seed=9)[0], root / "scan.nii.gz")
    for name, seed in (("fixed", 0), ("moving", 3)):
        image, labels = sphere_case(seed=seed)
        write_image(image, root / f"{name}.nii.gz")
        write_image(labels, root / f"{name}_labels.nii.gz")
    write_busi_like(root / "busi_ultrasound")


def write_busi_like(root: Path, per_class: int = 6, size: int = 32) -> None:
    """Grey-scale PNGs in ``benign/``, ``malignant/``, ``normal/`` and ``labels.csv`` with BUSI's columns
    (``file, class, lesion, dup_group``); a lesion is a bright disc, two images per duplicate group."""
    rng = np.random.default_rng(0)
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    rows = []
    for kind in ("benign", "malignant", "normal"):
        for index in range(1, per_class + 1):
            picture = rng.normal(60, 15, (size, size))
            if kind != "normal":
                ci, cj = rng.integers(8, size - 8, 2)
                picture[(ii - ci) ** 2 + (jj - cj) ** 2 <= 20] += 120
            name = f"{kind}/{kind}_{index:03d}.png"
            array = np.clip(picture, 0, 255).astype(np.uint8)[None]
            write_image(Image(torch.from_numpy(array), Affine.identity(2)), root / name)
            rows.append((name, kind, int(kind != "normal"), f"{kind}_{(index - 1) // 2}"))
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("file", "class", "lesion", "dup_group"))
        writer.writerows(rows)


def test_section_parsing_stops_at_the_next_heading_and_skips_other_languages():
    text = "\n".join([
        "## Python API", "```python", "# a comment, not a heading", "x = 1", "```", "```bash", "ls", "```",
        "### Next", "```python", "y = 2", "```",
    ])  # fmt: skip
    assert section_blocks(text) == ["# a comment, not a heading\nx = 1\n"]


def test_readme_python_api_blocks_run(tmp_path, monkeypatch, one_thread):
    blocks = section_blocks(README.read_text())
    assert len(blocks) >= 3, f"expected the Python API section's code blocks, found {len(blocks)}"
    used: set[str] = set()
    blocks = [shortened(block, used) for block in blocks]
    assert used == set(SHORTER), f"README text not found (update SHORTER with the README): {set(SHORTER) - used}"
    write_stand_ins(tmp_path)
    monkeypatch.chdir(tmp_path)
    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"README.md {HEADING!r} block {number}", "exec"), {"__name__": f"readme_block_{number}"})
    assert (tmp_path / "scan_mask.nii.gz").is_file() and (tmp_path / "warped_labels.nii.gz").is_file()
    assert (tmp_path / "runs" / "busi" / "classifier.pt").is_file()
