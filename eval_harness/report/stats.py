"""Bootstrap confidence intervals and paired significance tests over seeds and items.

A method's score on a benchmark is the mean over its seeds of the metric on that seed's items. Its
95 % confidence interval comes from a two-level bootstrap: resample the seeds, then the items within
each resampled seed, and recompute the metric (a corpus metric such as F1 on the resampled
predictions, a mean metric as the mean of the resampled item scores). Comparisons with a baseline
pair items by id (and seeds by their rank) and resample the pairs, so both sides see the same items.

Everything is vectorised over the resamples with numpy; corpus metrics named in
`eval_harness.metrics.METRICS` have batched numpy versions here that are checked against METRICS on
the full sample before use (a disagreement falls back to calling METRICS once per resample).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
MAX_INDICES_PER_CHUNK = 4_000_000


@dataclass(frozen=True)
class Sample:
    """One seed's results on one benchmark: item scores (mean metric) or predictions/labels (corpus)."""

    ids: tuple[str, ...]
    scores: np.ndarray | None = None
    predictions: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def is_corpus(self) -> bool:
        return self.scores is None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, order: np.ndarray) -> Sample:
        """The items at positions `order`, in that order."""
        ids = tuple(self.ids[i] for i in order)
        if self.is_corpus:
            return Sample(ids, predictions=self.predictions[order], labels=self.labels[order])
        return Sample(ids, scores=self.scores[order])


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "ci_low": self.low, "ci_high": self.high}


@dataclass(frozen=True)
class PairedTest:
    """Method minus baseline on paired items: the difference, its CI and p-values."""

    difference: Interval
    p_value: float
    test: str
    n_pairs: int
    n_seed_pairs: int
    mcnemar_p: float | None = None
    discordant: tuple[int, int] | None = None  # (method right & baseline wrong, the reverse)

    def as_dict(self) -> dict[str, object]:
        return {
            **{f"difference_{key}": value for key, value in self.difference.as_dict().items()},
            "p_value": self.p_value,
            "test": self.test,
            "n_item_pairs": self.n_pairs,
            "n_seed_pairs": self.n_seed_pairs,
            "mcnemar_p": self.mcnemar_p,
            "mcnemar_discordant": list(self.discordant) if self.discordant else None,
        }


# ---------------------------------------------------------------------------------------------
# Batched corpus metrics: rows are resamples.


