"""Running each benchmark step as its own ``segmorph`` process, its wall time and peak memory measured.

Imported by the benchmark scripts beside it (``python benchmarks/few_labels.py`` puts this folder on the path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def shown(command: list[str]) -> str:
    """``command`` as a line, long argument lists (case ids, image files) shortened in the middle."""
    parts = command if len(command) < 40 else [*command[:6], f"... ({len(command) - 10} more) ...", *command[-4:]]
    return " ".join(parts)


def run_logged(command: list[str], log: Path) -> dict:
    """Run ``command`` with its output in ``log``; ``{"wall_min", "peak_gib"}`` of that child process. Exits the
    benchmark with the log's name when the command fails."""
    print("$ " + shown(command), flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.exit(f"failed with exit status {code} (see {log}): {shown(command)}")
    return {"wall_min": round((time.perf_counter() - start) / 60, 2), "peak_gib": round(usage.ru_maxrss / 2**20, 2)}


def run_once(records: Path, name: str, command: list[str], done: Path) -> dict:
    """:func:`run_logged` unless ``done`` exists and the step's record (``records/<name>.json``) was kept; the
    record either way, so an interrupted benchmark continues where it stopped."""
    record = records / f"{name}.json"
    if done.exists() and record.is_file():
        return json.loads(record.read_text())
    records.mkdir(parents=True, exist_ok=True)
    facts = run_logged(command, records / f"{name}.log")
    record.write_text(json.dumps(facts))
    return facts
