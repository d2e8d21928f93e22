"""Report of a pretraining run (``segmorph pretrain``): objective, data, reconstruction curves and pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segmorph.report.common import curves, embedded_png, read_json, run_facts
from segmorph.report.html import Markup, Section, facts_table, join, json_details, note

RECONSTRUCTIONS = "reconstructions.png"


def is_pretraining_run(folder: Path) -> bool:
    """A ``segmorph pretrain`` run folder: ``run.json`` with ``"kind": "pretraining"``."""
    record = read_json(folder / "run.json")
    return isinstance(record, dict) and record.get("kind") == "pretraining"


def pretraining_report(run_dir: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of a pretraining run's report (``cases`` is unused: the picture holds a few patches)."""
    record = read_json(run_dir / "run.json") or {}
    summary = read_json(run_dir / "summary.json") or {}
    plan = read_json(run_dir / "plan.json") or {}
    sections = [
        Section("overview", "Overview", _overview(run_dir, record, summary), narrow=True),
        Section("objective", "Objective", _objective(record), narrow=True),
        Section("data", "Data", _data(record, plan), narrow=True),
        Section("run", "Run record", _run(record), narrow=True),
        Section("curves", "Loss and reconstruction score", curves(run_dir, "validation 1 - NMSE")),
        Section("reconstructions", "Reconstructions", _pictures(run_dir)),
    ]  # fmt: skip
    return "Pretraining run", sections


def _overview(run_dir: Path, record: dict[str, Any], summary: dict[str, Any]) -> Markup:
    fit = summary.get("fit") or {}
    elapsed = fit.get("elapsed_s")
    network = record.get("network")
    use = "segmorph train DATA --init" if network == "unet" else "segmorph classify train DATA --init"
    facts = {
        "run folder": str(run_dir.resolve()), "network": network, "objective": summary.get("objective"),
        "score": record.get("score"), "best validation score": fit.get("best_val_r2"),
        "best epoch": fit.get("best_epoch"), "steps": fit.get("steps"),
        "training time": f"{elapsed / 60:.1f} min" if isinstance(elapsed, (int, float)) else None,
        "stopped because": fit.get("stopped_because"), "precision": fit.get("precision"),
        "train images": summary.get("train_images"), "validation images": summary.get("val_images"),
        "use": f"{use} {run_dir}" if network else None,
    }  # fmt: skip
    return facts_table(facts)


def _objective(record: dict[str, Any]) -> Markup:
    objective = record.get("objective")
    if not isinstance(objective, dict):
        return note("run.json records no objective")
    return facts_table({key.replace("_", " "): value for key, value in objective.items()})


def _data(record: dict[str, Any], plan: dict[str, Any]) -> Markup:
    images = record.get("images")
    facts: dict[str, Any] = {
        "images given": ", ".join(map(str, images)) if isinstance(images, list) else images,
        "train images": len(record.get("train_cases") or []), "validation images": len(record.get("val_cases") or []),
    }  # fmt: skip
    spec = record.get("input")
    if isinstance(spec, dict):
        facts |= {"classifier input size": spec.get("size"), "channels": spec.get("channels"),
                  "normalisation": spec.get("normalisation")}  # fmt: skip
    if plan:
        preprocess, train, network = plan.get("preprocess") or {}, plan.get("train") or {}, plan.get("network") or {}
        facts |= {
            "dimensions": plan.get("ndim"), "slice axis": plan.get("slice_axis"), "channels": plan.get("channel_names"),
            "modalities": plan.get("modalities"), "median shape": plan.get("median_shape"),
            "target spacing (mm)": preprocess.get("target_spacing"), "normalisation": preprocess.get("normalization"),
            "U-Net features": network.get("features"), "patch size": train.get("patch_size"),
            "batch size": train.get("batch_size"),
        }  # fmt: skip
    parts = [facts_table(facts)]
    if plan:
        parts.append(json_details("plan.json (all values)", plan))
    return join(parts)


def _run(record: dict[str, Any]) -> Markup:
    if not record:
        return note("run.json is missing or unreadable")
    keys = ("command", "time", "segmorph", "python", "torch", "platform", "seed", "max_steps", "time_budget_s",
            "train_cases", "val_cases", "transfer_prefix")  # fmt: skip
    return join([facts_table(run_facts(record, keys)), json_details("run.json", record)])


def _pictures(run_dir: Path) -> Markup:
    picture = embedded_png(run_dir / RECONSTRUCTIONS, "validation patches: input, corrupted input, reconstruction "
                                                      "(middle slice of 3D patches, first channel)")  # fmt: skip
    return picture if picture is not None else note(f"no {RECONSTRUCTIONS} in the run folder")
