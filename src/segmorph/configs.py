"""Settings as frozen (nested) dataclasses, read from JSON/YAML and overridden by dotted keys.

One rule for every task (segmentation's plan, registration training, classification): a value is set by a
dotted key (``train.batch_size=4`` on the command line, or nested / dotted keys in a ``--config`` file);
values are typed by YAML (``4`` an int, ``1e-3`` a float, ``[16, 32]`` a list, ``true`` a bool); an unknown
key or a value of the wrong type or range is refused with one line naming the key. Durations (``"20m"``)
are parsed here too, so that the library and the command line read them alike.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from segmorph.errors import SegmorphError
from segmorph.records import MAX_JSON_DEPTH, json_depth, read_json, read_text

CONFIG_FILE = "config.json"
"""The settings a run was asked for, written to its run folder before training (registration, classification)."""

T = TypeVar("T")


def refuse_unknown_keys(kind: type, values: dict[str, Any], name: str) -> None:
    """Raise ``ValueError`` naming ``name`` when ``values`` has keys that are not fields of dataclass ``kind``."""
    valid = [f.name for f in fields(kind)]
    unknown = set(values) - set(valid)
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}; valid keys: {', '.join(valid)}")


def parse_duration(value: str | float | int) -> float:
    """``"20m"``, ``"1h30m"``, ``"90s"``, plain seconds (``"90"`` or ``90``) -> seconds.

    Raises:
        SegmorphError: Not a duration, or negative.
    """
    if isinstance(value, bool):
        raise SegmorphError(f"invalid duration {value!r} (examples: 20m, 1h30m, 90s)")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise SegmorphError(f"invalid duration {value!r}: expected a finite number of seconds, at least 0")
        return float(value)
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise SegmorphError(f"invalid duration {text!r} (examples: 20m, 1h30m, 90s)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def parse_value(raw: str) -> Any:
    """A command-line value typed as JSON, else as YAML (``[a, b]``, ``yes``), else the text itself.

    JSON comes first because PyYAML reads ``1e-3`` as text.
    """
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    import yaml

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return raw if value is None or isinstance(value, str) else value


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.batch_size=4", "network.features=[16,32]"]`` -> ``{"train.batch_size": 4, ...}`` (typed values).

    Raises:
        SegmorphError: An item that is not ``key=value``.
    """
    overrides = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SegmorphError(f"override {item!r} is not key=value (e.g. train.batch_size=4)")
        overrides[key.strip()] = parse_value(raw)
    return overrides


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys: ``{"train": {"batch_size": 4}}`` -> ``{"train.batch_size": 4}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_overrides_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML file of settings, nested (``{"train": {"batch_size": 4}}``) or dotted; returns dotted keys.

    Raises:
        SegmorphError: Missing or unreadable file, or not a mapping.
    """
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        return flatten(read_json(path, "config file"))
    text = read_text(path, "config file")
    if json_depth(text) > MAX_JSON_DEPTH or _indent_depth(text) > MAX_JSON_DEPTH:
        raise SegmorphError(f"config file nests deeper than {MAX_JSON_DEPTH} levels", path)
    try:
        import yaml

        values = yaml.safe_load(text)
    except (ValueError, ImportError, RecursionError, _yaml_error()) as err:
        raise SegmorphError(f"cannot parse config file ({str(err).splitlines()[0]})", path) from None
    if not isinstance(values, dict):
        raise SegmorphError("config file must hold a mapping", path)
    return flatten(values)


def _indent_depth(text: str) -> int:
    """Distinct indentation widths of a YAML text: an upper bound on how deep its block mappings nest."""
    return len({len(line) - len(line.lstrip(" -")) for line in text.splitlines() if line.strip()})


def _yaml_error() -> type[Exception]:
    import yaml

    return yaml.YAMLError


class _Tree(dict):
    """Dotted keys grouped by their first part (leaves are the values themselves, dicts included)."""


def _tree_of(overrides: Mapping[str, Any]) -> _Tree:
    tree = _Tree()
    for dotted, value in overrides.items():
        node = tree
        *parents, last = str(dotted).split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, _Tree):
                child = node[part] = _Tree()
            node = child
        node[last] = value
    return tree


def apply_overrides(config: T, overrides: Mapping[str, Any], name: str = "config") -> T:
    """Return ``config`` (a frozen, possibly nested dataclass) with dotted keys replaced.

    Nested dataclasses are reached by dots (``train.batch_size``); so are the existing keys of dict fields
    (``network.features``). Values are checked against the field's type (ints stay ints, lists become tuples)
    and each changed dataclass is rebuilt once, so its own checks (``__post_init__``) see every change.

    Args:
        config: The dataclass instance to start from.
        overrides: Dotted key -> value (a dict value for a dataclass field sets several of its keys).
        name: What the settings are called in error messages (``"plan"``, ``"classifier config"``).

    Returns:
        A new instance; ``config`` is unchanged.

    Raises:
        SegmorphError: One line naming the key: unknown (with the valid keys), wrong type, out of range.

    Example:
        >>> apply_overrides(config, {"train.batch_size": 4, "registration.similarity": "mse"})
    """
    return _rebuild(config, _tree_of(overrides), name, "")


def _rebuild(node: Any, tree: _Tree, name: str, path: str) -> Any:
    if is_dataclass(node) and not isinstance(node, type):
        return _rebuild_dataclass(node, tree, name, path)
    if isinstance(node, dict):
        result, by_text = dict(node), {str(k): k for k in node}
        for key, value in tree.items():
            if key not in by_text:
                raise _unknown(name, path + key, [path + k for k in by_text])
            original = by_text[key]
            result[original] = (
                _rebuild(node[original], value, name, f"{path}{key}.") if isinstance(value, _Tree) else value
            )
        return result
    raise _unknown(name, path + next(iter(tree)), [])


def _rebuild_dataclass(node: Any, tree: _Tree, name: str, path: str) -> Any:
    names = [f.name for f in fields(node) if f.init]
    try:
        hints = typing.get_type_hints(type(node))
    except (NameError, TypeError):  # an annotation that cannot be resolved here: values are taken as given
        hints = {}
    changes = {}
    for key, value in tree.items():
        if key not in names:
            raise _unknown(name, path + key, [path + n for n in names])
        current = getattr(node, key)
        if isinstance(value, _Tree) or (is_dataclass(current) and isinstance(value, dict)):
            changes[key] = _rebuild(current, value if isinstance(value, _Tree) else _tree_of(flatten(value)), name,
                                    f"{path}{key}.")  # fmt: skip
        else:
            changes[key] = coerce(value, hints.get(key, Any), f"{path}{key}", name)
    try:
        return replace(node, **changes)
    except SegmorphError:
        raise
    except (ValueError, TypeError) as err:
        raise SegmorphError(_located(name, path, str(err).splitlines()[0], names)) from None


def _located(name: str, path: str, message: str, names: list[str]) -> str:
    """``message`` of a dataclass check, its field named by its full dotted key."""
    field_name = message.split(":", 1)[0].split(".", 1)[0].split("/", 1)[0].strip()
    if path and field_name in names:
        return f"{name}: {path}{message}"
    return f"{name}: {path.rstrip('.') + ': ' if path else ''}{message}"


def _unknown(name: str, dotted: str, valid: list[str]) -> SegmorphError:
    choices = f"; valid keys: {', '.join(valid)}" if valid else ""
    return SegmorphError(f"unknown {name} key {dotted!r}{choices}")


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def coerce(value: Any, kind: Any, key: str, name: str = "config") -> Any:
    """``value`` as type ``kind`` (int, float, bool, str, ``X | None``, ``tuple[X, ...]``, dict, Any).

    Ints are accepted for floats; lists become tuples; anything else that does not fit raises
    ``SegmorphError`` naming ``key``.
    """
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any or kind is object:
        return value
    if isinstance(kind, type) and is_dataclass(kind):
        raise _wrong(value, "a mapping of its keys", key, name)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, key, name)
    if origin is tuple or kind is tuple:
        return _coerce_tuple(value, args, key, name)
    if origin in (list, dict) or kind in (list, dict):
        base = origin or kind
        if not isinstance(value, base):
            raise _wrong(value, "a list" if base is list else "a mapping", key, name)
        return value
    return _coerce_scalar(value, kind, key, name)


def _coerce_union(value: Any, args: tuple[Any, ...], key: str, name: str) -> Any:
    """``value`` as the first of the union's types it fits (None where the union allows it)."""
    if value is None and type(None) in args:
        return None
    errors = []
    for option in (a for a in args if a is not type(None)):
        try:
            return coerce(value, option, key, name)
        except SegmorphError as err:
            errors.append(err)
    raise errors[0] if len(errors) == 1 else _wrong(value, " or ".join(_describe(a) for a in args), key, name)


