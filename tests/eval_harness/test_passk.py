"""pass@k against the definition 1 - C(n-c, k)/C(n, k), computed exactly with fractions."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from eval_harness.passk import mean_pass_at_k, pass_at_k


def _exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20])
def test_matches_the_binomial_definition_for_every_c_and_k(n: int) -> None:
    for c, k in itertools.product(range(n + 1), range(1, n + 1)):
        assert pass_at_k(n, c, k) == pytest.approx(float(_exact(n, c, k)), abs=1e-12), (n, c, k)


def test_matches_enumeration_of_all_k_subsets() -> None:
    """The estimator is the fraction of k-subsets of the n samples that contain a passing one."""
    samples = [True, False, False, True, False, False, False]
    n, c = len(samples), sum(samples)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_large_n_is_stable_where_the_naive_ratio_overflows() -> None:
    n, c, k = 2000, 3, 1000
    with pytest.raises(OverflowError):
        float(math.comb(n - c, k)) / float(math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(_exact(n, c, k)), rel=1e-12)


def test_special_cases() -> None:
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 6, 5) == 1.0  # fewer than k failures: every k-subset holds a pass


def test_mean_over_tasks_and_bad_arguments() -> None:
    assert mean_pass_at_k([(2, 1), (2, 0), (2, 2)], [1, 2]) == pytest.approx({"pass@1": 0.5, "pass@2": 2 / 3})
    with pytest.raises(ValueError, match="k=3"):
        pass_at_k(2, 1, 3)
    with pytest.raises(ValueError, match="c=3"):
        pass_at_k(2, 3, 1)
    with pytest.raises(ValueError, match="at least one task"):
        mean_pass_at_k([], [1])
