"""Stage `evaluate@<task>-<variant>`: score one model on a task's evaluation split (paper §5.1;
lib/semalign/evaluation/run.py).

variant: `teacher`, `student` (`--model` their directory), or a method (`--model` the student, `--adapter`
data/adapters/<task>/<method>/: a LoRA adapter merged into the student, or a student delta,
delta.safetensors, added to its weights). Each protocol of `evaluate.protocol` for the task is scored in
turn: per-item results go to `--out`/<protocol>.jsonl as each batch finishes, so a killed run resumes; the
summaries go to `--metrics`, the headline protocol's (the first) at the top level and every protocol's under
"protocols". Data-parallel under `torchrun --nproc-per-node N`: each rank scores its share of the batches,
rank 0 merges the results into the same file and writes the metrics (greedy results identical to one
process's).
"""

import argparse
from pathlib import Path

from semalign.config import read_section
from semalign.distributed import Ranks
from semalign.evaluation.run import EvalPaths, evaluate
from semalign.evaluation.runner import EvalConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--variant", required=True, help="teacher, student, or a method name (e.g. v1)")
    parser.add_argument("--data", type=Path, required=True, help="the task's folder (evaluation split)")
    parser.add_argument("--model", type=Path, required=True, help="the model directory")
    parser.add_argument("--adapter", type=Path, help="a method's adapter or delta folder, applied to --model")
    parser.add_argument("--out", type=Path, required=True, help="folder of per-item results")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    config = read_section(EvalConfig, "evaluate")
    paths = EvalPaths(args.data, args.model, args.adapter, args.out, args.metrics)
    with Ranks() as ranks:
        evaluate(args.task, args.variant, config, paths, ranks)


if __name__ == "__main__":
    main()
