"""Report of a GAN run (``segmorph synthesize train``): settings, data, curves and the real-vs-synthetic grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segmorph.report.common import curves, embedded_png, read_json, run_facts
from segmorph.report.html import Markup, Section, facts_table, join, json_details, note

SAMPLES = "samples.png"
SAMPLES_CAPTION = ("per case: label map, real image, image generated from that label map, a random elastic "
                   "deformation of the label map, image generated from it (3D: the slice through the middle of the "
                   "foreground)")  # fmt: skip


def is_synthesis_run(folder: Path) -> bool:
    """A ``segmorph synthesize train`` run folder: ``run.json`` with ``"kind": "synthesis"``."""
    record = read_json(folder / "run.json")
    return isinstance(record, dict) and record.get("kind") == "synthesis"


def synthesis_report(run_dir: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of a GAN run's report (``cases`` is unused: ``samples.png`` holds a few cases)."""
    record = read_json(run_dir / "run.json") or {}
    summary = read_json(run_dir / "summary.json") or {}
    plan = read_json(run_dir / "plan.json") or {}
    keys = ("command", "time", "python", "torch", "numpy", "seed", "fold", "num_folds", "train_cases", "val_cases")
    sections = [
        Section("overview", "Overview", _overview(run_dir, record, summary), narrow=True),
        Section("gan", "GAN settings", _settings(record), narrow=True),
        Section("data", "Space (the segmentation plan's preprocessing)", _space(plan), narrow=True),
        Section(
            "run",
            "Run record",
            join([facts_table(run_facts(record, keys)), json_details("run.json", record)]),
            narrow=True,
        ),  # fmt: skip
        Section("curves", "Training curves", curves(run_dir, "validation correlation")),
        Section("samples", "Real vs synthetic", _samples(run_dir)),
    ]
    return "GAN synthesis run", sections


def _overview(run_dir: Path, record: dict[str, Any], summary: dict[str, Any]) -> Markup:
    elapsed = summary.get("elapsed_s")
    facts = {
        "run folder": str(run_dir.resolve()), "dataset": record.get("dataset"),
        "best validation correlation": summary.get("best_val_correlation"), "best epoch": summary.get("best_epoch"),
        "steps": summary.get("steps"),
        "training time": f"{elapsed / 60:.1f} min" if isinstance(elapsed, (int, float)) else None,
        "stopped because": summary.get("stopped_because"), "precision": summary.get("precision"),
        "train cases": summary.get("train_cases"), "validation cases scored": summary.get("val_cases_scored"),
        "last losses": summary.get("last_losses"),
        "use": f"segmorph synthesize sample {run_dir} --labels LABELS --out DIR; segmorph train DATA --synthetic "
               f"{run_dir}",
    }  # fmt: skip
    return facts_table(facts)


def _settings(record: dict[str, Any]) -> Markup:
    settings = record.get("gan")
    if not isinstance(settings, dict):
        return note("run.json records no GAN settings")
    return facts_table({key.replace("_", " "): value for key, value in settings.items()})


def _space(plan: dict[str, Any]) -> Markup:
    if not plan:
        return note("no plan.json in the run folder")
    preprocess = plan.get("preprocess") if isinstance(plan.get("preprocess"), dict) else {}
    train = plan.get("train") if isinstance(plan.get("train"), dict) else {}
    facts = {
        "dimensions": plan.get("ndim"), "slice axis": plan.get("slice_axis"), "labels": plan.get("labels"),
        "channels": plan.get("channel_names"), "target spacing (mm)": preprocess.get("target_spacing"),
        "normalisation": preprocess.get("normalization"), "crop to non-zero": preprocess.get("crop_to_nonzero"),
        "patch": train.get("patch_size"), "batch": train.get("batch_size"),
    }  # fmt: skip
    return facts_table(facts)


def _samples(run_dir: Path) -> Markup:
    picture = embedded_png(run_dir / SAMPLES, f"{SAMPLES}: {SAMPLES_CAPTION}")
    return picture if picture is not None else note(f"no {SAMPLES} in the run folder (training did not finish)")
