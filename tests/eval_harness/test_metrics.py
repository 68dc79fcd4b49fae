"""The GLUE metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from eval_harness.metrics import METRICS


def test_accuracy_and_f1_by_hand() -> None:
    predictions = [1, 1, 0, 0, 1, 0]
    labels = [1, 0, 0, 1, 1, 0]
    # tp = 2, fp = 1, fn = 1, tn = 2
    assert METRICS["accuracy"](predictions, labels) == pytest.approx(4 / 6)
    assert METRICS["f1"](predictions, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_matthews_by_hand() -> None:
    predictions = [1, 1, 1, 0, 0, 1, 0, 0]
    labels = [1, 1, 0, 0, 0, 1, 1, 0]
    tp, tn, fp, fn = 3, 3, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert METRICS["matthews"](predictions, labels) == pytest.approx(expected)
    assert METRICS["matthews"]([1, 1, 1], [0, 1, 0]) == 0.0  # constant predictions


def test_pearson_spearman_by_hand() -> None:
    predictions = [1.0, 2.0, 3.0, 4.0]
    labels = [1.0, 3.0, 2.0, 5.0]
    mx, my = 2.5, 2.75
    cov = sum((x - mx) * (y - my) for x, y in zip(predictions, labels))
    expected = cov / math.sqrt(sum((x - mx) ** 2 for x in predictions) * sum((y - my) ** 2 for y in labels))
    assert METRICS["pearson"](predictions, labels) == pytest.approx(expected)
    # ranks 1 2 3 4 vs 1 3 2 4: d^2 = 0 + 1 + 1 + 0 -> 1 - 6 * 2 / (4 * 15)
    assert METRICS["spearman"](predictions, labels) == pytest.approx(1 - 6 * 2 / 60)
    assert METRICS["pearson_spearman_mean"](predictions, labels) == pytest.approx((expected + 0.8) / 2)


def test_correlation_of_a_constant_side_is_zero_not_nan() -> None:
    assert METRICS["pearson"]([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) == 0.0
    assert METRICS["spearman"]([0.0, 1.0, 2.0], [3.0, 3.0, 3.0]) == 0.0
