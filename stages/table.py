"""Stage `table`: every evaluate metrics file present -> metrics/table.json and report/table.md (paper
Table 1 per evaluation protocol, lm_eval first: rows student, teacher, methods; columns tasks), with the gap
each method closes and the paired tests against the student and sft from the per-item results; then teacher
agreement (KL to the teacher, top-1 agreement, KL gap closed) from every per-example agreement file
(lib/semalign/evaluation/table.py)."""

import argparse
from pathlib import Path

from semalign.evaluation.table import read_tables, render_markdown
from semalign.files import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval-metrics", type=Path, required=True, help="<task>/<variant>.json of evaluate")
    parser.add_argument("--eval", type=Path, required=True, help="<task>/<variant>/<protocol>.jsonl")
    parser.add_argument("--agreement", type=Path, required=True, help="<task>/<variant>.jsonl of agree")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the tables, Markdown")
    args = parser.parse_args()
    tables = read_tables(args.eval_metrics, args.eval, args.agreement)
    write_json(args.metrics, tables)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_markdown(tables))
    shapes = ", ".join(
        f"{p}: {len(t['variants'])} variants x {len(t['tasks'])} tasks" for p, t in tables["tables"].items()
    )
    print(f"table: {shapes}")


if __name__ == "__main__":
    main()
