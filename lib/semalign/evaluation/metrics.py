"""Scores with their uncertainty: accuracy intervals, pass@k, and paired comparisons of two systems.

Paired functions take per-item outcomes of two systems on the same items, in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from semalign.errors import SemalignError


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; stays inside [0, 1] and is sound at 0 or n."""
    if n < 1 or not 0 <= successes <= n:
        raise SemalignError(
            f"wilson_interval needs 0 <= successes <= n and n >= 1, got {successes}/{n}; "
            "score at least one item"
        )
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    values: Sequence[float], iters: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean of `values: [items]`."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < 1 or iters < 1:
        raise SemalignError(
            f"bootstrap needs a non-empty 1-d list of values and iters >= 1, got shape {x.shape} "
            f"and iters={iters}"
        )
    _z(confidence)
    rng = np.random.default_rng(seed)
    means = np.empty(iters)
    # Resample in blocks of rows so memory stays at ~1M indices whatever iters * items is.
    block = max(1, 1_000_000 // x.size)
    for start in range(0, iters, block):
        rows = min(block, iters - start)
        means[start : start + rows] = x[rng.integers(0, x.size, size=(rows, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(x.mean()), float(low), float(high)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k), as the product
    1 - prod_{i=n-c+1}^{n} (1 - k / i) (Chen et al. 2021), which avoids huge binomials."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise SemalignError(
            f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}; "
            "draw at least k samples per problem"
        )
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """Exact McNemar test on paired outcomes: (b01, b10, two-sided p).

    b01 counts items b got right and a wrong, b10 the reverse; under equal accuracy the discordant items
    split as Binomial(b01 + b10, 1/2), so p = min(1, 2 * P[X <= min(b01, b10)]), computed exactly.
    """
    _same_items(a, b)
    b01 = sum(1 for x, y in zip(a, b) if not x and y)
    b10 = sum(1 for x, y in zip(a, b) if x and not y)
    discordant = b01 + b10
    tail = sum(math.comb(discordant, i) for i in range(min(b01, b10) + 1))
    # Integer numerator over 2**n: exact until the one final rounding to float.
    return b01, b10, min(1.0, 2 * tail / 2**discordant)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], iters: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean of a - b, low, high): bootstrap over items, keeping each item's pair together."""
    _same_items(a, b)
    return bootstrap_interval(
        np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), iters, confidence, seed
    )


def minimum_detectable_difference(
    paired_differences: Sequence[float], alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest mean paired difference a two-sided test at level `alpha` detects with probability
    `power` on this many items, from the observed spread of `paired_differences: [items]` (any metric:
    accuracy 0/1 outcomes, log-probs, KL): (z_{1-alpha/2} + z_{power}) * sd(d) / sqrt(n), normal
    approximation, sd with n - 1 degrees of freedom."""
    d = np.asarray(paired_differences, dtype=np.float64)
    if d.ndim != 1 or d.size < 2 or not np.isfinite(d).all():
        raise SemalignError(
            f"minimum_detectable_difference needs >= 2 finite paired differences, got shape {d.shape}; "
            "score at least two items with both systems"
        )
    if not (0 < alpha < 1 and 0 < power < 1):
        raise SemalignError(
            f"alpha={alpha}, power={power}: both must be strictly between 0 and 1, e.g. 0.05 and 0.8"
        )
    z = _z(1 - alpha) + NormalDist().inv_cdf(power)
    return float(z * d.std(ddof=1) / math.sqrt(d.size))


def summarise(correct: Sequence[bool]) -> dict[str, float | int]:
    """{n, accuracy, ci_low, ci_high} with a 95% Wilson interval."""
    n, hits = len(correct), sum(bool(x) for x in correct)
    low, high = wilson_interval(hits, n)
    return {"n": n, "accuracy": hits / n, "ci_low": low, "ci_high": high}


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise SemalignError(f"confidence={confidence} must be strictly between 0 and 1, e.g. 0.95")
    return NormalDist().inv_cdf((1 + confidence) / 2)


def _same_items(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise SemalignError(
            f"paired comparison needs the same items for both systems, got {len(a)} and {len(b)} "
            "outcomes; align the per-item results by item_id first"
        )
