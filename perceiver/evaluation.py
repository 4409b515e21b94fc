"""Evaluation: multi-crop scores per clip, with both modalities and with each alone.

A modality left out is zeroed exactly as video dropout and missing streams are in training, so
audio-only and video-only evaluation ask the model what it was trained to answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from perceiver.classifier import AVClassifier
from perceiver.loader import DatasetInfo, eval_batches
from perceiver.metrics import multilabel_metrics
from pipeline.shards import ReadStats

MODALITY_SETS = {"audio+video": ("audio", "video"), "audio": ("audio",), "video": ("video",)}


@torch.no_grad()
def score(model: AVClassifier, info: DatasetInfo, batch_size: int, crops: int, device: torch.device,
          modality_sets: Sequence[str] = tuple(MODALITY_SETS), autocast_dtype: torch.dtype | None = None,
          ) -> tuple[dict[str, np.ndarray], np.ndarray, ReadStats]:
    """Sigmoid scores (N, C) per modality set, averaged over ``crops`` windows, and targets (N, C)."""
    was_training = model.training
    model.eval()
    scores: dict[str, list[np.ndarray]] = {name: [] for name in modality_sets}
    targets, stats = [], ReadStats()
    for batch in eval_batches(info, model.data, batch_size, crops, stats):
        batch = batch.to(device)
        for name in modality_sets:
            keep = MODALITY_SETS[name]
            present = {m: getattr(batch, f"has_{m}") & (m in keep) for m in ("audio", "video")}
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(batch, present=present).float()
            probs = torch.sigmoid(logits).view(len(batch), batch.crops, -1).mean(dim=1)
            scores[name].append(probs.cpu().numpy())
        targets.append(batch.labels.view(len(batch), batch.crops, -1)[:, 0].cpu().numpy())
    model.train(was_training)
    if not targets:
        raise RuntimeError(f"{info.root}: no readable evaluation sample")
    return {k: np.concatenate(v) for k, v in scores.items()}, np.concatenate(targets), stats


def evaluate(model: AVClassifier, info: DatasetInfo, batch_size: int, crops: int, device: torch.device,
             modality_sets: Sequence[str] = tuple(MODALITY_SETS), autocast_dtype: torch.dtype | None = None) -> dict:
    """{modality set: mAP, mean_auc, d_prime, per_class_ap, ...} plus the number of clips scored."""
    scores, targets, stats = score(model, info, batch_size, crops, device, modality_sets, autocast_dtype)
    result = {name: dict(multilabel_metrics(s, targets)) for name, s in scores.items()}
    result["num_clips"] = int(targets.shape[0])
    result["skipped"] = {"bad_shards": len(stats.bad_shards), "incomplete_samples": len(stats.incomplete_samples)}
    return result
