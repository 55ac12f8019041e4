"""The study's verdict, paper claim by paper claim: each claim is a paired comparison of two variants on the
same items (MMLU accuracy, MMLU gold log-prob) or held-out examples (KL to the teacher), decided by its 95%
paired-bootstrap interval: held when the interval lies on the claimed side of zero, not held when it lies
on the other side, cannot tell when it covers zero. "Closes most of the gap" is decided on the accuracy gap
closed, (variant − student) / (teacher − student), against 0.5, its interval the accuracy difference's
interval over the fixed teacher-student gap. Each interval also carries the training-seed variance: a
variant is one training run, and the study trains sft and v1 twice (train.seed + 1), so the root mean
square of those twins' differences, per measure, widens every interval in quadrature (z times it). With
two seed pairs that term is itself rough; it is printed beside the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from semalign.evaluation.agreement_summary import compare_agreement
from semalign.evaluation.results import ItemResult, compare_paired

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
    Claim("SemAlign (v1) closes most of the gap", "v1", "student", most_of_gap=True),
    Claim("SemAlign (v1) > SEEKING", "v1", "seeking"),
    Claim("SEEKING > LaTen", "seeking", "laten"),
    Claim("SemAlign (v1) ≥ kd", "v1", "kd"),
    Claim("SemAlign (v1) ≥ sft", "v1", "sft"),
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
    """Every claim of CLAIMS whose variants ran, decided per measure on its interval widened by the
    training-seed term; the seed pairs' differences and that term per measure."""
    seeds = {f"{a} vs {b}": found for a, b in SEED_PAIRS if (found := measures(results, agreement, b, a))}
    seed_term = {
        name: math.sqrt(sum(f[name]["diff"] ** 2 for f in with_name) / len(with_name))
        for name in _LABELS  # a fixed order: the markdown lists the terms in it
        if (with_name := [f for f in seeds.values() if name in f])
    }
    claims = []
    for claim in CLAIMS:
        decided = {}
        for name, m in measures(results, agreement, claim.better, claim.worse).items():
            m = _with_seed_term(m, seed_term.get(name, 0.0))
            if not claim.most_of_gap:
                decided[name] = _decided(m, 0.0)
            elif name == "accuracy" and "teacher" in results:
                gap = _accuracy(results, "teacher") - _accuracy(results, "student")
                if gap <= 0:  # no gap to close: the claim has no meaning on these items
                    decided[name] = {"decision": CANNOT_TELL, "gap": gap, "n": m["n"]}
                    continue
                scaled = ("diff", "low", "high", "items_low", "items_high")
                closed = {k: (v / gap if k in scaled else v) for k, v in m.items()}
                decided[name] = _decided(closed, 0.5) | {"gap": gap}
        if decided:
            claims.append(
                {"claim": claim.text, "better": claim.better, "worse": claim.worse, "measures": decided}
            )
    return {"claims": claims, "seed_spread": seeds, "seed_term": seed_term}


def _with_seed_term(measure: dict[str, Any], term: float, z: float = 1.959964) -> dict[str, Any]:
    """`measure` with its paired interval (over items) kept as items_low/items_high and widened, side by
    side, by z · `term` in quadrature: each variant is one training run, and two runs of the same variant
    differ by `term` (root mean square over the seed pairs) before any item is drawn."""
    diff, low, high = measure["diff"], measure["low"], measure["high"]
    if low is None or high is None:
        return measure | {"items_low": low, "items_high": high}
    return measure | {
        "items_low": low,
        "items_high": high,
        "low": diff - math.hypot(diff - low, z * term),
        "high": diff + math.hypot(high - diff, z * term),
    }


def _decided(measure: dict[str, Any], threshold: float) -> dict[str, Any]:
    """`measure` decided on its widened interval; `seed_decides` when the interval over items alone would
    have decided otherwise (the training-seed term made the difference)."""
    decision = decide(measure["low"], measure["high"], threshold)
    on_items = decide(measure["items_low"], measure["items_high"], threshold)
    return measure | {"decision": decision} | ({"seed_decides": True} if on_items != decision else {})


def _accuracy(results: Mapping[str, Sequence[ItemResult]], variant: str) -> float:
    rows = results[variant]
    return sum(r.correct for r in rows) / len(rows)


# measure: (column label, short name in the seed line, format of a difference)
_LABELS = {
    "accuracy": ("MMLU accuracy", "acc", lambda x: f"{x * 100:+.1f}"),
    "gold_logprob": ("MMLU gold log-prob", "log-prob", lambda x: f"{x:+.3f}"),
    "kl_reduction": ("held-out KL reduction", "KL", lambda x: f"{x:+.4f}"),
}


def verdict_markdown(table: Mapping[str, Any]) -> str:
    """The verdict table (one row per claim, one column per measure: decision and interval), the seed pairs
    and the seed term, as the README shows them."""
    header = "| claim | " + " | ".join(label for label, _, _ in _LABELS.values()) + " |"
    lines = [header, "|---|" + "---|" * len(_LABELS)]
    for claim in table["claims"]:
        cells = []
        for key, (_, _, fmt) in _LABELS.items():
            m = claim["measures"].get(key)
            seed = "†" if m is not None and m.get("seed_decides") else ""
            if m is None:
                cells.append("—")
            elif "gap" in m and "diff" not in m:
                cells.append(f"**{m['decision']}**: no teacher-student gap on these items")
            elif "gap" in m:
                interval = f"[{m['low']:.2f}, {m['high']:.2f}]"
                cells.append(f"**{m['decision']}**{seed}: gap closed {m['diff']:.2f} {interval} vs 0.5")
            else:
                cells.append(
                    f"**{m['decision']}**{seed}: {fmt(m['diff'])} [{fmt(m['low'])}, {fmt(m['high'])}]"
                )
        lines.append(f"| {claim['claim']} | " + " | ".join(cells) + " |")
    seeded = any(m.get("seed_decides") for c in table["claims"] for m in c["measures"].values())
    lines += [
        "",
        "Better − worse (accuracy points, log-prob nats, KL nats/token; + = closer to the teacher); 95% "
        "paired-bootstrap interval over items, widened in quadrature by 1.96 × the seed term below."
        + (" †: the item interval alone decided otherwise." if seeded else ""),
    ]
    if table["seed_spread"]:
        pairs = [
            f"{pair}: "
            + ", ".join(f"{_LABELS[key][2](m['diff'])} {_LABELS[key][1]}" for key, m in found.items())
            for pair, found in table["seed_spread"].items()
        ]
        terms = ", ".join(
            f"{_LABELS[key][2](term).lstrip('+')} {_LABELS[key][1]}"
            for key, term in table["seed_term"].items()
        )
        lines += [
            "",
            "Training-seed pairs (train.seed + 1 − train.seed): "
            + "; ".join(pairs)
            + f". Seed term: {terms}.",
        ]
    return "\n".join(lines) + "\n"
