"""Strict row readers for delimited text files: every problem is reported as file + line number.

A silently skipped or half-parsed row would shift every downstream metric without anyone noticing,
so these helpers raise DataFormatError instead of coercing.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from core.errors import DataFormatError

# Latest time datetime64[ns] can hold is in 2262; refuse anything near it rather than overflow later.
MAX_UNIX_SECONDS = 9_000_000_000
MIN_RATING, MAX_RATING = 0.5, 5.0


def fail(path: Path, line: int, problem: str) -> DataFormatError:
    """The error for one bad line, phrased the same way for every file."""
    return DataFormatError(f"{path}: line {line}: {problem}")


def read_rows(
    path: Path,
    *,
    delimiter: str,
    n_fields: int,
    encoding: str = "utf-8-sig",
    header: tuple[str, ...] | None = None,
    quoted: bool = True,
) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based line number, fields) for every non-blank row, checking the header and field count."""
    sep = "tab" if delimiter == "\t" else repr(delimiter)
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    try:
        with path.open(newline="", encoding=encoding) as fh:
            reader = csv.reader(fh, delimiter=delimiter, quoting=quoting, strict=True)
            if header is not None:
                found = next(reader, None)
                if found is None or tuple(f.strip() for f in found) != header:
                    got = "an empty file" if found is None else delimiter.join(found)
                    raise fail(path, 1, f"expected header {delimiter.join(header)!r}, found {got!r}")
            for fields in reader:
                if not fields or fields == [""]:
                    continue
                if len(fields) != n_fields:
                    problem = f"expected {n_fields} {sep}-separated fields, found {len(fields)}"
                    raise fail(path, reader.line_num, problem)
                yield reader.line_num, fields
    except UnicodeDecodeError as err:
        problem = f"not valid {encoding} text ({err.reason} at byte {err.start})"
        raise DataFormatError(f"{path}: {problem}") from err
    except csv.Error as err:
        raise DataFormatError(f"{path}: unreadable CSV: {err}") from err


def parse_id(value: str, what: str, path: Path, line: int) -> int:
    """A non-negative integer id that fits in int64."""
    try:
        parsed = int(value)
    except ValueError:
        raise fail(path, line, f"{what} {value!r} is not an integer") from None
    if not 0 <= parsed < 2**63:
        raise fail(path, line, f"{what} {value!r} is out of range")
    return parsed


def parse_rating(value: str, path: Path, line: int) -> float:
    """A rating inside MovieLens' 0.5..5 scale."""
    try:
        parsed = float(value)
    except ValueError:
        raise fail(path, line, f"rating {value!r} is not a number") from None
    if not MIN_RATING <= parsed <= MAX_RATING:  # also rejects nan
        raise fail(path, line, f"rating {value!r} is outside {MIN_RATING}..{MAX_RATING}")
    return parsed


def parse_timestamp(value: str, path: Path, line: int) -> int:
    """Unix seconds that datetime64[ns] can represent."""
    try:
        parsed = int(value)
    except ValueError:
        raise fail(path, line, f"bad timestamp {value!r}: not integer unix seconds") from None
    if not 0 <= parsed <= MAX_UNIX_SECONDS:
        raise fail(path, line, f"bad timestamp {value!r}: outside 1970..2255")
    return parsed
