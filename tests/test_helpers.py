"""The test helpers themselves: where the real data is looked for, and when its absence skips or fails."""

from pathlib import Path

import pytest

import helpers


def test_datasets_are_looked_for_beside_the_clone():
    clone = Path(__file__).resolve().parents[1]
    assert (clone / "pyproject.toml").is_file()
    assert clone.parent / "shared" / "datasets" == helpers.DATASETS


def test_require_dataset_skips_only_when_the_shared_data_is_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(helpers, "DATASETS", tmp_path / "absent")
    with pytest.raises(pytest.skip.Exception, match="real data not present"):
        helpers.require_dataset("msd_hippocampus")
    (tmp_path / "datasets" / "msd_hippocampus").mkdir(parents=True)
    (tmp_path / "datasets" / "msd_hippocampus" / "dataset.json").write_text("{}")
    monkeypatch.setattr(helpers, "DATASETS", tmp_path / "datasets")
    assert helpers.require_dataset("msd_hippocampus", "dataset.json") == tmp_path / "datasets" / "msd_hippocampus"
    with pytest.raises(pytest.fail.Exception, match=r"msd_hipocampus is missing .*\['msd_hippocampus'\]"):
        helpers.require_dataset("msd_hipocampus")
    with pytest.raises(pytest.fail.Exception, match="cases.csv is missing"):
        helpers.require_dataset("msd_hippocampus", "cases.csv")
