"""The command line's one-line contract and its thread settings.

* every printed name has its control characters escaped, so an error is one line and nothing reaches the
  terminal raw (a newline, ``ESC [2J`` clearing the screen, ``ESC ]0;...BEL`` setting its title);
* output piped into a program that stops reading ends quietly (exit 141, nothing on stderr);
* ``--threads`` sets torch's threads, the default follows the CPUs the process may use, and the OpenMP wait
  policy is set before torch is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from segmorph.cli import info
from segmorph.cli.arguments import printable
from segmorph.cli.main import build_parser, leaf_parsers, main
from segmorph.geometry import Affine
from segmorph.image import Image
from segmorph.io import write_image
from segmorph.threads import default_threads, usable_cpus

SRC = Path(__file__).resolve().parents[2] / "src"
HOSTILE = "scan\n\x1b[2J\x1b]0;owned\x07\r\t\x7f\x9b.nii.gz"
ESCAPED = "scan\\n\\x1b[2J\\x1b]0;owned\\x07\\r\\t\\x7f\\x9b.nii.gz"


def _environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    return {**env, "PYTHONPATH": path, **extra}


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          env=_environment(**env))  # fmt: skip


def _scan(path: Path) -> Path:
    write_image(Image(torch.from_numpy(np.arange(24, dtype=np.float32).reshape(1, 4, 3, 2)), Affine.identity(3)), path)
    return path


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (HOSTILE, ESCAPED),
        ("a\u2028b\u202ec\x85d", "a\\u2028b\\u202ec\\x85d"),  # line separators and a bidi override
        ("Übersicht_日本_é.nii.gz", "Übersicht_日本_é.nii.gz"),  # printable non-ASCII text is kept
        (os.fsdecode(b"scan_\xff.nii.gz"), "scan_\\xff.nii.gz"),  # an undecodable byte of a Linux name
    ],
)
def test_printable_escapes_control_characters_only(text, shown):
    assert printable(text) == shown
    assert len(printable(text).splitlines()) == 1


def test_error_naming_a_hostile_file_is_one_escaped_line(tmp_path, capfd):
    missing = tmp_path / HOSTILE
    assert main(["info", str(missing)]) == 1
    captured = capfd.readouterr()
    assert captured.err.splitlines() == [f"error: {tmp_path}/{ESCAPED}: no such file or folder"]
    assert "\x1b" not in captured.err and "\x07" not in captured.err and "\r" not in captured.err


def test_normal_output_escapes_the_names_it_prints(tmp_path, capfd):
    scan = _scan(tmp_path / HOSTILE)
    assert main(["info", str(scan)]) == 0
    out = capfd.readouterr().out
    assert out.splitlines()[0] == f"{tmp_path}/{ESCAPED}"
    assert len(out.splitlines()) == 6
    assert "\x1b" not in out


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """The reader has gone before the first write: every write meets a closed pipe (EPIPE)."""
    scan = _scan(tmp_path / "scan.nii.gz")
    command = [sys.executable, "-m", "segmorph", "info", *[str(scan)] * 50]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_environment())
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141, err
    assert err == b""


def test_keyboard_interrupt_is_one_line(tmp_path, capfd, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run_info", interrupted)
    assert main(["info", str(tmp_path / "scan.nii.gz")]) == 130
    assert capfd.readouterr().err.splitlines() == ["error: interrupted"]


def test_a_segmorph_warning_is_one_escaped_line_and_the_verb_goes_on(tmp_path, capfd, monkeypatch):
    import warnings

    from segmorph.errors import SegmorphWarning

    def odd(args):
        odd_count = SegmorphWarning("numTraining is 5 but 2 training cases were found", tmp_path / HOSTILE)
        warnings.warn(odd_count, stacklevel=2)
        warnings.warn("another library's warning", DeprecationWarning, stacklevel=2)
        return 0

    monkeypatch.setattr(info, "run_info", odd)
    with pytest.warns(DeprecationWarning, match="another library's warning"):  # handed on as Python shows it
        assert main(["info", str(tmp_path / "scan.nii.gz")]) == 0
    lines = capfd.readouterr().err.splitlines()
    assert lines == [f"warning: {tmp_path}/{ESCAPED}: numTraining is 5 but 2 training cases were found"]


def test_every_verb_takes_threads():
    verbs = leaf_parsers(build_parser())
    assert len(verbs) >= 15
    for verb in verbs:
        assert any("--threads" in action.option_strings for action in verb._actions), verb.prog


def test_the_parser_and_help_need_no_torch():
    result = _python("""
        import sys
        from segmorph.cli.main import build_parser, leaf_parsers
        for verb in leaf_parsers(build_parser()):
            verb.format_help()
        print("torch" in sys.modules, "SimpleITK" in sys.modules)
    """)
    assert result.stdout.split()[-2:] == ["False", "False"], result.stderr


def test_threads_option_sets_torchs_threads_in_a_fresh_process(tmp_path):
    scan = _scan(tmp_path / "scan.nii.gz")
    result = _python(f"""
        import torch
        from segmorph.cli.main import main
        code = main(["info", "--threads", "3", {str(scan)!r}])
        print(code, torch.get_num_threads(), torch.get_num_interop_threads())
    """)  # fmt: skip
    assert result.stdout.split()[-3:] == ["0", "3", "3"], result.stderr


def test_default_threads_follow_the_cpus_the_process_may_use(tmp_path):
    assert 1 <= default_threads() <= len(usable_cpus())
    scan = _scan(tmp_path / "scan.nii.gz")
    result = _python(f"""
        import os
        os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})  # one CPU, as `taskset -c 0` gives
        import torch
        from segmorph.cli.main import main
        torch.set_num_threads(4)  # as if torch's own default had counted the whole machine
        code = main(["info", {str(scan)!r}])
        print(code, torch.get_num_threads())
    """)  # fmt: skip
    assert result.stdout.split()[-2:] == ["0", "1"], result.stderr


@pytest.mark.parametrize(("given", "expected"), [(None, ("PASSIVE", "3000")), ("ACTIVE", ("ACTIVE", None))])
def test_openmp_wait_policy_is_set_before_torch_is_imported(given, expected):
    """The OpenMP runtime reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when torch loads it: record them at that
    moment. A policy the user set is kept, and then no spin count is added."""
    result = _python(
        """
        import importlib.abc, os, sys
        seen = []

        class Watch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "torch" and not seen:
                    seen.append((os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT")))
                return None

        sys.meta_path.insert(0, Watch())
        import segmorph.cli.main  # needs no torch itself; the verb that runs imports it
        import torch
        print("torch" in sys.modules, seen)
        """,
        **({"OMP_WAIT_POLICY": given} if given else {}),
    )
    assert result.stdout.strip() == f"True [{expected!r}]", result.stderr


@pytest.mark.parametrize("value", ["-1", "4294967296", "1.5"])
def test_every_seed_option_takes_a_whole_number_from_0_to_2_to_the_32(value, capsys):
    seeded = [(verb, flag) for verb in leaf_parsers(build_parser()) for action in verb._actions
              for flag in action.option_strings if flag in ("--seed", "--split-seed")]  # fmt: skip
    assert len(seeded) >= 7
    for verb, flag in seeded:
        with pytest.raises(SystemExit) as stopped:
            verb.parse_known_args([flag, value])
        assert stopped.value.code == 2
        assert f"expected a whole number from 0 to 4294967295, got '{value}'" in capsys.readouterr().err
