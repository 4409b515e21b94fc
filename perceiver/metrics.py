"""Multi-label evaluation metrics for AudioSet-style classification.

All averages are macro averages over classes, each class scored over the
examples (one column of the ``(N, C)`` score matrix at a time). The
Perceiver v1 paper's reported AudioSet mAP was computed on the transposed
matrix (per example, over classes); this module pins the per-class orientation
so numbers are comparable with the rest of the AudioSet literature.
"""

from __future__ import annotations

import math
from typing import TypedDict

import numpy as np
import torch


class MultilabelMetrics(TypedDict):
    """What :func:`multilabel_metrics` returns."""

    mAP: float  # mean per-class AP over classes with >= 1 positive; nan if there are none
    mean_auc: float  # mean per-class ROC-AUC over classes with positives and negatives; nan if none
    d_prime: float  # sqrt(2) * Phi^-1(mean_auc); +inf at AUC 1, nan when mean_auc is nan
    per_class_ap: list[float | None]  # None for classes without positives
    num_classes_scored: int  # classes that entered mAP
    num_examples: int


def d_prime(auc: float) -> float:
    """Sensitivity index of a ROC-AUC, assuming equal-variance Gaussian score distributions."""
    return math.sqrt(2.0) * float(torch.special.ndtri(torch.tensor(auc, dtype=torch.float64)))


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray) -> MultilabelMetrics:
    """Macro-averaged AP, ROC-AUC and d-prime of ``(N, C)`` scores against ``(N, C)`` 0/1 targets.

    Each class is scored over the ``N`` examples. A class with no positive has
    no defined AP (sklearn would warn and return 0, dragging the mean down for
    an absent class), so it is left out of ``mAP`` and reported as ``None``.
    ROC-AUC additionally needs a negative, so ``mean_auc`` averages only the
    classes that have both.
    """
    # Imported here: scikit-learn takes about a second to import, which every Ray Train worker and job
    # driver would pay at start-up although only evaluation scores.
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be (N, C); got {scores.shape} and {targets.shape}"
        )
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must contain only 0 and 1")
    targets = targets.astype(np.int64)

    positives = targets.sum(axis=0)
    has_pos = positives > 0
    has_both = has_pos & (positives < targets.shape[0])

    per_class_ap: list[float | None] = [None] * targets.shape[1]
    if has_pos.any():
        # sklearn treats each column of a multilabel indicator matrix as one class.
        ap = np.atleast_1d(average_precision_score(targets[:, has_pos], scores[:, has_pos], average=None))
        for c, value in zip(np.flatnonzero(has_pos), ap, strict=True):
            per_class_ap[c] = float(value)
        m_ap = float(ap.mean())
    else:
        m_ap = math.nan

    mean_auc = (float(np.mean(roc_auc_score(targets[:, has_both], scores[:, has_both], average=None)))
                if has_both.any() else math.nan)

    return MultilabelMetrics(
        mAP=m_ap,
        mean_auc=mean_auc,
        d_prime=d_prime(mean_auc),
        per_class_ap=per_class_ap,
        num_classes_scored=int(has_pos.sum()),
        num_examples=int(targets.shape[0]),
    )