def _batched_accuracy(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    return (pred == gold).mean(axis=1)


def _batched_f1(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Binary F1 of the positive class 1 (GLUE MRPC/QQP); 0 when there are no true positives."""
    tp = ((pred == 1) & (gold == 1)).sum(axis=1)
    fp = ((pred == 1) & (gold != 1)).sum(axis=1)
    fn = ((pred != 1) & (gold == 1)).sum(axis=1)
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)


def _batched_matthews(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Multiclass Matthews correlation (Gorodkin's R_K, as sklearn); 0 when undefined."""
    classes = np.unique(np.concatenate([np.unique(pred), np.unique(gold)]))
    n = pred.shape[1]
    correct = (pred == gold).sum(axis=1).astype(float)
    pred_counts = np.stack([(pred == c).sum(axis=1) for c in classes], axis=1).astype(float)
    gold_counts = np.stack([(gold == c).sum(axis=1) for c in classes], axis=1).astype(float)
    numerator = correct * n - (pred_counts * gold_counts).sum(axis=1)
    denominator = np.sqrt((n**2 - (pred_counts**2).sum(axis=1)) * (n**2 - (gold_counts**2).sum(axis=1)))
    return np.divide(numerator, denominator, out=np.zeros(len(correct)), where=denominator > 0)


def _batched_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x.astype(float) - x.mean(axis=1, keepdims=True)
    y = y.astype(float) - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    # 0 when one side is constant (a resample of equal labels), as METRICS defines it.
    return np.divide((x * y).sum(axis=1), denominator, out=np.zeros(len(x)), where=denominator > 0)


def _batched_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return _batched_pearson(rankdata(x, axis=1), rankdata(y, axis=1))


def _batched_pearson_spearman_mean(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (_batched_pearson(x, y) + _batched_spearman(x, y)) / 2


BATCHED_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "accuracy": _batched_accuracy,
    "f1": _batched_f1,
    "matthews": _batched_matthews,
    "pearson": _batched_pearson,
    "spearman": _batched_spearman,
    "pearson_spearman_mean": _batched_pearson_spearman_mean,
}


def corpus_metric(name: str) -> Callable[[Sequence, Sequence], float]:
    """METRICS[name] from eval_harness.metrics (imported here, so mean-metric reports never need it)."""
    from eval_harness.metrics import METRICS

    if name not in METRICS:
        raise KeyError(f"corpus metric {name!r} is not in eval_harness.metrics.METRICS ({sorted(METRICS)})")
    return METRICS[name]


class MetricEvaluator:
    """Evaluates one metric on many resamples at once: rows of item indices into a Sample."""

    def __init__(self, name: str | None, corpus: bool) -> None:
        self.name = name
        self.corpus = corpus
        self._batched: Callable | None = None  # chosen on the first sample, then reused

    def _corpus_batched(self, sample: Sample) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """The numpy version when it matches METRICS on this sample, else a loop over METRICS."""
        if self._batched is not None:
            return self._batched
        reference = corpus_metric(self.name)
        batched = BATCHED_METRICS.get(self.name)
        if batched is not None and len(sample):
            slow = float(reference(sample.predictions.tolist(), sample.labels.tolist()))
            try:
                fast = float(batched(sample.predictions[None, :], sample.labels[None, :])[0])
            except (TypeError, ValueError):  # labels the numpy version cannot handle (strings, None)
                fast = float("inf")
            if not (np.isclose(fast, slow, rtol=1e-7, atol=1e-9) or (np.isnan(fast) and np.isnan(slow))):
                logger.warning("batched %s (%.6g) differs from METRICS (%.6g): resampling with METRICS (slow)",
                               self.name, fast, slow)
                batched = None
        if batched is None:
            def batched(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
                return np.array([reference(p.tolist(), g.tolist()) for p, g in zip(pred, gold)], dtype=float)
        self._batched = batched
        return batched

    def on_full(self, sample: Sample) -> float:
        """The metric on all items of `sample`."""
        return float(self.on_rows(sample, np.arange(len(sample))[None, :])[0])

    def on_rows(self, sample: Sample, rows: np.ndarray) -> np.ndarray:
        """The metric for each row of item indices: shape (n_rows,)."""
        if not self.corpus:
            return sample.scores[rows].mean(axis=1)
        return self._corpus_batched(sample)(sample.predictions[rows], sample.labels[rows])


def _percentile_interval(estimate: float, draws: np.ndarray) -> Interval:
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return Interval(estimate, float("nan"), float("nan"))
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


def _two_level_draws(lengths: Sequence[int], evaluate: Callable[[int, np.ndarray], np.ndarray],
                     n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples,) bootstrap replicates of a mean over seeds: seeds resampled, then their items.

    `lengths[s]` is seed s's item count; `evaluate(s, rows)` gives the statistic of seed s on each row
    of item indices. Every (resample, seed slot) gets its own item resample, so a seed drawn twice is
    not counted twice with the same items.
    """
    n_seeds = len(lengths)
    picks = rng.integers(n_seeds, size=(n_resamples, n_seeds))
    per_slot = np.empty((n_resamples, n_seeds))
    for seed_index, length in enumerate(lengths):
        chosen = picks == seed_index
        draws = int(chosen.sum())  # only the slots that drew this seed need its items resampled
        chunk = max(1, MAX_INDICES_PER_CHUNK // length)  # bounded memory for large test sets
        values = [evaluate(seed_index, rng.integers(length, size=(min(chunk, draws - start), length), dtype=np.int32))
                  for start in range(0, draws, chunk)]
        if values:
            per_slot[chosen] = np.concatenate(values)
    return per_slot.mean(axis=1)


def bootstrap_ci(samples: Sequence[Sample], metric: str | None, *, n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED) -> Interval:
    """Mean over seeds of the metric, with a two-level (seeds, then items) percentile bootstrap CI.

    `metric` is a METRICS name for corpus samples and ignored for mean samples (mean of "score").
    """
    if not samples or any(len(sample) == 0 for sample in samples):
        raise ValueError("bootstrap_ci needs at least one seed, each with at least one item")
    evaluator = MetricEvaluator(metric, corpus=samples[0].is_corpus)
    estimate = float(np.mean([evaluator.on_full(sample) for sample in samples]))
    rng = np.random.default_rng(seed)
    draws = _two_level_draws([len(sample) for sample in samples],
                             lambda index, rows: evaluator.on_rows(samples[index], rows), n_resamples, rng)
    return _percentile_interval(estimate, draws)


def pair_seeds(method: Sequence[Sample], baseline: Sequence[Sample]) -> list[tuple[Sample, Sample]]:
    """Seeds paired by rank (seed order); a single run on one side is paired with every seed of the other."""
    if len(baseline) == 1:
        return [(sample, baseline[0]) for sample in method]
    if len(method) == 1:
        return [(method[0], sample) for sample in baseline]
    return list(zip(method, baseline))  # unequal seed counts: the first min(n, m) ranks


def align_items(method: Sample, baseline: Sample) -> tuple[Sample, Sample]:
    """Both samples restricted to their common ids, in the same order."""
    positions = {item_id: index for index, item_id in enumerate(baseline.ids)}
    mine, theirs = [], []
    for index, item_id in enumerate(method.ids):
        if item_id in positions:
            mine.append(index)
            theirs.append(positions[item_id])
    return method.subset(np.array(mine, dtype=int)), baseline.subset(np.array(theirs, dtype=int))


def _is_binary(sample: Sample) -> bool:
    return not sample.is_corpus and bool(np.isin(sample.scores, (0.0, 1.0)).all())


def mcnemar_exact(pairs: Sequence[tuple[Sample, Sample]]) -> tuple[float, tuple[int, int]]:
    """Exact McNemar test on 0/1 item scores pooled over seed pairs: a binomial test of the discordant pairs."""
    from scipy.stats import binomtest

    method_only = sum(int(((m.scores == 1) & (b.scores == 0)).sum()) for m, b in pairs)
    baseline_only = sum(int(((m.scores == 0) & (b.scores == 1)).sum()) for m, b in pairs)
    total = method_only + baseline_only
    p_value = 1.0 if total == 0 else float(binomtest(method_only, total, 0.5).pvalue)
    return p_value, (method_only, baseline_only)


def paired_test(method: Sequence[Sample], baseline: Sequence[Sample], metric: str | None, *,
                n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> PairedTest:
    """Paired bootstrap test of (method - baseline), items paired by id and seeds by rank.

    Resample seed pairs, then item pairs within each (the same indices on both sides), and recompute
    the metric difference. Two-sided p-value of "no difference": the share of replicates whose
    distance from the observed difference is at least the observed difference (the replicates,
    shifted to mean zero, approximate the null distribution), with the +1 correction.
    0/1 scores also get McNemar's exact test.
    """
    pairs = [align_items(m, b) for m, b in pair_seeds(method, baseline)]
    pairs = [(m, b) for m, b in pairs if len(m)]
    if not pairs:
        raise ValueError("no item id is shared by the method and the baseline")
    evaluator = MetricEvaluator(metric, corpus=pairs[0][0].is_corpus)
    observed = float(np.mean([evaluator.on_full(m) - evaluator.on_full(b) for m, b in pairs]))

    def difference_on_rows(index: int, rows: np.ndarray) -> np.ndarray:
        m, b = pairs[index]  # the same item indices on both sides: a paired resample
        return evaluator.on_rows(m, rows) - evaluator.on_rows(b, rows)

    rng = np.random.default_rng(seed)
    draws = _two_level_draws([len(m) for m, _ in pairs], difference_on_rows, n_resamples, rng)
    finite = draws[~np.isnan(draws)]
    extreme = int((np.abs(finite - observed) >= abs(observed) - 1e-12).sum())
    p_value = min(1.0, (extreme + 1) / (finite.size + 1))
    mcnemar_p, discordant = (None, None)
    if all(_is_binary(m) and _is_binary(b) for m, b in pairs):
        mcnemar_p, discordant = mcnemar_exact(pairs)
    return PairedTest(
        difference=_percentile_interval(observed, draws),
        p_value=float(p_value),
        test="paired bootstrap (seeds by rank, items by id)",
        n_pairs=sum(len(m) for m, _ in pairs),
        n_seed_pairs=len(pairs),
        mcnemar_p=mcnemar_p,
        discordant=discordant,
    )

