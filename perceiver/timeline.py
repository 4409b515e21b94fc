"""A long media file scored window by window, from a bounded stream of decoded chunks.

The file is never held whole. Chunks of ``data.segment_seconds`` are decoded one after the other,
each from its own start, by the stages preprocessing uses (``decode_at_recipe(..., start=t)``,
``clip_sample``); the windows a chunk holds are cut and scored on the evaluation path
(``perceiver.loader.assemble``: a window without some modality has it zeroed and flagged absent,
one that runs past its real content is masked), at most ``batch_size`` at a time. Only the
per-window scores and a coarse spectrogram of the sound outlive a chunk, so memory is one chunk
and one batch whatever the file's length (the kept rows take about 4 bytes per class per window,
and the spectrogram at most 1 MB).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perceiver.classifier import AVClassifier
from perceiver.clips import check_usable, clip_scores, file_sample
from perceiver.loader import assemble
from pipeline.audio import AudioRecipe, log_mel
from pipeline.decode import DecodeError, decode_at_recipe, probe
from pipeline.modality import Modality
from pipeline.recipe import DataConfig

# The spectrogram drawn under a timeline: 64 mel bands of 50 ms frames, averaged into at most 4096
# columns (no picture shows more), so it stays small however long the file. It shows where the sound
# changes, not what the model saw (its own log-mel, if it has one, can be much finer).
SPECTROGRAM_FRAME_S = 0.05
SPECTROGRAM_MELS = 64
SPECTROGRAM_COLUMNS = 4096


@dataclass(frozen=True)
class Plan:
    """Where a file's windows start and which decoded chunk holds each.

    Window ``k`` starts at ``k * hop_s``; a chunk is decoded from the first window it holds and holds
    the ``per_chunk`` windows that end within ``data.segment_seconds`` of its start.
    """

    path: str
    duration_s: float  # the container's stated length
    window_s: float
    hop_s: float
    windows: int
    per_chunk: int

    def chunks(self) -> Iterator[tuple[float, list[float]]]:
        """(chunk start, its windows' starts from the chunk's start), seconds."""
        for first in range(0, self.windows, self.per_chunk):
            count = min(self.per_chunk, self.windows - first)
            yield first * self.hop_s, [k * self.hop_s for k in range(count)]


def plan(path: str | Path, data: DataConfig, modalities: Sequence[Modality], *, hop_s: float | None = None) -> Plan:
    """The windows of ``path``, one every ``hop_s`` seconds (None: one window length) while a whole
    window fits in the file; a file shorter than a window gets one, padded and masked.

    Starts lie on the coarsest modality's grid (the loader's rule), so ``hop_s`` is rounded to a
    whole number of its steps (1 / fps for video). Raises DecodeError for a file PyAV cannot open,
    or whose container states no duration.
    """
    if hop_s is not None and hop_s <= 0:
        raise ValueError(f"hop_s must be > 0, got {hop_s}")
    info = probe(path)
    if info.duration is None:
        raise DecodeError(path, "no_duration", "its container states no duration, so its windows cannot be planned")
    step = max(m.step_s for m in modalities)
    window = round(modalities[0].window_s / step)  # in steps, as every length below
    hop = max(1, round((hop_s or modalities[0].window_s) / step))
    chunk = math.floor(data.segment_seconds / step + 1e-6)
    windows = max(1, math.floor((info.duration / step + 1e-6 - window) / hop) + 1)
    return Plan(str(path), info.duration, window * step, hop * step, windows, (chunk - window) // hop + 1)


class Spectrogram:
    """The log-mel spectrogram of a file's sound, built from chunks decoded at any starts.

    Column ``k`` is seconds ``[k, k + 1) * hop_s`` of the file: ``pool`` FFT frames, each its own
    hop long, so frames never overlap and the samples of a column that two chunks share are carried
    from one to the next: a chunked build equals one of the whole waveform. Columns in a stretch no
    chunk covered (windows hopping over parts of the file) are NaN; ``duration_s`` bounds them.
    """

    def __init__(self, sample_rate: int, duration_s: float, *, frame_s: float = SPECTROGRAM_FRAME_S,
                 n_mels: int = SPECTROGRAM_MELS, max_columns: int = SPECTROGRAM_COLUMNS) -> None:
        frame = max(1, round(frame_s * sample_rate))
        self.pool = max(1, math.ceil(duration_s * sample_rate / (frame * max_columns) - 1e-9))
        self.size = frame * self.pool  # samples per column
        self.hop_s = self.size / sample_rate
        self.columns = max(1, math.floor(duration_s * sample_rate / self.size + 1e-6))  # a last part-column: none
        self.recipe = AudioRecipe(sample_rate=sample_rate, n_mels=n_mels, n_fft=frame, hop_length=frame)
        self.parts: list[np.ndarray] = []
        self.done = 0  # columns filled so far
        self.pending = np.zeros(0, np.float32)  # the samples from column ``done`` on: less than a column

    def add(self, wave: np.ndarray, start_s: float) -> None:
        """Take ``wave`` (S,) float mono, sampled from ``start_s`` seconds of the file."""
        if self.done == self.columns:  # a chunk past the file's end
            return
        first = round(start_s * self.recipe.sample_rate)
        held = self.done * self.size + len(self.pending)  # the first sample not yet taken
        if first > held:  # a gap: the columns it touches stay NaN
            self._fill_to(min(self.columns, -(-first // self.size)))
            if self.done == self.columns:
                self.pending = self.pending[:0]
                return
            self.pending = wave[self.done * self.size - first:]
        else:
            self.pending = np.concatenate([self.pending, wave[held - first:]])
        full = min(len(self.pending) // self.size, self.columns - self.done)
        if full > 0:
            frames = log_mel(self.pending[:full * self.size], self.recipe)  # (full * pool, n_mels)
            self.parts.append(frames.reshape(full, self.pool, -1).mean(axis=1))
            self.done += full
        # A copy: the rest of the chunk it came from is freed.
        self.pending = self.pending[full * self.size:].copy() if self.done < self.columns else self.pending[:0]

    def _fill_to(self, column: int) -> None:
        if column > self.done:
            self.parts.append(np.full((column - self.done, self.recipe.n_mels), np.nan, np.float32))
            self.done = column

    def image(self) -> np.ndarray:
        """(columns, n_mels) float32 natural-log mel power, NaN where nothing was decoded."""
        self._fill_to(self.columns)
        return np.concatenate(self.parts)


@dataclass
class Timeline:
    """A file's per-window scores."""

    plan: Plan
    starts: np.ndarray  # (W,) float64 window starts, seconds; W < plan.windows when decoding ended early
    scores: np.ndarray  # (W, C) float32 sigmoid scores of each window alone
    present: dict[str, np.ndarray]  # per modality (W,) bool: the window held some of it (else zeroed)
    absent: list[str]  # the modalities the file has no stream for
    spectrogram: np.ndarray | None  # (T, n_mels) from Spectrogram.image; None: no sound (in the file, or used)
    spectrogram_hop_s: float
    end_s: float | None  # where a chunk had nothing to decode, before the stated duration; None: none did


