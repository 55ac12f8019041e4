"""The study's verdict from its per-item results (results/study/data/eval/mmlu/<variant>/lm_eval.jsonl and
results/study/data/agreement/mmlu/<variant>.jsonl): results/study/verdict.json and verdict.md, which
scripts/readme_results.py copies into the README.

    python scripts/verdict.py
"""

import json
from pathlib import Path

from semalign.evaluation.agreement_summary import read_agreement
from semalign.evaluation.results import read_variant_results
from semalign.evaluation.verdict import verdict, verdict_markdown

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results/study"


def main() -> None:
    results = read_variant_results(STUDY / "data/eval/mmlu", "lm_eval")
    agreement = read_agreement(STUDY / "data/agreement").get("mmlu", {})
    table = verdict(results, agreement)
    (STUDY / "verdict.json").write_text(json.dumps(table, indent=2) + "\n")
    (STUDY / "verdict.md").write_text(verdict_markdown(table))
    print((STUDY / "verdict.md").read_text())


if __name__ == "__main__":
    main()
