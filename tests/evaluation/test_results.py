"""Results files read per variant, their summaries (Wilson intervals, MMLU letter statistics against float64)
and paired comparisons (McNemar, paired bootstrap, detectable differences)."""

from statistics import NormalDist

import numpy as np
import pytest

from semalign.errors import SemalignError
from semalign.evaluation.results import (
    ItemResult,
    compare_paired,
    gold_logprob,
    read_variant_results,
    summarise_results,
    write_results,
)
from semalign.tasks import LETTERS


def test_variant_results_are_read_per_variant_for_one_protocol(tmp_path):
    task = tmp_path / "eval" / "mmlu"
    student = [ItemResult("a", True, "A"), ItemResult("b", False, "C")]
    teacher = [ItemResult("a", True, "A"), ItemResult("b", True, "B")]
    write_results(task / "student" / "lm_eval.jsonl", {"task": "mmlu"}, student)
    write_results(task / "teacher" / "lm_eval.jsonl", {"task": "mmlu"}, teacher)
    write_results(task / "teacher" / "chat.jsonl", {"task": "mmlu"}, [ItemResult("a", False, "D")])
    assert read_variant_results(task, "lm_eval") == {"student": student, "teacher": teacher}
    assert read_variant_results(task, "chat") == {"teacher": [ItemResult("a", False, "D")]}
    assert read_variant_results(task, "other") == {}


def test_summary_and_paired_comparison_on_constructed_results(results_of):
    base = results_of([1, 1, 0, 0, 1, 0])
    other = results_of([1, 0, 1, 1, 1, 1]) + [ItemResult("t/only-other", False, "", {})]
    summary = summarise_results(base)
    assert summary["n"] == 6 and summary["accuracy"] == 0.5
    # Wilson at 3/6: centre 0.5, half-width 1.96 * sqrt(1/24 + 1.96**2 / 144) / (1 + 1.96**2 / 6) = 0.31239.
    assert summary["ci_low"] == pytest.approx(0.18761, abs=1e-4)
    assert summary["ci_high"] == pytest.approx(0.81239, abs=1e-4)
    comparison = compare_paired(base, list(reversed(other)), iters=2000)
    # b01: only `other` right (items 2, 3, 5); b10: only `base` (item 1); p = 2 * (1 + 4) / 2**4.
    assert (comparison["n"], comparison["b01"], comparison["b10"]) == (6, 3, 1)
    assert comparison["mcnemar_p"] == pytest.approx(0.625)
    assert comparison["diff"] == pytest.approx(1 / 3)
    assert comparison["diff_low"] <= 1 / 3 <= comparison["diff_high"]
    # paired differences other - base: 0, -1, 1, 1, 0, 1 (mean 1/3, sample variance 2/3)
    assert comparison["mdd"] == pytest.approx((1.959964 + 0.841621) * (2 / 3) ** 0.5 / 6**0.5, rel=1e-6)
    assert "gold_logprob_diff" not in comparison  # no letter log-probs: not MMLU
    # no spread (the same answers, or one item): nothing can be said about what the items detect, not "0"
    assert compare_paired(base, base, iters=10)["mdd"] is None
    assert compare_paired(base[:1], other[:1], iters=10)["mdd"] is None
    with pytest.raises(SemalignError, match="share no item_id"):
        compare_paired(base, results_of([1], prefix="u"))


def _mmlu_result(i, logprobs, gold):
    detail = {
        "logprobs": dict(zip(LETTERS, logprobs)),
        "letter_mass": float(sum(np.exp(logprobs))),
        "gold": gold,
    }
    choice = LETTERS[int(np.argmax(logprobs))]
    return ItemResult(f"mmlu/{i}", choice == gold, choice, detail)


def test_mmlu_summary_gold_log_prob_letters_and_constant_baseline_against_float64():
    rng = np.random.default_rng(0)
    golds = ["A", "C", "C", "B", "C", "D", "A"]
    logprobs = np.log(rng.dirichlet(np.ones(5), size=len(golds))[:, :4])  # a 5th outcome: mass < 1
    results = [_mmlu_result(i, list(row), gold) for i, (row, gold) in enumerate(zip(logprobs, golds))]
    summary = summarise_results(results)
    gold_index = [LETTERS.index(g) for g in golds]
    raw = logprobs[range(len(golds)), gold_index]
    renorm = raw - np.log(np.exp(logprobs).sum(axis=1))
    assert summary["gold_logprob_mean"] == pytest.approx(raw.mean(), abs=1e-12)
    assert summary["gold_logprob_renorm_mean"] == pytest.approx(renorm.mean(), abs=1e-12)
    assert summary["gold_prob_renorm_mean"] == pytest.approx(np.exp(renorm).mean(), abs=1e-12)
    assert summary["letter_mass_mean"] == pytest.approx(np.exp(logprobs).sum(axis=1).mean(), abs=1e-12)
    predicted = [LETTERS[j] for j in logprobs.argmax(axis=1)]
    assert summary["predicted_letters"] == {letter: predicted.count(letter) for letter in LETTERS}
    assert summary["constant_baseline"] == {"letter": "C", "accuracy": 3 / 7}
    assert summary["accuracy"] == sum(p == g for p, g in zip(predicted, golds)) / 7

    # Format learning: every letter log-prob up by the same amount moves the raw gold log-prob and the
    # letter mass, not the renormalised gold log-prob nor the answer.
    shifted = [_mmlu_result(i, list(row + 1.0), gold) for i, (row, gold) in enumerate(zip(logprobs, golds))]
    comparison = compare_paired(results, shifted, iters=500)
    assert comparison["gold_logprob_diff"] == pytest.approx(0.0, abs=1e-12)
    assert comparison["gold_logprob_mdd"] is None
    assert summarise_results(shifted)["gold_logprob_mean"] == pytest.approx(raw.mean() + 1.0)
    better = [
        _mmlu_result(i, list(row + np.eye(4)[LETTERS.index(gold)] * (0.5 + i)), gold)
        for i, (row, gold) in enumerate(zip(logprobs, golds))
    ]
    comparison = compare_paired(results, better, iters=500)
    other_renorm = np.array([gold_logprob(r.detail) for r in better])
    differences = other_renorm - renorm
    assert comparison["gold_logprob_diff"] == pytest.approx(differences.mean(), abs=1e-12)
    assert comparison["gold_logprob_diff_low"] <= differences.mean() <= comparison["gold_logprob_diff_high"]
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    assert comparison["gold_logprob_mdd"] == pytest.approx(z * differences.std(ddof=1) / 7**0.5, rel=1e-9)
