"""The `agree@<task>-<variant>` run: teacher agreement of one variant on the task's agreement split (held out
from every attribution, alignment and training step): per-token KL(teacher ‖ variant) over the teacher's
cached top-k + rest, and top-1 agreement (semalign.evaluation.agreement has the definitions). A stage body,
not in `semalign.evaluation.__all__`: it loads a model and writes the pipeline's outputs.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from semalign.data import load_split
from semalign.distributed import Ranks
from semalign.errors import SemalignError
from semalign.evaluation.agreement import AgreementConfig, agreement_rows
from semalign.evaluation.agreement_summary import summarise_agreement
from semalign.evaluation.variants import load_variant
from semalign.files import write_json
from semalign.store import open_store
from semalign.teacher.bases import VocabAlignment


@dataclass(frozen=True)
class AgreePaths:
    """Where `agree@<task>-<variant>` reads and writes (dvc.yaml names them)."""

    data: Path  # the task's folder (agreement split)
    cache: Path  # the task's teacher cache (agreement.zarr: top-k)
    vocab: Path  # fold's vocabulary map (teacher ids read as student ids)
    model: Path  # the model directory (the student, or the teacher as a check)
    adapter: Path | None  # the method's adapter or delta
    out: Path  # per-example rows, JSONL
    metrics: Path


def agree(task: str, variant: str, config: AgreementConfig, paths: AgreePaths) -> None:
    """Per-example agreement rows of `variant` (the table stage pairs them with the student's) and their
    summary. The teacher's weights are never loaded for a student variant: its distribution is the cache's."""
    encoded, items = load_split(paths.data, "agreement")
    cache = open_store(paths.cache / "agreement.zarr")
    with Ranks() as ranks:
        if ranks.world > 1:
            raise SemalignError("agree runs in one process (a few forward passes); start it without torchrun")
        model, _, weights = load_variant(variant, paths.model, paths.adapter, ranks.device)
        started = time.perf_counter()
        rows = agreement_rows(
            model,
            encoded,
            cache,
            [item.item_id for item in items],
            config.batch_size,
            desc=f"agree {task}/{variant}",
            # every variant but the teacher reads the teacher's tokens as student ids
            vocab=None if variant == "teacher" else VocabAlignment.load(paths.vocab),
        )
    summary = summarise_agreement(rows)

    paths.out.parent.mkdir(parents=True, exist_ok=True)
    paths.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    write_json(
        paths.metrics,
        {
            "task": task,
            "variant": variant,
            **summary,
            "top_k": cache.arrays["topk_ids"].shape[-1],
            "seconds": round(time.perf_counter() - started, 1),
            "device": ranks.device.type,
            "weights_sha256": weights,
            "cache_fingerprint": cache.manifest["fingerprint"],
        },
    )
    print(
        f"agree {task}/{variant}: KL {summary['kl']:.4f} [{summary['kl_ci_low']:.4f}, "
        f"{summary['kl_ci_high']:.4f}], top-1 {summary['top1']:.3f} (n={summary['n']})"
    )
