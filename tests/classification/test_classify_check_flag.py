"""``segmorph classify train --no-check``: the switch reaches the :class:`ClassifyRequest` the run is given."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from segmorph.classification import api
from segmorph.classification.request import ClassifyRequest
from segmorph.cli.classification import add_classify_arguments, run_classify, train_request

SUMMARY = {
    "fit": {"steps": 1, "elapsed_s": 0.0, "stopped_because": "max steps"},
    "validation": {"auc": 0.5, "balanced_accuracy": 0.5},
    "threshold": None,
}


def _parse(folder: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="segmorph")
    add_classify_arguments(parser.add_subparsers(dest="verb"))
    return parser.parse_args(["classify", "train", str(folder), "--out", str(folder / "run"), *extra])


@pytest.mark.parametrize(("extra", "check"), [((), True), (("--no-check",), False)])
def test_no_check_reaches_the_request(tmp_path, monkeypatch, extra, check):
    args = _parse(tmp_path, *extra)
    assert train_request(args).check is check
    seen: list[ClassifyRequest] = []
    monkeypatch.setattr(api, "train_from_request", lambda request, settings: seen.append(request) or SUMMARY)
    assert run_classify(args) == 0
    assert [request.check for request in seen] == [check]