@torch.no_grad()
def score(model: AVClassifier, plan: Plan, data: DataConfig, *, num_classes: int, batch_size: int,
          device: torch.device, progress: Callable[[int], object] | None = None) -> Timeline:
    """Score every window of ``plan`` with ``model`` (in eval mode), one decoded chunk at a time.

    ``progress(n)`` is called as each ``n`` windows are scored. A chunk with nothing to decode ends
    the timeline there (a file cut short of the length its container states); any other DecodeError,
    or a file with none of the model's modalities (``no_usable_stream``), is raised.
    """
    modalities = model.modalities
    starts: list[float] = []
    scores: list[np.ndarray] = []
    present: dict[str, list[np.ndarray]] = {m.name: [] for m in modalities}
    absent: list[str] = []
    sound: Spectrogram | None = None
    end_s = None
    for chunk_start, offsets in plan.chunks():
        try:
            clip = decode_at_recipe(plan.path, data, modalities, start=chunk_start)
        except DecodeError as err:
            if err.reason != "empty" or not starts:
                raise
            end_s = chunk_start
            break
        sample = file_sample(plan.path, clip, modalities)
        if not starts:
            absent = check_usable(sample, modalities)
            if clip.audio is not None and clip.has_audio:  # the sound some modality is made of, if the file has it
                sound = Spectrogram(data.audio.sample_rate, plan.duration_s)
        if sound is not None:
            sound.add(clip.audio, chunk_start)
        for at in range(0, len(offsets), batch_size):
            group = offsets[at:at + batch_size]
            # Each window its own one-crop clip: scores per window, not averaged.
            batch = assemble([sample] * len(group), [[o] for o in group], modalities, num_classes).to(device)
            scores.append(clip_scores(model, batch))
            for name, flags in batch.present.items():
                present[name].append(flags.cpu().numpy())
            starts += [chunk_start + o for o in group]
            if progress is not None:
                progress(len(group))
    return Timeline(plan, np.asarray(starts), np.concatenate(scores),
                    {name: np.concatenate(flags) for name, flags in present.items()}, absent,
                    sound.image() if sound is not None else None,
                    sound.hop_s if sound is not None else SPECTROGRAM_FRAME_S, end_s)
