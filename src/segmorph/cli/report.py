"""``segmorph report``: one HTML page about a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from segmorph.cli.arguments import say, verb_parser

EXAMPLES = {
    "report": "segmorph report runs/hippo --out hippo_report.html --cases 12",
}


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph report``."""
    parser = verb_parser(sub, "report", "Write one self-contained HTML page about a run folder (segmentation, "
                         "registration, classification, enhance or baseline): metrics, curves, worst cases with a "
                         "slice slider.",
                         EXAMPLES["report"])  # fmt: skip
    _add_report(parser)
    parser.set_defaults(handler=run_report)


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path,
                   help="folder from segmorph train (--folds too), find-best, register, train-registration, "
                        "classify train, enhance (enhance.json) or baseline (baseline.json)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="HTML file to write")
    p.add_argument("--cases", type=int, default=12, help="worst cases, pairs or images to draw (default 12)")


def run_report(args: argparse.Namespace) -> int:
    """``segmorph report``: build the page and print where it is."""
    from segmorph.report import build_report

    path = build_report(args.run_dir, args.out, args.cases)
    say(f"report written to {path}")
    return 0
