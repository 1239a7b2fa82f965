"""Rows of a local data file, with the row number of each, and errors that name file and row.

* JSONL (``.jsonl``; ``.json`` holding JSON lines or one array of objects): read here,
  line by line, so a malformed line is reported as ``<file>:<line>: ...``. As the JSON
  standard (RFC 8259) says: lines end at ``\n`` only (a raw U+2028, U+2029 or U+0085 inside
  a string is text), a UTF-8 byte-order mark is skipped, and ``NaN``/``Infinity`` (Python's
  extension) are refused.
* CSV: checked to be UTF-8 first (the first bad byte's line is named), then parsed by
  pyarrow with type inference (numbers stay numbers), except that the text columns
  (``TEXT_COLUMNS``) stay text. Row numbers are the file lines where the records start
  (the header is line 1; a quoted field may span lines).
* Parquet: pyarrow; row numbers count from 1.

Every problem is a :class:`~lmloss.train.formats.DataError` (``<file>:<row>: <what>``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from lmloss.train.formats import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
BOM = b"\xef\xbb\xbf"
TEXT_COLUMNS = ("prompt", "completion", "chosen", "rejected", "text")
MAX_NESTING = "nested too deeply (a row is a flat object of columns; messages nest twice)"


def _standard_constant(name: str):
    raise ValueError(f"{name} is not a JSON number (write null, or the number as text)")


def _loads(text: str):
    """``json.loads`` as the standard has it: no ``NaN``/``Infinity`` (Python accepts them)."""
    return json.loads(text, parse_constant=_standard_constant)


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
    data = path.read_bytes().removeprefix(BOM)
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
    # JSON lines end at "\n" (str.splitlines would also split at U+2028, U+0085, ...)
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = _loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                source, number, f"not valid JSON ({error.msg} at column {error.colno})"
            ) from None
        except ValueError as error:
            raise DataError(source, number, f"not valid JSON ({error})") from None
        except RecursionError:
            raise DataError(source, number, MAX_NESTING) from None
        if not isinstance(row, dict):
            raise DataError(source, number, f"a row must be a JSON object, got {_json_kind(row)}")
        rows.append(row)
        positions.append(number)
    if not rows:
        raise DataError(source, 1, "the file has no rows")
    return rows, positions


def _json_array(text: str, source: str) -> tuple[list[dict], list[int]]:
    try:
        rows = _loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            source, error.lineno, f"not valid JSON ({error.msg} at column {error.colno})"
        ) from None
    except ValueError as error:
        raise DataError(source, None, f"not valid JSON ({error})") from None
    except RecursionError:
        raise DataError(source, None, MAX_NESTING) from None
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

    text_columns = {name: pa.string() for name in TEXT_COLUMNS}
    try:
        table = pa_csv.read_csv(
            io.BytesIO(data), convert_options=pa_csv.ConvertOptions(column_types=text_columns)
        )
    except pa.ArrowInvalid as error:
        raise DataError(source, _csv_line(str(error)), f"not valid CSV ({error})") from None
    rows = table.to_pylist()
    if not rows:
        raise DataError(source, 2, "the file has a header but no rows")
    return rows, _csv_record_lines(text, len(rows))


def _csv_record_lines(text: str, count: int) -> list[int]:
    """The line each of the first ``count`` data records starts on (quoted fields may hold
    line breaks, so record i is not always on line i + 2)."""
    import csv

    reader = csv.reader(io.StringIO(text, newline=""))
    starts, line, header = [], 1, True
    for record in reader:
        if record and not header:  # a blank line is no record (pyarrow skips it too)
            starts.append(line)
        header = header and not record
        line = reader.line_num + 1
    starts += range(line, line + count - len(starts))  # if the two parsers ever disagree
    return starts[:count]


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
