"""Settings: typed ``key=value`` overrides, config files, dotted keys on nested frozen dataclasses, one-line errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from segmorph.configs import (
    apply_overrides,
    config_to_dict,
    load_overrides_file,
    parse_duration,
    parse_overrides,
    training_config,
)
from segmorph.errors import SegmorphError


@dataclass(frozen=True)
class Optim:
    batch_size: int = 2
    learning_rate: float = 1e-3
    shape: tuple[int, ...] = (8, 8)
    name: str = "adamw"
    size: tuple[int, ...] | None = None
    seed: int = 0
    max_steps: int = 0
    time_budget_s: float = 60.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class Settings:
    train: Optim = field(default_factory=Optim)
    network: dict = field(default_factory=lambda: {"name": "unet", "features": [4, 8]})
    amp: bool = True


def test_override_values_are_typed_like_yaml():
    values = parse_overrides(["a=4", "b=1e-3", "c=[16, 32]", "d=true", "e=sgd", "f=[a, b]", "g=null", "h=1.5",
                              "i={x: 1}", "j= spaced "])  # fmt: skip
    assert values == {"a": 4, "b": 0.001, "c": [16, 32], "d": True, "e": "sgd", "f": ["a", "b"], "g": None, "h": 1.5,
                      "i": {"x": 1}, "j": " spaced "}  # fmt: skip
    with pytest.raises(SegmorphError, match="'train.batch_size' is not key=value"):
        parse_overrides(["train.batch_size"])


def test_dotted_keys_reach_nested_dataclasses_and_dict_fields():
    base = Settings()
    changed = apply_overrides(base, {"train.batch_size": 4, "train.learning_rate": 1, "train.shape": [16, 24],
                                     "network.features": [8, 16], "amp": False})  # fmt: skip
    assert changed.train == Optim(batch_size=4, learning_rate=1.0, shape=(16, 24))
    assert isinstance(changed.train.learning_rate, float) and changed.train.shape == (16, 24)
    assert changed.network == {"name": "unet", "features": [8, 16]} and changed.amp is False
    assert base == Settings()  # unchanged
    assert apply_overrides(base, {"train": {"seed": 3}}).train.seed == 3  # a mapping sets several keys of a section
    assert apply_overrides(base, {"train.size": None}).train.size is None


def test_an_unknown_key_is_one_line_naming_it_and_the_valid_ones():
    with pytest.raises(SegmorphError) as err:
        apply_overrides(Settings(), {"train.batch": 4}, "demo config")
    message = str(err.value)
    assert "\n" not in message and message.startswith("unknown demo config key 'train.batch'; valid keys: ")
    assert "train.batch_size" in message and "train.learning_rate" in message
    with pytest.raises(SegmorphError, match="unknown config key 'optim'; valid keys: train, network, amp"):
        apply_overrides(Settings(), {"optim.batch_size": 4})
    with pytest.raises(
        SegmorphError, match="unknown config key 'network.width'; valid keys: network.name, network.features"
    ):
        apply_overrides(Settings(), {"network.width": 4})
    with pytest.raises(SegmorphError, match="unknown config key 'amp.x'"):
        apply_overrides(Settings(), {"amp.x": 1})


def test_a_value_of_the_wrong_type_or_range_is_one_line_naming_the_key():
    cases = [
        ({"train.batch_size": "four"}, "config: train.batch_size: expected an integer, got 'four'"),
        ({"train.batch_size": 2.5}, "config: train.batch_size: expected an integer, got 2.5"),
        ({"train.batch_size": True}, "config: train.batch_size: expected an integer, got True"),
        ({"train.learning_rate": "fast"}, "config: train.learning_rate: expected a number, got 'fast'"),
        ({"train.shape": 16}, "config: train.shape: expected a list, got 16"),
        ({"train.shape": [16, "x"]}, "config: train.shape[1]: expected an integer, got 'x'"),
        ({"train.name": 3}, "config: train.name: expected text, got 3"),
        ({"amp": "maybe"}, "config: amp: expected true or false, got 'maybe'"),
        ({"train": 5}, "config: train: expected a mapping of its keys, got 5"),
        ({"train.batch_size": 0}, "config: train.batch_size: expected at least 1, got 0"),  # the dataclass's check
    ]  # fmt: skip
    for overrides, message in cases:
        with pytest.raises(SegmorphError) as err:
            apply_overrides(Settings(), overrides)
        assert str(err.value) == message


def test_yaml_and_json_files_nested_or_dotted(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  batch_size: 4\n  learning_rate: 1.0e-2\nnetwork.features: [2, 4]\n")
    assert load_overrides_file(tmp_path / "a.yaml") == {"train.batch_size": 4, "train.learning_rate": 0.01,
                                                        "network.features": [2, 4]}  # fmt: skip
    (tmp_path / "b.json").write_text(json.dumps({"train": {"shape": [4, 4]}}))
    assert apply_overrides(Settings(), load_overrides_file(tmp_path / "b.json")).train.shape == (4, 4)
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(SegmorphError, match="bad.yaml: cannot parse config file"):
        load_overrides_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SegmorphError, match="must hold a mapping"):
        load_overrides_file(tmp_path / "list.yaml")
    with pytest.raises(SegmorphError, match="config file not found"):
        load_overrides_file(tmp_path / "missing.yaml")


def test_a_saved_config_reads_back_to_the_same_settings(tmp_path):
    settings = apply_overrides(Settings(), {"train.shape": [16, 24], "train.size": [3]})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_to_dict(settings)))
    assert config_to_dict(settings)["train"]["shape"] == [16, 24]
    assert apply_overrides(Settings(), load_overrides_file(path)) == settings


def test_training_config_layers_arguments_file_and_overrides(tmp_path):
    (tmp_path / "f.yaml").write_text("train:\n  batch_size: 8\n  seed: 5\n")
    settings = training_config(Settings(), {"train.batch_size": 16}, tmp_path / "f.yaml", max_steps=10, seed=1)
    assert (settings.train.batch_size, settings.train.seed) == (16, 5)  # overrides > file > keyword arguments
    assert (settings.train.max_steps, settings.train.time_budget_s) == (10, 0.0)  # a step limit alone
    assert training_config(Settings(), time_budget="2m", max_steps=10).train.time_budget_s == 120.0
    assert training_config(Settings()).train.time_budget_s == 60.0


def test_durations():
    assert parse_duration("20m") == 1200.0 and parse_duration("1h30m") == 5400.0 and parse_duration("90s") == 90.0
    assert parse_duration("90") == 90.0 and parse_duration(12) == 12.0 and parse_duration(2.5) == 2.5
    for bad in ("20 minutes", "m", "", -1, True):
        with pytest.raises(SegmorphError, match="invalid duration"):
            parse_duration(bad)