def _coerce_tuple(value: Any, args: tuple[Any, ...], key: str, name: str) -> tuple:
    """A list or tuple as a tuple, each item coerced (``tuple[X, ...]`` or a fixed ``tuple[X, Y]``)."""
    if not isinstance(value, (list, tuple)):
        raise _wrong(value, "a list", key, name)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{key}[{i}]", name) for i, v in enumerate(value))
    if args and len(args) != len(value):
        raise _wrong(value, f"a list of {len(args)} values", key, name)
    if not args:
        return tuple(value)
    return tuple(coerce(v, a, f"{key}[{i}]", name) for i, (v, a) in enumerate(zip(value, args)))


def _coerce_scalar(value: Any, kind: Any, key: str, name: str) -> Any:
    """``value`` as bool, int, float (finite; ints accepted), str or Path; other kinds pass it through."""
    if kind is bool and not isinstance(value, bool):
        raise _wrong(value, _TYPE_WORDS[bool], key, name)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _wrong(value, _TYPE_WORDS[int], key, name)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(value, _TYPE_WORDS[float], key, name)
        if not math.isfinite(value):
            raise _wrong(value, "a finite number", key, name)
        return float(value)
    if kind is str and not isinstance(value, str):
        raise _wrong(value, _TYPE_WORDS[str], key, name)
    if kind is Path:
        if not isinstance(value, (str, Path)):
            raise _wrong(value, "a path", key, name)
        return Path(value)
    return value


