"""The results table (paper Table 1): rows student, teacher, then methods; columns tasks.

Cells are accuracy (pass@1 for code) with its 95% Wilson interval and n. Each method also gets the share
of the teacher-student gap it closes, (method - student) / (teacher - student), where both ends exist and
differ, and a paired comparison against the student on the items both answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from semalign.evaluation.agreement import agreement_display
from semalign.evaluation.runner import ItemResult, compare_paired

BASE_ROWS = ("student", "teacher")
TASK_ORDER = ("mmlu", "gsm8k", "asdiv", "humaneval", "mbpp")
_CELL_KEYS = ("accuracy", "ci_low", "ci_high", "n")


def build_table(
    summaries: Mapping[str, Mapping[str, Mapping[str, Any]]],
    results: Mapping[str, Mapping[str, Sequence[ItemResult]]] | None = None,
) -> dict[str, Any]:
    """The table from summaries[variant][task] (the evaluate metrics) and, for the paired comparisons,
    per-item results[variant][task]. Any variants and tasks may be missing."""
    results = results or {}
    tasks = [t for t in TASK_ORDER if any(t in row for row in summaries.values())]
    tasks += sorted({t for row in summaries.values() for t in row} - set(tasks))
    methods = sorted(set(summaries) - set(BASE_ROWS))
    variants = [v for v in BASE_ROWS if v in summaries] + methods
    rows = {
        v: {t: {key: summaries[v][t][key] for key in _CELL_KEYS} for t in tasks if t in summaries[v]}
        for v in variants
    }
    student, teacher = summaries.get("student", {}), summaries.get("teacher", {})
    gap_closed, paired = {}, {}
    for method in methods:
        gap_closed[method] = {}
        for task in tasks:
            if task in summaries[method] and task in student and task in teacher:
                gap = teacher[task]["accuracy"] - student[task]["accuracy"]
                gained = summaries[method][task]["accuracy"] - student[task]["accuracy"]
                gap_closed[method][task] = gained / gap if gap != 0 else None
        paired[method] = {
            task: compare_paired(results["student"][task], results[method][task])
            for task in tasks
            if task in results.get("student", {}) and task in results.get(method, {})
        }
    return {
        "tasks": tasks,
        "variants": variants,
        "rows": rows,
        "gap_closed": gap_closed,
        "paired_vs_student": paired,
    }


def result_tables(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The table as display tables {"title", "note", "headers", "rows"} of strings: Table 1 ("acc [lo, hi]
    (n)"), then, where present, gap closed, the paired tests against the student and teacher agreement."""
    tasks = table["tasks"]
    tables = [
        {
            "title": "Results",
            "note": "Accuracy (pass@1 for code) [95% Wilson interval] (items).",
            "headers": ["variant", *tasks],
            "rows": [
                [variant, *(_cell(table["rows"][variant].get(task)) for task in tasks)]
                for variant in table["variants"]
            ],
        }
    ]
    if table["gap_closed"]:
        tables.append(
            {
                "title": "Gap closed: (method - student) / (teacher - student)",
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
    comparisons = [(m, t, c) for m, by_task in table["paired_vs_student"].items() for t, c in by_task.items()]
    if comparisons:
        tables.append(
            {
                "title": "Method vs student, paired on items",
                "note": "",
                "headers": [
                    "method",
                    "task",
                    "n",
                    "diff [95% bootstrap]",
                    "only method right",
                    "only student right",
                    "McNemar p",
                ],
                "rows": [
                    [
                        method,
                        task,
                        str(c["n"]),
                        f"{c['diff']:+.3f} [{c['diff_low']:+.3f}, {c['diff_high']:+.3f}]",
                        str(c["b01"]),
                        str(c["b10"]),
                        f"{c['mcnemar_p']:.3g}",
                    ]
                    for method, task, c in comparisons
                ],
            }
        )
    return tables + agreement_display(table.get("agreement", {}))


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a markdown table."""
    return [
        "| " + " | ".join(headers) + " |",
        "|---" * len(headers) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def render_markdown(table: Mapping[str, Any]) -> str:
    """Table 1 as markdown ("acc [lo, hi] (n)"), then gap closed and the paired tests against the student."""
    lines = []
    for i, part in enumerate(result_tables(table)):
        lines += [("# " if i == 0 else "## ") + part["title"], ""] + (
            [part["note"], ""] if part["note"] else []
        )
        lines += markdown_table(part["headers"], part["rows"]) + [""]
    return "\n".join(lines[:-1]) + "\n"


def _cell(cell: Mapping[str, Any] | None) -> str:
    if cell is None:
        return "—"
    return f"{cell['accuracy']:.3f} [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}] ({cell['n']})"
