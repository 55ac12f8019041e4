"""Stage `table`: every metrics/eval/<task>/<variant>.json present -> metrics/table.json and report/table.md
(paper Table 1 per evaluation protocol, lm_eval first: rows student, teacher, methods; columns tasks), with
the gap each method closes and the paired tests against the student and sft from the per-item results in
data/eval/<task>/<variant>/<protocol>.jsonl; then teacher agreement (KL to the teacher, top-1 agreement, KL
gap closed) from every per-example data/agreement/<task>/<variant>.jsonl."""

import json
from pathlib import Path

from semalign.evaluation.agreement import agreement_table, read_agreement
from semalign.evaluation.runner import read_results
from semalign.evaluation.table import build_tables, render_markdown
from semalign.files import write_json


def main() -> None:
    summaries, results = {}, {}
    for path in sorted(Path("metrics/eval").glob("*/*.json")):
        task, variant = path.parent.name, path.stem
        for protocol, summary in json.loads(path.read_text())["protocols"].items():
            summaries.setdefault(protocol, {}).setdefault(variant, {})[task] = summary
            items = Path("data/eval") / task / variant / f"{protocol}.jsonl"
            if items.is_file():
                results.setdefault(protocol, {}).setdefault(variant, {})[task] = read_results(items)
    tables = build_tables(summaries, results)
    tables["agreement"] = agreement_table(read_agreement(Path("data/agreement")))

    write_json(Path("metrics/table.json"), tables)
    Path("report").mkdir(exist_ok=True)
    Path("report/table.md").write_text(render_markdown(tables))
    shapes = ", ".join(
        f"{p}: {len(t['variants'])} variants x {len(t['tasks'])} tasks" for p, t in tables["tables"].items()
    )
    print(f"table: {shapes}")


if __name__ == "__main__":
    main()
