"""The study's verdict, paper claim by paper claim: each claim is a paired comparison of two variants on the
same items (MMLU accuracy, MMLU gold log-prob) or held-out examples (KL to the teacher), decided by its 95%
paired-bootstrap interval: held when the interval lies on the claimed side of zero, not held when it lies
on the other side, cannot tell when it covers zero. "Closes most of the gap" is decided on the accuracy gap
closed, (variant − student) / (teacher − student), against 0.5, its interval the accuracy difference's
interval over the fixed teacher-student gap. A decision whose difference lies within the training-seed
spread (the largest |difference| between a variant and its second-seed twin, per measure) is cannot tell:
two trainings of one variant already differ by that much.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from semalign.evaluation.agreement import compare_agreement
from semalign.evaluation.runner import ItemResult, compare_paired

HELD, NOT_HELD, CANNOT_TELL = "held", "not held", "cannot tell"


@dataclass(frozen=True)
class Claim:
    """`better` beats `worse` (the paper's claim); `most_of_gap`: `better` closes over half the gap."""

    text: str
    better: str
    worse: str
    most_of_gap: bool = False


# The paper's claims (Table 1 and §5), with the study's controls. v1 is SemAlign as the paper describes it.
CLAIMS = (
    Claim("SemAlign (v1) > student", "v1", "student"),
    Claim("SemAlign (v1) closes most of the teacher-student gap", "v1", "student", most_of_gap=True),
    Claim("SemAlign (v1) > SEEKING", "v1", "seeking"),
    Claim("SEEKING > LaTen", "seeking", "laten"),
    Claim("SemAlign (v1) ≥ kd (distillation from the same cache)", "v1", "kd"),
    Claim("SemAlign (v1) ≥ sft (the same data, cross-entropy)", "v1", "sft"),
    Claim("semantic map ≥ random map (v1)", "v1", "v1-random"),
    Claim("semantic map ≥ ridge map (v1)", "v1", "v1-ridge"),
    Claim("v2 ≥ v1", "v2", "v1"),
)
# Same variant, second training seed: the spread a difference must exceed to mean anything.
SEED_PAIRS = (("sft", "sft-s1"), ("v1", "v1-s1"))


def decide(low: float | None, high: float | None, threshold: float = 0.0) -> str:
    """held / not held / cannot tell for an interval of (better − worse) against `threshold`."""
    if low is None or high is None:
        return CANNOT_TELL
    if low > threshold:
        return HELD
    if high < threshold:
        return NOT_HELD
    return CANNOT_TELL


def measures(
    results: Mapping[str, Sequence[ItemResult]],
    agreement: Mapping[str, Sequence[Mapping[str, Any]]],
    better: str,
    worse: str,
) -> dict[str, dict[str, float | None]]:
    """(better − worse) with its 95% paired interval, oriented so that positive favours `better`: MMLU
    accuracy, MMLU gold log-prob, and the held-out KL reduction (KL_worse − KL_better)."""
    out: dict[str, dict[str, float | None]] = {}
    if better in results and worse in results:
        c = compare_paired(results[worse], results[better])
        out["accuracy"] = {"diff": c["diff"], "low": c["diff_low"], "high": c["diff_high"], "n": c["n"]}
        if "gold_logprob_diff" in c:
            out["gold_logprob"] = {
                "diff": c["gold_logprob_diff"],
                "low": c["gold_logprob_diff_low"],
                "high": c["gold_logprob_diff_high"],
                "n": c["n"],
            }
    if better in agreement and worse in agreement:
        c = compare_agreement(agreement[worse], agreement[better])
        out["kl_reduction"] = {
            "diff": -c["kl_diff"],
            "low": -c["kl_diff_high"],
            "high": -c["kl_diff_low"],
            "n": c["n"],
        }
    return out


def verdict(
    results: Mapping[str, Sequence[ItemResult]], agreement: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """Every claim of CLAIMS whose variants ran, decided per measure (no decision inside the training-seed
    spread); and the training-seed spreads."""
    seeds = {
        f"{a} vs {b}": measures(results, agreement, b, a)
        for a, b in SEED_PAIRS
        if a in results and b in results
    }
    spread: dict[str, float] = {}
    for found in seeds.values():
        for name, m in found.items():
            spread[name] = max(spread.get(name, 0.0), abs(m["diff"]))
    claims = []
    for claim in CLAIMS:
        decided = {}
        for name, m in measures(results, agreement, claim.better, claim.worse).items():
            if not claim.most_of_gap:
                decided[name] = _within_spread(
                    m | {"decision": decide(m["low"], m["high"])}, 0.0, spread.get(name)
                )
            elif name == "accuracy" and "teacher" in results:
                gap = _accuracy(results, "teacher") - _accuracy(results, "student")
                if gap <= 0:  # no gap to close: the claim has no meaning on these items
                    decided[name] = m | {"decision": CANNOT_TELL, "gap": gap}
                    continue
                closed = {k: (v / gap if k in ("diff", "low", "high") else v) for k, v in m.items()}
                decision = closed | {"decision": decide(closed["low"], closed["high"], 0.5), "gap": gap}
                decided[name] = _within_spread(decision, 0.5 * gap, spread.get(name), scale=gap)
        if decided:
            claims.append(
                {"claim": claim.text, "better": claim.better, "worse": claim.worse, "measures": decided}
            )
    return {"claims": claims, "seed_spread": seeds, "spread": spread}


def _within_spread(
    measure: dict[str, Any], threshold: float, spread: float | None, scale: float = 1.0
) -> dict[str, Any]:
    """`measure` (diff on `scale`'s scale) made cannot tell when its difference from `threshold` (on the
    raw scale) is no larger than the training-seed `spread`."""
    if spread is None or measure["decision"] == CANNOT_TELL:
        return measure
    if abs(measure["diff"] * scale - threshold) <= spread:
        return measure | {"decision": CANNOT_TELL, "within_seed_spread": True}
    return measure


def _accuracy(results: Mapping[str, Sequence[ItemResult]], variant: str) -> float:
    rows = results[variant]
    return sum(r.correct for r in rows) / len(rows)


_LABELS = {
    "accuracy": ("MMLU accuracy", lambda x: f"{x * 100:+.1f}"),
    "gold_logprob": ("MMLU gold log-prob", lambda x: f"{x:+.3f}"),
    "kl_reduction": ("held-out KL reduction", lambda x: f"{x:+.4f}"),
}


def verdict_markdown(table: Mapping[str, Any]) -> str:
    """The verdict table (one row per claim, one column per measure: decision and interval) and the seed
    spread, as the README shows them."""
    header = "| claim | " + " | ".join(label for label, _ in _LABELS.values()) + " |"
    lines = [header, "|---|" + "---|" * len(_LABELS)]
    for claim in table["claims"]:
        cells = []
        for key, (_, fmt) in _LABELS.items():
            m = claim["measures"].get(key)
            if m is None:
                cells.append("—")
            elif "gap" in m:
                cells.append(
                    f"**{m['decision']}**: gap closed {m['diff']:.2f} [{m['low']:.2f}, {m['high']:.2f}] "
                    f"vs 0.5"
                )
            else:
                seed = "†" if m.get("within_seed_spread") else ""
                cells.append(
                    f"**{m['decision']}**{seed}: {fmt(m['diff'])} [{fmt(m['low'])}, {fmt(m['high'])}]"
                )
        lines.append(f"| {claim['claim']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Differences are better − worse (accuracy in points; log-prob in nats; KL reduction in nats/token, "
        "positive = closer to the teacher) with 95% paired-bootstrap intervals."
        + (
            " †: the interval is on one side, but the difference is within the training-seed spread below."
            if any(m.get("within_seed_spread") for c in table["claims"] for m in c["measures"].values())
            else ""
        ),
    ]
    if table["seed_spread"]:
        lines += ["", "Training-seed spread (same variant, train.seed + 1 − train.seed):", ""]
        lines += ["| pair | " + " | ".join(label for label, _ in _LABELS.values()) + " |"]
        lines += ["|---|" + "---|" * len(_LABELS)]
        for pair, found in table["seed_spread"].items():
            cells = [
                "—"
                if key not in found
                else f"{fmt(found[key]['diff'])} [{fmt(found[key]['low'])}, {fmt(found[key]['high'])}]"
                for key, (_, fmt) in _LABELS.items()
            ]
            lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
