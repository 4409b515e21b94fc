"""The records that flow between the stages, each defined once; their parquet schemas derive from them.

- ``ClipRow``: one clip for the decode stage;
- ``RowFailure``: a row that did not become a sample, at any stage (``failures.parquet``);
- ``IndexRow``: a stored sample (``index.parquet``), plus each modality's presence and true length.

A field's column is its name, or the ``column`` of its metadata.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import pyarrow as pa

_ARROW = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}
_START, _END = {"column": "start_seconds"}, {"column": "end_seconds"}


@dataclass(frozen=True, slots=True)
class _Segment:
    """What every record names first: the clip's key and its stretch of the source video."""

    key: str  # make_key(ytid, start): the WebDataset sample key
    ytid: str
    start: float | None = field(metadata=_START)  # seconds into the source video; None when unknown
    end: float | None = field(metadata=_END)


@dataclass(frozen=True, slots=True)
class ClipRow(_Segment):
    """One clip for the decode stage."""

    labels: tuple[int, ...]  # class indices, sorted, unique
    path: str | None  # media file; None until resolve_media
    source: str  # "file.csv:LINE"


@dataclass(frozen=True, slots=True)
class RowFailure(_Segment):
    """A row that did not become a sample, with the stage and reason."""

    stage: str  # "source", "decode", "worker"
    # Reason code: "malformed_row", "duplicate", "unknown_label:<label>", "no_labels", "missing_file",
    # "too_short", "timeout", "unsupported_codec:<codec>", ... (pipeline.decode.DecodeError).
    error: str
    message: str  # one line
    source: str  # "file.csv:LINE"

    @classmethod
    def for_row(cls, row: ClipRow, stage: str, error: str, message: str) -> RowFailure:
        """The failure record of a clip row that a later step could not use."""
        return cls(key=row.key, ytid=row.ytid, start=row.start, end=row.end, stage=stage, error=error, message=message,
                   source=row.source)


@dataclass(frozen=True, slots=True)
class IndexRow(_Segment):
    """A stored sample; ``index.parquet`` adds ``has_<name>`` and ``<name>_<unit>`` per modality."""

    shard: str
    labels: tuple[int, ...]
    bytes: int  # the sample's members in the shard
    source: str
    # A stored window (data.train_windows): the key of the clip it was cut from, and its start in the
    # clip (seconds); None for a whole segment.
    clip: str | None = None
    window_start: float | None = None


def _arrow(hint: object) -> pa.DataType:
    if typing.get_origin(hint) is tuple:
        return pa.list_(pa.int32())
    optional = [a for a in typing.get_args(hint) if a is not type(None)]
    return _arrow(optional[0]) if optional else _ARROW[hint]


def schema(record: type, extra: Sequence[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    """The Arrow schema of a record type (plus ``extra`` columns)."""
    hints = typing.get_type_hints(record)
    return pa.schema([*((f.metadata.get("column", f.name), _arrow(hints[f.name])) for f in fields(record)), *extra])


def as_dict(record) -> dict:
    """A record as one table row: column name -> value."""
    return {f.metadata.get("column", f.name): getattr(record, f.name) for f in fields(record)}


FAILURE_SCHEMA = schema(RowFailure)
