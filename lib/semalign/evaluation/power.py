"""Study sizes from a power calculation, stated before the study runs: from the per-item paired differences a
finished run measured, how many MMLU items and held-out agreement examples a paired comparison needs to
detect a given difference (two-sided, alpha 0.05, power 0.8), and what a study of given sizes can detect.

A short run's trained variants may move little from the student, so each measure also carries a second
spread that does not depend on how far training went: the teacher-vs-student spread for accuracy and gold
log-prob, 2·sd(KL_student) for the KL (sd(KL_variant − KL_student) ≤ sd(KL_variant) + sd(KL_student)).
Plan with the larger of the two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from semalign.errors import SemalignError
from semalign.evaluation.results import ItemResult, gold_logprob


def items_needed(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Pairs needed so a two-sided paired test at level `alpha` detects a mean difference `delta` with
    probability `power` when the paired differences have standard deviation `sd` (normal approximation):
    ceil(((z_{1-alpha/2} + z_power) * sd / delta)^2)."""
    if not (sd >= 0 and delta > 0 and 0 < alpha < 1 and 0 < power < 1):
        raise SemalignError(
            f"items_needed(sd={sd}, delta={delta}, alpha={alpha}, power={power}): need sd >= 0, delta > 0 "
            "and alpha, power strictly between 0 and 1"
        )
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return max(2, math.ceil((z * sd / delta) ** 2))


def detectable(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest mean paired difference `n` pairs with spread `sd` detect (the inverse of items_needed)."""
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * sd / math.sqrt(n)


def _paired_sd(base: Sequence[float], other: Sequence[float]) -> float:
    return float(np.std(np.asarray(other, dtype=np.float64) - np.asarray(base, dtype=np.float64), ddof=1))


def _by_item(results: Sequence[ItemResult]) -> dict[str, ItemResult]:
    return {result.item_id: result for result in results}


def mmlu_spreads(results: Mapping[str, Sequence[ItemResult]]) -> dict[str, dict[str, float]]:
    """Per variant other than the student (teacher included): the sd of its paired differences with the
    student on the items both scored, for accuracy (0/1) and the renormalised gold log-prob."""
    if "student" not in results:
        raise SemalignError(
            "the power calculation pairs every variant with the student; evaluate the student"
        )
    student = _by_item(results["student"])
    spreads = {}
    for variant, rows in results.items():
        if variant == "student":
            continue
        pairs = [(student[r.item_id], r) for r in rows if r.item_id in student]
        if len(pairs) < 2:
            raise SemalignError(
                f"{variant} shares {len(pairs)} MMLU items with the student; score >= 2 of them"
            )
        spreads[variant] = {
            "n": len(pairs),
            "accuracy_sd": _paired_sd(
                [float(a.correct) for a, _ in pairs], [float(b.correct) for _, b in pairs]
            ),
            "gold_logprob_sd": _paired_sd(
                [gold_logprob(a.detail) for a, _ in pairs], [gold_logprob(b.detail) for _, b in pairs]
            ),
        }
    return spreads


def kl_spreads(rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Held-out KL(teacher ‖ ·) per example: the student's mean and sd, and per variant the sd of its paired
    differences with the student."""
    if "student" not in rows:
        raise SemalignError(
            "the power calculation needs the student's agreement rows; run agree@<task>-student"
        )
    student = [row["kl"] for row in rows["student"]]
    return {
        "n": len(student),
        "student_kl_mean": float(np.mean(student)),
        "student_kl_sd": float(np.std(student, ddof=1)),
        "variants": {
            variant: _paired_sd(student, [row["kl"] for row in variant_rows])
            for variant, variant_rows in rows.items()
            if variant != "student"
        },
    }


def power_plan(
    mmlu: Mapping[str, Sequence[ItemResult]],
    agreement: Mapping[str, Sequence[Mapping[str, Any]]],
    sizes: Mapping[str, int],
    accuracy_delta: float = 0.02,
    gap_delta: float = 0.05,
) -> dict[str, Any]:
    """The plan: for each measure (MMLU accuracy with `accuracy_delta`, MMLU gold log-prob, held-out KL
    with a `gap_delta` share of the student's KL as the difference), the spread measured between trained
    variants and the student (largest over variants), its conservative bound, the pairs each needs, and what
    the study's `sizes` ({"mmlu_items", "agreement_examples"}) detect under each."""
    spreads, kl = mmlu_spreads(mmlu), kl_spreads(agreement)
    methods = {v: s for v, s in spreads.items() if v != "teacher"}
    if "teacher" not in spreads or not methods:
        raise SemalignError(
            "the power calculation needs the teacher and at least one trained variant on MMLU"
        )
    kl_delta = gap_delta * kl["student_kl_mean"]
    measures = {
        "mmlu_accuracy": (
            max(s["accuracy_sd"] for s in methods.values()),
            spreads["teacher"]["accuracy_sd"],
            accuracy_delta,
            sizes["mmlu_items"],
        ),
        "mmlu_gold_logprob": (
            max(s["gold_logprob_sd"] for s in methods.values()),
            spreads["teacher"]["gold_logprob_sd"],
            None,
            sizes["mmlu_items"],
        ),
        "heldout_kl": (
            max(kl["variants"].values(), default=0.0),
            2 * kl["student_kl_sd"],
            kl_delta,
            sizes["agreement_examples"],
        ),
    }
    plan: dict[str, Any] = {"alpha": 0.05, "power": 0.8, "sizes": dict(sizes), "spreads": spreads, "kl": kl}
    for name, (measured, bound, delta, n) in measures.items():
        plan[name] = {
            "sd_measured": measured,
            "sd_bound": bound,
            "delta": delta,
            "needed_measured": items_needed(measured, delta) if delta and measured > 0 else None,
            "needed_bound": items_needed(bound, delta) if delta else None,
            "study_n": n,
            "detectable_measured": detectable(measured, n),
            "detectable_bound": detectable(bound, n),
        }
    return plan


def plan_markdown(plan: Mapping[str, Any]) -> str:
    """The plan as the table the study's README section shows."""
    rows = {
        "mmlu_accuracy": ("MMLU accuracy", "items", lambda x: f"{x * 100:.1f} points"),
        "mmlu_gold_logprob": ("MMLU gold log-prob (nats)", "items", lambda x: f"{x:.3f}"),
        "heldout_kl": ("held-out KL(teacher ‖ variant), nats/token", "examples", lambda x: f"{x:.4f}"),
    }
    lines = [
        "| measure | target difference | pairs needed (measured sd / teacher-scale sd) | study n "
        "| detectable at study n (measured sd / teacher-scale sd) |",
        "|---|---|---|---|---|",
    ]
    for key, (label, unit, fmt) in rows.items():
        entry = plan[key]
        target = "—" if entry["delta"] is None else fmt(entry["delta"])
        if key == "heldout_kl" and entry["delta"] is not None:
            target += " (5 % of the student's KL)"
        needed = (
            "—"
            if entry["delta"] is None
            else f"{entry['needed_measured'] or '—'} / {entry['needed_bound']} {unit}"
        )
        lines.append(
            f"| {label} | {target} | {needed} | {entry['study_n']} | "
            f"{fmt(entry['detectable_measured'])} / {fmt(entry['detectable_bound'])} |"
        )
    return "\n".join(lines) + "\n"
