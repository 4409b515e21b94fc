"""Shards -> windows -> batches, deterministic per (seed, epoch, rank), equal batches per rank.

Training: in epoch ``e`` reader ``r`` of ``w`` (a rank, or one DataLoader worker of a rank) reads
its own shards (``rank_shards``); a reader left without a shard shares one. Samples pass a seeded
shuffle buffer, each window is cut at a random start, and the reader's shards are cycled
(reshuffled per pass) until its rank has yielded exactly ``steps_per_epoch`` batches, so no rank
runs short and DDP never hangs. Resuming at batch ``b`` of an epoch replays the same sample stream
and skips ``b`` batches without decoding their frames.

Sampling (``train.sampler``):

- ``uniform``: reader ``r`` of ``w`` owns the shards ``perm_e[r::w]`` (``perm_e`` a permutation
  seeded by (seed, e); without a shard of its own it takes ``perm_e[r % n]``), and each clip read
  gives one window.
- ``balanced``: clip ``i`` should be drawn with probability ``w_i / W``, ``w_i`` the sum over its
  labels ``c`` of ``1 / n_c`` (``n_c`` training clips labelled ``c``, from ``index.parquet``:
  ``ClassBalance``) and ``W`` the sum of all weights. Every reader still reads only its own shards
  and yields as many windows as every other. So each draws with replacement from its own shards:
  a clip it reads enters its stream ``k ~ Poisson(lambda * w_i)`` times, each with its own window
  (``lambda`` = clips / ``W``, about one window per clip read), i.e. with probability
  ``w_i / W_r`` per window, ``W_r`` the weight of the reader's shards. Equal windows per reader
  make the union over readers ``w_i / (readers * W_r)``: the target exactly when every ``W_r`` is
  ``W / readers``. So the readers own shards balanced by weight: heaviest shard first, each to the
  lightest reader so far, which leaves each ``W_r`` within one shard's weight of the mean (much
  less when shards are many and similar). A shard is still read by one reader only, except when
  there are more readers than shards. A clip drawn ``k`` times enters the shuffle buffer ``k``
  times at once: copies of a heavy clip land in nearby batches, spread by the buffer.

Evaluation: every sample of every shard once, in order, with ``crops`` evenly spaced windows.

Each configured modality (``pipeline.modality``) cuts its own window from the same start time.

What a reader skips (``shards.ReadStats``: corrupt shards, refused members, incomplete samples)
travels with the batch read after it (``Batch.read``), also out of DataLoader worker processes.
"""

from __future__ import annotations

import dataclasses
import heapq
import io
import itertools
import logging
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline import modality, shards, storage
from pipeline.dataset import DatasetInfo
from pipeline.modality import Modality

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- windows


def window_starts(meta: dict, modalities: Sequence[Modality], count: int | None,
                  rng: np.random.Generator | None) -> list[float]:
    """Start times (seconds) of ``count`` windows inside a sample's real content: random (train:
    ``rng`` given) or evenly spaced (eval), by ``pipeline.modality.window_starts``. A stored window
    (``data.train_windows``) has one start, 0."""
    return modality.window_starts(max(m.real_span(meta)[1] for m in modalities),
                                  min(m.stored_seconds(meta) for m in modalities), modalities, count, rng)


def crop_window(sample: shards.Sample, modality: Modality, start_s: float) -> tuple[np.ndarray, bool]:
    """(the modality's window from ``start_s``, usable).

    A frame that does not decode or an array of the wrong shape (a damaged shard whose tar is
    intact) makes that modality absent for this window, as a missing stream would: the batch keeps
    its size, so every rank still yields the same number of batches, and a rerun does not meet
    the same crash at the same step forever.
    """
    try:
        return modality.window(sample.content[modality.name], sample.meta, start_s), True
    except (OSError, ValueError, SyntaxError, TypeError) as err:  # Pillow raises the first three on damaged JPEGs
        log.warning("%s: %s window unusable (%s); treated as absent", sample.key, modality.name, err)
        return modality.blank(), False


@dataclass
class Cut:
    """One window of one sample: all the loader keeps of it once the window is cut."""

    labels: list[int]
    windows: dict[str, object]  # per modality: its window as ``Modality.window`` gives it (JPEG frames stay encoded)
    present: dict[str, bool]
    masks: dict[str, np.ndarray]


