"""One clip -> a model Batch -> scores or cross-attention maps: the library of the predict and visualize jobs.

A media file goes through the very decode and modality stages preprocessing uses
(``pipeline.decode.decode_at_recipe``, ``pipeline.modality.clip_sample``), so the model sees the
same values whether a clip came from a shard or straight from disk; windows are then cut and
batched by ``perceiver.loader``'s evaluation path (evenly spaced crops). ``perceiver.timeline``
builds a long file's chunks with the same ``file_sample``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from perceiver.classifier import AVClassifier
from perceiver.evaluation import clip_probabilities
from perceiver.loader import Batch, assemble, window_starts
from pipeline import shards
from pipeline.decode import DecodedClip, DecodeError, decode_at_recipe
from pipeline.modality import Modality, ModalitySpec, clip_sample
from pipeline.recipe import DataConfig

LATENT_CHOICES = ("mean", "peaked")  # how attention_grids reduces the latent axis


# ---------------------------------------------------------------- clip -> batch


def file_sample(path: str | Path, clip: DecodedClip, modalities: Sequence[Modality]) -> shards.Sample:
    """A decoded stretch of a media file as the sample preprocessing would store for it.

    ``meta`` holds no dataset fields (source, labels): nothing of a file outside a dataset.
    """
    return clip_sample(Path(path).name, clip, modalities, {"labels": []})


def read_clip(path: str | Path, data: DataConfig, modalities: Sequence[Modality]) -> shards.Sample:
    """Decode a media file into the sample preprocessing would store for it.

    Like preprocessing of a trimmed file, the first ``data.segment_seconds`` are decoded; a shorter
    file is zero-padded and its true lengths recorded. Raises ``DecodeError`` for a file that
    cannot be decoded.
    """
    return file_sample(path, decode_at_recipe(path, data, modalities), modalities)


def read_stored_sample(shard_paths: Sequence[str], key: str) -> shards.Sample:
    """The sample ``key`` from a dataset's shards (JPEG frames left encoded: only its window is decoded).

    Raises KeyError naming the key when no shard holds it.
    """
    for sample in shards.iter_samples(shard_paths, decode_frames=False):
        if sample.key == key:
            return sample
    raise KeyError(f"no sample with key {key!r} in {len(shard_paths)} shard(s)")


def clip_batch(sample: shards.Sample, modalities: Sequence[Modality], crops: int, num_classes: int) -> Batch:
    """``crops`` evenly spaced windows of one sample (the middle one when ``crops`` is 1), as a Batch."""
    return assemble([sample], [window_starts(sample.meta, modalities, crops, None)], modalities, num_classes)


def absent_modalities(sample: shards.Sample, modalities: Sequence[Modality]) -> list[str]:
    """Names of those of ``modalities`` the sample has no stream for (the model sees them zeroed)."""
    return [m.name for m in modalities if not sample.meta[f"has_{m.name}"]]


def check_usable(sample: shards.Sample, modalities: Sequence[Modality]) -> list[str]:
    """``absent_modalities``, or DecodeError ``no_usable_stream`` when that is all of them: zeros are no prediction."""
    absent = absent_modalities(sample, modalities)
    if len(absent) == len(modalities):
        raise DecodeError(sample.key, "no_usable_stream", f"no {' or '.join(absent)} stream, and the model uses no other")
    return absent


@torch.no_grad()
def clip_scores(model: AVClassifier, batch: Batch) -> np.ndarray:
    """Sigmoid scores (clips, classes), averaged over each clip's crops as evaluation does."""
    return clip_probabilities(model(batch), len(batch), batch.crops).cpu().numpy()


# ---------------------------------------------------------------- attention maps


def pool_attention(weights: Tensor, latent: str = "mean") -> Tensor:
    """One window's cross-attention (heads, N, M) -> (M,), a distribution over the input tokens.

    Heads are averaged; then ``"mean"`` averages the latents and ``"peaked"`` keeps the latent of
    lowest entropy. Each latent's row is a softmax, so both results still sum to 1.
    """
    if latent not in LATENT_CHOICES:
        raise ValueError(f"latent must be one of {LATENT_CHOICES}, got {latent!r}")
    per_latent = weights.float().mean(dim=0)  # (N, M)
    if latent == "mean":
        return per_latent.mean(dim=0)
    entropy = -(per_latent * per_latent.clamp_min(1e-12).log()).sum(dim=-1)
    return per_latent[entropy.argmin()]


def split_tokens(values: Tensor, specs: Sequence[ModalitySpec]) -> dict[str, np.ndarray]:
    """(M,) per-token values -> per modality an array on its patch grid.

    ``specs`` must be in the model's concatenation order (``model.inputs.specs``); tokens within a
    modality are row-major on its grid, as ``fourier_features`` and the patchify functions lay them out.
    """
    sizes = [s.num_tokens for s in specs]
    if values.shape != (sum(sizes),):
        raise ValueError(f"expected ({sum(sizes)},) values for {[s.name for s in specs]}, got {tuple(values.shape)}")
    parts = values.detach().cpu().split(sizes)
    return {s.name: part.reshape(s.grid).numpy() for s, part in zip(specs, parts, strict=True)}


@torch.no_grad()
def attention_grids(model: AVClassifier, batch: Batch, latent: str = "mean") -> list[dict[str, np.ndarray]]:
    """Per cross-attend, per modality: the batch's first window's attention on that modality's grid.

    Values are shares of the whole input's attention (all grids together sum to 1), so the split
    between modalities stays visible.
    """
    _, maps = model(batch, return_attention=True)
    return [split_tokens(pool_attention(m[0], latent), model.inputs.specs) for m in maps]
