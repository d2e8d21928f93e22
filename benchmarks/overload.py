"""Two segmorph processes at once: do they share the machine or collapse each other?

Two workloads run (a) each alone, one after the other, and (b) both at once as two processes, under
thread policies side by side:

* ``current``: what ``segmorph`` does now (:mod:`segmorph.threads`): idle OpenMP workers spin briefly
  (``GOMP_SPINCOUNT``) then sleep (``OMP_WAIT_POLICY=PASSIVE``), threads = the physical cores the process may use;
* ``passive``: the same threads, idle workers sleeping at once (``OMP_WAIT_POLICY=PASSIVE`` alone);
* ``old``: the previous default: torch's own thread count and OpenMP's own wait policy (idle workers spin
  for a while), obtained by loading torch before segmorph sets the policy.

Workloads (each a ``segmorph`` command; items per second over the whole process, start-up included):

* ``classify``: ``segmorph classify predict`` on the first ``--images`` BUSI images, with a tiny classifier
  that this script trains first (``--max-steps 20``, not timed);
* ``train``: ``segmorph train`` on the MSD hippocampus for ``--steps`` steps (its cache is filled first, not timed);
* ``register``: learned registration of ``--pairs`` hippocampus pairs (``register --pairs --method learned``)
  with a tiny ``train-registration`` model this script trains first (not timed).

The ratio printed is the combined throughput at once over the combined throughput one after the other:
``(t_a + t_b) / t_both``. Sharing two cores fairly keeps it near 1; the target is at least 0.8. Run it on an
otherwise quiet machine (other load makes the figures meaningless):

    python benchmarks/overload.py --work /tmp/overload --images 100 --steps 60 --pairs 30

A tiny run that only checks that the script works: ``--images 8 --steps 4 --pairs 3``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
# the previous default: torch (and with it OpenMP) loads before segmorph could set OMP_WAIT_POLICY
OLD_ENTRY = "import sys, torch; from segmorph.cli.main import main; sys.exit(main(sys.argv[1:]))"
NEW_ENTRY = "import sys; from segmorph.cli.main import main; sys.exit(main(sys.argv[1:]))"


@dataclass(frozen=True)
class Workload:
    """One timed ``segmorph`` command and how many items it handles."""

    name: str
    argv: list[str]
    items: int
    unit: str


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/segmorph_overload"), help="scratch folder")
    parser.add_argument("--busi", type=Path, default=DATASETS / "busi_ultrasound")
    parser.add_argument("--hippocampus", type=Path, default=DATASETS / "msd_hippocampus")
    parser.add_argument("--images", type=int, default=100, help="BUSI images classified (default 100)")
    parser.add_argument("--steps", type=int, default=60, help="segmentation training steps (default 60)")
    parser.add_argument("--pairs", type=int, default=30, help="hippocampus pairs registered (default 30)")
    parser.add_argument(
        "--workloads",
        nargs=2,
        default=["classify", "train"],
        choices=["classify", "train", "register"],
        help="the two workloads (default classify train)",
    )
    parser.add_argument("--policies", nargs="+", default=["current", "old"], choices=["current", "passive", "old"])
    return parser.parse_args()


def environment() -> dict[str, str]:
    """This source tree first on the path; no thread settings inherited from the caller."""
    dropped = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return env


def command(argv: list[str], policy: str = "current") -> list[str]:
    """``segmorph argv`` as a process started under ``policy``."""
    if policy == "old":
        import torch

        return [sys.executable, "-c", OLD_ENTRY, *argv, "--threads", str(torch.get_num_threads())]
    return [sys.executable, "-c", NEW_ENTRY, *argv]


def setup_step(argv: list[str], what: str) -> None:
    print(f"setup: {what} ...", flush=True)
    result = subprocess.run(command(argv), env=environment(), capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"setup failed: segmorph {' '.join(argv)}\n{result.stderr[-2000:]}")


def classify_workload(args: argparse.Namespace) -> Workload:
    work = args.work / "classify"
    run, images = work / "run", work / "images"
    if not (run / "classifier.pt").exists():
        setup_step(["classify", "train", str(args.busi), "--labels", "labels.csv", "--target", "class", "--out",
                    str(run), "--max-steps", "20", "--quiet"], "a tiny classifier (20 steps)")  # fmt: skip
    images.mkdir(parents=True, exist_ok=True)
    with (args.busi / "labels.csv").open(newline="") as handle:
        files = [row["file"] for row in csv.DictReader(handle)][: args.images]
    for index, file in enumerate(files):
        link = images / f"{index:04d}{Path(file).suffix}"
        if not link.exists():
            link.symlink_to((args.busi / file).resolve())
    argv = ["classify", "predict", str(run), str(images), "--out", str(work / "predictions.csv"), "--quiet"]
    return Workload("classify predict", argv, len(files), "images")


def train_workload(args: argparse.Namespace) -> Workload:
    work = args.work / "train"
    cache = work / "cache"
    base = ["train", str(args.hippocampus), "--no-validate", "--quiet", "--cache", str(cache)]
    if not cache.exists():
        setup_step([*base, "--out", str(work / "warm"), "--max-steps", "1"], "the hippocampus preprocessing cache")
    argv = [*base, "--out", str(work / "run"), "--max-steps", str(args.steps)]
    return Workload("segmentation train", argv, args.steps, "steps")


def register_workload(args: argparse.Namespace) -> Workload:
    work = args.work / "register"
    model = work / "model"
    if not (model / "checkpoint_best.pt").exists():
        setup_step(["train-registration", str(args.hippocampus), "--out", str(model), "--max-steps", "20", "--quiet"],
                   "a tiny registration model (20 steps)")  # fmt: skip
    images = sorted((args.hippocampus / "imagesTr").glob("*.nii.gz"))
    pairs = work / "pairs.csv"
    rows = [f"{images[i].resolve()},{images[i + 1].resolve()}" for i in range(min(args.pairs, len(images) - 1))]
    pairs.write_text("fixed,moving\n" + "".join(f"{row}\n" for row in rows))
    argv = ["register", "--pairs", str(pairs), "--method", "learned", "--model", str(model), "--out",
            str(work / "out"), "--quiet"]  # fmt: skip
    return Workload("learned registration", argv, len(rows), "pairs")


def fresh_outputs(workload: Workload) -> None:
    """Remove what the previous timing wrote, so that every timing does the whole work."""
    import shutil

    out = Path(workload.argv[workload.argv.index("--out") + 1])
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()


def start(workload: Workload, policy: str) -> tuple[subprocess.Popen, float]:
    fresh_outputs(workload)
    env = {**environment(), **({"OMP_WAIT_POLICY": "PASSIVE"} if policy == "passive" else {})}
    process = subprocess.Popen(command(workload.argv, policy), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    return process, time.perf_counter()


def finish(process: subprocess.Popen, started: float, workload: Workload) -> float:
    _, err = process.communicate()
    if process.returncode:
        sys.exit(f"failed: segmorph {' '.join(workload.argv)}\n{err[-2000:]}")
    return time.perf_counter() - started


def measure(a: Workload, b: Workload, policy: str) -> dict[str, float]:
    """Seconds for a alone, b alone, and each of them (and both) when started together."""
    alone_a = finish(*start(a, policy), a)
    alone_b = finish(*start(b, policy), b)
    (pa, ta), (pb, tb) = start(a, policy), start(b, policy)
    both_a, both_b = finish(pa, ta, a), finish(pb, tb, b)
    return {"alone_a": alone_a, "alone_b": alone_b, "both_a": both_a, "both_b": both_b,
            "both": max(ta + both_a, tb + both_b) - min(ta, tb)}  # fmt: skip


def main() -> None:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    builders = {"classify": classify_workload, "train": train_workload, "register": register_workload}
    a, b = (builders[name](args) for name in args.workloads)
    import torch

    print(f"cpus usable {len(os.sched_getaffinity(0))}, torch {torch.__version__} default threads "
          f"{torch.get_num_threads()}; a = {a.name} ({a.items} {a.unit}), b = {b.name} ({b.items} {b.unit})")  # fmt: skip
    header = (f"{'policy':<8} {'a alone':>12} {'b alone':>12} {'a together':>12} {'b together':>12} "
              f"{'slowdown a':>10} {'slowdown b':>10} {'ratio':>6}")  # fmt: skip
    rows = []
    for policy in args.policies:
        t = measure(a, b, policy)
        ratio = (t["alone_a"] + t["alone_b"]) / t["both"]
        rows.append(
            f"{policy:<8} {a.items / t['alone_a']:>8.2f}/s {b.items / t['alone_b']:>8.2f}/s "
            f"{a.items / t['both_a']:>8.2f}/s {b.items / t['both_b']:>8.2f}/s "
            f"{t['both_a'] / t['alone_a']:>9.2f}x {t['both_b'] / t['alone_b']:>9.2f}x {ratio:>6.2f}"
        )
        print(f"{policy}: alone {t['alone_a']:.1f} s + {t['alone_b']:.1f} s; together {t['both']:.1f} s "
              f"(a {t['both_a']:.1f} s, b {t['both_b']:.1f} s)", flush=True)  # fmt: skip
    print("\nthroughput (items/s) and ratio = combined at once / combined one after the other (target >= 0.8)")
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
