"""The per-item results file of an evaluation and what is read from it.

A results file is JSONL: a header line {"identity": ...} (the task, the settings and the model the results
belong to), then one ItemResult per line, appended as batches finish, so an interrupted run resumes where
it stopped. From these: the summary of one variant (accuracy with its interval, MMLU letter statistics,
math readings, pass@k) and paired comparisons of two variants on the same items. No torch: the table,
report, power and verdict read results without loading a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semalign.errors import SemalignError
from semalign.evaluation.answers import mmlu_choice
from semalign.evaluation.metrics import (
    mcnemar,
    minimum_detectable_difference,
    paired_bootstrap,
    pass_at_k,
    summarise,
    wilson_interval,
)
from semalign.tasks import LETTERS


@dataclass(frozen=True)
class ItemResult:
    """One item's outcome: whether it was right, the answer taken (letter, number or code), and the rest
    (log-probs, the raw completion, sandbox status) in `detail`."""

    item_id: str
    correct: bool
    prediction: str
    detail: dict[str, Any] = field(default_factory=dict)


_FIELDS = {"item_id", "correct", "prediction", "detail"}


def parse_results(path: Path) -> tuple[dict | None, dict[str, ItemResult], int]:
    """(header, results by item_id, bytes of the well-formed prefix) of a results file."""
    if not path.exists():
        return None, {}, 0
    data = path.read_bytes()
    header, results, good = None, {}, 0
    for line in data.splitlines(keepends=True):
        row = _row(line)
        if row is None or (good > 0 and set(row) != _FIELDS):
            if good + len(line) < len(data):
                raise SemalignError(
                    f"{path} is damaged after byte {good}, before its last line; delete it to rerun"
                )
            break
        if good == 0:
            header = row.get("identity")
        else:
            results[row["item_id"]] = ItemResult(**row)
        good += len(line)
    return header, results, good


def _row(line: bytes) -> dict | None:
    """A complete line's JSON object; None for a half-written or malformed line."""
    try:
        row = json.loads(line) if line.endswith(b"\n") else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return row if isinstance(row, dict) else None


def read_results(path: str | Path) -> list[ItemResult]:
    """The item results of a results file, in file order (a half-written last line is ignored)."""
    _, results, _ = parse_results(Path(path))
    return list(results.values())


def read_variant_results(task_dir: Path, protocol: str) -> dict[str, list[ItemResult]]:
    """{variant: its item results} from every <variant>/<protocol>.jsonl under a task's evaluation folder
    (data/eval/<task>)."""
    return {path.parent.name: read_results(path) for path in sorted(task_dir.glob(f"*/{protocol}.jsonl"))}


def resume_results(path: Path, header: dict) -> dict[str, ItemResult]:
    """The results already in `path` if it was written under `header`; otherwise (or when it does not
    exist) a fresh file holding only the header. A half-written last line is cut off."""
    found, results, good = parse_results(path)
    if found != header:
        write_results(path, header)
        return {}
    if good < path.stat().st_size:
        os.truncate(path, good)
    return results


def _lines(results: Sequence[ItemResult]) -> str:
    """One JSON line per result, as results files hold them."""
    return "".join(json.dumps(asdict(result), ensure_ascii=False) + "\n" for result in results)


def write_results(path: Path, header: dict, results: Sequence[ItemResult] = ()) -> None:
    """Replace `path` atomically by a results file of `header` and `results`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"identity": header}) + "\n" + _lines(results), encoding="utf-8")
    os.replace(partial, path)


def append_results(path: Path, results: Sequence[ItemResult]) -> None:
    """Append `results` to `path` and fsync, so a killed run loses at most the batch being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(_lines(results))
        f.flush()
        os.fsync(f.fileno())


def summarise_results(results: Sequence[ItemResult]) -> dict[str, Any]:
    """{n, accuracy, ci_low, ci_high} (95% Wilson; accuracy is pass@1 for code), plus pass@1 and pass@n
    from all samples when the results carry sample counts, the MMLU letter statistics (`_mmlu_summary`) and
    the math readings (`_math_summary`)."""
    summary: dict[str, Any] = summarise([result.correct for result in results])
    details = [result.detail for result in results]
    if details and all("gold" in detail for detail in details):
        summary |= _mmlu_summary(details)
    if details and all("truncated" in detail for detail in details):
        summary |= _math_summary(details)
    sampled = [detail for detail in details if "samples" in detail]
    if sampled and len(sampled) == len(results):
        n = min(detail["samples"] for detail in sampled)
        for k in sorted({1, n}):
            summary[f"pass@{k}"] = sum(pass_at_k(d["samples"], d["passed"], k) for d in sampled) / len(
                sampled
            )
    return summary


