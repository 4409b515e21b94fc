import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from perceiver.metrics import d_prime, multilabel_metrics


def test_perfect_scores() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((50, 6)) < 0.3).astype(int)
    targets[0] = 1  # every class gets a positive
    targets[1] = 0  # and a negative
    result = multilabel_metrics(targets.astype(float), targets)
    assert result["mAP"] == pytest.approx(1.0)
    assert result["mean_auc"] == pytest.approx(1.0)
    assert result["d_prime"] == math.inf
    assert result["num_classes_scored"] == 6
    assert result["num_examples"] == 50


def test_random_scores_are_at_chance() -> None:
    rng = np.random.default_rng(1)
    rate = 0.2
    targets = (rng.random((2000, 10)) < rate).astype(int)
    result = multilabel_metrics(rng.random((2000, 10)), targets)
    assert result["mAP"] == pytest.approx(rate, abs=0.04)
    assert result["mean_auc"] == pytest.approx(0.5, abs=0.03)
    assert abs(result["d_prime"]) < 0.15


def test_hand_computed_example() -> None:
    scores = np.array([[0.9, 0.2], [0.8, 0.7], [0.3, 0.6], [0.1, 0.4]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    result = multilabel_metrics(scores, targets)
    # Class 0 ranks pos, neg, pos, neg: AP = (1/1 + 2/3) / 2; 3 of 4 pos/neg pairs ordered.
    # Class 1 ranks its only positive first: AP = AUC = 1.
    assert result["per_class_ap"] == pytest.approx([5 / 6, 1.0])
    assert result["mAP"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert result["mean_auc"] == pytest.approx((0.75 + 1.0) / 2)
    assert result["d_prime"] == pytest.approx(math.sqrt(2) * 1.1503493803760079)


def test_classes_without_positives_are_excluded() -> None:
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.7, 0.1], [0.3, 0.6, 0.4], [0.1, 0.4, 0.3]])
    targets = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    result = multilabel_metrics(scores, targets)
    assert result["per_class_ap"][1] is None
    assert result["num_classes_scored"] == 2
    # Class 2 is all positives: AP 1, but no ROC-AUC, so mean_auc is class 0's alone.
    assert result["mAP"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert result["mean_auc"] == pytest.approx(0.75)


def test_no_positives_anywhere_gives_nan() -> None:
    result = multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 2), dtype=int))
    assert math.isnan(result["mAP"]) and math.isnan(result["mean_auc"]) and math.isnan(result["d_prime"])
    assert result["per_class_ap"] == [None, None]


def test_orientation_is_per_class_not_transposed() -> None:
    # 4 examples x 3 classes. Each class ranks its own positives first over the examples
    # (per-class AP 1), but the classes live on different score ranges, so within an
    # example a positive of a low-range class ranks below negatives of a high-range one.
    scores = np.array([
        [0.9, 0.30, 0.00],
        [0.6, 0.50, 0.10],
        [0.7, 0.40, 0.20],
        [0.8, 0.45, 0.05],
    ])
    targets = np.array([
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
        [1, 1, 0],
    ])
    transposed = average_precision_score(targets.T, scores.T, average="macro")
    result = multilabel_metrics(scores, targets)
    assert result["mAP"] == pytest.approx(1.0)
    # Per example: 1, 1/2, 1/3 and (1 + 1) / 2.
    assert transposed == pytest.approx((1 + 1 / 2 + 1 / 3 + 1) / 4)


def test_d_prime_of_chance_is_zero() -> None:
    assert d_prime(0.5) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("scores", "targets"),
    [(np.zeros((3, 2)), np.zeros((2, 3))), (np.zeros(3), np.zeros(3)), (np.zeros((2, 2)), np.full((2, 2), 2))],
)
def test_rejects_bad_inputs(scores: np.ndarray, targets: np.ndarray) -> None:
    with pytest.raises(ValueError):
        multilabel_metrics(scores, targets)
