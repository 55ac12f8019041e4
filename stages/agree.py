"""Stage `agree@<task>-<variant>`: teacher agreement of one variant on the task's agreement split (held
out from every attribution, alignment and training step): per-token KL(teacher ‖ variant) over the teacher's
cached top-k + rest, and top-1 agreement (lib/semalign/evaluation/agree_run.py).

variant: `student` (`--model` its directory), or a method (`--model` the student, `--adapter` its
data/adapters/<task>/<method>/, as in stages/evaluate.py). The teacher's weights are never loaded: its
distribution comes from the cache's agreement.zarr. Per-example values go to `--out` (the table stage pairs
them with the student's), the summary to `--metrics`. One process (no torchrun).
"""

import argparse
from pathlib import Path

from semalign.config import read_section
from semalign.evaluation.agree_run import AgreePaths, agree
from semalign.evaluation.agreement import AgreementConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--variant", required=True, help="student or a method name (e.g. v1, seeking)")
    parser.add_argument("--data", type=Path, required=True, help="the task's folder (agreement split)")
    parser.add_argument("--cache", type=Path, required=True, help="the task's teacher cache")
    parser.add_argument("--vocab", type=Path, required=True, help="fold's vocabulary map")
    parser.add_argument("--model", type=Path, required=True, help="the model directory")
    parser.add_argument("--adapter", type=Path, help="a method's adapter or delta folder, applied to --model")
    parser.add_argument("--out", type=Path, required=True, help="per-example rows, JSONL")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    config = read_section(AgreementConfig, "agree")
    paths = AgreePaths(args.data, args.cache, args.vocab, args.model, args.adapter, args.out, args.metrics)
    agree(args.task, args.variant, config, paths)


if __name__ == "__main__":
    main()
