"""pass@k: the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models Trained on Code", §2.1.

With n samples per task of which c pass, pass@k = 1 - C(n-c, k) / C(n, k). The ratio of binomials
is computed as the product prod_{i=n-c+1}^{n} (1 - k/i), which never forms a large binomial.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(counts: Iterable[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """Mean over tasks of pass@k for each k, from (n, c) per task; keys "pass@1", "pass@10", ..."""
    counts = list(counts)
    if not counts:
        raise ValueError("mean_pass_at_k needs at least one task")
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in ks}
