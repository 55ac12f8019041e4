"""The study's verdict: each claim decided by where its paired interval lies, per measure."""

import pytest

from semalign.evaluation.results import ItemResult, gold_logprob
from semalign.evaluation.verdict import CANNOT_TELL, HELD, NOT_HELD, decide, verdict, verdict_markdown


def _mmlu(correct, gold=-1.0):
    return [
        ItemResult(
            f"q{i}", bool(c), "A", {"gold": "A", "logprobs": {"A": gold, "B": -3.0, "C": -3.0, "D": -3.0}}
        )
        for i, c in enumerate(correct)
    ]


def _kl(values):
    return [
        {
            "item_id": f"e{i}",
            "tokens": 4,
            "answer_tokens": 1,
            "kl": k,
            "top1": 0.5,
            "answer_kl": k,
            "answer_top1": 0.5,
        }
        for i, k in enumerate(values)
    ]


def test_decide_by_the_side_of_the_threshold_the_interval_lies_on():
    assert decide(0.01, 0.2) == HELD
    assert decide(-0.2, -0.01) == NOT_HELD
    assert decide(-0.1, 0.1) == CANNOT_TELL
    assert decide(0.4, 0.9, threshold=0.5) == CANNOT_TELL and decide(0.6, 0.9, threshold=0.5) == HELD
    assert decide(None, None) == CANNOT_TELL


def test_claims_are_decided_per_measure_with_the_orientation_of_each():
    n = 200
    results = {
        "student": _mmlu([0] * n, gold=-2.0),
        "teacher": _mmlu([1] * n, gold=-0.5),
        "v1": _mmlu([1] * 150 + [0] * 50, gold=-1.0),  # 75 % of the gap closed, on every measure better
        "kd": _mmlu([1] * 150 + [0] * 50, gold=-1.0),  # exactly v1: cannot tell
        "v1-random": _mmlu([0] * n, gold=-2.5),  # clearly worse than v1
    }
    agreement = {
        "student": _kl([1.0 + 0.01 * (i % 5) for i in range(40)]),
        "v1": _kl([0.5 + 0.01 * (i % 5) for i in range(40)]),
        "v1-random": _kl([1.2 + 0.01 * (i % 5) for i in range(40)]),
    }
    table = verdict(results, agreement)
    by_claim = {c["claim"]: c["measures"] for c in table["claims"]}
    student = by_claim["SemAlign (v1) > student"]
    assert student["accuracy"]["diff"] == pytest.approx(0.75) and student["accuracy"]["decision"] == HELD
    gained = gold_logprob(results["v1"][0].detail) - gold_logprob(results["student"][0].detail)
    assert gained > 0.3 and student["gold_logprob"]["decision"] == HELD
    assert student["gold_logprob"]["diff"] == pytest.approx(gained)
    assert (
        student["kl_reduction"]["diff"] == pytest.approx(0.5) and student["kl_reduction"]["decision"] == HELD
    )
    gap = by_claim["SemAlign (v1) closes most of the gap"]
    assert set(gap) == {"accuracy"} and gap["accuracy"]["diff"] == pytest.approx(0.75)
    assert gap["accuracy"]["decision"] == HELD and gap["accuracy"]["low"] > 0.5
    assert by_claim["SemAlign (v1) ≥ kd"]["accuracy"]["decision"] == CANNOT_TELL
    random = by_claim["semantic map ≥ random map (v1)"]
    assert random["kl_reduction"]["diff"] == pytest.approx(0.7) and random["kl_reduction"]["decision"] == HELD
    # claims whose variants did not run are left out, not guessed
    assert "SEEKING > LaTen" not in by_claim and table["seed_spread"] == {}
    shown = verdict_markdown(table)
    assert "| SemAlign (v1) > student | **held**: +75.0 [" in shown
    assert "gap closed 0.75 [" in shown


def test_a_worse_variant_is_not_held_and_the_seed_spread_is_reported():
    results = {
        "student": _mmlu([1] * 100),
        "v1": _mmlu([0] * 100),
        "sft": _mmlu([1, 0] * 50),
        "sft-s1": _mmlu([0, 1] * 50),
    }
    table = verdict(results, {})
    by_claim = {c["claim"]: c["measures"] for c in table["claims"]}
    assert by_claim["SemAlign (v1) > student"]["accuracy"]["decision"] == NOT_HELD
    spread = table["seed_spread"]["sft vs sft-s1"]["accuracy"]
    assert spread["diff"] == 0 and spread["low"] < -0.1 and spread["high"] > 0.1  # 100 discordant items
    assert table["seed_term"]["accuracy"] == 0  # the twins agree in total: the items decide alone
    assert "Training-seed pairs" in verdict_markdown(table)


def test_the_training_seed_term_widens_every_interval():
    """v1 beats the student by 10 points on 400 items (item interval clear of zero), but its second-seed
    twin scores 12 points lower: with the seed term in the interval the claim is cannot tell, marked †; a
    60-point loss to kd still decides. The gap claim is widened on the raw scale, then scaled."""
    results = {
        "student": _mmlu([1] * 200 + [0] * 200),
        "teacher": _mmlu([1] * 320 + [0] * 80),
        "v1": _mmlu([1] * 240 + [0] * 160),
        "v1-s1": _mmlu([1] * 192 + [0] * 208),
        "kd": _mmlu([1] * 400),
    }
    table = verdict(results, {})
    assert table["seed_term"]["accuracy"] == pytest.approx(0.12)
    by_claim = {c["claim"]: c["measures"] for c in table["claims"]}
    beat = by_claim["SemAlign (v1) > student"]["accuracy"]
    assert beat["items_low"] > 0 and beat["decision"] == CANNOT_TELL and beat["seed_decides"]
    half = 1.959964 * 0.12
    assert beat["low"] == pytest.approx(0.10 - (half**2 + (0.10 - beat["items_low"]) ** 2) ** 0.5)
    lost = by_claim["SemAlign (v1) ≥ kd"]["accuracy"]
    assert lost["decision"] == NOT_HELD and "seed_decides" not in lost
    gap = by_claim["SemAlign (v1) closes most of the gap"]["accuracy"]
    assert gap["diff"] == pytest.approx(0.10 / 0.30) and gap["gap"] == pytest.approx(0.30)
    assert gap["items_high"] < 0.5 and gap["decision"] == CANNOT_TELL and gap["seed_decides"]
    shown = verdict_markdown(table)
    assert "**cannot tell**†: +10.0 [" in shown and "**cannot tell**†: gap closed 0.33 [" in shown
    assert (
        "†: the item interval alone decided otherwise." in shown
        and "Seed term: 12.0 acc, 0.000 log-prob." in shown
    )
