"""Sources stage: dataset lists become clip rows for the decode stage.

Every data row of an input ends up either as a ``ClipRow`` or as a ``RowFailure``
(stage ``"source"``), never both and never neither, so a run can account for each
segment. An input that is unusable as a whole (missing, empty, wrong header, not
one usable row) raises ``SourceError`` with one line naming the file and what to do.

Conventions:

* Label order always comes from ``class_labels_indices.csv``; a label that is not in
  it is a failure, never silently dropped (that would change the task).
* ``start``/``end`` record where the segment lies in the source video. The default
  ``resolve_media`` look-ups find files already trimmed to their segment; seeking
  into full-length videos is left to the decode stage.
* ``source`` fields read ``"<file name>:<line>"``: the physical line a CSV record
  ends on, or the 1-based row number in a Parquet manifest.
* Media paths are local for now; URIs are future work (``_list_dir`` is the one
  place that touches the file system for lookups, ready to go through pyarrow.fs).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PathLike = str | os.PathLike

LABELS_HEADER = ["index", "mid", "display_name"]
MANIFEST_COLUMNS = ("path", "labels", "start", "end", "key")
MEDIA_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4a", ".flac", ".wav")
PATTERN_FIELDS = ("ytid", "start", "end", "start_ms", "end_ms")

ROW_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("ytid", pa.string()),
        ("start_seconds", pa.float64()),
        ("end_seconds", pa.float64()),
        ("labels", pa.list_(pa.int32())),
        ("path", pa.string()),
        ("source", pa.string()),
    ]
)
FAILURE_SCHEMA = pa.schema(
    [
        ("ytid", pa.string()),
        ("start_seconds", pa.float64()),
        ("end_seconds", pa.float64()),
        ("stage", pa.string()),
        ("error", pa.string()),
        ("message", pa.string()),
        ("source", pa.string()),
    ]
)


class SourceError(ValueError):
    """An input unusable as a whole; the message is one line naming the file and what to do."""


@dataclass(frozen=True, slots=True)
class LabelClass:
    """One class of the task: its position in the target vector, MID and display name."""

    index: int
    mid: str
    name: str


@dataclass(frozen=True, slots=True)
class ClipRow:
    """One clip for the decode stage."""

    key: str  # make_key(ytid, start): the WebDataset sample key
    ytid: str
    start: float | None  # seconds into the source video; None when unknown
    end: float | None
    labels: tuple[int, ...]  # class indices, sorted, unique
    path: str | None  # media file; None until resolve_media
    source: str  # "file.csv:LINE"


@dataclass(frozen=True, slots=True)
class RowFailure:
    """An input row that did not become a clip, with the stage and reason."""

    ytid: str
    start: float | None
    end: float | None
    stage: str  # "source" here; later stages use "decode", "encode", ...
    # Reason code: "malformed_row", "duplicate", "unknown_label:<label>", "no_labels", "missing_file".
    error: str
    message: str  # one line
    source: str  # "file.csv:LINE"

    @classmethod
    def for_row(cls, row: ClipRow, stage: str, error: str, message: str) -> RowFailure:
        """The failure record of a clip row that a later step could not use."""
        return cls(row.ytid, row.start, row.end, stage, error, message, row.source)


# ---------------------------------------------------------------------------- keys

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")
_HASHED_ID = re.compile(r".*-h[0-9a-f]{16}")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_ENDS_LIKE_START = re.compile(r"_[0-9]*\Z")


def _key_id(ytid: str) -> str:
    """``ytid`` unchanged when it is key-safe, else a readable form plus a hash of the original.

    Clean IDs that already look hashed are hashed too, so a hashed form never equals
    another ID's unchanged form.
    """
    if _SAFE_ID.fullmatch(ytid) and not _HASHED_ID.fullmatch(ytid):
        return ytid
    digest = hashlib.sha1(ytid.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{_UNSAFE_CHAR.sub('-', ytid)}-h{digest}"


def _to_ms(seconds: float) -> int:
    return round(seconds * 1000)


def make_key(ytid: str, start: float | None) -> str:
    """The sample key of a clip: ``"{ytid}_{start in integer ms}"``, e.g. ``"--4gqARaEJE_30000"``.

    WebDataset cuts keys at the first dot and tar names split at '/', so keys hold only
    ``[A-Za-z0-9_-]``: an ID with other characters becomes a readable form plus 16 hex
    digits of its SHA-1. With ``start`` None the key is the ID alone, plus a trailing
    '_' when it ends like ``_<digits>``, so it never equals another ID's key with a start.
    Distinct (ytid, start ms) pairs give distinct keys (up to a 64-bit hash collision,
    which the readers would report as a duplicate).
    """
    part = _key_id(ytid)
    if start is None:
        return part + "_" if _ENDS_LIKE_START.search(part) else part
    if not math.isfinite(start) or start < 0:
        raise ValueError(f"start must be a finite number of seconds >= 0, got {start!r}")
    return f"{part}_{_to_ms(start)}"


# ---------------------------------------------------------------------------- text files


def _text_lines(path: Path, what: str, hint: str) -> Iterator[tuple[int, str]]:
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


def _csv_records(path: Path, what: str, hint: str) -> Iterator[tuple[int, list[str]]]:
    """(line the record ends on, fields) of each non-blank CSV record."""
    reader = csv.reader(
        (line for _, line in _text_lines(path, what, hint)), skipinitialspace=True, strict=True
    )
    try:
        for fields in reader:
            if any(field.strip() for field in fields):
                yield reader.line_num, fields
    except csv.Error as err:
        raise SourceError(f"{what} {path}:{reader.line_num}: {err}: fix the quoting on that line") from None


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Write a CSV through a temporary name so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- labels


def load_labels(path: PathLike) -> list[LabelClass]:
    """Read ``class_labels_indices.csv`` (``index,mid,display_name``) sorted by index.

    Indexes must be exactly 0..n-1 and MIDs unique; anything else is a SourceError
    naming the file and line.
    """
    path = Path(path)
    hint = "pass --labels class_labels_indices.csv"
    records = _csv_records(path, "labels file", hint)
    header = next(records, None)
    if header is None:
        raise SourceError(f"labels file {path} is empty: {hint}")
    if [field.strip() for field in header[1]] != LABELS_HEADER:
        raise SourceError(
            f"labels file {path}:{header[0]} has header {header[1]!r}, expected index,mid,display_name: {hint}"
        )
    by_index: dict[int, tuple[int, LabelClass]] = {}
    mid_lines: dict[str, int] = {}
    for line, fields in records:
        where = f"labels file {path}:{line}"
        if len(fields) != 3:
            raise SourceError(
                f"{where} has {len(fields)} fields, expected 3 (quote display names holding commas)"
            )
        index_text, mid, name = (field.strip() for field in fields)
        if not (index_text.isascii() and index_text.isdigit()):
            raise SourceError(f"{where}: index {index_text!r} is not a non-negative integer")
        if not mid or not name:
            raise SourceError(f"{where}: empty MID or display name")
        index = int(index_text)
        if index in by_index:
            raise SourceError(f"{where}: index {index} already on line {by_index[index][0]}")
        if mid in mid_lines:
            raise SourceError(f"{where}: MID {mid!r} already on line {mid_lines[mid]}")
        by_index[index] = (line, LabelClass(index, mid, name))
        mid_lines[mid] = line
    if not by_index:
        raise SourceError(f"labels file {path} has no classes: {hint}")
    missing = next((i for i in range(len(by_index)) if i not in by_index), None)
    if missing is not None:
        raise SourceError(
            f"labels file {path}: index {missing} is missing; indexes must run 0..{len(by_index) - 1}"
        )
    return [by_index[i][1] for i in range(len(by_index))]


class _Labels:
    """Maps label tokens to class indexes: MID first, then display name, then integer index."""

    def __init__(self, classes: Sequence[LabelClass]) -> None:
        self.by_mid = {c.mid: c.index for c in classes}
        names: dict[str, int | None] = {}
        for c in classes:
            # A display name shared by two classes cannot pick one: it only matches by MID.
            names[c.name] = None if c.name in names else c.index
        self.by_name = {name: index for name, index in names.items() if index is not None}
        self.count = len(classes)

    def find(self, token: object) -> int | None:
        if isinstance(token, int) and not isinstance(token, bool):
            return token if 0 <= token < self.count else None
        if not isinstance(token, str):
            return None
        token = token.strip()
        if token in self.by_mid:
            return self.by_mid[token]
        if token in self.by_name:
            return self.by_name[token]
        if token.isascii() and token.isdigit() and int(token) < self.count:
            return int(token)
        return None

    def split(self, text: str) -> list[str]:
        """Tokens of a label string: ';'-separated if it holds a ';', else one label if the
        whole string is one (display names may hold commas), else ','-separated."""
        text = text.strip()
        if ";" in text:
            parts = text.split(";")
        elif self.find(text) is not None:
            parts = [text]
        else:
            parts = text.split(",")
        return [part.strip() for part in parts if part.strip()]


# ---------------------------------------------------------------------------- rows


class _Rows:
    """Collects rows and failures, keeping the first usable row for each key."""

    def __init__(self) -> None:
        self.rows: list[ClipRow] = []
        self.failures: list[RowFailure] = []
        self.first_source: dict[str, str] = {}

    def fail(
        self, ytid: str, start: float | None, end: float | None, error: str, message: str, source: str
    ) -> None:
        self.failures.append(RowFailure(ytid, start, end, "source", error, message, source))

    def add(
        self,
        ytid: str,
        start: float | None,
        end: float | None,
        labels: Sequence[object],
        find: Callable[[Any], int | None],
        path: str | None,
        source: str,
    ) -> bool:
        """Record a well-formed row as a clip or a failure; True when it became a clip."""
        indexes: set[int] = set()
        for label in labels:
            if isinstance(label, str):
                label = label.strip()
                if not label:
                    continue
            index = find(label)
            if index is None:
                self.fail(
                    ytid,
                    start,
                    end,
                    f"unknown_label:{label}",
                    f"label {label!r} is not in the class list: fix the row or the labels file",
                    source,
                )
                return False
            indexes.add(index)
        if not indexes:
            self.fail(ytid, start, end, "no_labels", "the row has no labels", source)
            return False
        key = make_key(ytid, start)
        if key in self.first_source:
            self.fail(
                ytid,
                start,
                end,
                "duplicate",
                f"same clip (key {key}) as {self.first_source[key]}, which is kept",
                source,
            )
            return False
        self.first_source[key] = source
        self.rows.append(ClipRow(key, ytid, start, end, tuple(sorted(indexes)), path, source))
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


def _times(start_value: object, end_value: object) -> tuple[float | None, float | None]:
    start, end = _seconds(start_value), _seconds(end_value)
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end {end} is not after start {start}")
    return start, end


def _no_usable_row(
    what: str, path: Path, data_lines: int, first: RowFailure | None, hint: str
) -> SourceError:
    reason = f"; first failure at {first.source}: {first.message}" if first else ""
    return SourceError(f"{what} {path} has no usable row ({data_lines} data rows{reason}): {hint}")


def read_segments(
    paths: Sequence[PathLike], classes: Sequence[LabelClass]
) -> tuple[list[ClipRow], list[RowFailure]]:
    """Read AudioSet segment CSVs: ``YTID, start_seconds, end_seconds, "mid1,mid2"``.

    Lines starting with '#' are headers. Each data line becomes a ClipRow (path None)
    or a RowFailure: ``malformed_row`` (field count, times, end <= start),
    ``unknown_label:<mid>``, ``no_labels`` or ``duplicate`` (same ytid and start in
    ms as an earlier kept row, in any of the files).
    """
    lookup = _Labels(classes)
    out = _Rows()
    hint = "pass an AudioSet segments CSV such as balanced_train_segments.csv"
    for path in map(Path, paths):
        kept, data_lines, failed_before = len(out.rows), 0, len(out.failures)
        for line, text in _text_lines(path, "segments file", hint):
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
                out.fail(
                    ytid,
                    None,
                    None,
                    "malformed_row",
                    f'{len(fields)} fields, expected YTID, start_seconds, end_seconds, "labels"',
                    source,
                )
                continue
            try:
                start, end = _times(fields[1], fields[2])
                if start is None or end is None:
                    raise ValueError("start and end are required")
            except ValueError as err:
                out.fail(ytid, None, None, "malformed_row", str(err), source)
                continue
            # Segment files name classes by MID only.
            out.add(ytid, start, end, fields[3].split(","), lookup.by_mid.get, None, source)
        if len(out.rows) == kept:
            first = out.failures[failed_before] if len(out.failures) > failed_before else None
            raise _no_usable_row("segments file", path, data_lines, first, hint)
    return out.rows, out.failures


def _manifest_records(path: Path, hint: str) -> Iterator[tuple[int, dict[str, object] | None]]:
    """(row number, column -> value) of a CSV or Parquet manifest; None for a row of the wrong width."""
    if path.suffix.lower() in (".parquet", ".pq"):
        if not path.is_file():
            raise SourceError(f"manifest {path} not found: {hint}")
        try:
            names = pq.read_schema(path).names
            table = pq.read_table(path, columns=[c for c in MANIFEST_COLUMNS if c in names])
        except (pa.ArrowException, OSError) as err:
            raise SourceError(
                f"manifest {path} is not a readable Parquet file ({type(err).__name__}): {hint}"
            ) from None
        _check_columns(path, names, hint)
        yield from enumerate(table.to_pylist(), 1)
        return
    records = _csv_records(path, "manifest", hint)
    first = next(records, None)
    if first is None:
        raise SourceError(f"manifest {path} is empty: {hint}")
    header = [name.strip() for name in first[1]]
    if len(set(header)) != len(header):
        raise SourceError(f"manifest {path}:{first[0]} repeats a column name in its header: {hint}")
    _check_columns(path, header, hint)
    for line, fields in records:
        yield line, dict(zip(header, fields, strict=True)) if len(fields) == len(header) else None


def _check_columns(path: Path, names: Sequence[str], hint: str) -> None:
    for required in ("path", "labels"):
        if required not in names:
            raise SourceError(f"manifest {path} has no {required!r} column (has: {', '.join(names)}): {hint}")


def read_manifest(path: PathLike, classes: Sequence[LabelClass]) -> tuple[list[ClipRow], list[RowFailure]]:
    """Read a manifest (CSV, or Parquet by a ``.parquet``/``.pq`` suffix) for a new dataset.

    Columns ``path`` and ``labels`` are required; ``start``, ``end`` (seconds) and ``key``
    are optional, other columns are ignored. Relative paths resolve against the
    manifest's folder. ``ytid`` is ``key`` when given, else the media file's stem.
    Labels are a string (or, in Parquet, a list of strings or integers); each label
    matches a MID first, then a display name, then an integer class index. A string
    holding ';' splits on ';', else it is one label when it matches as a whole (display
    names hold commas), else it splits on ','. Failures follow ``read_segments``.
    """
    path = Path(path)
    hint = "pass a CSV or Parquet manifest with columns path and labels (optional: start, end, key)"
    folder = path.resolve().parent
    lookup = _Labels(classes)
    out = _Rows()
    data_rows = 0
    for number, record in _manifest_records(path, hint):
        data_rows += 1
        source = f"{path.name}:{number}"
        if record is None:
            out.fail(
                "", None, None, "malformed_row", "the row does not have one field per header column", source
            )
            continue
        media = record.get("path")
        key = record.get("key")
        media = media.strip() if isinstance(media, str) else ""
        key = key.strip() if isinstance(key, str) else ""
        ytid = key or os.path.splitext(media.rsplit("/", 1)[-1])[0]
        try:
            start, end = _times(record.get("start"), record.get("end"))
            if not media:
                raise ValueError("the path is empty")
        except ValueError as err:
            out.fail(ytid, None, None, "malformed_row", str(err), source)
            continue
        if "://" not in media:
            media = os.path.normpath(folder / media)  # an absolute media path stays as it is
        labels = record.get("labels")
        if isinstance(labels, str):
            tokens: list[object] = list(lookup.split(labels))
        elif isinstance(labels, (list, tuple)):
            tokens = list(labels)
        else:
            tokens = [] if labels is None else [labels]
        out.add(ytid, start, end, tokens, lookup.find, media, source)
    if not out.rows:
        raise _no_usable_row("manifest", path, data_rows, out.failures[0] if out.failures else None, hint)
    return out.rows, out.failures


def vggsound_to_manifest(
    csv_path: PathLike, media_dir: PathLike, out_path: PathLike, split: str = "train"
) -> tuple[Path, list[LabelClass]]:
    """Convert VGGSound's ``ytid,start,label,split`` CSV (no header) into a manifest for one split.

    The manifest has columns path (``media_dir/{ytid}_{start:06d}.mp4``, absolute),
    labels (the class name), start (seconds), end (empty: unknown) and key (the ytid),
    so its rows key like AudioSet's. Classes are the sorted distinct names over all
    splits, so train and test share one index space; they are written with MID = name
    to ``class_labels_indices.csv`` beside the manifest. A malformed line is a
    SourceError naming it: the file is a fixed published list.
    """
    csv_path, out_path = Path(csv_path), Path(out_path)
    hint = "pass VGGSound's vggsound.csv (ytid,start,label,split)"
    labels_path = out_path.with_name("class_labels_indices.csv")
    if out_path == labels_path:
        raise SourceError(
            f"manifest {out_path} would overwrite the class list written beside it: choose another name"
        )
    entries: list[tuple[str, int, str, str]] = []
    for line, fields in _csv_records(csv_path, "VGGSound file", hint):
        fields = [field.strip() for field in fields]
        if len(fields) != 4 or not all(fields) or not (fields[1].isascii() and fields[1].isdigit()):
            raise SourceError(
                f"VGGSound file {csv_path}:{line} is not ytid,integer start,label,split: {hint}"
            )
        ytid, start_text, label, row_split = fields
        entries.append((ytid, int(start_text), label, row_split))
    if not entries:
        raise SourceError(f"VGGSound file {csv_path} is empty: {hint}")
    chosen = [entry for entry in entries if entry[3] == split]
    if not chosen:
        found = ", ".join(sorted({entry[3] for entry in entries}))
        raise SourceError(
            f"VGGSound file {csv_path} has no row of split {split!r} (it has: {found}): pick one of those"
        )
    classes = [LabelClass(i, name, name) for i, name in enumerate(sorted({entry[2] for entry in entries}))]
    folder = str(media_dir) if "://" in str(media_dir) else os.path.abspath(media_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(labels_path, LABELS_HEADER, [(c.index, c.mid, c.name) for c in classes])
    _write_csv(
        out_path,
        MANIFEST_COLUMNS,
        [(f"{folder}/{ytid}_{start:06d}.mp4", label, start, "", ytid) for ytid, start, label, _ in chosen],
    )
    return out_path, classes


# ---------------------------------------------------------------------------- media


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
        fields.update(start=f"{row.start:.3f}", start_ms=_to_ms(row.start))
    if row.end is not None:
        fields.update(end=f"{row.end:.3f}", end_ms=_to_ms(row.end))
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
    listings: dict[str, frozenset[str]] = {}

    def names_in(directory: str) -> frozenset[str]:
        if directory not in listings:
            listings[directory] = _list_dir(directory)
        return listings[directory]

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
                failures.append(
                    RowFailure.for_row(row, "source", "missing_file", f"{row.path} does not exist")
                )
            continue
        if pattern is not None:
            try:
                name = pattern.format(**_pattern_fields(row))
            except KeyError as err:
                failures.append(
                    RowFailure.for_row(
                        row,
                        "source",
                        "missing_file",
                        f"pattern {pattern!r} needs {err.args[0]} but the row has none",
                    )
                )
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


# ---------------------------------------------------------------------------- tables


def rows_to_table(rows: Sequence[ClipRow]) -> pa.Table:
    """Clip rows as an Arrow table with ``ROW_SCHEMA``."""
    return pa.Table.from_pydict(
        {
            "key": [r.key for r in rows],
            "ytid": [r.ytid for r in rows],
            "start_seconds": [r.start for r in rows],
            "end_seconds": [r.end for r in rows],
            "labels": [list(r.labels) for r in rows],
            "path": [r.path for r in rows],
            "source": [r.source for r in rows],
        },
        schema=ROW_SCHEMA,
    )


def failures_to_table(failures: Sequence[RowFailure]) -> pa.Table:
    """Failure records as an Arrow table with ``FAILURE_SCHEMA``."""
    return pa.Table.from_pydict(
        {
            "ytid": [f.ytid for f in failures],
            "start_seconds": [f.start for f in failures],
            "end_seconds": [f.end for f in failures],
            "stage": [f.stage for f in failures],
            "error": [f.error for f in failures],
            "message": [f.message for f in failures],
            "source": [f.source for f in failures],
        },
        schema=FAILURE_SCHEMA,
    )
