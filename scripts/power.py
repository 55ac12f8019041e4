"""The study's power statement, computed before it runs from the default run's per-item results: the
spreads of MMLU accuracy and gold log-prob (data/eval/mmlu/<variant>/lm_eval.jsonl) and of held-out KL
(data/agreement/mmlu/<variant>.jsonl), the pairs a 2-point MMLU and a 5 % KL-gap-closed difference need,
and what the sizes in study.yaml detect. Writes results/study/power.json and power.md.

    python scripts/power.py
"""

import json
from pathlib import Path

import yaml

from semalign.evaluation.agreement_summary import read_agreement
from semalign.evaluation.power import plan_markdown, power_plan
from semalign.evaluation.results import read_variant_results

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results/study"


def main() -> None:
    study = yaml.safe_load((ROOT / "study.yaml").read_text())["overrides"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    mmlu = read_variant_results(ROOT / "data/eval/mmlu", "lm_eval")
    agreement = read_agreement(ROOT / "data/agreement").get("mmlu", {})
    # The study's sizes: its overrides, else the default's params.
    sizes = {
        "mmlu_items": study.get("evaluate.limit.mmlu", params["evaluate"]["limit"]["mmlu"]),
        "agreement_examples": study.get(
            "data.tasks.mmlu.agreement", params["data"]["tasks"]["mmlu"]["agreement"]
        ),
    }
    plan = power_plan(mmlu, agreement, sizes)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "power.json").write_text(json.dumps(plan, indent=2) + "\n")
    measured = ", ".join(f"{v} (n={s['n']})" for v, s in plan["spreads"].items())
    (OUT / "power.md").write_text(
        "Paired, two-sided alpha 0.05, power 0.8 (`semalign.evaluation.power`); spreads of the default "
        f"run's {measured}; held-out KL on {plan['kl']['n']} examples (student KL "
        f"{plan['kl']['student_kl_mean']:.3f} ± {plan['kl']['student_kl_sd']:.3f} nats/token). The second "
        "spread does not depend on how far the default trained: the teacher-vs-student spread (MMLU), "
        "2·sd(KL_student) (KL); plan with the larger.\n\n" + plan_markdown(plan)
    )
    print((OUT / "power.md").read_text())


if __name__ == "__main__":
    main()
