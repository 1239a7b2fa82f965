"""Rows of a local data file, with the row number of each, and errors that name file and row.

* JSONL (``.jsonl``; ``.json`` holding JSON lines or one array of objects): read here,
  line by line, so a malformed line is reported as ``<file>:<line>: ...``.
* CSV: checked to be UTF-8 first (the first bad byte's line is named), then parsed by
  pyarrow with type inference (numbers stay numbers). Row numbers are file lines (the
  header is line 1).
* Parquet: pyarrow; row numbers count from 1.

Every problem is a :class:`~lmloss.train.formats.DataError` (``<file>:<row>: <what>``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from lmloss.train.formats import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(path: Path) -> tuple[list[dict], list[int]]:
    """``(rows, positions)`` of a local JSONL / JSON / CSV / Parquet file."""
    source = str(path)
    if path.is_dir():
        raise DataError(source, None, "is a folder; data.path must name a file")
    if not path.is_file():
        raise DataError(source, None, "no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            source, None, f"unknown format {suffix!r} (use one of {', '.join(SUFFIXES)})"
        )
    data = path.read_bytes()
    if not data.strip():
        raise DataError(source, 1, "the file is empty (no rows)")
    if suffix == ".parquet":
        rows = _parquet(data, source)
        return rows, list(range(1, len(rows) + 1))
    text = _utf8(data, source)
    if suffix == ".csv":
        return _csv(data, text, source)
    if suffix == ".json" and text.lstrip().startswith("["):
        return _json_array(text, source)
    return _jsonl(text, source)


def _utf8(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            source, line, f"not UTF-8 text (byte 0x{data[error.start]:02x}); save it as UTF-8"
        ) from None


def _jsonl(text: str, source: str) -> tuple[list[dict], list[int]]:
    rows, positions = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                source, number, f"not valid JSON ({error.msg} at column {error.colno})"
            ) from None
        if not isinstance(row, dict):
            raise DataError(source, number, f"a row must be a JSON object, got {_json_kind(row)}")
        rows.append(row)
        positions.append(number)
    if not rows:
        raise DataError(source, 1, "the file has no rows")
    return rows, positions


def _json_array(text: str, source: str) -> tuple[list[dict], list[int]]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            source, error.lineno, f"not valid JSON ({error.msg} at column {error.colno})"
        ) from None
    if not isinstance(rows, list) or not rows:
        raise DataError(source, 1, "a .json file must hold JSON lines or a non-empty array")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(source, i + 1, f"a row must be a JSON object, got {_json_kind(row)}")
    return rows, list(range(1, len(rows) + 1))


def _json_kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), repr(value))


def _csv(data: bytes, text: str, source: str) -> tuple[list[dict], list[int]]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    try:
        table = pa_csv.read_csv(io.BytesIO(data))
    except pa.ArrowInvalid as error:
        raise DataError(source, _csv_line(str(error)), f"not valid CSV ({error})") from None
    rows = table.to_pylist()
    if not rows:
        raise DataError(source, 2, "the file has a header but no rows")
    # data row i is on line i + 2 unless quoted fields span lines; close enough to find it
    return rows, list(range(2, len(rows) + 2))


def _csv_line(message: str) -> int:
    import re

    found = re.search(r"row (\d+)", message)
    return int(found.group(1)) + 1 if found else 1


def _parquet(data: bytes, source: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(source, None, f"not a readable Parquet file ({error})") from None
    if not rows:
        raise DataError(source, 1, "the file has no rows")
    return rows
