"""Distributed data-parallel through PyTorch's own launcher: 2 CPU processes (gloo) on tiny data."""

import json
import shutil
import subprocess
import sys

import torch

from helpers import write_msd_dataset
from segmorph.engine.checkpoints import load_checkpoint


def _torchrun_train(tmp_path, dataset, run, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "segmorph", "train", str(dataset), "--out", str(run), "--max-steps", "4", "--quiet",
        "--val-cases", "case_000", "--set", "train.steps_per_epoch=2", "--set", "network.features=[4,8]", *extra,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                            "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    finals = [line for line in result.stderr.splitlines() if line.startswith("trained ")]
    assert len(finals) == 1 and "best validation Dice -1" not in finals[0], finals  # printed by rank 0 only
    return result


def test_torchrun_two_cpu_processes(tmp_path):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=4, shape=(16, 16, 8))
    run = tmp_path / "run"
    _torchrun_train(tmp_path, dataset, run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fit"]["world_size"] == 2
    assert summary["fit"]["steps"] == 4
    state, config, _ = load_checkpoint(run / "checkpoint_last.pt")
    assert config["network"]["features"] == [4, 8]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_mean_teacher_under_torchrun_two_cpu_processes(tmp_path):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=5, shape=(16, 16, 8))
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for case in ("case_003", "case_004"):
        shutil.copy(dataset / "imagesTr" / f"{case}.nii.gz", unlabelled / f"u_{case}.nii.gz")
    run = tmp_path / "run"
    _torchrun_train(tmp_path, dataset, run, "--unlabelled", str(unlabelled))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fit"]["world_size"] == 2 and summary["fit"]["steps"] == 4
    state, _, extras = load_checkpoint(run / "checkpoint_last.pt")
    teacher = extras["task"]["teacher"]
    assert set(teacher) == set(state)  # the teacher is the unwrapped network (no DistributedDataParallel prefix)
    floating = [name for name, value in state.items() if value.is_floating_point()]
    assert all(torch.isfinite(teacher[name]).all() for name in floating)
    assert any(not torch.equal(teacher[name], state[name]) for name in floating)  # it lags the student
