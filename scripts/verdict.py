"""The study's verdict from its per-item results (results/study/data/eval/mmlu/<variant>/lm_eval.jsonl and
results/study/data/agreement/mmlu/<variant>.jsonl): results/study/verdict.json and verdict.md, which
scripts/readme_results.py copies into the README.

    python scripts/verdict.py
"""

import json
from pathlib import Path

from semalign.evaluation.agreement import read_agreement
from semalign.evaluation.runner import read_results
from semalign.evaluation.verdict import verdict, verdict_markdown

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results/study"


def main() -> None:
    results = {
        path.parent.name: read_results(path)
        for path in sorted((STUDY / "data/eval/mmlu").glob("*/lm_eval.jsonl"))
    }
    agreement = read_agreement(STUDY / "data/agreement").get("mmlu", {})
    table = verdict(results, agreement)
    (STUDY / "verdict.json").write_text(json.dumps(table, indent=2) + "\n")
    (STUDY / "verdict.md").write_text(verdict_markdown(table))
    print((STUDY / "verdict.md").read_text())


if __name__ == "__main__":
    main()