def _describe(kind: Any) -> str:
    if kind is type(None):
        return "null"
    origin = typing.get_origin(kind)
    if origin is tuple or kind is tuple:
        return "a list"
    return _TYPE_WORDS.get(kind, getattr(kind, "__name__", str(kind)))


def _wrong(value: Any, expected: str, key: str, name: str) -> SegmorphError:
    return SegmorphError(f"{name}: {key}: expected {expected}, got {value!r}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A (nested) dataclass as JSON-ready values: tuples become lists, Paths text."""
    return _plain({f.name: getattr(config, f.name) for f in fields(config)})


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def check(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``: the range checks of config ``__post_init__`` methods.

    Start ``message`` with the field's name (``"batch_size: expected at least 1, got 0"``) so that
    :func:`apply_overrides` can name the full dotted key.
    """
    if not condition:
        raise ValueError(message)


MAX_LEARNING_RATE = 10.0
"""The largest learning rate a training config takes: beyond it every optimiser the toolkit uses diverges in a step."""


def check_allocation(values: float, message: str) -> None:
    """Raise ``ValueError`` when an allocation of ``values`` numbers a setting asks for (a patch times its batch)
    exceeds the voxel budget (:func:`segmorph.readchecks.max_voxels`); ``message`` starts with the field's name, as for
    :func:`check`."""
    from segmorph.readchecks import MAX_VOXELS_ENV, max_voxels

    budget = max_voxels()
    check(values <= budget, f"{message} ({values:,.0f} values) exceeds the memory budget of {budget:,} values "
                            f"(set {MAX_VOXELS_ENV} to change it)")  # fmt: skip


def training_config(
    base: T, overrides: Mapping[str, Any] | None = None, config: str | Path | None = None, *, name: str = "config",
    time_budget: str | float | None = None, max_steps: int = 0, seed: int = 0,
) -> T:  # fmt: skip
    """A training config with a ``train`` section (``seed``, ``max_steps``, ``time_budget_s``), layered and checked:
    ``base``, then the keyword arguments, then the ``config`` file, then ``overrides`` (later ones win).

    Args:
        base: The defaults (or a resumed run's settings).
        overrides: Dotted keys, e.g. ``{"train.batch_size": 4}``.
        config: YAML/JSON file of settings, nested or dotted.
        name: What error messages call these settings.
        time_budget: ``"20m"``-style text or seconds (None: ``base``'s, or none when ``max_steps`` alone is given,
            which makes a run repeatable bit for bit).
        max_steps: Step limit (0: ``base``'s).
        seed: ``train.seed``.

    Raises:
        SegmorphError: One line naming the key that is unknown, of the wrong type or out of range.
    """
    given: dict[str, Any] = {"train.seed": seed}
    if max_steps:
        given["train.max_steps"] = max_steps
    if time_budget is not None:
        given["train.time_budget_s"] = parse_duration(time_budget)
    elif max_steps:
        given["train.time_budget_s"] = 0.0
    given.update(load_overrides_file(config) if config is not None else {})
    given.update(overrides or {})
    return apply_naming_file(lambda values: apply_overrides(base, values, name), given, config)


def apply_naming_file(
    apply: Callable[[dict[str, Any]], T], settings: Mapping[str, Any], config: str | Path | None
) -> T:
    """``apply(settings)``, where a refusal caused by a value read from the ``config`` file names that file.

    ``settings`` holds the file's values and those given otherwise (which win). When ``apply`` refuses them,
    it is tried once more without the values that came from the file: unless that fails in the same way, the
    file is at fault and the error (``error: <config file>: <problem>``) names it.

    Args:
        apply: Builds the checked config from dotted settings (raises SegmorphError to refuse them).
        settings: Dotted key -> value, the file's included.
        config: The YAML/JSON file some of ``settings`` came from (None: no file, ``apply(settings)`` alone).

    Example:
        >>> apply_naming_file(lambda v: apply_overrides(config, v), {"train.batch_size": "four"}, "over.json")
    """
    try:
        return apply(dict(settings))
    except SegmorphError as err:
        if config is None or err.path is not None:
            raise
        from_file = load_overrides_file(config)
        others = {k: v for k, v in settings.items() if k not in from_file or from_file[k] != v}
        try:
            apply(others)
        except SegmorphError as again:
            if str(again) == str(err):  # refused for the same reason without the file: not the file's fault
                raise err from None
        raise SegmorphError(err.problem, config) from None
