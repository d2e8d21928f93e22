"""Reports of registrations: one ``segmorph register`` folder, a ``--pairs`` folder, a training run.

Pictures the folder already holds (``views.png``, ``grid.png``, ``jacobian.png``, ``labels.png``) are
embedded as they are; missing ones are drawn with :mod:`segmorph.registration.pictures` from the
fixed and moving images named in ``registration.json`` and the saved transform, when those are readable.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segmorph.errors import SegmorphError
from segmorph.image import grid_difference
from segmorph.io import read_image
from segmorph.report.common import curves, embedded_png, number, read_json, run_facts
from segmorph.report.html import Markup, Section, facts_table, join, json_details, note, slice_viewer, table, tag
from segmorph.report.slices import pair_stack

PICTURES = (("views.png", "checkerboard and |difference| against the fixed image, before and after"),
            ("grid.png", "deformed fixed grid"), ("jacobian.png", "Jacobian determinant (folding marked ×)"),
            ("labels.png", "label contours: fixed solid, moving dashed"))  # fmt: skip
LABEL_COLUMNS = (("dice", "Dice"), ("hd95", "HD95 mm"), ("assd", "ASSD mm"), ("volume_ref", "volume fixed"),
                 ("volume_pred", "volume warped"))  # fmt: skip


def is_pair_folder(folder: Path) -> bool:
    """A ``segmorph register`` output folder of one pair."""
    return (folder / "transform.json").is_file()


def pair_folders(folder: Path) -> list[Path]:
    """The pair sub-folders of a ``segmorph register --pairs`` output folder (none: not such a folder)."""
    if not (folder / "summary.csv").is_file():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and is_pair_folder(p))


def is_training_run(folder: Path) -> bool:
    """A ``segmorph train-registration`` run folder."""
    record = read_json(folder / "run.json")
    return isinstance(record, dict) and record.get("kind") == "registration"


# -- one pair --------------------------------------------------------------------------------------


def pair_report(folder: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of one registration's report."""
    inputs = PairInputs(folder)
    metrics = pair_metrics(folder)
    sections = [
        Section("overview", "Overview", _pair_facts(folder), narrow=True),
        Section("metrics", "Metrics", _metrics_block(folder, metrics, inputs), narrow=True),
        Section("slices", "Slices", _pair_slices(inputs, "pair")),
        Section("pictures", "Pictures", _pictures(folder, inputs)),
        Section("transform", "Transform", _transform_block(folder)),
    ]  # fmt: skip
    return "Registration", sections


@dataclass
class PairInputs:
    """The images and transform of a registration folder, read on first use (``problem`` says what failed)."""

    folder: Path
    problem: str = ""
    _loaded: dict[str, Any] | None = None

    def get(self) -> dict[str, Any] | None:
        """``fixed``, ``moving``, ``warped``, ``warped_labels`` (or None) and ``transform``; None when unreadable."""
        if self._loaded is None and not self.problem:
            try:
                self._loaded = self._read()
            except (SegmorphError, KeyError, TypeError, ValueError) as err:
                self.problem = str(err)
        return self._loaded

    def _read(self) -> dict[str, Any]:
        from segmorph.registration.transform import load_transform

        record = read_json(self.folder / "registration.json")
        if not isinstance(record, dict) or not record.get("fixed") or not record.get("moving"):
            raise SegmorphError("registration.json does not name the fixed and moving images", self.folder)
        labels_path = self.folder / "warped_labels.nii.gz"
        return {
            "fixed": read_image(record["fixed"]), "moving": read_image(record["moving"]),
            "warped": read_image(self.folder / "warped.nii.gz"), "transform": load_transform(self.folder),
            "warped_labels": read_image(labels_path, is_label=True) if labels_path.is_file() else None,
        }  # fmt: skip


def pair_metrics(folder: Path) -> dict[str, Any]:
    """``metrics.json``, else the metrics inside ``registration.json``, else an empty dict."""
    metrics = read_json(folder / "metrics.json")
    if isinstance(metrics, dict):
        return metrics
    record = read_json(folder / "registration.json")
    return (record or {}).get("metrics") or {} if isinstance(record, dict) else {}


def _pair_facts(folder: Path) -> Markup:
    record = read_json(folder / "registration.json")
    if not isinstance(record, dict):
        return note("registration.json is missing or unreadable")
    keys = ("fixed", "moving", "method", "similarity", "refine", "seconds")
    return join([facts_table({"folder": str(folder.resolve()), **{k: record.get(k) for k in keys}}),
                 json_details("registration.json", record)])  # fmt: skip


