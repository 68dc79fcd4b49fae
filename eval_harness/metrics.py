"""Corpus-level metrics of the GLUE tasks: each is `fn(predictions, labels) -> float`.

Computed with scikit-learn and SciPy (the `evaluate` package fetches its metrics from the Hub, which
fails offline). The report recomputes them on every bootstrap resample, so each takes plain sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    """Fraction of predictions equal to their label (SST-2, QNLI, RTE, MNLI; also MRPC/QQP)."""
    return float(accuracy_score(labels, predictions))


def f1(predictions: Sequence, labels: Sequence) -> float:
    """F1 of the positive class 1 (MRPC, QQP: 'paraphrase' / 'duplicate')."""
    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def matthews(predictions: Sequence, labels: Sequence) -> float:
    """Matthews correlation coefficient (CoLA); 0 when a side is constant."""
    return float(matthews_corrcoef(labels, predictions))


def _correlation(kind: Callable, predictions: Sequence, labels: Sequence) -> float:
    """A correlation that is 0, not NaN, when one side is constant (e.g. a resample of equal labels)."""
    x = np.asarray(predictions, dtype=float)
    y = np.asarray(labels, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(kind(x, y)[0])


def pearson(predictions: Sequence, labels: Sequence) -> float:
    """Pearson correlation of predicted and gold similarity scores (STS-B)."""
    return _correlation(stats.pearsonr, predictions, labels)


def spearman(predictions: Sequence, labels: Sequence) -> float:
    """Spearman rank correlation of predicted and gold similarity scores (STS-B)."""
    return _correlation(stats.spearmanr, predictions, labels)


def pearson_spearman_mean(predictions: Sequence, labels: Sequence) -> float:
    """Mean of Pearson and Spearman (the single STS-B number of the GLUE leaderboard)."""
    return (pearson(predictions, labels) + spearman(predictions, labels)) / 2


METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
    "pearson_spearman_mean": pearson_spearman_mean,
}
