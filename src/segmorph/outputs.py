"""Output safety: refuse, before any work, outputs that would destroy an input or each other.

Every command that writes calls :func:`check_outputs` first, before it loads a model or reads an image, with
the paths it reads (files, folders, run folders) and the paths it will write. The rules:

* an output file must not be an input file (compared after resolving symlinks and ``..``, and by device and
  inode, so a hard link counts), nor an existing file under an input folder (a scan folder, a run folder, a
  dataset), nor an existing folder;
* an output folder must not be an input folder, nor the folder holding an input file, nor an existing file;
  with ``outside`` it must not be one of those folders nor lie inside one (a training run inside its dataset);
* a folder replaced whole (``Output.tree``) must not be, hold, or lie in an input;
* no two outputs may map to one path (two scans with one case name, ``k.nii.gz`` beside ``k_0000.nii.gz``);
* the folder each output goes to must be writable: a real probe creates and removes a hidden file in the
  nearest existing folder (a permission bit alone does not say what root, ACLs or a read-only mount allow).

A refusal is one :class:`~segmorph.errors.SegmorphError` naming the output and the input it would overwrite.

Example:
    >>> check_outputs([Output.file("masks/k.nii.gz", "scans/k.nii.gz")], inputs=["scans", "runs/h"])
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from segmorph.errors import SegmorphError

__all__ = ["Output", "check_outputs", "check_run_folder"]


@dataclass(frozen=True)
class Output:
    """One path a command will write.

    Attributes:
        path: The file or folder.
        kind: ``"file"`` (a file written in place), ``"folder"`` (a folder files are written into) or
            ``"tree"`` (a folder replaced whole, as ``explain`` replaces a case's folder).
        source: The input it is made from (named when two outputs collide), or None.
    """

    path: Path
    kind: str = "file"
    source: Path | None = None

    @classmethod
    def file(cls, path: str | Path, source: str | Path | None = None) -> Output:
        """An output file (made from ``source``)."""
        return cls(Path(path), "file", None if source is None else Path(source))

    @classmethod
    def folder(cls, path: str | Path) -> Output:
        """An output folder that files are written into (created when missing)."""
        return cls(Path(path), "folder")

    @classmethod
    def tree(cls, path: str | Path, source: str | Path | None = None) -> Output:
        """A folder that is replaced whole (made from ``source``)."""
        return cls(Path(path), "tree", None if source is None else Path(source))


@dataclass(frozen=True)
class _Input:
    path: Path
    real: str
    is_dir: bool
    stat: os.stat_result | None
    folder: str  # the real path of the folder that holds it


def check_outputs(
    outputs: Iterable[Output | str | Path],
    inputs: Iterable[str | Path | None] = (),
    outside: Iterable[str | Path | None] = (),
) -> None:
    """Refuse outputs that would overwrite an input, a run folder's file, or each other (see the module doc).

    Args:
        outputs: What the command will write; a plain path counts as an output file.
        inputs: Files and folders the command reads (scans, scan folders, run folders, datasets); None is skipped.
        outside: Folders that output folders must neither be nor lie inside (a dataset); None is skipped.

    Raises:
        SegmorphError: Naming the output, and the input it would overwrite or the output it collides with.
    """
    planned = [o if isinstance(o, Output) else Output.file(o) for o in outputs]
    readers = _Readers([_input(Path(p)) for p in inputs if p is not None])
    own = [os.path.realpath(o.path) for o in planned if o.kind == "folder"]
    seen: dict[str, Output] = {}
    probed: set[str] = set()
    for output in planned:
        real = os.path.realpath(output.path)
        _check_kind(output)
        _check_against_inputs(output, real, readers, own)
        if output.kind == "folder":
            _check_outside(output, real, [Path(p) for p in outside if p is not None])
        key = os.path.normcase(real)
        if key in seen:
            _collision(output, seen[key])
        seen[key] = output
        _probe(output, probed)


def _input(path: Path) -> _Input:
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    return _Input(path, os.path.realpath(path), path.is_dir(), stat, os.path.realpath(path.absolute().parent))


def _check_kind(output: Output) -> None:
    path = output.path
    if output.kind == "file" and path.is_dir():
        raise SegmorphError("output is an existing folder; give a file name", path)
    if output.kind != "file" and path.exists() and not path.is_dir():
        raise SegmorphError("output exists and is a file; expected a folder", path)
    if any(p.exists() and not p.is_dir() for p in path.parents):
        blocking = next(p for p in reversed(path.parents) if p.exists() and not p.is_dir())
        raise SegmorphError(f"cannot write {path.name}: {blocking} is a file, not a folder", path)


def _inside(real: str, folder: str) -> bool:
    return real == folder or real.startswith(folder.rstrip(os.sep) + os.sep)


def _own_output(real: str, folder: str, own: list[str]) -> bool:
    """``real`` lies in one of this command's output folders, itself inside the input ``folder`` (not it):
    rewriting that folder's files is rewriting the command's own earlier outputs (``scans/masks``)."""
    return any(_inside(real, out) and out != folder and _inside(out, folder) for out in own)


class _Readers:
    """The inputs, sorted once and indexed, so that checking many outputs against many inputs stays linear:
    an output file is looked up among the input files by real path and inode, and compared one by one only
    with the input folders (few)."""

    def __init__(self, readers: list[_Input]) -> None:
        self.all = readers
        self.folders_first = sorted(readers, key=lambda r: not r.is_dir)
        self.files_first = sorted(readers, key=lambda r: r.is_dir)
        files = [r for r in readers if not r.is_dir]
        self.folders = [r for r in readers if r.is_dir]
        self.by_real = {r.real: r for r in reversed(files)}  # the first of equal entries wins, as in a scan
        self.by_inode = {(r.stat.st_dev, r.stat.st_ino): r for r in reversed(files) if r.stat is not None}

    def candidates(self, output: Output, real: str, stat: os.stat_result | None) -> list[_Input]:
        """The inputs :func:`_check_against_inputs` must look at, in the order it reports them: an output file
        that is an input file is named as such (input files first), an output folder that is an input folder
        as such (input folders first), rather than as the folder that holds them."""
        if output.kind == "folder":
            return self.folders_first
        if output.kind == "tree":
            return self.files_first
        found = self.by_real.get(real) or (self.by_inode.get((stat.st_dev, stat.st_ino)) if stat else None)
        return ([found] if found else []) + self.folders


def _check_against_inputs(output: Output, real: str, readers: _Readers, own: list[str]) -> None:
    stat = _stat(output.path)
    for source in readers.candidates(output, real, stat):
        same = real == source.real or (
            stat is not None and source.stat is not None and (stat.st_dev, stat.st_ino) == (source.stat.st_dev, source.stat.st_ino)
        )  # fmt: skip
        if same and output.kind == "folder":
            raise SegmorphError(f"output folder is the input folder {source.path}; choose another folder", output.path)
        if same:
            raise SegmorphError(f"output would overwrite the input {source.path}", output.path)
        if output.kind == "folder" and not source.is_dir and real in (source.folder, os.path.dirname(source.real)):
            raise SegmorphError(f"output folder holds the input {source.path}; choose another folder", output.path)
        if output.kind == "tree" and _inside(source.real, real):
            raise SegmorphError(f"output folder would be replaced whole but holds the input {source.path}", output.path)
        if (
            source.is_dir
            and output.kind != "folder"
            and os.path.lexists(output.path)
            and _inside(real, source.real)
            and not _own_output(real, source.real, own)
        ):
            raise SegmorphError(f"output would overwrite a file of the input folder {source.path}", output.path)
    if stat is not None and output.kind == "file" and stat.st_nlink > 1:
        _check_hard_links(output, real, stat, readers.folders)


def _check_hard_links(output: Output, real: str, stat: os.stat_result, folders: list[_Input]) -> None:
    """An existing output with several names may be a hard link to a file inside an input folder."""
    key = (stat.st_dev, stat.st_ino)
    for source in folders:
        for folder, _, names in os.walk(source.path):
            for name in names:
                found = _stat(Path(folder) / name)
                if (
                    found is not None
                    and (found.st_dev, found.st_ino) == key
                    and os.path.realpath(Path(folder) / name) != real
                ):
                    raise SegmorphError(f"output is a hard link to {Path(folder) / name}, an input; it would be "
                                        "overwritten", output.path)  # fmt: skip


def _check_outside(output: Output, real: str, folders: list[Path]) -> None:
    for folder in folders:
        if _inside(real, os.path.realpath(folder)):
            raise SegmorphError(f"output folder must not be the input folder {folder} or lie inside it", output.path)


def _collision(output: Output, earlier: Output) -> None:
    sources = [o.source for o in (earlier, output) if o.source is not None]
    origin = f" (from {sources[0]} and {sources[1]}; rename one)" if len(sources) == 2 else ""
    raise SegmorphError(f"two outputs would be written to this one path{origin}", output.path)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _probe(output: Output, probed: set[str]) -> None:
    """Create and remove a hidden file in the nearest existing folder of the output's folder."""
    existing = output.path if output.kind == "folder" else output.path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    key = os.path.realpath(existing)
    if key in probed:
        return
    probed.add(key)
    try:
        fd, name = tempfile.mkstemp(prefix=".segmorph-probe-", dir=existing)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            words = "read-only file system" if err.errno == errno.EROFS else "permission denied"
            raise SegmorphError(f"cannot write into the folder {existing} ({words})", output.path) from None
        raise SegmorphError(f"cannot write into the folder {existing} ({err.strerror})", output.path) from None
    os.close(fd)
    os.unlink(name)


def check_run_folder(
    out: str | Path, dataset: str | Path, *reads: str | Path | None, cache: str | Path | None = None
) -> None:
    """Refuse a training run folder (and a preprocessing ``cache`` folder given apart from it) that is the dataset
    folder or lies inside it, is a file, is one of ``reads`` (another run it reads, a labels file), or is not
    writable; before anything is read.

    Example:
        >>> check_run_folder("runs/h", "Task04_Hippocampus", cache="/scratch/cache")
    """
    folders = [Output.folder(out)] + ([Output.folder(cache)] if cache is not None else [])
    check_outputs(folders, inputs=[dataset, *reads], outside=[dataset])
