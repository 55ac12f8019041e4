"""Stage `evaluate@<task>-<variant>`: score one model on a task's evaluation split (paper §5.1).

variant: `teacher`, `student`, or a method whose output is data/adapters/<task>/<method>/: a LoRA adapter
merged into the student, or a student delta (delta.safetensors, the baselines) added to its weights.
Per-item results go to data/eval/<task>/<variant>.jsonl as each batch finishes, so a killed run resumes;
the summary with its 95% interval goes to metrics/eval/<task>/<variant>.json.
Data-parallel under `torchrun --nproc-per-node N`: each rank scores its share of the batches, rank 0 merges
the results into the same file and writes the metrics (greedy results identical to one process's).
"""

import argparse
import time
from pathlib import Path

import yaml

from semalign.config import build
from semalign.data import load_split
from semalign.distributed import Ranks
from semalign.errors import SemalignError
from semalign.evaluation.runner import EvalConfig, evaluate_task, merge_results, protocol, summarise_results
from semalign.evaluation.variants import load_variant
from semalign.files import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument(
        "--variant", required=True, help="teacher, student, or a method name (e.g. semalign-v1)"
    )
    args = parser.parse_args()
    params = yaml.safe_load(Path("params.yaml").read_text())
    section = params.get("evaluate") or {}
    if "chat_template" in section:
        raise SemalignError(
            "evaluate.chat_template is taken from data.chat_template (the prompts training used); "
            "remove it from the evaluate section"
        )
    config = build(EvalConfig, {**section, "chat_template": params["data"]["chat_template"]}, "evaluate")

    _, items = load_split(Path("data/tasks") / args.task, "evaluation")
    with Ranks() as ranks:
        model, tokenizer, weights = load_variant(args.task, args.variant, ranks.device)
        started = time.perf_counter()
        path, identity = (
            Path("data/eval") / args.task / f"{args.variant}.jsonl",
            {"variant": args.variant, "weights_sha256": weights},
        )
        results = evaluate_task(
            model, tokenizer, args.task, items, config, path, identity=identity, ranks=ranks
        )
        ranks.barrier()
        if not ranks.is_main:
            return
        if ranks.world > 1:
            results = merge_results(args.task, items, config, path, ranks.world, identity=identity)
    summary = summarise_results(results)

    write_json(
        Path("metrics/eval") / args.task / f"{args.variant}.json",
        {
            "task": args.task,
            "variant": args.variant,
            "metric": "pass@1" if args.task in ("humaneval", "mbpp") else "accuracy",
            **summary,
            "protocol": protocol(tokenizer, args.task, items[:1], config),
            "seconds": round(time.perf_counter() - started, 1),
            "device": ranks.device.type,
            "weights_sha256": weights,
        },
    )
    print(
        f"evaluate {args.task}/{args.variant}: {summary['accuracy']:.3f} "
        f"[{summary['ci_low']:.3f}, {summary['ci_high']:.3f}] (n={summary['n']})"
    )


if __name__ == "__main__":
    main()
