"""The `evaluate@<task>-<variant>` run: score one model on a task's evaluation split (paper §5.1), every
protocol of `evaluate.protocol` for the task in turn. A stage body, not in `semalign.evaluation.__all__`: it
loads models and writes the pipeline's outputs.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from semalign.data import load_split
from semalign.distributed import Ranks
from semalign.evaluation.results import summarise_results
from semalign.evaluation.runner import (
    EvalConfig,
    describe_protocol,
    evaluate_task,
    merge_results,
)
from semalign.evaluation.variants import load_variant
from semalign.files import write_json
from semalign.models import MODEL_DTYPES


@dataclass(frozen=True)
class EvalPaths:
    """Where `evaluate@<task>-<variant>` reads and writes (dvc.yaml names them)."""

    data: Path  # the task's folder (evaluation split)
    model: Path  # the model directory (teacher, or the student of an adapted variant)
    adapter: Path | None  # the method's adapter or delta, merged into / added to the model
    out: Path  # per-item results: <protocol>.jsonl
    metrics: Path


def evaluate(task: str, variant: str, config: EvalConfig, paths: EvalPaths, ranks: Ranks) -> None:
    """Score `variant` on `task`: per-item results appended to `paths.out` as each batch finishes (a killed
    run resumes); on rank 0 the summaries (95% intervals, MMLU letter statistics, math strict/flexible/
    truncated), the headline protocol's (the first) at the top level and every protocol's under "protocols".
    Under torchrun each rank scores its share of the batches and rank 0 merges them into the same file."""
    protocols = config.protocols(task)
    _, items = load_split(paths.data, "evaluation")
    summaries = {}
    model, tokenizer, weights = load_variant(
        variant, paths.model, paths.adapter, ranks.device, MODEL_DTYPES[config.dtype]
    )
    started = time.perf_counter()
    # The precision is part of what was scored: a resumed run in another dtype starts its file afresh.
    identity = {"variant": variant, "weights_sha256": weights, "dtype": config.dtype}
    for protocol in protocols:
        path = paths.out / f"{protocol}.jsonl"
        results = evaluate_task(
            model, tokenizer, task, items, config, protocol, path, identity=identity, ranks=ranks
        )
        ranks.barrier()
        if not ranks.is_main:
            continue
        if ranks.world > 1:
            results = merge_results(task, items, config, protocol, path, ranks.world, identity)
        summaries[protocol] = summarise_results(results) | {
            "protocol": describe_protocol(tokenizer, task, items[:1], config, protocol)
        }
    if not ranks.is_main:
        return
    write_json(
        paths.metrics,
        {
            "task": task,
            "variant": variant,
            "metric": "pass@1" if task in ("humaneval", "mbpp") else "accuracy",
            **summaries[protocols[0]],
            "protocols": summaries,
            "seconds": round(time.perf_counter() - started, 1),
            "device": ranks.device.type,
            "dtype": config.dtype,
            "weights_sha256": weights,
        },
    )
    for protocol, summary in summaries.items():
        print(
            f"evaluate {task}/{variant} ({protocol}): {summary['accuracy']:.3f} "
            f"[{summary['ci_low']:.3f}, {summary['ci_high']:.3f}] (n={summary['n']})"
        )
