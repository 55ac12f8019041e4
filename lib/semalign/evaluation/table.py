"""The results tables (paper Table 1), one per evaluation protocol: rows student, teacher, then methods;
columns tasks. The `lm_eval` protocol's table comes first (the headline), the `chat` protocol's second.

Cells are accuracy (pass@1 for code) with its 95% Wilson interval and n. Each method also gets the share
of the teacher-student gap it closes, (method - student) / (teacher - student), where both ends exist and
differ. Every variant is paired on the items both answered against the student (the teacher too: the gap
the instrument must see) and every method against the reference baselines that were run, sft (task-matched
fine-tuning) and kd (distillation from the cached top-k): McNemar on accuracy,
paired bootstrap on the accuracy and (MMLU) renormalised gold log-prob differences, and the smallest
difference those items can detect (alpha 0.05, power 0.8). Per task, the continuous columns (MMLU gold
log-prob, letter mass, predicted letters, best constant letter; math strict reading and truncated share).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from semalign.evaluation.agreement_summary import agreement_display, agreement_table, read_agreement
from semalign.evaluation.results import ItemResult, compare_paired, read_results
from semalign.tasks import PROTOCOLS

BASE_ROWS = ("student", "teacher")
# The baselines every transfer must beat, each method paired against them where they were run.
REFERENCES = ("sft", "kd")
TASK_ORDER = ("mmlu", "gsm8k", "asdiv", "humaneval", "mbpp")
_CELL_KEYS = ("accuracy", "ci_low", "ci_high", "n")
# Per-variant statistics beside the accuracy, where the task's summaries carry them.
_DETAIL_KEYS = (
    "gold_logprob_renorm_mean",
    "gold_prob_renorm_mean",
    "gold_logprob_mean",
    "letter_mass_mean",
    "predicted_letters",
    "constant_baseline",
    "strict_accuracy",
    "strict_ci_low",
    "strict_ci_high",
    "truncated_share",
)

Summaries = Mapping[str, Mapping[str, Mapping[str, Any]]]
Results = Mapping[str, Mapping[str, Sequence[ItemResult]]]


def build_tables(summaries: Mapping[str, Summaries], results: Mapping[str, Results] | None = None) -> dict:
    """{"protocols": [names, lm_eval first], "tables": {protocol: build_table(...)}} from
    summaries[protocol][variant][task] and per-item results[protocol][variant][task]."""
    results = results or {}
    order = [p for p in PROTOCOLS if p in summaries] + sorted(set(summaries) - set(PROTOCOLS))
    return {
        "protocols": order,
        "tables": {p: build_table(summaries[p], results.get(p)) for p in order},
    }


def read_tables(metrics: Path, results: Path, agreement: Path) -> dict:
    """build_tables(...) over every <task>/<variant>.json present under `metrics` (the evaluate metrics), with
    the per-item results <task>/<variant>/<protocol>.jsonl under `results` for the paired tests, plus
    "agreement": agreement_table(...) over every <task>/<variant>.jsonl under `agreement`."""
    summaries, items = {}, {}
    for path in sorted(metrics.glob("*/*.json")):
        task, variant = path.parent.name, path.stem
        for protocol, summary in json.loads(path.read_text())["protocols"].items():
            summaries.setdefault(protocol, {}).setdefault(variant, {})[task] = summary
            per_item = results / task / variant / f"{protocol}.jsonl"
            if per_item.is_file():
                items.setdefault(protocol, {}).setdefault(variant, {})[task] = read_results(per_item)
    return build_tables(summaries, items) | {"agreement": agreement_table(read_agreement(agreement))}


def build_table(summaries: Summaries, results: Results | None = None) -> dict[str, Any]:
    """One protocol's table from summaries[variant][task] (the evaluate metrics) and, for the paired
    comparisons, per-item results[variant][task]. Any variants and tasks may be missing."""
    results = results or {}
    tasks = [t for t in TASK_ORDER if any(t in row for row in summaries.values())]
    tasks += sorted({t for row in summaries.values() for t in row} - set(tasks))
    methods = sorted(set(summaries) - set(BASE_ROWS))
    variants = [v for v in BASE_ROWS if v in summaries] + methods
    rows = {
        v: {t: {key: summaries[v][t][key] for key in _CELL_KEYS} for t in tasks if t in summaries[v]}
        for v in variants
    }
    details = {
        v: {
            t: {key: summaries[v][t][key] for key in _DETAIL_KEYS if key in summaries[v][t]}
            for t in tasks
            if t in summaries[v] and any(key in summaries[v][t] for key in _DETAIL_KEYS)
        }
        for v in variants
    }
    student, teacher = summaries.get("student", {}), summaries.get("teacher", {})
    gap_closed = {}
    for method in methods:
        gap_closed[method] = {}
        for task in tasks:
            if task in summaries[method] and task in student and task in teacher:
                gap = teacher[task]["accuracy"] - student[task]["accuracy"]
                gained = summaries[method][task]["accuracy"] - student[task]["accuracy"]
                gap_closed[method][task] = gained / gap if gap != 0 else None
    against_student = [v for v in variants if v != "student"]
    against_references = {
        f"paired_vs_{ref}": _paired(results, ref, [m for m in methods if m != ref], tasks)
        for ref in REFERENCES
    }
    return {
        "tasks": tasks,
        "variants": variants,
        "rows": rows,
        "details": details,
        "gap_closed": gap_closed,
        "paired_vs_student": _paired(results, "student", against_student, tasks),
        **against_references,
    }


def _paired(results: Results, base: str, others: Sequence[str], tasks: Sequence[str]) -> dict:
    """compare_paired(results[base][task], results[other][task]) for every other and task both have."""
    if base not in results:
        return {}
    return {
        other: {
            task: compare_paired(results[base][task], results[other][task])
            for task in tasks
            if task in results[base] and task in results.get(other, {})
        }
        for other in others
    }


def result_tables(tables: Mapping[str, Any]) -> list[dict[str, Any]]:
    """table.json as display tables {"title", "note", "headers", "rows"} of strings, protocol by protocol:
    Table 1 ("acc [lo, hi] (n)"), then, where present, the per-task statistics, gap closed and the paired
    tests against the student and against sft."""
    shown = []
    for i, protocol in enumerate(tables["protocols"]):
        label = f"{protocol} protocol" + (" (headline)" if i == 0 else "")
        shown += _protocol_tables(tables["tables"][protocol], label)
    return shown + agreement_display(tables.get("agreement", {}))


def _protocol_tables(table: Mapping[str, Any], label: str) -> list[dict[str, Any]]:
    tasks = table["tasks"]
    shown = [
        {
            "title": f"Results, {label}",
            "note": "Accuracy (pass@1 for code; math: the last number) [95% Wilson interval] (items).",
            "headers": ["variant", *tasks],
            "rows": [
                [variant, *(_cell(table["rows"][variant].get(task)) for task in tasks)]
                for variant in table["variants"]
            ],
        }
    ]
    for task in tasks:
        by_variant = {v: d[task] for v, d in table["details"].items() if task in d}
        if any("gold_logprob_renorm_mean" in d for d in by_variant.values()):
            shown.append(_mmlu_details(task, label, by_variant))
        if any("strict_accuracy" in d for d in by_variant.values()):
            shown.append(_math_details(task, label, by_variant))
    if table["gap_closed"]:
        shown.append(
            {
                "title": f"Gap closed: (method - student) / (teacher - student), {label}",
                "note": "",
                "headers": ["method", *tasks],
                "rows": [
                    [
                        method,
                        *("—" if by_task.get(task) is None else f"{by_task[task]:.2f}" for task in tasks),
                    ]
                    for method, by_task in table["gap_closed"].items()
                ],
            }
        )
    for base in ("student", *REFERENCES):
        key = f"paired_vs_{base}"
        comparisons = [(v, t, c) for v, by_task in table[key].items() for t, c in by_task.items()]
        if comparisons:
            shown.append(_paired_table(base, label, comparisons))
    return shown


def _mmlu_details(task: str, label: str, by_variant: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "title": f"{task}: gold log-prob and letter statistics, {label}",
        "note": "Gold log-prob and probability renormalised over A-D; letter mass: next-token probability "
        "on A-D; best constant: always answering the most frequent gold letter of these items.",
        "headers": [
            "variant",
            "gold log-prob",
            "gold prob",
            "raw gold log-prob",
            "letter mass",
            "predicted A/B/C/D",
            "best constant",
        ],
        "rows": [
            [
                variant,
                f"{d['gold_logprob_renorm_mean']:.3f}",
                f"{d['gold_prob_renorm_mean']:.3f}",
                f"{d['gold_logprob_mean']:.3f}",
                f"{d['letter_mass_mean']:.3f}",
                "/".join(str(count) for count in d["predicted_letters"].values()),
                f"{d['constant_baseline']['accuracy']:.3f} ({d['constant_baseline']['letter']})",
            ]
            for variant, d in by_variant.items()
        ],
    }


def _math_details(task: str, label: str, by_variant: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "title": f"{task}: strict reading and truncation, {label}",
        "note": "Strict: the number after '####' or 'the answer is' [95% Wilson]; truncated: completions cut "
        "by max_new_tokens (wrong under both readings).",
        "headers": ["variant", "strict accuracy", "truncated share"],
        "rows": [
            [
                variant,
                f"{d['strict_accuracy']:.3f} [{d['strict_ci_low']:.3f}, {d['strict_ci_high']:.3f}]",
                f"{d['truncated_share']:.3f}",
            ]
            for variant, d in by_variant.items()
        ],
    }


def _paired_table(base: str, label: str, comparisons: list) -> dict[str, Any]:
    return {
        "title": f"Paired on items against {base}, {label}",
        "note": "diff: variant - base [95% paired bootstrap]; detectable: the smallest paired difference "
        "these items detect (alpha 0.05, power 0.8) at the observed spread; gold log-prob renormalised "
        "over A-D.",
        "headers": [
            "variant",
            "task",
            "n",
            "accuracy diff",
            f"only variant right / only {base} right",
            "McNemar p",
            "detectable accuracy diff",
            "gold log-prob diff",
            "detectable gold log-prob diff",
        ],
        "rows": [
            [
                variant,
                task,
                str(c["n"]),
                _interval(c, "diff"),
                f"{c['b01']} / {c['b10']}",
                f"{c['mcnemar_p']:.3g}",
                _number(c.get("mdd")),
                _interval(c, "gold_logprob_diff") if "gold_logprob_diff" in c else "—",
                _number(c.get("gold_logprob_mdd")),
            ]
            for variant, task, c in comparisons
        ],
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a markdown table."""
    return [
        "| " + " | ".join(headers) + " |",
        "|---" * len(headers) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def render_markdown(tables: Mapping[str, Any]) -> str:
    """table.json as markdown: per protocol, Table 1 ("acc [lo, hi] (n)"), the per-task statistics, gap
    closed and the paired tests."""
    lines = []
    for i, part in enumerate(result_tables(tables)):
        lines += [("# " if i == 0 else "## ") + part["title"], ""] + (
            [part["note"], ""] if part["note"] else []
        )
        lines += markdown_table(part["headers"], part["rows"]) + [""]
    return "\n".join(lines[:-1]) + "\n"


def _cell(cell: Mapping[str, Any] | None) -> str:
    if cell is None:
        return "—"
    return f"{cell['accuracy']:.3f} [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}] ({cell['n']})"


def _interval(c: Mapping[str, Any], key: str) -> str:
    return f"{c[key]:+.3f} [{c[key + '_low']:+.3f}, {c[key + '_high']:+.3f}]"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