def _metrics_block(folder: Path, metrics: dict[str, Any], inputs: PairInputs) -> Markup:
    parts = []
    rows = metrics.get("labels") or []
    if rows:
        header = ["label", *(name for _, name in LABEL_COLUMNS)]
        parts.append(table(header, [[f"{r.get('label')}: {r.get('name')}", *(r.get(k) for k, _ in LABEL_COLUMNS)]
                                    for r in rows]))  # fmt: skip
    else:
        parts.append(note("no label metrics (register with --fixed-labels, or run segmorph evaluate-registration)"))
    quality = {k: metrics.get(k) for k in ("mean_dice", "folding_percent", "log_jacobian_std", "jacobian_min")}
    if all(v is None for k, v in quality.items() if k != "mean_dice"):
        quality.update(_deformation_quality(folder, inputs))
    names = {"mean_dice": "mean Dice", "folding_percent": "folding % (det J ≤ 0)",
             "log_jacobian_std": "SD of log det J", "jacobian_min": "smallest det J"}  # fmt: skip
    facts = {names[k]: v for k, v in quality.items()}
    tre = metrics.get("tre")
    if isinstance(tre, dict):
        facts["TRE mean / max (mm)"] = f"{number(tre.get('mean_mm')):.3f} / {number(tre.get('max_mm')):.3f}"
        facts["landmark distance before (mm)"] = tre.get("before_mean_mm")
    parts.append(facts_table(facts))
    return join(parts)


def _deformation_quality(folder: Path, inputs: PairInputs) -> dict[str, Any]:
    """Folding and log-Jacobian spread computed from the saved transform (no metrics.json)."""
    loaded = inputs.get()
    if loaded is None:
        return {}
    from segmorph.registration.run import deformation_quality

    return deformation_quality(loaded["transform"], loaded["fixed"])


def _pair_slices(inputs: PairInputs, anchor: str) -> Markup:
    loaded = inputs.get()
    if loaded is None:
        return note(f"no slice viewer: {inputs.problem}")
    fixed, warped, labels = loaded["fixed"], loaded["warped"], loaded["warped_labels"]
    problem = grid_difference(warped, fixed)
    if problem:
        return note(f"no slice viewer: the warped image is not on the fixed grid ({problem})")
    label_values = None if labels is None or not labels.same_grid(fixed) else labels.numpy()[0]
    stack = pair_stack(fixed.numpy(), warped.numpy(), fixed.spacing, label_values)
    return slice_viewer(f"{anchor}-viewer", stack)


def _pictures(folder: Path, inputs: PairInputs) -> Markup:
    """The folder's PNGs; those missing drawn from the images and transform when possible."""
    shown = {name: embedded_png(folder / name, caption) for name, caption in PICTURES}
    missing = [name for name, picture in shown.items() if picture is None and name != "labels.png"]
    if missing and inputs.get() is not None:
        shown.update(_drawn_pictures(inputs.get(), dict(PICTURES), missing))
    parts = [picture for picture in shown.values() if picture is not None]
    if not parts:
        return note(f"no pictures (register with --overlays){': ' + inputs.problem if inputs.problem else ''}")
    return join(parts)


def _drawn_pictures(loaded: dict[str, Any], captions: dict[str, str], names: list[str]) -> dict[str, Markup | None]:
    from segmorph.registration.pictures import save_registration_pictures

    with tempfile.TemporaryDirectory(prefix="segmorph-report-") as scratch:
        save_registration_pictures(scratch, loaded["fixed"], loaded["moving"], loaded["warped"], loaded["transform"])
        return {name: embedded_png(Path(scratch) / name, captions[name] + " (drawn by the report)") for name in names}


def _transform_block(folder: Path) -> Markup:
    record = read_json(folder / "transform.json")
    if not isinstance(record, dict):
        return note("transform.json is unreadable")
    steps = ", ".join(str(s.get("type")) for s in record.get("steps", []) if isinstance(s, dict))
    grid = record.get("fixed_grid") or {}
    facts = {"steps (fixed → moving)": steps, "fixed grid shape": grid.get("shape"),
             "fixed grid spacing (mm)": grid.get("spacing")}  # fmt: skip
    return join([facts_table(facts), json_details("transform.json", record)])


# -- many pairs ------------------------------------------------------------------------------------


