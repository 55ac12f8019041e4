"""The study's power calculation: pairs needed and detectable differences against the normal-approximation
formula, and the plan built from constructed per-item results."""

import math
from statistics import NormalDist

import pytest

from semalign.errors import SemalignError
from semalign.evaluation.power import detectable, items_needed, kl_spreads, plan_markdown, power_plan
from semalign.evaluation.results import ItemResult

Z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)  # 2.8016


def test_items_needed_is_the_textbook_paired_sample_size_and_detectable_inverts_it():
    assert abs(Z - 2.80158) < 1e-5
    # sd 1, difference 0.5: (2.8016 / 0.5)^2 = 31.4 -> 32 pairs
    assert items_needed(1.0, 0.5) == 32
    # a 2-point accuracy difference when 20 % of items are discordant (sd ~ sqrt(0.2)): ~3,924 items
    assert items_needed(math.sqrt(0.2), 0.02) == math.ceil((Z * math.sqrt(0.2) / 0.02) ** 2)
    assert detectable(1.0, items_needed(1.0, 0.5)) <= 0.5 < detectable(1.0, items_needed(1.0, 0.5) - 1)
    with pytest.raises(SemalignError, match="need sd >= 0, delta > 0"):
        items_needed(1.0, 0.0)


def _mmlu(correct, gold_logprobs):
    return [
        ItemResult(f"q{i}", c, "A", {"gold": "A", "logprobs": {"A": lp, "B": -9.0, "C": -9.0, "D": -9.0}})
        for i, (c, lp) in enumerate(zip(correct, gold_logprobs))
    ]


def test_the_plan_takes_the_largest_method_spread_and_the_teacher_bound():
    mmlu = {
        "student": _mmlu([0, 0, 1, 1], [-2.0, -2.0, -1.0, -1.0]),
        "teacher": _mmlu([1, 1, 1, 0], [-0.5, -0.5, -0.2, -3.0]),
        "v1": _mmlu([0, 1, 1, 1], [-2.0, -1.5, -1.0, -1.0]),
        "sft": _mmlu([0, 0, 1, 1], [-2.0, -2.0, -1.0, -1.0]),
    }
    agreement = {
        "student": [{"kl": k} for k in (1.0, 2.0, 3.0, 2.0)],
        "v1": [{"kl": k} for k in (0.9, 1.9, 2.7, 2.0)],
    }
    plan = power_plan(mmlu, agreement, {"mmlu_items": 400, "agreement_examples": 64})
    acc = plan["mmlu_accuracy"]
    assert acc["sd_measured"] == pytest.approx(0.5)  # v1 - student: 0, 1, 0, 0
    assert acc["sd_bound"] == pytest.approx(0.9574, abs=1e-4)  # teacher - student: 1, 1, 0, -1
    assert acc["needed_measured"] == items_needed(0.5, 0.02)
    assert acc["detectable_bound"] == pytest.approx(Z * acc["sd_bound"] / 20)
    kl = plan["heldout_kl"]
    assert kl["delta"] == pytest.approx(0.05 * 2.0) and kl["sd_bound"] == pytest.approx(2 * 0.8165, abs=1e-4)
    assert plan["mmlu_gold_logprob"]["delta"] is None and plan["mmlu_gold_logprob"]["needed_bound"] is None
    table = plan_markdown(plan)
    assert "| MMLU accuracy | 2.0 points |" in table and "| 400 |" in table and "| 64 |" in table


def test_the_plan_needs_the_student_teacher_and_a_trained_variant():
    with pytest.raises(SemalignError, match="evaluate the student"):
        power_plan({"teacher": _mmlu([1, 0], [-1.0, -1.0])}, {}, {"mmlu_items": 1, "agreement_examples": 1})
    with pytest.raises(SemalignError, match="run agree@<task>-student"):
        kl_spreads({"v1": []})
    pair = {"student": _mmlu([1, 0], [-1.0, -2.0]), "teacher": _mmlu([1, 1], [-0.5, -0.5])}
    with pytest.raises(SemalignError, match="at least one trained variant"):
        power_plan(pair, {"student": [{"kl": 1.0}, {"kl": 2.0}]}, {"mmlu_items": 2, "agreement_examples": 2})
