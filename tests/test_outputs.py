"""Output safety (segmorph.outputs), file modes under the umask, and ``register --pairs`` summaries."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import sphere_case
from segmorph.cli.main import main
from segmorph.errors import SegmorphError
from segmorph.io import write_image
from segmorph.outputs import Output, check_outputs, check_run_folder


def _scan(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(sphere_case((10, 8, 6), seed=seed)[0], path)


def test_outputs_apart_from_the_inputs_pass(tmp_path):
    scan = _scan(tmp_path / "scans" / "k.nii.gz")
    check_outputs([Output.folder(tmp_path / "masks"), Output.file(tmp_path / "masks" / "k.nii.gz", scan)],
                  inputs=[tmp_path / "scans", scan])  # fmt: skip
    assert not (tmp_path / "masks").exists()  # nothing is created by the check
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scans"]  # the write probe left nothing


def test_an_output_reached_through_dot_dot_is_the_input(tmp_path):
    scan = _scan(tmp_path / "scans" / "k.nii.gz")
    with pytest.raises(SegmorphError, match="would overwrite the input"):
        check_outputs([tmp_path / "masks" / ".." / "scans" / "k.nii.gz"], inputs=[scan])


def test_a_hard_link_to_a_file_of_an_input_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text("{}")
    os.link(run / "plan.json", tmp_path / "report.html")
    with pytest.raises(SegmorphError, match="hard link"):
        check_outputs([tmp_path / "report.html"], inputs=[run])


def test_rewriting_own_outputs_inside_an_input_folder_is_allowed(tmp_path):
    """``predict RUN scans/ --out scans/masks`` twice: the second run rewrites its own masks, not the scans."""
    scan = _scan(tmp_path / "scans" / "k.nii.gz")
    _scan(tmp_path / "scans" / "masks" / "k.nii.gz")
    check_outputs([Output.folder(tmp_path / "scans" / "masks"), Output.file(tmp_path / "scans" / "masks" / "k.nii.gz")],
                  inputs=[tmp_path / "scans", scan])  # fmt: skip
    with pytest.raises(SegmorphError, match="would overwrite a file of the input folder"):
        check_outputs([tmp_path / "scans" / "masks" / "k.nii.gz"], inputs=[tmp_path / "scans"])


def test_a_tree_output_may_not_hold_an_input(tmp_path):
    scan = _scan(tmp_path / "out" / "case" / "scan.nii.gz")
    with pytest.raises(SegmorphError, match="replaced whole but holds the input"):
        check_outputs([Output.tree(tmp_path / "out" / "case")], inputs=[scan])


def test_a_run_folder_inside_its_dataset_is_refused(tmp_path):
    (tmp_path / "ds").mkdir()
    check_run_folder(tmp_path / "runs" / "a", tmp_path / "ds")
    with pytest.raises(SegmorphError, match="or lie inside it"):
        check_run_folder(tmp_path / "ds" / "runs" / "a", tmp_path / "ds")
    check_run_folder(tmp_path / "runs" / "a", tmp_path / "ds", cache=tmp_path / "cache")
    with pytest.raises(SegmorphError, match="or lie inside it") as err:  # a cache would write beside the scans
        check_run_folder(tmp_path / "runs" / "a", tmp_path / "ds", cache=tmp_path / "ds" / "cache")
    assert err.value.path == str(tmp_path / "ds" / "cache")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_found_by_the_write_probe(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(SegmorphError, match="permission denied"):
            check_outputs([Output.folder(locked / "masks")])
    finally:
        locked.chmod(0o755)


def test_predict_refuses_its_input_folder_without_loading_the_model(tmp_path, monkeypatch, capsys):
    """The collision is found before the run folder is even read: its checkpoint here is garbage."""
    from segmorph.engine import checkpoints
    from segmorph.segmentation import predict

    loads = []
    monkeypatch.setattr(checkpoints, "load_checkpoint", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(predict, "load_checkpoint", lambda *a, **k: loads.append(a))
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text("{}")
    (run / "checkpoint_best.pt").write_bytes(b"garbage")
    scans = tmp_path / "scans"
    _scan(scans / "a.nii.gz")
    before = (scans / "a.nii.gz").read_bytes()
    assert main(["predict", str(run), str(scans), "--out", str(scans)]) == 1
    assert "output folder is the input folder" in capsys.readouterr().err
    assert loads == []
    assert (scans / "a.nii.gz").read_bytes() == before


def test_output_files_respect_the_umask(tmp_path):
    script = (
        "import sys; from pathlib import Path; from helpers import sphere_case; "
        "from segmorph.io import atomic_write_text, write_image; out = Path(sys.argv[1]); "
        "atomic_write_text(out / 'a.json', '{}'); write_image(sphere_case((6, 5, 4))[0], out / 'b.nii.gz')"
    )
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    for umask, mode in ((0o027, 0o640), (0o002, 0o664)):
        folder = tmp_path / f"umask_{umask:o}"
        folder.mkdir()
        subprocess.run([sys.executable, "-c", script, str(folder)], check=True, env=env,
                       preexec_fn=lambda umask=umask: os.umask(umask))  # fmt: skip
        for name in ("a.json", "b.nii.gz"):
            assert stat.S_IMODE((folder / name).stat().st_mode) == mode, (name, oct(umask))


# -- register --pairs (class 8) ----------------------------------------------------------------------


def _pair_files(tmp_path: Path) -> None:
    for index in range(3):
        image, label = sphere_case((12, 10, 8), seed=index)
        write_image(image, tmp_path / f"img_{index}.nii.gz")
        write_image(label, tmp_path / f"lab_{index}.nii.gz")


def test_register_pairs_with_a_bom_and_fixed_labels_only(tmp_path, capsys):
    _pair_files(tmp_path)
    csv = "\ufefffixed,moving,fixed_labels\nimg_0.nii.gz,img_1.nii.gz,lab_0.nii.gz\nimg_0.nii.gz,img_2.nii.gz,lab_0.nii.gz\n"
    (tmp_path / "pairs.csv").write_text(csv, encoding="utf-8")
    out = tmp_path / "regs"
    assert main(["register", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(out), "--method", "rigid",
                 "--quiet"]) == 0, capsys.readouterr()  # fmt: skip
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("pair_000_img_0_img_1")


def test_a_failed_pair_leaves_the_summary_of_the_pairs_that_finished(tmp_path, capsys):
    _pair_files(tmp_path)
    (tmp_path / "pairs.csv").write_text("fixed,moving\nimg_0.nii.gz,img_1.nii.gz\nimg_0.nii.gz,missing.nii.gz\n")
    out = tmp_path / "regs"
    assert main(["register", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(out), "--method", "rigid",
                 "--quiet"]) == 1  # fmt: skip
    assert "missing.nii.gz" in capsys.readouterr().err
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("pair_000_img_0_img_1")
