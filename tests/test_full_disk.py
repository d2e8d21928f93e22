"""A full disk mid-write: one clear error naming the file, no partial target, no temporary, old file intact.

The disk fills up in three ways seen in practice: ``write()`` fails with ENOSPC after part of the data
went out; ``fsync`` fails with ENOSPC (delayed allocation); and ITK's NIfTI writer, which only prints
"NWAD: wrote only N of M bytes" and returns normally, leaving a truncated file. They are simulated by
patching the file handle, ``os.fsync`` and ``SimpleITK.WriteImage``; while the disk is "full",
``shutil.disk_usage`` (which segmorph asks when ITK gives no reason) reports no space left. The same
writes were checked by hand on a real 64 KiB tmpfs, where every format reports "no space left on device".
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import sphere_case, write_msd_dataset
from segmorph.cli.main import main
from segmorph.engine.checkpoints import load_checkpoint, save_checkpoint
from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_bytes, read_image, write_image
from segmorph.nn import UNet


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FillingFile:
    """A binary file whose disk fills up after ``room`` bytes: the write that crosses it raises ENOSPC."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.handle.write(bytes(data[: self.room]))
            self.handle.flush()
            self.room = 0
            raise _enospc()
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self.handle, name)

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


@pytest.fixture
def full_disk(monkeypatch) -> SimpleNamespace:
    """Switches that fill the disk up in one of three ways; no space is reported left meanwhile."""
    real_usage, real_fdopen, real_write_image = shutil.disk_usage, os.fdopen, sitk.WriteImage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=0))

    def on_write(room: int = 1000, only: str = "") -> None:
        def fdopen(fd, *args, **kwargs):
            handle = real_fdopen(fd, *args, **kwargs)
            chosen = not only or only in os.readlink(f"/proc/self/fd/{fd}")
            return _FillingFile(handle, room) if chosen else handle

        monkeypatch.setattr(os, "fdopen", fdopen)

    def on_fsync() -> None:
        def fsync(fd):
            raise _enospc()

        monkeypatch.setattr(os, "fsync", fsync)

    def silently_in_itk() -> None:
        def write_image_truncated(image, name, *args, **kwargs):
            real_write_image(image, name, *args, **kwargs)
            os.truncate(name, os.path.getsize(name) // 2)  # what ITK's NIfTI writer leaves, with no error

        monkeypatch.setattr(sitk, "WriteImage", write_image_truncated)

    return SimpleNamespace(on_write=on_write, on_fsync=on_fsync, silently_in_itk=silently_in_itk)


def _image(seed: int):
    image, _ = sphere_case((20, 16, 10), seed=seed)
    return image


def _save_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = UNet(3, 1, 3, (4, 8))
    return save_checkpoint(path, model.state_dict(), {"network": model.config}, counters_json="{}")


# writer name -> (file name, write(path, seed), what the message calls it, the ways its disk fills up)
WRITERS: dict[str, tuple[str, Callable[[Path, int], Path], str, tuple[str, ...]]] = {
    "nii.gz": ("scan.nii.gz", lambda p, seed: write_image(_image(seed), p), "image", ("on_fsync", "silently_in_itk")),
    "nii": ("scan.nii", lambda p, seed: write_image(_image(seed), p), "image", ("on_fsync", "silently_in_itk")),
    "nrrd": ("scan.nrrd", lambda p, seed: write_image(_image(seed), p), "image", ("on_fsync",)),
    "bytes": ("data.bin", lambda p, seed: atomic_write_bytes(p, bytes([seed]) * 100_000), "file", ("on_write", "on_fsync")),
    "checkpoint": ("model.pt", _save_checkpoint, "file", ("on_write", "on_fsync")),
}  # fmt: skip
CASES = [(writer, way) for writer, (*_, ways) in WRITERS.items() for way in ways]
IDS = [f"{writer}-{way}" for writer, way in CASES]


def _write_on_full_disk(disk: SimpleNamespace, writer: str, way: str, target: Path) -> SegmorphError:
    name, write, what, _ = WRITERS[writer]
    getattr(disk, way)()
    with pytest.raises(SegmorphError) as caught:
        write(target, 1)
    message = str(caught.value)
    assert message == f"{target}: cannot write {what} (no space left on device)", message
    return caught.value


@pytest.mark.parametrize("writer, way", CASES, ids=IDS)
def test_full_disk_leaves_no_partial_target_and_no_temporary(tmp_path, full_disk, writer, way):
    _write_on_full_disk(full_disk, writer, way, tmp_path / WRITERS[writer][0])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer, way", CASES, ids=IDS)
def test_full_disk_keeps_the_older_file_unchanged(tmp_path, full_disk, writer, way):
    name, write, _, _ = WRITERS[writer]
    target = write(tmp_path / name, 0)
    before = target.read_bytes()
    _write_on_full_disk(full_disk, writer, way, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [name]
    if writer == "checkpoint":
        load_checkpoint(target)
    elif writer != "bytes":
        assert np.array_equal(read_image(target).numpy(), _image(0).numpy())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the file being written in /proc/self/fd")
def test_train_on_a_full_disk_exits_1_with_one_line_naming_the_checkpoint(tmp_path, full_disk, capsys):
    dataset = write_msd_dataset(tmp_path / "dataset", num_cases=3, shape=(16, 16, 8))
    run = tmp_path / "run"
    full_disk.on_write(room=4096, only=".checkpoint_")
    code = main(["train", str(dataset), "--out", str(run), "--max-steps", "4", "--val-cases", "case_000",
                 "--set", "network.features=[4,8]", "--set", "train.steps_per_epoch=2", "--quiet"])  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 1
    assert len(errors) == 1 and errors[0].endswith("cannot write file (no space left on device)"), errors
    assert errors[0].startswith(f"error: {run / 'checkpoint_'}")
    assert not [p for p in run.iterdir() if p.name.startswith(".") or p.suffix == ".pt"]
