"""Manifests for new datasets (CSV or Parquet: path, labels[, start, end, key]) and VGGSound's list as one."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.labels import LABELS_HEADER, LabelClass, LabelLookup
from pipeline.listfiles import PathLike, Rows, SourceError, csv_records, no_usable_row, times, write_csv
from pipeline.records import ClipRow, RowFailure

MANIFEST_COLUMNS = ("path", "labels", "start", "end", "key")


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
    records = csv_records(path, "manifest", hint)
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
    lookup = LabelLookup(classes)
    out = Rows()
    data_rows = 0
    for number, record in _manifest_records(path, hint):
        data_rows += 1
        source = f"{path.name}:{number}"
        if record is None:
            out.fail("", None, None, "malformed_row", "the row does not have one field per header column", source)
            continue
        media, key = (v.strip() if isinstance(v, str) else ""
                      for v in (record.get("path"), record.get("key")))
        ytid = key or os.path.splitext(media.rsplit("/", 1)[-1])[0]
        try:
            start, end = times(record.get("start"), record.get("end"))
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
        raise no_usable_row("manifest", path, data_rows, out.failures[0] if out.failures else None, hint)
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
    for line, fields in csv_records(csv_path, "VGGSound file", hint):
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
    write_csv(labels_path, LABELS_HEADER, [(c.index, c.mid, c.name) for c in classes])
    write_csv(
        out_path,
        MANIFEST_COLUMNS,
        [(f"{folder}/{ytid}_{start:06d}.mp4", label, start, "", ytid) for ytid, start, label, _ in chosen],
    )
    return out_path, classes
