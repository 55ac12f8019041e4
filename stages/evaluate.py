"""Stage `evaluate@<task>-<variant>`: score one model on a task's evaluation split (paper §5.1).

variant: `teacher`, `student`, or a method whose output is data/adapters/<task>/<method>/: a LoRA adapter
merged into the student, or a student delta (delta.safetensors, the baselines) added to its weights.
Per-item results go to data/eval/<task>/<variant>.jsonl as each batch finishes, so a killed run resumes;
the summary with its 95% interval goes to metrics/eval/<task>/<variant>.json.
Data-parallel under `torchrun --nproc-per-node N`: each rank scores its share of the batches, rank 0 merges
the results into the same file and writes the metrics (greedy results identical to one process's).
"""

import argparse
import hashlib
import time
from pathlib import Path

import torch

from semalign.baselines.delta import DELTA_FILE, apply_delta, load_delta
from semalign.config import params_section, read_section
from semalign.data import load_split
from semalign.distributed import Ranks
from semalign.evaluation.runner import EvalConfig, evaluate_task, merge_results, protocol, summarise_results
from semalign.files import sha256_of, write_json
from semalign.models import load_hf_dir, merge_adapter

BASE_MODELS = ("teacher", "student")


def load_variant(task: str, variant: str, device: str | torch.device):
    """(model, tokenizer, sha256 over the weight files) of a base model or of the student + an adapter / a
    delta."""
    folders = [Path("data/models") / (variant if variant in BASE_MODELS else "student")]
    model, tokenizer = load_hf_dir(folders[0], device=device)
    if variant not in BASE_MODELS:
        adapter = Path("data/adapters") / task / variant
        model = (
            apply_delta(model, load_delta(adapter)).eval()
            if (adapter / DELTA_FILE).is_file()
            else merge_adapter(model, adapter)
        )
        folders.append(adapter)
    digest = hashlib.sha256()
    for folder in folders:
        for weights in sorted(folder.glob("*.safetensors")):
            digest.update(f"{weights.name}:{sha256_of(weights)}|".encode())
    return model, tokenizer, digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument(
        "--variant", required=True, help="teacher, student, or a method name (e.g. semalign-v1)"
    )
    args = parser.parse_args()
    # the prompts training used: chat_template comes from the data section
    config = read_section(EvalConfig, "evaluate", chat_template=params_section("data.chat_template"))

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
