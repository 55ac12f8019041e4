"""Teacher agreement rows (semalign.evaluation.agreement: per example, KL(teacher ‖ variant) and top-1
agreement over all real tokens and over the answer positions) summarised, compared and tabulated.

Summaries average the per-example means (every example weighs the same), with percentile-bootstrap intervals
over examples; a variant is compared with the student by a paired bootstrap over the same examples, and "KL
gap closed" is (KL_student − KL_variant) / KL_student. No torch: the table, report and verdict read rows
without loading a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from semalign.errors import SemalignError
from semalign.evaluation.metrics import bootstrap_interval, paired_bootstrap

# Every variant's KL is paired against each of these that was run: the untouched student, then the
# baselines a transfer must beat (sft, kd).
AGREEMENT_REFERENCES = ("student", "sft", "kd")
POSITIONS = {"all": "", "answer": "answer_"}  # position set -> prefix of its per-example keys
MEASURES = ("kl", "top1")


def summarise_agreement(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """{n, tokens, answer_tokens} and, per measure (kl, top1, answer_kl, answer_top1), the mean over examples
    with its 95% bootstrap interval (`<measure>_ci_low`, `<measure>_ci_high`)."""
    summary: dict[str, Any] = {
        "n": len(rows),
        "tokens": sum(row["tokens"] for row in rows),
        "answer_tokens": sum(row["answer_tokens"] for row in rows),
    }
    for key in _measure_keys():
        mean, low, high = bootstrap_interval([row[key] for row in rows])
        summary |= {key: mean, f"{key}_ci_low": low, f"{key}_ci_high": high}
    return summary


def compare_agreement(
    student: Sequence[Mapping[str, Any]], variant: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """`variant` against `student` on the same examples: per measure the paired-bootstrap difference
    variant − student (`<measure>_diff`, `_diff_low`, `_diff_high`), and `kl_gap_closed` /
    `answer_kl_gap_closed` = (KL_student − KL_variant) / KL_student with its interval (`_low`, `_high`: the
    difference's interval over the fixed KL_student; all None when KL_student is 0). `student` may be any
    reference variant (sft, kd): the gap closed is then the share of that reference's KL."""
    ids = [row["item_id"] for row in student]
    if [row["item_id"] for row in variant] != ids:
        raise SemalignError(
            "the variant's and the student's agreement rows are not the same examples in the same order; "
            "rerun both agree stages on the current agreement split"
        )
    comparison: dict[str, Any] = {"n": len(ids)}
    for key in _measure_keys():
        diff, low, high = paired_bootstrap([row[key] for row in variant], [row[key] for row in student])
        comparison |= {f"{key}_diff": diff, f"{key}_diff_low": low, f"{key}_diff_high": high}
    for prefix in POSITIONS.values():
        base = sum(row[f"{prefix}kl"] for row in student) / len(student)
        closed = {
            "": -comparison[f"{prefix}kl_diff"],
            "_low": -comparison[f"{prefix}kl_diff_high"],
            "_high": -comparison[f"{prefix}kl_diff_low"],
        }
        for suffix, gained in closed.items():
            comparison[f"{prefix}kl_gap_closed{suffix}"] = gained / base if base > 0 else None
    return comparison


def agreement_table(rows: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> dict[str, Any]:
    """From per-example rows[task][variant]: {task: {variant: summary (+ "vs_<reference>" for each of
    AGREEMENT_REFERENCES other than the variant whose rows exist)}}."""
    table = {}
    for task, by_variant in sorted(rows.items()):
        table[task] = {}
        for variant, variant_rows in sorted(by_variant.items(), key=lambda kv: (kv[0] != "student", kv[0])):
            table[task][variant] = summarise_agreement(variant_rows)
            for base in AGREEMENT_REFERENCES:
                if variant != base and base in by_variant:
                    table[task][variant][f"vs_{base}"] = compare_agreement(by_variant[base], variant_rows)
    return table


def agreement_display(table: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The agreement table as display tables {"title", "note", "headers", "rows"} of strings (the layout of
    `semalign.evaluation.table.result_tables`), one per task."""
    parts = []
    for task, by_variant in table.items():
        references = [ref for ref in AGREEMENT_REFERENCES[1:] if ref in by_variant]
        rows = []
        for variant, s in by_variant.items():
            vs = s.get("vs_student")
            rows.append(
                [
                    variant,
                    str(s["n"]),
                    f"{s['kl']:.4g} [{s['kl_ci_low']:.4g}, {s['kl_ci_high']:.4g}]",
                    _diff_cell(vs),
                    "—" if vs is None or vs["kl_gap_closed"] is None else f"{vs['kl_gap_closed']:.3f}",
                    f"{s['top1']:.3f} [{s['top1_ci_low']:.3f}, {s['top1_ci_high']:.3f}]",
                    f"{s['answer_kl']:.4g}",
                    f"{s['answer_top1']:.3f}",
                    *(_diff_cell(s.get(f"vs_{ref}")) for ref in references),
                ]
            )
        parts.append(
            {
                "title": f"Teacher agreement, {task} (held-out agreement split)",
                "note": "KL(teacher ‖ variant) per token over the teacher's top-k tokens + the rest, mean "
                "over examples of the mean over every real token [95% bootstrap over examples]; vs student: "
                "paired bootstrap of the difference; gap closed = (KL_student − KL) / KL_student; top-1: the "
                "variant's argmax is the teacher's; answer: positions predicting the target only.",
                "headers": [
                    "variant",
                    "n",
                    "KL",
                    "KL − student",
                    "KL gap closed",
                    "top-1 agreement",
                    "answer KL",
                    "answer top-1",
                    *(f"KL − {ref}" for ref in references),
                ],
                "rows": rows,
            }
        )
    return parts


def _diff_cell(vs: Mapping[str, Any] | None) -> str:
    if vs is None:
        return "—"
    return f"{vs['kl_diff']:+.3g} [{vs['kl_diff_low']:+.3g}, {vs['kl_diff_high']:+.3g}]"


def _measure_keys() -> list[str]:
    return [f"{prefix}{m}" for prefix in POSITIONS.values() for m in MEASURES]


def read_agreement(folder: Path) -> dict[str, dict[str, list[dict]]]:
    """Per-example agreement rows[task][variant] from every <task>/<variant>.jsonl under `folder`."""
    rows = {}
    for path in sorted(folder.glob("*/*.jsonl")):
        lines = path.read_text().splitlines()
        rows.setdefault(path.parent.name, {})[path.stem] = [json.loads(line) for line in lines]
    return rows