def gold_logprob(detail: dict[str, Any], renormalised: bool = True) -> float:
    """An MMLU item's log-prob of its gold letter, renormalised over A-D (log p(gold) - log sum p(A-D)) or
    raw (the next-token log-prob). The renormalised one does not move when only the letter mass does."""
    logprobs = np.array([detail["logprobs"][letter] for letter in LETTERS], dtype=np.float64)
    gold = logprobs[LETTERS.index(detail["gold"])]
    return float(gold - np.logaddexp.reduce(logprobs)) if renormalised else float(gold)


def _mmlu_summary(details: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean letter mass (far below 1: the model wanted to answer otherwise), mean gold log-prob raw and
    renormalised over A-D, mean renormalised gold probability, the predicted-letter histogram, and the best
    constant-letter baseline on the same items (always answering the most frequent gold letter)."""
    n = len(details)
    renormalised = [gold_logprob(detail) for detail in details]
    predicted = {letter: 0 for letter in LETTERS}
    golds = {letter: 0 for letter in LETTERS}
    for detail in details:
        predicted[mmlu_choice([detail["logprobs"][letter] for letter in LETTERS])] += 1
        golds[detail["gold"]] += 1
    best = max(LETTERS, key=lambda letter: (golds[letter], -LETTERS.index(letter)))
    return {
        "letter_mass_mean": sum(detail["letter_mass"] for detail in details) / n,
        "gold_logprob_mean": sum(gold_logprob(detail, renormalised=False) for detail in details) / n,
        "gold_logprob_renorm_mean": sum(renormalised) / n,
        "gold_prob_renorm_mean": float(np.exp(renormalised).mean()),
        "predicted_letters": predicted,
        "constant_baseline": {"letter": best, "accuracy": golds[best] / n},
    }


def _math_summary(details: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The strict reading's accuracy with its Wilson interval, and the share of completions cut by
    max_new_tokens (counted wrong by both readings); `accuracy` is the flexible reading."""
    n, strict = len(details), sum(detail["strict_correct"] for detail in details)
    low, high = wilson_interval(strict, n)
    return {
        "strict_accuracy": strict / n,
        "strict_ci_low": low,
        "strict_ci_high": high,
        "truncated_share": sum(detail["truncated"] for detail in details) / n,
    }


def compare_paired(
    base: Sequence[ItemResult], other: Sequence[ItemResult], iters: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """`other` against `base` on the items both have (joined on item_id): exact McNemar (b01: items only
    `other` got right, b10: only `base`), the paired-bootstrap accuracy difference other - base and the
    smallest accuracy difference these items can detect (`minimum_detectable_difference`); for MMLU also the
    paired-bootstrap difference of the renormalised gold log-prob and its detectable difference."""
    base_by_id = {result.item_id: result for result in base}
    pairs = [(base_by_id[result.item_id], result) for result in other if result.item_id in base_by_id]
    if not pairs:
        raise SemalignError(
            "the two result sets share no item_id; compare results of the same task's evaluation split"
        )
    a, b = [x.correct for x, _ in pairs], [y.correct for _, y in pairs]
    b01, b10, p = mcnemar(a, b)
    diff, low, high = paired_bootstrap([float(y) for y in b], [float(x) for x in a], iters=iters, seed=seed)
    compared = {
        "n": len(pairs),
        "b01": b01,
        "b10": b10,
        "mcnemar_p": p,
        "diff": diff,
        "diff_low": low,
        "diff_high": high,
        "mdd": _detectable([float(y) - float(x) for x, y in zip(a, b)]),
    }
    if all("gold" in x.detail and "gold" in y.detail for x, y in pairs):
        base_lp = [gold_logprob(x.detail) for x, _ in pairs]
        other_lp = [gold_logprob(y.detail) for _, y in pairs]
        lp_diff, lp_low, lp_high = paired_bootstrap(other_lp, base_lp, iters=iters, seed=seed)
        compared |= {
            "gold_logprob_diff": lp_diff,
            "gold_logprob_diff_low": lp_low,
            "gold_logprob_diff_high": lp_high,
            "gold_logprob_mdd": _detectable([y - x for x, y in zip(base_lp, other_lp)]),
        }
    return compared


def _detectable(differences: list[float]) -> float | None:
    """minimum_detectable_difference, or None when the differences have no spread to measure (one item, or
    all equal, e.g. a variant that answers every item as the base does): zero would claim too much."""
    # 1e-12: equal differences computed in float64 can differ in their last bits
    if len(differences) < 2 or float(np.ptp(differences)) <= 1e-12:
        return None
    return minimum_detectable_difference(differences)
