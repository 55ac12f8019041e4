"""Stage `table`: every metrics/eval/<task>/<variant>.json present -> metrics/table.json and report/table.md
(paper Table 1: rows student, teacher, methods; columns tasks), with the gap each method closes and its
paired test against the student from the per-item results in data/eval/; then teacher agreement (KL to the
teacher, top-1 agreement, KL gap closed) from every per-example data/agreement/<task>/<variant>.jsonl."""

import json
from pathlib import Path

from semalign.evaluation.agreement import agreement_table
from semalign.evaluation.runner import read_results
from semalign.evaluation.table import build_table, render_markdown
from semalign.files import write_json


def main() -> None:
    summaries, results = {}, {}
    for path in sorted(Path("metrics/eval").glob("*/*.json")):
        task, variant = path.parent.name, path.stem
        summaries.setdefault(variant, {})[task] = json.loads(path.read_text())
        items = Path("data/eval") / task / f"{variant}.jsonl"
        if items.is_file():
            results.setdefault(variant, {})[task] = read_results(items)
    table = build_table(summaries, results)
    table["agreement"] = agreement_table(read_agreement(Path("data/agreement")))

    write_json(Path("metrics/table.json"), table)
    Path("report").mkdir(exist_ok=True)
    Path("report/table.md").write_text(render_markdown(table))
    print(f"table: {len(table['variants'])} variants x {len(table['tasks'])} tasks")


def read_agreement(folder: Path) -> dict[str, dict[str, list[dict]]]:
    """Per-example agreement rows[task][variant] from every <task>/<variant>.jsonl under `folder`."""
    rows = {}
    for path in sorted(folder.glob("*/*.jsonl")):
        lines = path.read_text().splitlines()
        rows.setdefault(path.parent.name, {})[path.stem] = [json.loads(line) for line in lines]
    return rows


if __name__ == "__main__":
    main()
