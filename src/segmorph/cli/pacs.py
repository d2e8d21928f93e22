"""``segmorph pacs list|fetch|predict``: a DICOMweb server (PACS) as the source of scans and the store of results."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from segmorph.cli.arguments import say, verb_parser

if TYPE_CHECKING:
    from segmorph.dicom.dicomweb import ConnectionSettings

EXAMPLES = {
    "pacs": "segmorph pacs list --url http://127.0.0.1:8042/dicom-web",
    "list": "segmorph pacs list --url http://127.0.0.1:8042/dicom-web --study 1.2.826.0.1.3680043.8.498.1",
    "fetch": "segmorph pacs fetch --url http://127.0.0.1:8042/dicom-web --study 1.2.3 --series 1.2.3.4 --out t1/",
    "predict": "SEGMORPH_PACS_TOKEN=... segmorph pacs predict runs/hippo --url https://pacs/dicom-web --study 1.2.3 "
    "--keep out/ --anonymize",
}
CREDENTIALS = """\
Credentials come from the environment only: SEGMORPH_PACS_TOKEN (a bearer token), or SEGMORPH_PACS_USER and
SEGMORPH_PACS_PASSWORD (basic authentication). They are never printed. Each request times out after --timeout
seconds and is tried again (--tries in all, waits doubling from 0.5 s) when the server cannot be reached or
answers 429 or 5xx."""


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``segmorph pacs`` with its ``list``, ``fetch`` and ``predict`` sub-verbs."""
    parser = verb_parser(sub, "pacs", "List, fetch and segment DICOM series on a DICOMweb server (PACS).",
                         EXAMPLES["pacs"])  # fmt: skip
    verbs = parser.add_subparsers(dest="pacs_verb", required=True, metavar="{list,fetch,predict}")
    for name, help_text, add_arguments, handler in (
        ("list", "List the server's studies, or the series of one study.", _add_list, run_list),
        ("fetch", "Retrieve one series (WADO-RS) into a new folder.", _add_fetch, run_fetch),
        ("predict", "Segment a series with a trained run and store the DICOM-SEG or RT-STRUCT in its study "
         "(STOW-RS).", _add_predict, run_predict),
    ):  # fmt: skip
        verb = verb_parser(verbs, name, help_text, EXAMPLES[name])
        verb.description = f"{verb.description}\n\n{CREDENTIALS}"
        _add_connection(verb)
        add_arguments(verb)
        verb.set_defaults(handler=handler)


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web (no credentials)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="per request (default 30)")
    p.add_argument("--tries", type=int, default=4, metavar="N",
                   help="tries per request on connection errors, 429 and 5xx (1-10, default 4)")  # fmt: skip


def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", metavar="UID", help="list this study's series instead of the studies")


def _add_fetch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    p.add_argument("--series", required=True, metavar="UID", help="Series Instance UID")
    p.add_argument("--out", type=Path, required=True, help="new folder for the series (0001.dcm ...)")
    p.add_argument("--anonymize", action="store_true",
                   help="write de-identified copies only (as segmorph anonymize does)")  # fmt: skip


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="trained segmentation run folder")
    p.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    p.add_argument("--series", metavar="UID", help="Series Instance UID (default: the study's only image series)")
    p.add_argument("--format", choices=("dicom-seg", "rtstruct"), default="dicom-seg",
                   help="what is stored in the study (default dicom-seg)")  # fmt: skip
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="new folder that also receives the series and the result (series/, segmentation.dcm)")  # fmt: skip
    p.add_argument("--anonymize", action="store_true",
                   help="the copies in --keep are de-identified; the stored result stays identified")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")


def _settings(args: argparse.Namespace) -> ConnectionSettings:
    from segmorph.dicom.dicomweb import ConnectionSettings

    return ConnectionSettings(timeout_s=args.timeout, attempts=args.tries)


def run_list(args: argparse.Namespace) -> int:
    """Print a table of studies (or of one study's series) on stdout."""
    from segmorph.dicom.pacs import list_series, list_studies

    if args.study is None:
        studies = list_studies(args.url, _settings(args))
        rows = [(s.uid, s.patient_id, s.date, _count(s.series_count), s.description) for s in studies]
        _print_table(("study", "patient", "date", "series", "description"), rows)
    else:
        series = list_series(args.url, args.study, _settings(args))
        rows = [(s.uid, s.modality, _count(s.instance_count), s.description) for s in series]
        _print_table(("series", "modality", "instances", "description"), rows)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from segmorph.dicom.pacs import fetch_series

    files, warnings = fetch_series(args.url, args.study, args.series, args.out, args.anonymize, _settings(args))
    for warning in warnings:
        say(f"warning: {warning}", err=True)
    say(f"wrote {len(files)} files to {args.out}{' (de-identified)' if args.anonymize else ''}", err=True)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from segmorph.dicom.pacs import PacsPrediction, predict_and_store
    from segmorph.errors import SegmorphError
    from segmorph.segmentation.predict import PredictOptions

    if args.anonymize and args.keep is None:
        raise SegmorphError("--anonymize writes de-identified copies into --keep DIR; give --keep")
    request = PacsPrediction(
        run=args.run, url=args.url, study=args.study, series=args.series, format=args.format, keep=args.keep,
        anonymize=args.anonymize, device=args.device, options=PredictOptions(checkpoint=args.checkpoint),
        settings=_settings(args),
    )  # fmt: skip
    result = predict_and_store(request)
    for warning in result.warnings:
        say(f"warning: {warning}", err=True)
    if result.kept is not None:
        say(f"kept the series and the result in {result.kept}{' (de-identified)' if args.anonymize else ''}", err=True)
    say(f"stored {args.format} {result.instance} (series {result.series}) in study {result.study}, from series "
        f"{result.source_series}")  # fmt: skip
    return 0


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [f"{str(cell):<{width}}" for cell, width in zip(row[:-1], widths)]
        say("  ".join([*cells, str(row[-1])]).rstrip())
