"""Evaluation: multi-crop scores per clip, with all modalities and with each alone.

A modality left out is zeroed exactly as video dropout and missing streams are in training, so
audio-only and video-only evaluation ask the model what it was trained to answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from perceiver.classifier import AVClassifier
from perceiver.loader import eval_batches
from perceiver.metrics import multilabel_metrics
from pipeline.dataset import DatasetInfo
from pipeline.shards import ReadStats


def modality_sets(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The sets evaluated: all modalities together (``"audio+video"``), then each alone when there are several."""
    sets = {"+".join(names): tuple(names)}
    if len(names) > 1:
        sets.update({name: (name,) for name in names})
    return sets


def clip_probabilities(logits: torch.Tensor, clips: int, crops: int) -> torch.Tensor:
    """Window logits (clips x crops, C), clip-major -> per-clip sigmoid scores (clips, C), crop-averaged."""
    return torch.sigmoid(logits.float()).view(clips, crops, -1).mean(dim=1)


@torch.no_grad()
def score(model: AVClassifier, info: DatasetInfo, *, batch_size: int, crops: int, device: torch.device,
          sets: Sequence[str] | None = None, autocast_dtype: torch.dtype | None = None,
          ) -> tuple[dict[str, np.ndarray], np.ndarray, ReadStats]:
    """Sigmoid scores (N, C) per modality set (default: all of ``modality_sets``), averaged over
    ``crops`` windows, and targets (N, C)."""
    was_training = model.training
    model.eval()
    names = [m.name for m in model.modalities]
    choices = modality_sets(names)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in sets or choices}
    targets, stats = [], ReadStats()
    for batch in eval_batches(info, model.modalities, batch_size=batch_size, crops=crops, stats=stats):
        logits: dict[str, list[torch.Tensor]] = {name: [] for name in scores}
        # At most batch_size windows are decoded and moved to the device at once: with 16 crops a batch
        # holds 16x the windows a training step does. Each chunk is decoded once, scored for every set.
        for start in range(0, batch.labels.shape[0], batch_size):
            part = batch.windows(start, start + batch_size).to(device)
            for name in scores:
                present = {m: part.present[m] & (m in choices[name]) for m in names}
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logits[name].append(model(part, present=present).float())
        for name in scores:
            scores[name].append(clip_probabilities(torch.cat(logits[name]), len(batch), batch.crops).cpu().numpy())
        targets.append(batch.labels.view(len(batch), batch.crops, -1)[:, 0].numpy())
    model.train(was_training)
    empty = np.zeros((0, len(info.classes)), np.float32)
    return ({k: np.concatenate(v) if v else empty for k, v in scores.items()},
            np.concatenate(targets) if targets else empty, stats)


def metrics(scores: dict[str, np.ndarray], targets: np.ndarray, stats: Sequence[ReadStats], root: str) -> dict:
    """{modality set: mAP, mean_auc, d_prime, per_class_ap, ...}, the clips scored and what was skipped."""
    if not len(targets):
        raise RuntimeError(f"{root}: no readable evaluation sample")
    result = {name: dict(multilabel_metrics(s, targets)) for name, s in scores.items()}
    result["num_clips"] = int(targets.shape[0])
    result["skipped"] = {"bad_shards": sum(len(s.bad_shards) for s in stats),
                         "incomplete_samples": sum(len(s.incomplete_samples) for s in stats)}
    return result


def evaluate(model: AVClassifier, info: DatasetInfo, *, batch_size: int, crops: int, device: torch.device,
             sets: Sequence[str] | None = None, autocast_dtype: torch.dtype | None = None) -> dict:
    """Score every clip of ``info`` in this process and compute the metrics."""
    scores, targets, stats = score(model, info, batch_size=batch_size, crops=crops, device=device, sets=sets,
                                   autocast_dtype=autocast_dtype)
    return metrics(scores, targets, [stats], info.root)
