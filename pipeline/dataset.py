"""A preprocessed dataset as its readers see it: ``dataset.json``, its shards and their Fourier features."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline import shards, storage
from pipeline.modality import Modality
from pipeline.recipe import DataConfig, recipe_differences


class DatasetMismatchError(ValueError):
    """A dataset that does not fit what is asked of it: another recipe, class list or dataset."""


@dataclass(frozen=True)
class DatasetInfo:
    root: str  # as records show it: a URI without query options or credentials
    shards: tuple[str, ...]  # full paths or URIs, query options kept so any process can open them
    num_samples: int
    classes: tuple[dict, ...]
    recipe: dict
    # float32 (M_m, F_m) per modality, read once from the first shard's __fourier__ entry; the model
    # takes them (and checks them against its own) when the config's fourier_source is "shard".
    position_features: dict[str, np.ndarray] = field(default_factory=dict)
    decoder_version: int | None = None  # of the run that wrote it (1: before dataset.json recorded it)

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]


def open_dataset(root: str) -> DatasetInfo:
    """Read ``root/dataset.json`` (written by jobs/preprocess.py)."""
    loc = storage.locate(root)
    path = loc.join("dataset.json")
    if not storage.exists(loc.fs, path):
        raise FileNotFoundError(f"{loc.child('dataset.json').shown} not found: is {loc.shown} a directory written by "
                                f"jobs/preprocess.py?")
    meta = json.loads(storage.read_bytes(loc.fs, path))
    if meta.get("schema_version") != shards.SCHEMA_VERSION:
        raise DatasetMismatchError(f"{loc.shown}: shard schema version {meta.get('schema_version')}, this reader "
                                   f"reads {shards.SCHEMA_VERSION}: preprocess the data again")
    paths = tuple(loc.child(*s.split("/")).uri for s in meta["shards"])
    if not paths:
        raise DatasetMismatchError(f"{loc.shown}: the dataset has no shards (see its failures.parquet)")
    return DatasetInfo(loc.shown, paths, int(meta["counts"]["samples"]), tuple(meta["classes"]), meta["recipe"],
                       position_features=shards.read_fourier(paths[0])[1],
                       decoder_version=meta.get("decoder_version", 1))


def decoder_note(info: DatasetInfo, where: str) -> str | None:
    """A line for a dataset an older decoder wrote, saying what differs and how to redo it; None if current."""
    # Imported here: decoding needs PyAV and decord, which a training-only machine need not have.
    from pipeline.decode import DECODER_VERSION

    if info.decoder_version is None or info.decoder_version >= DECODER_VERSION:
        return None
    return (f"note: {where} {info.root} was decoded by decoder version {info.decoder_version}, before both streams "
            f"shared the container's clock: a clip whose video starts after its audio has its picture up to that "
            f"offset early, and padding is not told from content. It trains as it is; rerun jobs/preprocess.py with "
            f"the inputs its dataset.json lists into a new --out to decode it again.")


def check_compatible(info: DatasetInfo, data: DataConfig, modalities: Sequence[Modality], where: str = "--train") -> None:
    """Stop with one line naming the first recipe field where the config and the shards disagree."""
    stored = info.recipe.get("modalities", {})
    if absent := [m.name for m in modalities if m.name not in stored]:
        raise DatasetMismatchError(f"{where} {info.root} stores no {absent[0]} (it holds {', '.join(stored)}): "
                                   f"leave {absent[0]} out of inputs.modalities, or preprocess with it")
    for key, have, want in recipe_differences(info.recipe, data, modalities):
        raise DatasetMismatchError(
            f"{where} {info.root}: dataset.json has {key}={have!r} but the training config has "
            f"{want!r}: train with the config the shards were made with, or preprocess again")
