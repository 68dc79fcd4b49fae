"""Bootstrap CIs and paired tests of eval_harness.report.stats on data whose truth is known."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

from eval_harness.report.stats import (
    BATCHED_METRICS,
    Sample,
    bootstrap_ci,
    mcnemar_exact,
    paired_test,
)
from tests.fixtures.report.synthetic import reference_metrics


def binary(rate: float, n: int, rng: np.random.Generator, prefix: str = "q") -> Sample:
    return Sample(tuple(f"{prefix}{i}" for i in range(n)), scores=(rng.random(n) < rate).astype(float))


@pytest.fixture
def stub_metrics(monkeypatch):
    """eval_harness.metrics with sklearn/scipy metrics, so these tests do not wait on that module."""
    module = types.ModuleType("eval_harness.metrics")
    module.METRICS = reference_metrics()
    monkeypatch.setitem(sys.modules, "eval_harness.metrics", module)
    return module.METRICS


def test_ci_contains_truth_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    large = bootstrap_ci([binary(0.6, 3000, rng) for _ in range(3)], None, n_resamples=400)
    small = bootstrap_ci([binary(0.6, 100, rng) for _ in range(3)], None, n_resamples=400)
    assert large.low < 0.6 < large.high
    assert large.low <= large.estimate <= large.high
    assert (large.high - large.low) < (small.high - small.low) / 3  # sqrt(30) ≈ 5.5 times narrower


def test_ci_coverage_is_near_95_percent():
    """Over many independent samples, the 95 % interval holds the true rate about 95 % of the time."""
    rng = np.random.default_rng(2)
    hits = 0
    for replicate in range(150):
        interval = bootstrap_ci([binary(0.3, 150, rng)], None, n_resamples=300, seed=replicate)
        hits += interval.low <= 0.3 <= interval.high
    assert 0.86 <= hits / 150 <= 0.995


def test_two_level_ci_widens_with_seed_to_seed_variation():
    """Seeds that disagree (0.4 / 0.5 / 0.6) must give a wider interval than seeds that agree."""
    rng = np.random.default_rng(3)
    agreeing = bootstrap_ci([binary(0.5, 2000, rng) for _ in range(3)], None, n_resamples=500)
    disagreeing = bootstrap_ci([binary(rate, 2000, rng) for rate in (0.4, 0.5, 0.6)], None, n_resamples=500)
    assert (disagreeing.high - disagreeing.low) > 2 * (agreeing.high - agreeing.low)
    assert disagreeing.low < 0.5 < disagreeing.high


def test_same_seed_gives_same_interval():
    rng = np.random.default_rng(4)
    samples = [binary(0.5, 300, rng) for _ in range(2)]
    assert bootstrap_ci(samples, None, seed=7) == bootstrap_ci(samples, None, seed=7)
    assert bootstrap_ci(samples, None, seed=7) != bootstrap_ci(samples, None, seed=8)


def test_paired_test_detects_a_real_difference():
    rng = np.random.default_rng(5)
    truth = rng.random(1500)
    base = Sample(tuple(f"q{i}" for i in range(1500)), scores=(truth < 0.60).astype(float))
    better = Sample(base.ids, scores=(truth < 0.68).astype(float))  # right wherever base is, and more
    test = paired_test([better], [base], None, n_resamples=1000)
    assert test.p_value < 0.01
    assert 0 < test.difference.low < 0.08 < test.difference.high
    assert test.mcnemar_p is not None and test.mcnemar_p < 1e-6
    assert test.discordant[1] == 0


def test_paired_test_keeps_its_size_under_the_null():
    """Two methods with the same accuracy: 'significant' in about 5 % of repeated experiments, not more."""
    rng = np.random.default_rng(6)
    rejections = 0
    for replicate in range(60):
        a, b = binary(0.5, 300, rng), binary(0.5, 300, rng)
        rejections += paired_test([a], [b], None, n_resamples=300, seed=replicate).p_value < 0.05
    assert rejections / 60 <= 0.15


def test_paired_test_pairs_items_by_id_not_position():
    rng = np.random.default_rng(7)
    base = binary(0.5, 400, rng)
    method = Sample(base.ids, scores=np.where(rng.random(400) < 0.8, base.scores, 1 - base.scores))
    order = rng.permutation(400)
    shuffled = method.subset(order)
    extra = Sample(shuffled.ids + ("only-here",), scores=np.append(shuffled.scores, 1.0))
    aligned, moved = paired_test([method], [base], None, seed=3), paired_test([extra], [base], None, seed=3)
    assert moved.n_pairs == aligned.n_pairs == 400
    assert moved.difference.estimate == pytest.approx(aligned.difference.estimate)
    assert moved.mcnemar_p == pytest.approx(aligned.mcnemar_p)


def test_seeds_pair_by_rank_and_a_single_baseline_run_pairs_with_every_seed():
    rng = np.random.default_rng(8)
    method = [binary(0.6, 200, rng) for _ in range(3)]
    assert paired_test(method, [binary(0.5, 200, rng) for _ in range(3)], None, n_resamples=200).n_seed_pairs == 3
    single = paired_test(method, [binary(0.5, 200, rng)], None, n_resamples=200)
    assert (single.n_seed_pairs, single.n_pairs) == (3, 600)


def test_paired_test_needs_shared_ids():
    rng = np.random.default_rng(9)
    with pytest.raises(ValueError, match="no item id"):
        paired_test([binary(0.5, 10, rng, "a")], [binary(0.5, 10, rng, "b")], None)


def test_mcnemar_exact_matches_the_binomial_formula():
    ids = tuple(str(i) for i in range(40))
    method = np.array([1.0] * 15 + [0.0] * 5 + [1.0] * 10 + [0.0] * 10)
    base = np.array([0.0] * 15 + [1.0] * 5 + [1.0] * 10 + [0.0] * 10)
    p_value, discordant = mcnemar_exact([(Sample(ids, scores=method), Sample(ids, scores=base))])
    expected = 2 * sum(math.comb(20, k) for k in range(15, 21)) / 2**20
    assert discordant == (15, 5)
    assert p_value == pytest.approx(expected)


@pytest.mark.parametrize("name", sorted(BATCHED_METRICS))
def test_batched_metrics_match_sklearn_and_scipy(name):
    rng = np.random.default_rng(10)
    reference = reference_metrics()[name]
    if name in ("pearson", "spearman", "pearson_spearman_mean"):
        gold = rng.uniform(0, 5, (4, 60)).round(1)  # ties, as in STS-B labels
        pred = gold + rng.normal(0, 1, gold.shape)
    else:
        gold = rng.integers(0, 3 if name == "matthews" else 2, (4, 60))
        pred = np.where(rng.random(gold.shape) < 0.7, gold, rng.integers(0, 2, gold.shape))
    batched = BATCHED_METRICS[name](pred, gold)
    assert batched == pytest.approx([reference(p.tolist(), g.tolist()) for p, g in zip(pred, gold)])


@pytest.mark.parametrize("name", sorted(BATCHED_METRICS))
def test_batched_metrics_match_the_project_metrics(name):
    metrics = pytest.importorskip("eval_harness.metrics").METRICS
    rng = np.random.default_rng(11)
    gold = rng.integers(0, 2, 80)
    pred = np.where(rng.random(80) < 0.75, gold, 1 - gold)
    if name in ("pearson", "spearman", "pearson_spearman_mean"):
        gold = rng.uniform(0, 5, 80)
        pred = gold + rng.normal(0, 1, 80)
    value = BATCHED_METRICS[name](pred[None, :], gold[None, :])[0]
    assert value == pytest.approx(metrics[name](pred.tolist(), gold.tolist()))
    constant = np.full_like(pred, pred[0])  # undefined correlations: both sides must agree on the value
    value = BATCHED_METRICS[name](constant[None, :], gold[None, :])[0]
    assert value == pytest.approx(metrics[name](constant.tolist(), gold.tolist()))


def test_corpus_ci_recomputes_f1_and_contains_the_population_value(stub_metrics):
    rng = np.random.default_rng(12)
    samples = []
    for _ in range(2):
        gold = rng.integers(0, 2, 3000)
        pred = np.where(rng.random(3000) < 0.8, gold, 1 - gold)
        samples.append(Sample(tuple(map(str, range(3000))), predictions=pred, labels=gold))
    interval = bootstrap_ci(samples, "f1", n_resamples=300)
    assert interval.low < 0.8 < interval.high  # balanced classes, 80 % right: F1 = 0.8 in the population
    assert interval.estimate == pytest.approx(np.mean([stub_metrics["f1"](s.predictions, s.labels) for s in samples]))


def test_metric_disagreeing_with_the_batched_version_is_resampled_with_metrics(monkeypatch, caplog):
    """METRICS is the definition: when its f1 is not the batched one (here macro F1), METRICS wins."""
    from sklearn.metrics import f1_score

    module = types.ModuleType("eval_harness.metrics")
    module.METRICS = {"f1": lambda p, g: float(f1_score(g, p, average="macro"))}
    monkeypatch.setitem(sys.modules, "eval_harness.metrics", module)
    rng = np.random.default_rng(13)
    gold = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.3, gold, 1 - gold)
    sample = Sample(tuple(map(str, range(200))), predictions=pred, labels=gold)
    interval = bootstrap_ci([sample], "f1", n_resamples=100)
    assert interval.estimate == pytest.approx(f1_score(gold, pred, average="macro"))
    assert interval.low <= interval.estimate <= interval.high
    assert "differs from METRICS" in caplog.text