def cut(sample: shards.Sample, modalities: Sequence[Modality], start_s: float) -> Cut:
    """The modalities' windows of ``sample`` from ``start_s``, with presence and token masks.

    A window that runs past a modality's real content masks the tokens beyond it; one with none of it
    flags the modality absent (zeroed and unmasked, as video dropout trains).
    """
    windows, present, masks = {}, {}, {}
    for m in modalities:
        windows[m.name], ok = crop_window(sample, m, start_s)
        mask = m.token_mask(sample.meta, start_s)
        present[m.name], masks[m.name] = ok and bool(mask.any()), mask if mask.any() else ~mask
    return Cut(sample.meta["labels"], windows, present, masks)


@dataclass
class Batch:
    content: dict[str, object]  # per modality: (B, *window_shape) windows, or shards.EncodedFrames
    present: dict[str, torch.Tensor]  # per modality: bool (B,), False where a window holds none of it
    masks: dict[str, torch.Tensor]  # bool (B, M_m), False for tokens past its real content; absent: none
    labels: torch.Tensor  # float32 (B, num_classes) multi-hot
    crops: int = 1  # windows per clip (eval): rows are clip-major
    # What the reader skipped since its previous batch (training): it crosses the DataLoader's process boundary here.
    read: shards.ReadStats = dataclasses.field(default_factory=shards.ReadStats)

    def to(self, device: torch.device) -> Batch:
        """On ``device``; JPEG frames are decoded there, and a window that does not decode becomes absent."""
        content, present = {}, {k: v.to(device, non_blocking=True) for k, v in self.present.items()}
        for name, x in self.content.items():
            if isinstance(x, shards.EncodedFrames):
                content[name], ok = x.decode(device)
                present[name] = present[name] & ok
            else:
                content[name] = x.to(device, non_blocking=True)
        return Batch(content, present, {k: v.to(device, non_blocking=True) for k, v in self.masks.items()},
                     self.labels.to(device, non_blocking=True), self.crops, self.read)

    def pin_memory(self) -> Batch:
        """Page-locked host memory, so copies to a GPU overlap compute (DataLoader calls this with pin_memory)."""
        return Batch({k: v.pin_memory() for k, v in self.content.items()},
                     {k: v.pin_memory() for k, v in self.present.items()},
                     {k: v.pin_memory() for k, v in self.masks.items()}, self.labels.pin_memory(), self.crops,
                     self.read)

    def __len__(self) -> int:
        return self.labels.shape[0] // self.crops

    def windows(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` (windows, not clips) as a batch of single crops."""
        content = {k: v.windows(start, stop) if isinstance(v, shards.EncodedFrames) else v[start:stop]
                   for k, v in self.content.items()}
        return Batch(content, {k: v[start:stop] for k, v in self.present.items()},
                     {k: v[start:stop] for k, v in self.masks.items()}, self.labels[start:stop], 1)


def collate(cuts: Sequence[Cut], modalities: Sequence[Modality], num_classes: int, crops: int = 1) -> Batch:
    """Stack cut windows into one batch (clip-major, crops inner)."""
    labels = np.zeros((len(cuts), num_classes), np.float32)
    for row, c in enumerate(cuts):
        labels[row, c.labels] = 1.0
    masks = {m.name: np.stack([c.masks[m.name] for c in cuts]) for m in modalities}
    # Only masks with padding travel: a batch without any attends unmasked, which fused kernels prefer.
    return Batch({m.name: m.collate([c.windows[m.name] for c in cuts]) for m in modalities},
                 {m.name: torch.tensor([c.present[m.name] for c in cuts]) for m in modalities},
                 {k: torch.from_numpy(v) for k, v in masks.items() if not v.all()}, torch.from_numpy(labels), crops)


def assemble(samples: Sequence[shards.Sample], starts: Sequence[Sequence[float]], modalities: Sequence[Modality],
             num_classes: int) -> Batch:
    """Cut each sample's windows and stack them into one batch (clip-major, crops inner)."""
    cuts = [cut(sample, modalities, start) for sample, sample_starts in zip(samples, starts, strict=True)
            for start in sample_starts]
    return collate(cuts, modalities, num_classes, crops=len(starts[0]) if starts else 1)


# ---------------------------------------------------------------- training stream


@dataclass(frozen=True)
class ClassBalance:
    """The balanced sampler's weights: clip ``i`` weighs ``w_i``, the sum over its labels ``c`` of ``1 / n_c``.

    ``class_counts`` are the ``n_c`` (training clips labelled ``c``, from ``index.parquet``), ``shard_mass``
    the summed weight of the clips each shard of ``DatasetInfo.shards`` holds, in that order, ``clips``
    the number of clips and ``windows_per_clip`` the samples each stored (``data.train_windows``, or 1
    for whole segments): a stored window weighs its clip's share, ``w_i / windows_per_clip``.
    """

    class_counts: tuple[int, ...]
    shard_mass: tuple[float, ...]
    clips: int
    windows_per_clip: int = 1

    def weight(self, labels: Sequence[int]) -> float:
        """The weight of one stored sample with these labels."""
        return sum(1.0 / self.class_counts[c] for c in labels) / self.windows_per_clip

    @property
    def draws_per_weight(self) -> float:
        """``lambda``: windows drawn per unit of weight, so a pass draws about as many windows as it reads samples."""
        return self.clips * self.windows_per_clip / sum(self.shard_mass)


def class_balance(info: DatasetInfo) -> ClassBalance:
    """Read the dataset's ``index.parquet`` (its labels and shards) into the balanced sampler's weights."""
    shard = storage.locate(info.shards[0])  # shards lie in <root>/shards/, and their URIs reach the store
    index = posixpath.join(posixpath.dirname(posixpath.dirname(shard.path)), "index.parquet")
    table = pq.read_table(io.BytesIO(storage.read_bytes(shard.fs, index)), columns=["shard", "labels"])
    per_clip = int(info.recipe.get("train_windows") or 1)  # every clip stores as many windows
    labels = table.column("labels").combine_chunks()
    flat = labels.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(len(labels)), labels.value_lengths().to_numpy(zero_copy_only=False))
    counts = np.bincount(flat, minlength=len(info.classes)) // per_clip  # clips, not stored windows
    weights = np.bincount(row, weights=1.0 / counts[flat], minlength=len(labels)) / per_clip
    position = {posixpath.basename(storage.locate(p).path): i for i, p in enumerate(info.shards)}
    try:
        in_shard = np.array([position[name] for name in table.column("shard").to_pylist()], dtype=np.int64)
    except KeyError as err:
        raise ValueError(f"{info.root}: index.parquet lists shard {err.args[0]}, which dataset.json does not") from None
    mass = np.bincount(in_shard, weights=weights, minlength=len(info.shards))
    return ClassBalance(tuple(int(n) for n in counts), tuple(float(m) for m in mass), len(labels) // per_clip, per_clip)


def rank_shards(paths: Sequence[str], seed: int, epoch: int, rank: int, world: int,
                mass: Sequence[float] | None = None) -> list[str]:
    """The shards reader ``rank`` of ``world`` owns in ``epoch``: ``perm_e[rank::world]``, or with ``mass``
    (the balanced sampler) groups of near-equal weight: heaviest shard first (ties in ``perm_e``'s order),
    each to the lightest reader so far. A reader left without a shard shares one."""
    order = np.random.default_rng([seed, epoch]).permutation(len(paths))
    if mass is None:
        mine = order[rank::world] if len(paths) >= world else order[[rank % len(paths)]]
        return [paths[i] for i in mine]
    groups: list[list[str]] = [[] for _ in range(world)]
    loads = [(0.0, r) for r in range(world)]
    for i in sorted(order, key=lambda i: -mass[i]):
        load, r = heapq.heappop(loads)
        groups[r].append(paths[i])
        heapq.heappush(loads, (load + mass[i], r))
    return groups[rank] or groups[rank % len(paths)]  # readers 0..n-1 took one shard each


class TrainStream(IterableDataset):
    """The batches of one epoch on one rank: exactly ``steps`` of them, starting at ``skip``.

    With ``loader_workers`` K > 0 the rank's stream is K sub-streams, one per DataLoader worker,
    each reading its own shards (``rank_shards`` over world x K readers): the rank's batch ``b``
    is sub-stream ``b % K``'s batch ``b // K``. The DataLoader takes one batch from each worker in
    turn, and worker ``w`` serves sub-stream ``(w + skip) % K``, so the order is the same with or
    without a skip. Order is a function of (seed, epoch, rank, K): keep K when resuming. ``balance``
    (``class_balance``) draws by class weight (the module docstring); None reads each clip once per pass.
    """

    def __init__(self, info: DatasetInfo, modalities: Sequence[Modality], *, batch_size: int, seed: int, epoch: int,
                 rank: int, world: int, steps: int, skip: int = 0, shuffle_buffer: int = 64, loader_workers: int = 0,
                 balance: ClassBalance | None = None):
        super().__init__()
        self.info, self.modalities, self.batch_size = info, tuple(modalities), batch_size
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world
        self.steps, self.skip, self.shuffle_buffer = steps, skip, shuffle_buffer
        self.subs = max(1, loader_workers)
        self.balance = balance

    def _cuts(self, sub: int, stats: shards.ReadStats) -> Iterator[Cut]:
        """One sub-stream's windows forever, shuffled through a seeded buffer of cut windows (not clips)."""
        reader, readers = self.rank * self.subs + sub, self.world * self.subs
        rng = np.random.default_rng([self.seed, self.epoch, reader, readers])
        balance = self.balance
        mine = rank_shards(self.info.shards, self.seed, self.epoch, reader, readers,
                           mass=balance.shard_mass if balance else None)
        buffer: list[Cut] = []
        for cycle in range(1 << 30):
            order = rng.permutation(len(mine)) if cycle else range(len(mine))
            read = 0
            for sample in shards.iter_samples([mine[i] for i in order], decode_frames=False, stats=stats):
                read += 1
                # Uniform draws nothing here, so its stream stays what it was before samplers existed.
                copies = 1 if balance is None else int(
                    rng.poisson(balance.draws_per_weight * balance.weight(sample.meta["labels"])))
                for _ in range(copies):
                    buffer.append(cut(sample, self.modalities, window_starts(sample.meta, self.modalities, 1, rng)[0]))
                    if len(buffer) >= self.shuffle_buffer:
                        yield buffer.pop(int(rng.integers(len(buffer))))
            if not read:
                raise RuntimeError(f"rank {self.rank}: no readable sample in its shards {mine}")

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        sub = ((worker.id if worker else 0) + self.skip) % self.subs
        batch_index = sub  # the rank-level index of this sub-stream's next batch
        stats = shards.ReadStats()
        pending: list[Cut] = []
        for window in self._cuts(sub, stats):
            pending.append(window)
            if len(pending) < self.batch_size:
                continue
            if batch_index >= self.steps:
                return
            # Skips read since this sub-stream's previous batch go with this one; a skipped batch's
            # belong to steps a resumed run has recorded already.
            read, cuts, pending = stats.take(), pending, []
            if batch_index >= self.skip:  # skipped batches are read, never collated
                batch = dataclasses.replace(collate(cuts, self.modalities, len(self.info.classes)), read=read)
                # Neither the cut windows nor a batch handed on stay referenced here while the next one is built.
                del cuts
                yield batch
                del batch
            batch_index += self.subs


def train_batches(stream: TrainStream) -> Iterator[Batch]:
    if stream.subs == 1:
        return iter(stream)
    # Batches in flight: subs x prefetch_factor. With 4 or more processes one each already leaves subs - 1
    # batches ready while one is built, and each more would hold another batch of every process in memory.
    return iter(DataLoader(stream, batch_size=None, num_workers=stream.subs, pin_memory=torch.cuda.is_available(),
                           prefetch_factor=1 if stream.subs >= 4 else 2, multiprocessing_context="forkserver",
                           persistent_workers=False))


def eval_batches(info: DatasetInfo, modalities: Sequence[Modality], *, batch_size: int, crops: int,
                 stats: shards.ReadStats | None = None) -> Iterator[Batch]:
    """Every sample once, in shard order, with ``crops`` evenly spaced windows each."""
    samples = shards.iter_samples(info.shards, decode_frames=False, stats=stats)
    while pending := list(itertools.islice(samples, batch_size)):
        yield assemble(pending, [window_starts(s.meta, modalities, crops, None) for s in pending], modalities,
                       len(info.classes))
        del pending  # not held while the next batch is read
