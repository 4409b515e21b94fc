"""Shards -> windows -> batches, deterministic per (seed, epoch, rank), equal batches per rank.

Training: in epoch ``e`` reader ``r`` of ``w`` (a rank, or one DataLoader worker of a rank) reads
the shards ``perm_e[r::w]`` (``perm_e`` a permutation seeded by (seed, e)); a reader left
without a shard takes ``perm_e[r % n]``. Samples
pass a seeded shuffle buffer, each gets one random window, and the rank's shards are cycled
(reshuffled per pass) until it has yielded exactly ``steps_per_epoch`` batches, so no rank runs
short and DDP never hangs. Resuming at batch ``b`` of an epoch replays the same sample stream
and skips ``b`` batches without decoding their frames.

Evaluation: every sample of every shard once, in order, with ``crops`` evenly spaced windows.

``DataLoader`` workers each read their own shards (see ``TrainStream``), so no byte is read twice.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from perceiver.config import Config, DataConfig
from perceiver.recipe import audio_window_length
from pipeline import features, shards, storage

log = logging.getLogger(__name__)


class DatasetMismatchError(ValueError):
    """The shards were made with a recipe the training config does not match."""


@dataclass(frozen=True)
class DatasetInfo:
    root: str
    shards: tuple[str, ...]  # full paths or URIs
    num_samples: int
    classes: tuple[dict, ...]
    recipe: dict

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]


def open_dataset(root: str) -> DatasetInfo:
    """Read ``root/dataset.json`` (written by jobs/preprocess.py)."""
    loc = storage.locate(root)
    path = loc.join("dataset.json")
    if not storage.exists(loc.fs, path):
        raise FileNotFoundError(f"{loc.uri}/dataset.json not found: is {root} a directory written by jobs/preprocess.py?")
    meta = json.loads(storage.read_bytes(loc.fs, path))
    if meta.get("schema_version") != shards.SCHEMA_VERSION:
        raise DatasetMismatchError(f"{loc.uri}: shard schema version {meta.get('schema_version')}, this reader "
                                   f"reads {shards.SCHEMA_VERSION}: preprocess the data again")
    paths = tuple(f"{loc.uri.rstrip('/')}/{s}" for s in meta["shards"])
    if not paths:
        raise DatasetMismatchError(f"{loc.uri}: the dataset has no shards (see its failures.parquet)")
    return DatasetInfo(loc.uri, paths, int(meta["counts"]["samples"]), tuple(meta["classes"]), meta["recipe"])


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Storage choices that do not change what the model sees.
_STORAGE_ONLY = ("video.encoding", "video.jpeg_quality", "fourier_source")


def check_compatible(info: DatasetInfo, cfg: Config, where: str = "--train") -> None:
    """Stop with one line naming the first recipe field where config and shards disagree."""
    want = _flatten(features.recipe_record(cfg.data, cfg.inputs.modalities))
    have = _flatten(info.recipe)
    for key, value in want.items():
        if key.endswith(_STORAGE_ONLY) or key.startswith("modalities.") and key.split(".")[1] not in cfg.inputs.modalities:
            continue
        if key.startswith("video.num_frames") or key.startswith("audio.num_samples"):
            continue  # the window is cut at training time; the grids below pin it where it matters
        if have.get(key) != value:
            raise DatasetMismatchError(
                f"{where} {info.root}: dataset.json has {key}={have.get(key)!r} but the training config has "
                f"{value!r}: train with the config the shards were made with, or preprocess again")


# ---------------------------------------------------------------- windows


def window_start_frames(meta: dict, data: DataConfig, count: int | None, rng: np.random.Generator | None) -> list[int]:
    """Start frames of ``count`` windows inside the clip's real content.

    Random (train: ``rng`` given) or evenly spaced from start to end (eval). A window may run into
    padding only when the clip is shorter than a window.
    """
    fps, sr = data.video.fps, data.audio.sample_rate
    real_s = max(meta["video_frames"] / fps if meta["has_video"] else 0.0,
                 meta["audio_samples"] / sr if meta["has_audio"] else 0.0)
    last = max(0, int(math.floor(real_s * fps)) - data.video.num_frames)
    stored_last = meta["video"]["frames"] - data.video.num_frames
    last = min(last, stored_last)
    if rng is not None:
        return [int(rng.integers(0, last + 1)) for _ in range(count or 1)]
    count = count or 1
    return [int(round(i * last / (count - 1))) if count > 1 else last // 2 for i in range(count)]


def crop_window(sample: dict, data: DataConfig, start_frame: int) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """(video uint8 (F, S, S, 3), audio float32 window, video usable, audio usable) from ``start_frame``.

    A frame that does not decode or an array of the wrong shape (a damaged shard whose tar is
    intact) makes that modality absent for this window, as a missing stream would: the batch keeps
    its size, so every rank still yields the same number of batches, and a rerun does not meet
    the same crash at the same step forever.
    """
    f, size = data.video.num_frames, data.video.size
    length = audio_window_length(data.audio)
    audio_shape = (length,) if data.audio.representation == "raw" else (length, data.audio.n_mels)
    try:
        if "video_jpeg" in sample:
            video = shards.decode_jpeg_frames(sample["video_jpeg"][start_frame:start_frame + f])
        else:
            video = np.asarray(sample["video"][start_frame:start_frame + f])
        if video.shape != (f, size, size, 3) or video.dtype != np.uint8:
            raise ValueError(f"video window of shape {video.shape} {video.dtype}")
        video_ok = True
    except (OSError, ValueError, SyntaxError) as err:  # Pillow raises all three on damaged JPEGs
        log.warning("%s: video window unusable (%s); treated as absent", sample.get("__key__"), err)
        video, video_ok = np.zeros((f, size, size, 3), np.uint8), False
    first_sample = int(round(start_frame * data.audio.sample_rate / data.video.fps))
    first = first_sample if data.audio.representation == "raw" else first_sample // data.audio.hop_length
    try:
        audio = features.audio_values(np.asarray(sample["audio"][first:first + length]))
        if audio.shape[0] < length:  # a window at the very end of a padded clip
            audio = np.concatenate([audio, np.zeros((length - audio.shape[0], *audio.shape[1:]), audio.dtype)])
        if audio.shape != audio_shape:
            raise ValueError(f"audio window of shape {audio.shape}")
        audio_ok = True
    except (ValueError, TypeError) as err:
        log.warning("%s: audio window unusable (%s); treated as absent", sample.get("__key__"), err)
        audio, audio_ok = np.zeros(audio_shape, np.float32), False
    return video, audio, video_ok, audio_ok


@dataclass
class Batch:
    video: torch.Tensor  # uint8 (B, F, S, S, 3)
    audio: torch.Tensor  # float32 (B, samples) or (B, frames, n_mels)
    has_video: torch.Tensor  # bool (B,)
    has_audio: torch.Tensor  # bool (B,)
    labels: torch.Tensor  # float32 (B, num_classes) multi-hot
    crops: int = 1  # windows per clip (eval): rows are clip-major

    def to(self, device: torch.device) -> Batch:
        move = {k: getattr(self, k).to(device, non_blocking=True)
                for k in ("video", "audio", "has_video", "has_audio", "labels")}
        return Batch(**move, crops=self.crops)

    def __len__(self) -> int:
        return self.labels.shape[0] // self.crops

    def windows(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` (windows, not clips) as a batch of single crops."""
        cut = {k: getattr(self, k)[start:stop] for k in ("video", "audio", "has_video", "has_audio", "labels")}
        return Batch(**cut, crops=1)


