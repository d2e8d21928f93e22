"""``segmorph report``: one self-contained HTML page about any segmorph run folder.

The kind of folder is told by its files:

* ``transform.json``: one ``segmorph register`` pair (:mod:`segmorph.report.registration`);
* ``summary.csv`` beside pair sub-folders: ``segmorph register --pairs``;
* ``run.json`` with ``"kind": "registration"``: ``segmorph train-registration``;
* ``run.json`` with ``"kind": "pretraining"``: ``segmorph pretrain`` (:mod:`segmorph.report.pretraining`);
* ``run.json`` with ``"kind": "synthesis"``: ``segmorph synthesize train`` (:mod:`segmorph.report.synthesis`);
* ``classifier.pt`` or ``val_predictions.csv``: ``segmorph classify train`` (:mod:`segmorph.report.classification`);
* ``plan.json`` with a summary, log or run record: ``segmorph train`` (:mod:`segmorph.report.segmentation`);
* ``crossval.json``: ``segmorph train --folds`` (:mod:`segmorph.report.crossval`);
* ``ensemble.json``: a ``segmorph find-best`` ensemble folder (:mod:`segmorph.report.crossval`);
* ``enhance.json``: a ``segmorph enhance`` output folder (:mod:`segmorph.report.processing`);
* ``baseline.json``: a ``segmorph baseline`` output folder, with ``metrics.csv`` when it had a reference.

The page loads nothing from anywhere: pictures are PNG ``data:`` URIs, CSS and JavaScript are inline.
It is written atomically (:func:`segmorph.io.atomic_write_text`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from segmorph.errors import SegmorphError
from segmorph.io import atomic_write_text
from segmorph.outputs import check_outputs
from segmorph.report.classification import classification_report, is_classification_run
from segmorph.report.crossval import crossval_report, ensemble_report
from segmorph.report.html import Section, page
from segmorph.report.pretraining import is_pretraining_run, pretraining_report
from segmorph.report.processing import baseline_report, enhance_report, is_baseline_folder, is_enhance_folder
from segmorph.report.registration import (
    is_pair_folder,
    is_training_run,
    pair_folders,
    pair_report,
    pairs_report,
    training_report,
)
from segmorph.report.segmentation import is_segmentation_run, segmentation_report
from segmorph.report.synthesis import is_synthesis_run, synthesis_report
from segmorph.segmentation.crossval_layout import is_cross_validation_run
from segmorph.segmentation.find_best import is_ensemble_folder

Builder = Callable[[Path, int], tuple[str, list[Section]]]
KINDS: tuple[tuple[str, Callable[[Path], bool], Builder], ...] = (
    ("registration", is_pair_folder, pair_report),
    ("registration pairs", lambda folder: bool(pair_folders(folder)), pairs_report),
    ("registration training", is_training_run, training_report),
    ("pretraining", is_pretraining_run, pretraining_report),
    ("synthesis", is_synthesis_run, synthesis_report),
    ("classification", is_classification_run, classification_report),
    ("segmentation cross-validation", is_cross_validation_run, crossval_report),
    ("segmentation ensemble", is_ensemble_folder, ensemble_report),
    ("segmentation", is_segmentation_run, segmentation_report),
    ("enhance", is_enhance_folder, enhance_report),
    ("baseline", is_baseline_folder, baseline_report),
)
EXPECTED = ("expected a segmorph run folder: plan.json (segmorph train), crossval.json (train --folds), "
            "ensemble.json (find-best), transform.json (segmorph register), "
            "summary.csv with pair folders (register --pairs), "
            "run.json of train-registration, pretrain or synthesize train, "
            "classifier.pt / val_predictions.csv (classify train), enhance.json (segmorph enhance) "
            "or baseline.json (segmorph baseline)")  # fmt: skip

__all__ = ["build_report", "detect_kind"]


def detect_kind(run_dir: str | Path) -> str:
    """The kind of run folder (see the module docstring).

    Raises:
        SegmorphError: The folder does not exist or is no segmorph run folder.
    """
    return _find(Path(run_dir))[0]


def _find(run_dir: Path) -> tuple[str, Builder]:
    if not run_dir.is_dir():
        raise SegmorphError("no such run folder", run_dir)
    for kind, matches, builder in KINDS:
        if matches(run_dir):
            return kind, builder
    raise SegmorphError(f"not a segmorph run folder ({EXPECTED})", run_dir)


def build_report(run_dir: str | Path, out: str | Path, cases: int = 12) -> Path:
    """Write one self-contained HTML report about a run folder.

    Args:
        run_dir: A folder written by ``segmorph train`` (``--folds`` too), ``find-best``, ``register`` (one pair
            or ``--pairs``), ``train-registration``, ``pretrain``, ``synthesize train``, ``classify train``, ``enhance``
            or ``baseline``.
        out: The HTML file to write (atomically).
        cases: How many of the worst validation (or out-of-fold) cases, pairs or images to draw (enhance: the
            first cases, input beside output; baseline: the worst by Dice, or the first without metrics).

    Returns:
        The path written.

    Raises:
        SegmorphError: Unknown or missing folder, ``cases`` below 1, or the file cannot be written.
    """
    if cases < 1:
        raise SegmorphError(f"cases: expected at least 1, got {cases}")
    run_dir = Path(run_dir)
    check_outputs([Path(out)], inputs=[run_dir])  # never over a file of the run folder it reads
    kind, builder = _find(run_dir)
    try:
        title, sections = builder(run_dir, cases)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as err:  # a record's inner layout tampered
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SegmorphError(f"the run folder's records are not laid out as segmorph writes them ({detail})",
                            run_dir) from None  # fmt: skip
    text = page(f"{title}: {run_dir.resolve().name}", f"{kind} run folder {run_dir.resolve()}", sections)
    return atomic_write_text(out, text)
