"""Media lookup: each clip row's file in a media folder (AudioSet and PANNs naming, or a pattern).

``start``/``end`` record where the segment lies in the source video. The default look-ups find
files already trimmed to their segment; seeking into full-length videos is the decode stage's.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import replace

from pipeline.keys import to_ms
from pipeline.listfiles import PathLike, SourceError
from pipeline.records import ClipRow, RowFailure

MEDIA_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4a", ".flac", ".wav")
PATTERN_FIELDS = ("ytid", "start", "end", "start_ms", "end_ms")


def _list_dir(folder: str) -> frozenset[str]:
    """Names in one folder, from a single listing: media folders hold millions of files,
    so one listing and set look-ups beat a stat per row. The one place to swap for pyarrow.fs."""
    try:
        return frozenset(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()
    except PermissionError:
        raise SourceError(
            f"folder {folder} cannot be listed (permission denied): fix its permissions"
        ) from None


def _stem_index(names: frozenset[str], exts: Sequence[str]) -> dict[str, str]:
    """File stem -> name for media files; for a stem with several extensions, the earliest in ``exts`` wins."""
    rank = {ext.lower(): i for i, ext in enumerate(exts)}
    index: dict[str, str] = {}
    for name in names:
        stem, ext = os.path.splitext(name)
        ext = ext.lower()
        if ext in rank and (stem not in index or rank[ext] < rank[os.path.splitext(index[stem])[1].lower()]):
            index[stem] = name
    return index


def _pattern_fields(row: ClipRow) -> dict[str, object]:
    fields: dict[str, object] = {"ytid": row.ytid}
    if row.start is not None:
        fields.update(start=f"{row.start:.3f}", start_ms=to_ms(row.start))
    if row.end is not None:
        fields.update(end=f"{row.end:.3f}", end_ms=to_ms(row.end))
    return fields


def resolve_media(
    rows: Sequence[ClipRow], media_dir: PathLike, pattern: str | None = None, exts: Sequence[str] = MEDIA_EXTS
) -> tuple[list[ClipRow], list[RowFailure]]:
    """Find each row's media file; rows without one become ``missing_file`` failures.

    Rows that have no path look in ``media_dir`` for ``{ytid}<ext>``, then
    ``Y{ytid}<ext>`` (PANNs naming; YouTube IDs are 11 characters, so a 'Y'-prefixed
    name cannot be another ID's plain name), ``<ext>`` in ``exts`` order. ``pattern``
    replaces that with a file name in ``media_dir`` built with ``str.format`` from
    ``{ytid}``, ``{start}``/``{end}`` (seconds with three decimals as in AudioSet
    CSVs, e.g. ``30.000``) and ``{start_ms}``/``{end_ms}`` (integer milliseconds).
    Rows that have a path (manifests) are checked for existence. Each folder is
    listed once. Local paths only; a URI path is a SourceError for now.
    """
    folder = os.fspath(media_dir)
    if "://" in folder or not os.path.isdir(folder):
        raise SourceError(
            f"media folder {folder} not found: pass --media-dir with a local folder holding the clips"
        )
    folder = os.path.abspath(folder)
    if pattern is not None:
        if "/" in pattern:
            raise SourceError(
                f"media pattern {pattern!r} names a sub-folder: give a file name inside --media-dir"
            )
        try:
            pattern.format(ytid="x", start="0.000", end="10.000", start_ms=0, end_ms=10000)
        except (KeyError, IndexError, ValueError, AttributeError) as err:
            allowed = ", ".join("{" + field + "}" for field in PATTERN_FIELDS)
            raise SourceError(f"media pattern {pattern!r} is invalid ({err!r}): use only {allowed}") from None
    names_in = functools.cache(_list_dir)  # each folder listed once per call

    stems: dict[str, str] | None = None
    found: list[ClipRow] = []
    failures: list[RowFailure] = []
    for row in rows:
        if row.path is not None:
            if "://" in row.path:
                raise SourceError(
                    f"{row.source}: media path {row.path} is a URI; only local paths are supported for now"
                )
            directory, name = os.path.split(row.path)
            if name in names_in(directory):
                found.append(row)
            else:
                failures.append(RowFailure.for_row(row, "source", "missing_file", f"{row.path} does not exist"))
            continue
        if pattern is not None:
            try:
                name = pattern.format(**_pattern_fields(row))
            except KeyError as err:
                failures.append(RowFailure.for_row(row, "source", "missing_file",
                                                   f"pattern {pattern!r} needs {err.args[0]} but the row has none"))
                continue
            wanted = f"{name} in {folder}"
            name = name if name in names_in(folder) else None
        else:
            if stems is None:
                stems = _stem_index(names_in(folder), exts)
            wanted = f"{row.ytid}.* or Y{row.ytid}.* in {folder}"
            name = stems.get(row.ytid) or stems.get("Y" + row.ytid)
        if name is None:
            failures.append(RowFailure.for_row(row, "source", "missing_file", f"no media file {wanted}"))
        else:
            found.append(replace(row, path=os.path.join(folder, name)))
    return found, failures
