"""Stage `evaluate@<task>-<variant>`: score one model on a task's evaluation split (paper §5.1).

variant: `teacher`, `student`, or a method whose output is data/adapters/<task>/<method>/: a LoRA adapter
merged into the student, or a student delta (delta.safetensors, the baselines) added to its weights.
Each protocol of `evaluate.protocol` for the task is scored in turn: per-item results go to
data/eval/<task>/<variant>/<protocol>.jsonl as each batch finishes, so a killed run resumes; the summaries
(95% intervals, MMLU letter statistics, math strict/flexible/truncated) go to
metrics/eval/<task>/<variant>.json, the headline protocol's (the first) at the top level and every
protocol's under "protocols".
Data-parallel under `torchrun --nproc-per-node N`: each rank scores its share of the batches, rank 0 merges
the results into the same file and writes the metrics (greedy results identical to one process's).
"""

import argparse
import time
from pathlib import Path

from semalign.config import read_section
from semalign.data import load_split
from semalign.distributed import Ranks
from semalign.evaluation.runner import (
    EvalConfig,
    describe_protocol,
    evaluate_task,
    merge_results,
    summarise_results,
)
from semalign.evaluation.variants import load_variant
from semalign.files import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument(
        "--variant", required=True, help="teacher, student, or a method name (e.g. semalign-v1)"
    )
    args = parser.parse_args()
    config = read_section(EvalConfig, "evaluate")
    protocols = config.protocols(args.task)

    _, items = load_split(Path("data/tasks") / args.task, "evaluation")
    summaries = {}
    with Ranks() as ranks:
        model, tokenizer, weights = load_variant(args.task, args.variant, ranks.device)
        started = time.perf_counter()
        identity = {"variant": args.variant, "weights_sha256": weights}
        for protocol in protocols:
            path = Path("data/eval") / args.task / args.variant / f"{protocol}.jsonl"
            results = evaluate_task(
                model, tokenizer, args.task, items, config, protocol, path, identity=identity, ranks=ranks
            )
            ranks.barrier()
            if not ranks.is_main:
                continue
            if ranks.world > 1:
                results = merge_results(args.task, items, config, protocol, path, ranks.world, identity)
            summaries[protocol] = summarise_results(results) | {
                "protocol": describe_protocol(tokenizer, args.task, items[:1], config, protocol)
            }
        if not ranks.is_main:
            return
    headline = summaries[protocols[0]]
    write_json(
        Path("metrics/eval") / args.task / f"{args.variant}.json",
        {
            "task": args.task,
            "variant": args.variant,
            "metric": "pass@1" if args.task in ("humaneval", "mbpp") else "accuracy",
            **headline,
            "protocols": summaries,
            "seconds": round(time.perf_counter() - started, 1),
            "device": ranks.device.type,
            "weights_sha256": weights,
        },
    )
    for protocol, summary in summaries.items():
        print(
            f"evaluate {args.task}/{args.variant} ({protocol}): {summary['accuracy']:.3f} "
            f"[{summary['ci_low']:.3f}, {summary['ci_high']:.3f}] (n={summary['n']})"
        )


if __name__ == "__main__":
    main()