def assemble(samples: Sequence[dict], starts: Sequence[Sequence[int]], data: DataConfig, num_classes: int) -> Batch:
    """Crop each sample's windows and stack them into one batch (clip-major, crops inner)."""
    videos, audios, has_v, has_a, labels = [], [], [], [], []
    for sample, sample_starts in zip(samples, starts, strict=True):
        target = np.zeros(num_classes, np.float32)
        target[sample["meta"]["labels"]] = 1.0
        for start in sample_starts:
            v, a, v_ok, a_ok = crop_window(sample, data, start)
            videos.append(v)
            audios.append(a)
            has_v.append(sample["meta"]["has_video"] and v_ok)
            has_a.append(sample["meta"]["has_audio"] and a_ok)
            labels.append(target)
    return Batch(torch.from_numpy(np.stack(videos)), torch.from_numpy(np.stack(audios)),
                 torch.tensor(has_v), torch.tensor(has_a), torch.from_numpy(np.stack(labels)),
                 crops=len(starts[0]) if starts else 1)


# ---------------------------------------------------------------- training stream


def rank_shards(paths: Sequence[str], seed: int, epoch: int, rank: int, world: int) -> list[str]:
    order = np.random.default_rng([seed, epoch]).permutation(len(paths))
    mine = order[rank::world] if len(paths) >= world else order[[rank % len(paths)]]
    return [paths[i] for i in mine]


