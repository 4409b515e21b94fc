"""AudioSet segment lists: ``YTID, start_seconds, end_seconds, "mid1,mid2"`` after ``#`` header lines."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from pipeline.labels import LabelClass, LabelLookup
from pipeline.listfiles import PathLike, Rows, no_usable_row, text_lines, times
from pipeline.records import ClipRow, RowFailure


def read_segments(
    paths: Sequence[PathLike], classes: Sequence[LabelClass]
) -> tuple[list[ClipRow], list[RowFailure]]:
    """Read AudioSet segment CSVs: ``YTID, start_seconds, end_seconds, "mid1,mid2"``.

    Lines starting with '#' are headers. Each data line becomes a ClipRow (path None)
    or a RowFailure: ``malformed_row`` (field count, times, end <= start),
    ``unknown_label:<mid>``, ``no_labels`` or ``duplicate`` (same ytid and start in
    ms as an earlier kept row, in any of the files).
    """
    lookup = LabelLookup(classes)
    out = Rows()
    hint = "pass an AudioSet segments CSV such as balanced_train_segments.csv"
    for path in map(Path, paths):
        kept, data_lines, failed_before = len(out.rows), 0, len(out.failures)
        for line, text in text_lines(path, "segments file", hint):
            text = text.strip()
            if not text or text.startswith("#"):
                continue
            data_lines += 1
            source = f"{path.name}:{line}"
            # One line at a time: an unclosed quote must not swallow the following rows.
            try:
                fields = next(csv.reader([text], skipinitialspace=True, strict=True))
            except csv.Error as err:
                out.fail("", None, None, "malformed_row", f"bad quoting: {err}", source)
                continue
            ytid = fields[0].strip()
            if len(fields) != 4 or not ytid:
                out.fail(ytid, None, None, "malformed_row",
                         f'{len(fields)} fields, expected YTID, start_seconds, end_seconds, "labels"', source)
                continue
            try:
                start, end = times(fields[1], fields[2])
                if start is None or end is None:
                    raise ValueError("start and end are required")
            except ValueError as err:
                out.fail(ytid, None, None, "malformed_row", str(err), source)
                continue
            # Segment files name classes by MID only.
            out.add(ytid, start, end, fields[3].split(","), lookup.by_mid.get, None, source)
        if len(out.rows) == kept:
            first = out.failures[failed_before] if len(out.failures) > failed_before else None
            raise no_usable_row("segments file", path, data_lines, first, hint)
    return out.rows, out.failures
