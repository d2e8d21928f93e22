"""Reading the project's own records (JSON and CSV files) as hostile input: one line naming the file, every time.

Run folders, datasets and transforms carry JSON records (``plan.json``, ``run.json``, ``summary.json``,
``transform.json``, ``registration.json``, ``config.json``, ``dataset.json``, metrics) and CSV tables (pairs,
labels, landmarks, training logs, predictions). Anyone can edit them, so every reader goes through here:

* :func:`read_json`: a missing file, a folder in its place, bytes that are not UTF-8, invalid JSON, nesting
  deeper than a small bound (checked on the text before parsing: Python's parser recurses), a file too large
  to be a record, NaN/Infinity where only finite numbers may stand, or the wrong top-level type each become
  one :class:`SegmorphError` naming the file.
* :func:`read_csv` / :func:`read_csv_rows`: UTF-8 (a byte-order mark is accepted); a byte that is not UTF-8
  (Latin-1 from a spreadsheet) names the file and its line; missing columns and empty tables are refused.
  Cells are separated by commas, or by semicolons or tabs where the header line uses only those.
* :func:`finite_number`: one cell or value as a finite float, or an error naming the file and where.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segmorph.errors import SegmorphError

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a record may have (segmorph's own records nest a few levels)."""
MAX_RECORD_BYTES = 64 * 2**20
"""Largest JSON or CSV record read (a dataset.json of many thousand cases is a few MB)."""

_TYPE_NAMES = {dict: "a JSON object", list: "a JSON array", str: "a string", float: "a number", int: "a number",
               bool: "true or false", type(None): "null"}  # fmt: skip
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _read_bytes(path: Path, kind: str) -> bytes:
    """The file's bytes; a missing file, a folder, an unreadable or oversized file as one line."""
    if path.is_dir():
        raise SegmorphError(f"Is a directory (expected the {kind})", path)
    try:
        size = path.stat().st_size
        if size > MAX_RECORD_BYTES:
            raise SegmorphError(f"{kind} is {size / 2**20:.0f} MB, larger than a record can be "
                                f"({MAX_RECORD_BYTES // 2**20} MB)", path)  # fmt: skip
        with open(path, "rb") as handle:
            return handle.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        raise SegmorphError(f"{kind} not found", path) from None
    except OSError as err:
        raise SegmorphError(f"cannot read {kind} ({err.strerror or err})", path) from None


def _decode(payload: bytes, path: Path, kind: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped); other bytes named with their line."""
    try:
        return payload.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = payload.count(b"\n", 0, err.start) + 1
        byte = payload[err.start : err.start + 1].hex()
        raise SegmorphError(f"line {line}: byte 0x{byte} is not UTF-8 text (save the {kind} as UTF-8)", path) from None


def read_text(path: str | Path, kind: str = "record") -> str:
    """A record's text: UTF-8 (a byte-order mark dropped), refused with one line naming the file when it is
    missing, a folder, unreadable, larger than :data:`MAX_RECORD_BYTES` or not UTF-8."""
    path = Path(path)
    return _decode(_read_bytes(path, kind), path, kind)


def json_depth(text: str) -> int:
    """Deepest nesting of ``[]``/``{}`` in JSON text (brackets inside strings ignored), without recursion."""
    depth = deepest = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is too large for a float")
    return value


def read_json(
    path: str | Path, kind: str = "record", expect: type | tuple[type, ...] | None = dict,
    max_depth: int = MAX_JSON_DEPTH, finite: bool = False,
) -> Any:  # fmt: skip
    """Parse a JSON record, refusing what a tampered file can hold with one line naming it.

    Args:
        path: The file.
        kind: What the file is, for messages (``"plan"``, ``"run record"``).
        expect: The type (or types) the top-level value must have; None: any.
        max_depth: Deepest nesting of arrays and objects accepted.
        finite: Refuse ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's json reads as numbers).

    Returns:
        The parsed value.

    Raises:
        SegmorphError: Missing, a folder, unreadable, too large, not UTF-8, too deep, invalid JSON, a non-finite
            number when ``finite``, or the wrong top-level type.

    Example:
        >>> plan = read_json("run/plan.json", "plan", finite=True)
    """
    return parse_json(read_text(path, kind), Path(path), kind, expect, max_depth, finite)


def parse_json(
    text: str, path: str | Path | None, kind: str = "record", expect: type | tuple[type, ...] | None = dict,
    max_depth: int = MAX_JSON_DEPTH, finite: bool = False,
) -> Any:  # fmt: skip
    """Parse JSON text held by ``path`` (a file, or a checkpoint that stores JSON inside it); see :func:`read_json`.

    Raises:
        SegmorphError: Too deep, invalid JSON, a non-finite number when ``finite``, or the wrong top-level type.
    """
    depth = json_depth(text)
    if depth > max_depth:
        raise SegmorphError(f"{kind} nests deeper than {max_depth} levels ({depth}): not a segmorph record", path)
    try:
        value = (
            json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float) if finite else json.loads(text)
        )
    except json.JSONDecodeError as err:
        raise SegmorphError(f"invalid JSON (line {err.lineno}, column {err.colno}: {err.msg})", path) from None
    except (ValueError, RecursionError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SegmorphError(f"{detail}: not allowed in a {kind}", path) from None
    if expect is not None and not isinstance(value, expect):
        wanted = " or ".join(dict.fromkeys(_TYPE_NAMES.get(t, t.__name__) for t in _as_tuple(expect)))
        raise SegmorphError(f"expected {wanted} at the top level, got {_TYPE_NAMES.get(type(value), 'a value')}",
                            path)  # fmt: skip
    return value


def _as_tuple(expect: type | tuple[type, ...]) -> tuple[type, ...]:
    return expect if isinstance(expect, tuple) else (expect,)


def read_json_if_present(path: str | Path, kind: str = "record", expect: type | tuple[type, ...] | None = dict) -> Any:
    """:func:`read_json`, or None when nothing is at ``path`` (a folder or a bad file is still refused)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    return read_json(path, kind, expect)