class TrainStream(IterableDataset):
    """The batches of one epoch on one rank: exactly ``steps`` of them, starting at ``skip``.

    With ``loader_workers`` K > 0 the rank's stream is K sub-streams, one per DataLoader worker,
    each reading its own shards (``rank_shards`` over world x K readers): the rank's batch ``b``
    is sub-stream ``b % K``'s batch ``b // K``. The DataLoader takes one batch from each worker in
    turn, and worker ``w`` serves sub-stream ``(w + skip) % K``, so the order is the same with or
    without a skip. Order is a function of (seed, epoch, rank, K): keep K when resuming.
    """

    def __init__(self, info: DatasetInfo, data: DataConfig, batch_size: int, seed: int, epoch: int,
                 rank: int, world: int, steps: int, skip: int = 0, shuffle_buffer: int = 64, loader_workers: int = 0):
        super().__init__()
        self.info, self.data, self.batch_size = info, data, batch_size
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world
        self.steps, self.skip, self.shuffle_buffer = steps, skip, shuffle_buffer
        self.subs = max(1, loader_workers)
        self.stats = shards.ReadStats()

    def _samples(self, sub: int) -> Iterator[tuple[dict, int]]:
        """(sample, window start) pairs of one sub-stream forever, shuffled through a seeded buffer."""
        reader = self.rank * self.subs + sub
        rng = np.random.default_rng([self.seed, self.epoch, reader, self.world * self.subs])
        mine = rank_shards(self.info.shards, self.seed, self.epoch, reader, self.world * self.subs)
        buffer: list[dict] = []
        for cycle in range(1 << 30):
            order = rng.permutation(len(mine)) if cycle else range(len(mine))
            read = 0
            for sample in shards.iter_samples([mine[i] for i in order], decode_frames=False, stats=self.stats):
                read += 1
                buffer.append(sample)
                if len(buffer) >= self.shuffle_buffer:
                    pick = buffer.pop(int(rng.integers(len(buffer))))
                    yield pick, window_start_frames(pick["meta"], self.data, 1, rng)[0]
            if not read:
                raise RuntimeError(f"rank {self.rank}: no readable sample in its shards {mine}")

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        sub = ((worker.id if worker else 0) + self.skip) % self.subs
        batch_index = sub  # the rank-level index of this sub-stream's next batch
        pending: list[tuple[dict, int]] = []
        for sample, start in self._samples(sub):
            pending.append((sample, start))
            if len(pending) < self.batch_size:
                continue
            if batch_index >= self.steps:
                return
            if batch_index >= self.skip:  # skipped batches are read, never decoded
                yield assemble([s for s, _ in pending], [[st] for _, st in pending], self.data,
                               len(self.info.classes))
            pending = []
            batch_index += self.subs


def train_batches(stream: TrainStream) -> Iterator[Batch]:
    if stream.subs == 1:
        return iter(stream)
    return iter(DataLoader(stream, batch_size=None, num_workers=stream.subs,
                           multiprocessing_context="forkserver", persistent_workers=False))


def eval_batches(info: DatasetInfo, data: DataConfig, batch_size: int, crops: int,
                 stats: shards.ReadStats | None = None) -> Iterator[Batch]:
    """Every sample once, in shard order, with ``crops`` evenly spaced windows each."""
    pending: list[dict] = []
    num_classes = len(info.classes)
    for sample in shards.iter_samples(info.shards, decode_frames=False, stats=stats):
        pending.append(sample)
        if len(pending) == batch_size:
            yield assemble(pending, [window_start_frames(s["meta"], data, crops, None) for s in pending], data,
                           num_classes)
            pending = []
    if pending:
        yield assemble(pending, [window_start_frames(s["meta"], data, crops, None) for s in pending], data,
                       num_classes)
