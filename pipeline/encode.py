"""One clip through decode and its modalities into shard members: the unit of distributed work.

``encode_clip`` is a plain function (no Ray), so a new dataset can call it directly, and it
never raises for a bad clip: it returns either its samples (members plus an index row each: the
whole segment, or with ``data.train_windows`` k, k windows of a training clip) or a failure row
with the stage and a specific reason.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline import modality, shards
from pipeline.decode import DecodedClip, DecodeError, Decoder, decode_at_recipe
from pipeline.modality import Modality, clip_sample, window_starts
from pipeline.recipe import DataConfig
from pipeline.records import ClipRow, IndexRow, RowFailure, as_dict


@dataclass(frozen=True)
class EncodeOptions:
    """Everything ``encode_clip`` needs besides the row: the recipe, its modalities, how media are laid out."""

    data: DataConfig
    modalities: tuple[Modality, ...]  # pipeline.recipe.modalities_of(data, names)
    full_videos: bool = False  # media files are whole videos: seek to the segment's start
    keep_short: bool = False  # an evaluation split: no clip is too short (see DataConfig.min_seconds)
    decoder: Decoder = decode_at_recipe  # a benchmark hands in a stand-in


@dataclass
class ClipResult:
    key: str
    index_rows: list[dict] = field(default_factory=list)  # one per stored sample; none when the clip failed
    failure: dict | None = None  # set when it failed
    members: list[tuple[str, bytes]] = field(default_factory=list)  # every stored sample's, in order


def failure_row(row: ClipRow, stage: str, error: str, message: str) -> dict:
    """A failures.parquet row for a clip row."""
    return as_dict(RowFailure.for_row(row, stage, error, message))


def encode_clip(row: ClipRow, options: EncodeOptions, tags: dict[str, dict] | None = None) -> ClipResult:
    """Decode ``row``'s media at the recipe and encode each modality as shard members."""
    mods = options.modalities
    try:
        clip = options.decoder(row.path, options.data, mods, start=row.start if options.full_videos else None)
    except DecodeError as err:
        return ClipResult(row.key, failure=failure_row(row, "decode", err.reason, str(err)))
    needed = 0.0 if options.keep_short else options.data.min_seconds
    needed = mods[0].window_s if needed is None else needed
    seconds_present = max((end - first) * m.unit_s if has else 0.0
                          for m in mods for has, first, end in [m.real_units(clip)])
    if seconds_present + 1e-6 < needed:
        return ClipResult(row.key, failure=failure_row(row, "decode", "too_short", (
            f"{row.path}: {seconds_present:.2f} s of media, a training clip needs {needed:.2f} s (data.min_seconds)")))
    meta = {"ytid": row.ytid, "start_seconds": row.start, "end_seconds": row.end, "labels": list(row.labels),
            "source": row.source, "modalities": tags if tags is not None else modality.tags(mods)}
    result = ClipResult(row.key)
    for key, start, part in _stored(row, clip, options):
        window = {} if start is None else {"clip": row.key, "window_start": start}
        sample = clip_sample(key, part, mods, {**meta, **window})
        members = shards.sample_members(sample)
        index_row = as_dict(IndexRow(key=key, ytid=row.ytid, start=row.start, end=row.end, shard="", labels=row.labels,
                                     bytes=sum(len(b) for _, b in members), source=row.source,
                                     clip=row.key if start is not None else None, window_start=start))
        for m in mods:
            index_row.update({f"has_{m.name}": sample.meta[f"has_{m.name}"], m.length_key: sample.meta[m.length_key]})
        result.index_rows.append(dict(index_row, labels=list(row.labels)))
        result.members += members
    return result


def _stored(row: ClipRow, clip: DecodedClip, options: EncodeOptions) -> list[tuple[str, float | None, DecodedClip]]:
    """(key, start in the clip or None, content) of each sample ``row`` stores: its whole segment, or
    in a training split with ``data.train_windows`` k, k windows at random starts on the window grid
    (``pipeline.modality.window_starts``) drawn from (``data.window_seed``, the key), keyed ``<key>_w<j>``."""
    data, mods = options.data, options.modalities
    if options.keep_short or not data.train_windows:
        return [(row.key, None, clip)]
    real_s = max(end * m.unit_s if has else 0.0 for m in mods for has, _, end in [m.real_units(clip)])
    rng = np.random.default_rng([data.window_seed, zlib.crc32(row.key.encode())])
    starts = window_starts(real_s, data.segment_seconds, mods, data.train_windows, rng)
    return [(f"{row.key}_w{j}", start,
             clip.part(start, mods[0].window_s, fps=data.video.fps, sample_rate=data.audio.sample_rate))
            for j, start in enumerate(starts)]


def plan_shards(rows: Sequence[ClipRow], shard_size: int, prefix: str) -> list[tuple[str, list[ClipRow]]]:
    """Deterministic shard names and contents: rows sorted by key, cut into ``shard_size`` runs.

    The same inputs always give the same plan, which is what lets a rerun skip finished shards.
    """
    ordered = sorted(rows, key=lambda r: r.key)
    count = math.ceil(len(ordered) / shard_size)
    return [(f"{prefix}-{i:06d}.tar", ordered[i * shard_size:(i + 1) * shard_size]) for i in range(count)]
