"""The class list: ``class_labels_indices.csv``, and label tokens matched against it.

Label order always comes from ``class_labels_indices.csv``; a label that is not in it is a
failure, never silently dropped (that would change the task).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.listfiles import PathLike, SourceError, csv_records

LABELS_HEADER = ["index", "mid", "display_name"]


@dataclass(frozen=True, slots=True)
class LabelClass:
    """One class of the task: its position in the target vector, MID and display name."""

    index: int
    mid: str
    name: str


def load_labels(path: PathLike) -> list[LabelClass]:
    """Read ``class_labels_indices.csv`` (``index,mid,display_name``) sorted by index.

    Indexes must be exactly 0..n-1 and MIDs unique; anything else is a SourceError
    naming the file and line.
    """
    path = Path(path)
    hint = "pass --labels class_labels_indices.csv"
    records = csv_records(path, "labels file", hint)
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


class LabelLookup:
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
