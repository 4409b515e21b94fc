"""One clip through decode and features into its shard members: the unit of distributed work.

``encode_clip`` is a plain function (no Ray), so a new dataset can call it directly, and it
never raises for a bad clip: it returns either a sample (members plus an index row) or a
failure row with the stage and a specific reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from perceiver.config import DataConfig
from pipeline import features, shards
from pipeline.decode import DecodeError, decode_clip
from pipeline.sources import ClipRow, RowFailure


@dataclass(frozen=True)
class EncodeOptions:
    """Everything ``encode_clip`` needs besides the row: the recipe and how media are laid out."""

    data: DataConfig
    modalities: tuple[str, ...] = ("audio", "video")
    full_videos: bool = False  # media files are whole videos: seek to the segment's start

    @property
    def tags(self) -> dict[str, dict]:
        return {s.name: features.modality_tag(s) for s in features.modality_specs(self.data, self.modalities)}


@dataclass
class ClipResult:
    key: str
    index_row: dict | None = None  # set when a sample was made
    failure: dict | None = None  # set when not
    members: list[tuple[str, bytes]] = field(default_factory=list)


def failure_record(failure: RowFailure, key: str) -> dict:
    """A failures.parquet row: every stage's failure, from the sources on, takes this one shape."""
    return {"key": key, "ytid": failure.ytid, "start_seconds": failure.start, "end_seconds": failure.end,
            "stage": failure.stage, "error": failure.error, "message": failure.message, "source": failure.source}


def failure_row(row: ClipRow, stage: str, error: str, message: str) -> dict:
    return failure_record(RowFailure.for_row(row, stage, error, message), row.key)


def encode_clip(row: ClipRow, options: EncodeOptions, tags: dict[str, dict] | None = None) -> ClipResult:
    """Decode ``row``'s media at the recipe and encode it as shard members."""
    data = options.data
    try:
        clip = decode_clip(row.path, start=row.start if options.full_videos else None,
                           seconds=data.segment_seconds, fps=data.video.fps, size=data.video.size,
                           sample_rate=data.audio.sample_rate)
    except DecodeError as err:
        return ClipResult(row.key, failure=failure_row(row, "decode", err.reason, str(err)))
    # A clip shorter than one model window holds no full training example in either modality.
    window_s = max(data.video.num_frames / data.video.fps, data.audio.num_samples / data.audio.sample_rate)
    seconds_present = max(clip.video_frames / data.video.fps if clip.has_video else 0.0,
                          clip.audio_samples / data.audio.sample_rate if clip.has_audio else 0.0)
    if seconds_present + 1e-6 < window_s:
        return ClipResult(row.key, failure=failure_row(
            row, "decode", "too_short", f"{row.path}: {seconds_present:.2f} s of media, one window needs {window_s:.2f} s"))
    audio = features.audio_array(clip.audio, data.audio)
    num_frames = clip.video.shape[0]
    num_samples = clip.audio.shape[0]
    meta = {
        "ytid": row.ytid,
        "start_seconds": row.start,
        "end_seconds": row.end,
        "labels": list(row.labels),
        "source": row.source,
        "has_audio": clip.has_audio,
        "has_video": clip.has_video,
        "audio_samples": clip.audio_samples,
        "video_frames": clip.video_frames,
        "audio_padded": clip.audio_samples < num_samples,
        "video_padded": clip.video_frames < num_frames,
        "audio": {"representation": data.audio.representation, "sample_rate": data.audio.sample_rate,
                  "samples": num_samples, "shape": list(audio.shape), "dtype": str(audio.dtype)},
        "video": {"encoding": data.video.encoding, "fps": data.video.fps, "size": data.video.size,
                  "frames": num_frames},
        "modalities": tags if tags is not None else options.tags,
    }
    members = shards.sample_members(shards.Sample(row.key, meta, audio, clip.video),
                                    data.video.encoding, data.video.jpeg_quality)
    index_row = {
        "key": row.key, "ytid": row.ytid, "start_seconds": row.start, "end_seconds": row.end,
        "labels": list(row.labels), "has_audio": clip.has_audio, "has_video": clip.has_video,
        "audio_samples": clip.audio_samples, "video_frames": clip.video_frames,
        "bytes": sum(len(b) for _, b in members), "source": row.source,
    }
    return ClipResult(row.key, index_row=index_row, members=members)


def plan_shards(rows: Sequence[ClipRow], shard_size: int, prefix: str) -> list[tuple[str, list[ClipRow]]]:
    """Deterministic shard names and contents: rows sorted by key, cut into ``shard_size`` runs.

    The same inputs always give the same plan, which is what lets a rerun skip finished shards.
    """
    ordered = sorted(rows, key=lambda r: r.key)
    count = math.ceil(len(ordered) / shard_size)
    return [(f"{prefix}-{i:06d}.tar", ordered[i * shard_size:(i + 1) * shard_size]) for i in range(count)]