@dataclass(frozen=True)
class CsvTable:
    """A CSV table with a header row.

    Attributes:
        columns: The header's column names (surrounding spaces removed).
        rows: One dict per non-blank row, column name -> cell text (missing cells are empty text).
        lines: The line number in the file where each row starts (for messages).
    """

    columns: tuple[str, ...]
    rows: list[dict[str, str]]
    lines: list[int]


def read_csv_lines(path: str | Path, kind: str = "CSV file") -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV file as ``(line number, cells)``, header or not.

    Raises:
        SegmorphError: Missing, a folder, unreadable, too large, not UTF-8 (the line named), or not CSV.
    """
    path = Path(path)
    text = read_text(path, kind)
    reader = csv.reader(_io.StringIO(text, newline=""), delimiter=_delimiter(text))
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                rows.append((start, cells))
            start = reader.line_num + 1
    except csv.Error as err:
        raise SegmorphError(f"line {reader.line_num}: not a CSV row ({err})", path) from None
    return rows


def _delimiter(text: str) -> str:
    """``,``, or ``;`` / a tab where the first non-blank line has no comma and only that one (the CSV that
    spreadsheets write in locales with a decimal comma, and tab-separated tables)."""
    first = next((line for line in _io.StringIO(text) if line.strip()), "")
    others = [d for d in ";\t" if d in first]
    return others[0] if "," not in first and len(others) == 1 else ","


def read_csv(path: str | Path, required_columns: Sequence[str] = (), kind: str = "CSV file",
             allow_empty: bool = False) -> CsvTable:  # fmt: skip
    """A CSV table with a header row, checked for its required columns.

    Args:
        path: The file (UTF-8; a byte-order mark is accepted).
        required_columns: Columns the header must name.
        kind: What the file is, for messages (``"pairs CSV"``, ``"labels file"``).
        allow_empty: Accept a header without rows (an empty file is still refused).

    Raises:
        SegmorphError: See :func:`read_csv_lines`; also an empty file, missing columns, or no rows.

    Example:
        >>> table = read_csv("pairs.csv", ["fixed", "moving"], "pairs CSV")
    """
    path = Path(path)
    lines = read_csv_lines(path, kind)
    if not lines:
        wanted = f" with columns {','.join(required_columns)}" if required_columns else ""
        raise SegmorphError(f"{kind} is empty: expected a header row{wanted}", path)
    columns = tuple(cell.strip() for cell in lines[0][1])
    missing = [c for c in required_columns if c not in columns]
    if missing:
        raise SegmorphError(f"no column {', '.join(repr(c) for c in missing)} in the header "
                            f"(columns: {', '.join(columns)})", path)  # fmt: skip
    if len(lines) == 1 and not allow_empty:
        raise SegmorphError(f"{kind} has a header but no rows", path)
    rows = [{c: (cells[i] if i < len(cells) else "") for i, c in enumerate(columns)} for _, cells in lines[1:]]
    return CsvTable(columns, rows, [line for line, _ in lines[1:]])


def read_csv_rows(
    path: str | Path, required_columns: Sequence[str] = (), kind: str = "CSV file"
) -> list[dict[str, str]]:
    """The rows of :func:`read_csv` (at least one), each a dict of column name -> cell text."""
    return read_csv(path, required_columns, kind).rows


def finite_number(value: Any, where: str, path: str | Path | None = None) -> float:
    """``value`` (a number or the text of one) as a finite float.

    Raises:
        SegmorphError: Not a number, or NaN/infinite; the message names ``where`` (and the file).
    """
    if isinstance(value, bool):
        raise SegmorphError(f"{where}: expected a number, got {value!r}", path)
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise SegmorphError(f"{where}: expected a number, got {value!r}", path) from None
    if not math.isfinite(number):
        raise SegmorphError(f"{where}: expected a finite number, got {value!r}", path)
    return number
