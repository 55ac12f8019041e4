"""Intervals, pass@k and paired tests against published values and exact float64/rational references."""

import math
from fractions import Fraction

import numpy as np
import pytest

from semalign.errors import SemalignError
from semalign.evaluation.metrics import (
    bootstrap_interval,
    mcnemar,
    minimum_detectable_difference,
    paired_bootstrap,
    pass_at_k,
    summarise,
    wilson_interval,
)


@pytest.mark.parametrize(
    "successes, n, confidence, expected",
    [
        (8, 10, 0.95, (0.4902, 0.9433)),  # Wilson (1927) / Newcombe (1998) tables
        (0, 10, 0.95, (0.0, 0.2775)),
        (10, 10, 0.95, (0.7225, 1.0)),
        (8, 10, 0.99, (0.4008, 0.9599)),
        (50, 100, 0.95, (0.4038, 0.5962)),
    ],
)
def test_wilson_interval_matches_known_values(successes, n, confidence, expected):
    assert wilson_interval(successes, n, confidence) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("args", [(1, 0), (11, 10), (-1, 10), (5, 10, 1.0), (5, 10, 0.0)])
def test_wilson_interval_refuses_impossible_counts(args):
    with pytest.raises(SemalignError):
        wilson_interval(*args)


@pytest.mark.parametrize(
    "n, c, k",
    [(5, 2, 1), (5, 0, 1), (5, 4, 2), (10, 3, 5), (200, 13, 100), (200, 0, 7), (1, 1, 1), (20, 19, 20)],
)
def test_pass_at_k_equals_the_exact_binomial_ratio(n, c, k):
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_headline_cases():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, 2, 0), (5, 2, 6), (0, 0, 1)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(SemalignError):
        pass_at_k(n, c, k)


def test_mcnemar_counts_each_direction_and_gives_exact_p():
    a = [True, True, True, True, True, False, False, True, False]
    b = [False, False, False, False, False, False, True, True, False]
    # b01: b right, a wrong (item 6); b10: a right, b wrong (items 0-4).
    b01, b10, p = mcnemar(a, b)
    assert (b01, b10) == (1, 5)
    assert p == pytest.approx(2 * (1 + 6) / 2**6)
    assert mcnemar(b, a) == (5, 1, p)


@pytest.mark.parametrize(
    "b01, b10, p", [(3, 3, 1.0), (0, 0, 1.0), (0, 5, 0.0625), (1, 9, 22 / 1024), (0, 20, 2 / 2**20)]
)
def test_mcnemar_known_p_values(b01, b10, p):
    a = [False] * b01 + [True] * b10 + [True, False]
    b = [True] * b01 + [False] * b10 + [True, False]
    assert mcnemar(a, b) == (b01, b10, pytest.approx(p, rel=1e-12))


def test_paired_functions_refuse_different_item_counts():
    with pytest.raises(SemalignError, match="3 and 2"):
        mcnemar([True] * 3, [True] * 2)
    with pytest.raises(SemalignError, match="3 and 2"):
        paired_bootstrap([1.0] * 3, [1.0] * 2)


def test_bootstrap_matches_a_direct_float64_reference():
    values = np.random.default_rng(1).normal(size=2500)
    mean, low, high = bootstrap_interval(values, iters=1000, confidence=0.9, seed=4)
    # One unblocked draw from the same generator: blocking must not change which resamples are taken.
    means = values[np.random.default_rng(4).integers(0, values.size, size=(1000, values.size))].mean(axis=1)
    assert mean == values.mean()
    assert (low, high) == tuple(np.quantile(means, [0.05, 0.95]))


def test_paired_bootstrap_keeps_pairs_together():
    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.6).astype(float)
    b = a.copy()
    b[:20] = 1.0 - b[:20]  # b differs from a on 20 items only
    diff = a - b
    mean, low, high = paired_bootstrap(a, b, iters=4000, seed=1)
    se = diff.std() / math.sqrt(diff.size)
    assert mean == pytest.approx(diff.mean())
    # Pairing makes the interval as narrow as the 20 discordant items allow; unpaired resampling of two
    # 60% accuracies would be about five times wider.
    assert low == pytest.approx(mean - 1.96 * se, abs=0.01) and high == pytest.approx(
        mean + 1.96 * se, abs=0.01
    )


def test_constant_difference_has_a_zero_width_interval():
    assert paired_bootstrap([1.0, 0.5, 0.25], [0.5, 0.0, -0.25], iters=50) == (0.5, 0.5, 0.5)


def test_summarise_reports_accuracy_with_its_wilson_interval():
    summary = summarise([True] * 8 + [False] * 2)
    assert summary == {
        "n": 10,
        "accuracy": 0.8,
        "ci_low": pytest.approx(0.4902, abs=1e-4),
        "ci_high": pytest.approx(0.9433, abs=1e-4),
    }
    with pytest.raises(SemalignError, match="at least one item"):
        summarise([])


def test_minimum_detectable_difference_is_the_textbook_value_and_has_its_power():
    d = np.array([1.0, -1.0] * 50)  # sd 1.00504 (n - 1), n 100
    expected = (1.959964 + 0.841621) * d.std(ddof=1) / 10
    assert minimum_detectable_difference(d) == pytest.approx(expected, rel=1e-6)
    assert minimum_detectable_difference(d, alpha=0.01, power=0.9) == pytest.approx(
        (2.575829 + 1.281552) * d.std(ddof=1) / 10, rel=1e-6
    )
    # A true paired difference of that size is found by the two-sided test at 5 % about 80 % of the time.
    rng = np.random.default_rng(0)
    n, sd = 200, 0.7
    delta = minimum_detectable_difference(rng.normal(0.0, sd, size=100_000)) * (100_000 / n) ** 0.5
    samples = rng.normal(delta, sd, size=(4000, n))
    z = samples.mean(axis=1) / (samples.std(axis=1, ddof=1) / n**0.5)
    assert np.mean(np.abs(z) > 1.959964) == pytest.approx(0.8, abs=0.025)


@pytest.mark.parametrize(
    "differences, kwargs, message",
    [
        ([0.5], {}, "needs >= 2 finite paired differences, got shape \\(1,\\)"),
        ([0.5, float("nan")], {}, "needs >= 2 finite"),
        ([[0.5, 1.0]], {}, "got shape \\(1, 2\\)"),
        ([0.5, 1.0], {"power": 1.0}, "alpha=0.05, power=1.0: both must be strictly between 0 and 1"),
        ([0.5, 1.0], {"alpha": 0.0}, "alpha=0.0, power=0.8: both must be"),
    ],
)
def test_minimum_detectable_difference_refuses_hostile_input(differences, kwargs, message):
    with pytest.raises(SemalignError, match=message):
        minimum_detectable_difference(differences, **kwargs)
