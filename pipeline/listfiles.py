"""Reading list files (segment lists, manifests, class lists): lines, CSV records, times, collected rows.

Every data row of an input ends up either as a ``ClipRow`` or as a ``RowFailure`` (stage
``"source"``), never both and never neither, so a run can account for each segment. An input
that is unusable as a whole (missing, empty, wrong header, not one usable row) raises
``SourceError`` with one line naming the file and what to do. ``source`` fields read
``"<file name>:<line>"``: the physical line a CSV record ends on, or the 1-based row number in a
Parquet manifest.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.keys import make_key
from pipeline.records import ClipRow, RowFailure

PathLike = str | os.PathLike


class SourceError(ValueError):
    """An input unusable as a whole; the message is one line naming the file and what to do."""


def text_lines(path: Path, what: str, hint: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a UTF-8 text file."""
    if not path.is_file():
        raise SourceError(f"{what} {path} not found: {hint}")
    lineno = 0
    try:
        # newline="" keeps quoted line breaks intact for the csv module.
        with path.open(encoding="utf-8-sig", newline="") as f:
            for lineno, line in enumerate(f, 1):
                yield lineno, line
    except UnicodeDecodeError:
        raise SourceError(f"{what} {path}:{lineno + 1} is not UTF-8 text: {hint}") from None


def csv_records(path: Path, what: str, hint: str) -> Iterator[tuple[int, list[str]]]:
    """(line the record ends on, fields) of each non-blank CSV record."""
    reader = csv.reader(
        (line for _, line in text_lines(path, what, hint)), skipinitialspace=True, strict=True
    )
    try:
        for fields in reader:
            if any(field.strip() for field in fields):
                yield reader.line_num, fields
    except csv.Error as err:
        raise SourceError(f"{what} {path}:{reader.line_num}: {err}: fix the quoting on that line") from None


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Write a CSV through a temporary name so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


class Rows:
    """Collects rows and failures, keeping the first usable row for each key."""

    def __init__(self) -> None:
        self.rows: list[ClipRow] = []
        self.failures: list[RowFailure] = []
        self.first_source: dict[str, str] = {}

    def fail(self, ytid: str, start: float | None, end: float | None, error: str, message: str, source: str) -> None:
        self.failures.append(RowFailure(key=make_key(ytid, start), ytid=ytid, start=start, end=end, stage="source",
                                        error=error, message=message, source=source))

    def add(self, ytid: str, start: float | None, end: float | None, labels: Sequence[object],
            find: Callable[[Any], int | None], path: str | None, source: str) -> bool:
        """Record a well-formed row as a clip or a failure; True when it became a clip."""
        indexes: set[int] = set()
        for label in labels:
            if isinstance(label, str):
                label = label.strip()
                if not label:
                    continue
            index = find(label)
            if index is None:
                self.fail(ytid, start, end, f"unknown_label:{label}",
                          f"label {label!r} is not in the class list: fix the row or the labels file", source)
                return False
            indexes.add(index)
        if not indexes:
            self.fail(ytid, start, end, "no_labels", "the row has no labels", source)
            return False
        key = make_key(ytid, start)
        if key in self.first_source:
            self.fail(ytid, start, end, "duplicate", f"same clip (key {key}) as {self.first_source[key]}, which is kept",
                      source)
            return False
        self.first_source[key] = source
        self.rows.append(ClipRow(key=key, ytid=ytid, start=start, end=end, labels=tuple(sorted(indexes)), path=path,
                                 source=source))
        return True


def _seconds(value: object) -> float | None:
    """A time field as seconds (None when empty); ValueError when not a time >= 0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"time {value!r} is not a number")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"time {value!r} is not a number") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"time {value!r} is not a number of seconds >= 0")
    return seconds


def times(start_value: object, end_value: object) -> tuple[float | None, float | None]:
    start, end = _seconds(start_value), _seconds(end_value)
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end {end} is not after start {start}")
    return start, end


def no_usable_row(
    what: str, path: Path, data_lines: int, first: RowFailure | None, hint: str
) -> SourceError:
    reason = f"; first failure at {first.source}: {first.message}" if first else ""
    return SourceError(f"{what} {path} has no usable row ({data_lines} data rows{reason}): {hint}")