def pairs_report(folder: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of a ``--pairs`` folder: the summary table worst first, then the worst pairs."""
    rows = sorted((_pair_row(p) for p in pair_folders(folder)), key=_worst_first)
    header = ["rank", "pair", "method", "mean Dice", "HD95 mean (mm)", "folding %", "SD log det J", "seconds"]
    table_rows = []
    for rank, row in enumerate(rows, start=1):
        name = tag("a", row["pair"], href=f"#pair-{rank}") if rank <= cases else row["pair"]
        table_rows.append([rank, name, row["method"], row["mean_dice"], row["hd95"], row["folding_percent"],
                           row["log_jacobian_std"], row["seconds"]])  # fmt: skip
    summary = join([
        note(f"{len(rows)} pairs sorted by mean Dice (lowest first; pairs without labels last)."),
        table(header, table_rows),
    ])  # fmt: skip
    details_ = [_pair_details(folder / row["pair"], rank) for rank, row in enumerate(rows[:cases], start=1)]
    sections = [Section("summary", "Pairs, worst first", summary),
                Section("pairs", f"The {len(details_)} worst pairs", join(details_))]  # fmt: skip
    return "Registration of many pairs", sections


def _pair_row(folder: Path) -> dict[str, Any]:
    metrics = pair_metrics(folder)
    record = read_json(folder / "registration.json") or {}
    hd95 = [number(r.get("hd95")) for r in metrics.get("labels") or []]
    return {
        "pair": folder.name, "method": record.get("method"), "seconds": record.get("seconds"),
        "mean_dice": number(metrics.get("mean_dice")), "hd95": float(np.mean(hd95)) if hd95 else math.nan,
        "folding_percent": number(metrics.get("folding_percent")),
        "log_jacobian_std": number(metrics.get("log_jacobian_std")),
    }  # fmt: skip


def _worst_first(row: dict[str, Any]) -> tuple:
    dice = row["mean_dice"]
    folding = row["folding_percent"]
    return (math.isnan(dice), dice if not math.isnan(dice) else 0.0, -(folding if not math.isnan(folding) else 0.0))


def _pair_details(folder: Path, rank: int) -> Markup:
    inputs = PairInputs(folder)
    return tag("div", join([
        tag("h3", f"#{rank} {folder.name}"),
        tag("div", join([_pair_facts(folder), _metrics_block(folder, pair_metrics(folder), inputs)]), class_="columns"),
        _pair_slices(inputs, f"pair-{rank}"), _pictures(folder, inputs),
    ]), class_="case", id=f"pair-{rank}")  # fmt: skip


# -- training run ----------------------------------------------------------------------------------


def training_report(run_dir: Path, cases: int) -> tuple[str, list[Section]]:
    """Title and sections of a ``segmorph train-registration`` run."""
    record = read_json(run_dir / "run.json") or {}
    summary = read_json(run_dir / "summary.json") or {}
    split = record.get("split") if isinstance(record.get("split"), dict) else {}
    overview = {
        "run folder": str(run_dir.resolve()), "dataset": record.get("dataset"),
        f"best monitor {summary.get('monitor_score', 'Dice')}": summary.get("best_monitor_score", summary.get("best_monitor_dice")),
        "best epoch": summary.get("best_epoch"),
        "steps": summary.get("steps"),
        "training time": f"{summary['elapsed_s'] / 60:.1f} min" if isinstance(summary.get("elapsed_s"), (int, float))
        else None,
        "stopped because": summary.get("stopped_because"), "precision": summary.get("precision"),
        "cases (train / monitor / held out)": " / ".join(str(len(split.get(k) or [])) for k in
                                                         ("train", "monitor", "held_out")),
        "segmentation prior": record.get("segmentation_prior"),
    }  # fmt: skip
    keys = ("command", "time", "python", "torch", "numpy", "seed", "fold", "num_folds")
    sections = [
        Section("overview", "Overview", facts_table(overview), narrow=True),
        Section("split", "Split", _split_block(split), narrow=True),
        Section("run", "Run record", join([facts_table(run_facts(record, keys)), json_details("run.json", record)]),
                narrow=True),
        Section("curves", "Training curves", curves(run_dir, "monitor-pair Dice")),
    ]  # fmt: skip
    prior = read_json(run_dir / "segmentation_prior" / "source.json")
    if prior is not None:
        sections.append(Section("prior", "Segmentation prior", json_details("segmentation_prior/source.json", prior)))
    return "Registration training run", sections


def _split_block(split: dict[str, Any]) -> Markup:
    if not split:
        return note("run.json holds no split")
    rows = [[name, len(ids or []), ", ".join(map(str, (ids or [])[:3])) + (" …" if len(ids or []) > 3 else "")]
            for name, ids in split.items()]  # fmt: skip
    return join(
        [
            table(["part", "cases", "first cases"], rows),
            note("monitor pairs are drawn from the monitor cases; held-out cases were never seen"),
        ]
    )
