"""Distributed data-parallel through PyTorch's own launcher: 2 CPU processes (gloo) on tiny data."""

import json
import subprocess
import sys

import torch

from helpers import write_msd_dataset
from segmorph.engine.checkpoints import load_checkpoint


def test_torchrun_two_cpu_processes(tmp_path):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=4, shape=(16, 16, 8))
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "segmorph", "train", str(dataset), "--out", str(run), "--max-steps", "4", "--quiet",
        "--val-cases", "case_000", "--set", "train.steps_per_epoch=2", "--set", "network.features=[4,8]",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                            "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fit"]["world_size"] == 2
    assert summary["fit"]["steps"] == 4
    state, config, _ = load_checkpoint(run / "checkpoint_last.pt")
    assert config["network"]["features"] == [4, 8]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
