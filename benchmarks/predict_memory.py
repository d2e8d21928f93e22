"""Peak memory of ``segmorph predict`` on a large volume (default 512x512x300 float32, 300 MiB).

Writes a synthetic CT-like volume as .nii.gz, runs ``segmorph predict`` on it in a subprocess and reads
that process's peak resident set size from ``wait4`` (the kernel's ``ru_maxrss``). A run on a tiny volume
gives the fixed part (interpreter, torch, SimpleITK, the model); the rest grows with the volume and is
reported as a multiple of the input. With ``--bound-gib`` the script exits 1 when the peak exceeds it.

Without ``--run`` a tiny model is trained first (20 steps on synthetic spheres, 128x128x96 patches so the
big volume needs few tiles). Memory does not depend on the tile count, mirroring or the weights, so
mirroring is off by default to keep the run short (``--mirror`` turns it on). ``--resample`` gives the
volume another spacing than the model's, so that prediction resamples it and resamples the class
probabilities back (the case of most CT scans).

    python benchmarks/predict_memory.py --bound-gib 2.5             # the acceptance run
    python benchmarks/predict_memory.py --shape 128,128,80          # quick check

Measured on the 2-core CPU machine (2 classes, 128x128x96 tiles): 1.95 GiB peak for 512x512x300, of which
about 0.64 GiB is fixed, so 4.4x the 300 MiB input (the scan, its normalised copy and the two class maps);
before the memory work of issue 5 it was about 9x (estimated from in-process runs on 192x192x120).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import read_image, write_image

MODEL_SPACING = (0.8, 0.8, 1.5)
OTHER_SPACING = (0.7, 0.7, 1.25)  # --resample: the volume's spacing
PATCH = (128, 128, 96)
GIB = 2**30


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="trained run folder (default: train a tiny one)")
    parser.add_argument("--shape", default="512,512,300", help="volume size I,J,K (default 512,512,300)")
    parser.add_argument("--bound-gib", type=float, help="exit 1 when the peak RSS exceeds this many GiB")
    parser.add_argument("--mirror", action="store_true", help="mirroring test-time augmentation (8x slower)")
    parser.add_argument("--resample", action="store_true", help="volume spacing differs from the model's")
    parser.add_argument("--work", type=Path, help="keep the volume, run and masks here (default: a temporary folder)")
    args = parser.parse_args()
    args.shape = tuple(int(v) for v in args.shape.split(","))
    if len(args.shape) != 3 or min(args.shape) < 1:
        parser.error(f"--shape: expected three positive sizes, got {args.shape}")
    return args


def synthetic_volume(shape: tuple[int, ...], spacing: tuple[float, ...], seed: int = 0) -> Image:
    """A CT-like float32 volume: soft tissue around 40 HU with noise and a few bright ellipsoids."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal(shape, dtype=np.float32)
    data *= 20.0
    data += 40.0
    axes = np.ogrid[tuple(slice(0, n) for n in shape)]
    for _ in range(4):
        centre = [rng.uniform(0.25, 0.75) * n for n in shape]
        radius = rng.uniform(0.08, 0.15) * min(n * s for n, s in zip(shape, spacing))
        distance = sum(((a - c) * s / radius) ** 2 for a, c, s in zip(axes, centre, spacing))
        data[distance < 1.0] += 200.0
    return Image(torch.from_numpy(data[None]), Affine.from_geometry(spacing, (0.0, 0.0, 0.0), np.eye(3)))


def train_tiny_run(work: Path) -> Path:
    """20 training steps of a [4, 8] U-Net on six synthetic volumes (no validation)."""
    dataset = work / "dataset"
    for index in range(6):
        image = synthetic_volume(PATCH, MODEL_SPACING, seed=index + 1)
        labels = (image.data > 150).long()
        write_image(image, dataset / "imagesTr" / f"case_{index}.nii.gz")
        write_image(Image(labels, image.affine, is_label=True), dataset / "labelsTr" / f"case_{index}.nii.gz")
    cases = [{"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"} for i in range(6)]
    meta = {"name": "bright", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "bright"}, "training": cases}
    (dataset / "dataset.json").write_text(json.dumps(meta))
    run = work / "run"
    settings = [
        "network.features=[4,8]",
        f"train.patch_size={list(PATCH)}",
        "train.batch_size=1",
        "train.augment=false",
        "train.amp=false",  # bfloat16 is emulated (slow) on CPUs without AVX512-BF16
    ]
    command = [sys.executable, "-m", "segmorph", "train", str(dataset), "--out", str(run), "--max-steps", "20",
               "--fold", "-1", "--no-validate", "--quiet", *[a for s in settings for a in ("--set", s)]]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run


# Started by a small launcher: on Linux a child's ru_maxrss also counts the memory of the process it was
# forked from (until its exec), and this script holds the big volume for a while.
LAUNCHER = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss(command: list[str]) -> tuple[float, float]:
    """Run ``command``; its peak resident set size in bytes (the kernel's ``ru_maxrss``) and wall seconds."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True, check=True)
    code, max_rss_kib = (int(v) for v in result.stdout.split())
    if code:
        raise SystemExit(f"predict failed ({code}): {result.stderr.strip()}")
    return max_rss_kib * 1024.0, time.perf_counter() - started


def predict_command(run: Path, scan: Path, out: Path, mirror: bool) -> list[str]:
    command = [sys.executable, "-m", "segmorph", "predict", str(run), str(scan), "--out", str(out), "--quiet"]
    return command if mirror else [*command, "--no-mirror"]


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        run = args.run or train_tiny_run(work)
        spacing = OTHER_SPACING if args.resample else MODEL_SPACING
        volume = synthetic_volume(args.shape, spacing)
        input_bytes = volume.data.numel() * 4
        write_image(volume, work / "volume.nii.gz")
        write_image(synthetic_volume((32, 32, 24), spacing), work / "small.nii.gz")
        del volume
        gc.collect()
        fixed, _ = peak_rss(predict_command(run, work / "small.nii.gz", work / "masks", args.mirror))
        peak, seconds = peak_rss(predict_command(run, work / "volume.nii.gz", work / "masks", args.mirror))
        mask = read_image(work / "masks" / "volume.nii.gz", is_label=True)
        assert mask.spatial_shape == args.shape, mask.spatial_shape
    shape = "x".join(map(str, args.shape))
    print(f"input      {shape} float32, {input_bytes / 2**20:.0f} MiB, spacing {spacing} mm"
          f"{' (resampled to ' + str(MODEL_SPACING) + ')' if args.resample else ''}")  # fmt: skip
    print(f"fixed      {fixed / GIB:.2f} GiB peak RSS predicting a 32x32x24 volume (interpreter, libraries, model)")
    print(f"peak RSS   {peak / GIB:.2f} GiB in {seconds:.0f} s: fixed + {(peak - fixed) / input_bytes:.1f}x the input")
    if args.bound_gib is None:
        return 0
    verdict = "within" if peak <= args.bound_gib * GIB else "EXCEEDS"
    print(f"bound      {args.bound_gib:.2f} GiB: {verdict}")
    return 0 if verdict == "within" else 1


if __name__ == "__main__":
    sys.exit(main())
