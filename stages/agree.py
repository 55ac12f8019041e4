"""Stage `agree@<task>-<variant>`: teacher agreement of one variant on the task's agreement split (held
out from every attribution, alignment and training step): per-token KL(teacher ‖ variant) over the teacher's
cached top-k + rest, and top-1 agreement (lib/semalign/evaluation/agreement.py has the definitions).

variant: `student`, or a method whose output is data/adapters/<task>/<method>/ (as in stages/evaluate.py). The
teacher's weights are never loaded: its distribution comes from data/cache/<task>/agreement.zarr. Per-example
values go to data/agreement/<task>/<variant>.jsonl (the table stage pairs them with the student's), the
summary to metrics/agreement/<task>/<variant>.json.
"""

import argparse
import json
import time
from pathlib import Path

from semalign.config import read_section
from semalign.data import load_split
from semalign.distributed import Ranks
from semalign.errors import SemalignError
from semalign.evaluation.agreement import AgreementConfig, agreement_rows, summarise_agreement
from semalign.evaluation.variants import load_variant
from semalign.files import write_json
from semalign.store import open_store
from semalign.teacher.bases import VocabAlignment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--variant", required=True, help="student or a method name (e.g. v1, seeking)")
    args = parser.parse_args()
    config = read_section(AgreementConfig, "agree")

    encoded, items = load_split(Path("data/tasks") / args.task, "agreement")
    cache = open_store(Path("data/cache") / args.task / "agreement.zarr")
    with Ranks() as ranks:
        if ranks.world > 1:
            raise SemalignError("agree runs in one process (a few forward passes); start it without torchrun")
        model, _, weights = load_variant(args.task, args.variant, ranks.device)
        started = time.perf_counter()
        rows = agreement_rows(
            model,
            encoded,
            cache,
            [item.item_id for item in items],
            config.batch_size,
            desc=f"agree {args.task}/{args.variant}",
            # every variant but the teacher reads the teacher's tokens as student ids
            vocab=None if args.variant == "teacher" else VocabAlignment.load("data/maps/vocab.safetensors"),
        )
    summary = summarise_agreement(rows)

    out = Path("data/agreement") / args.task / f"{args.variant}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    write_json(
        Path("metrics/agreement") / args.task / f"{args.variant}.json",
        {
            "task": args.task,
            "variant": args.variant,
            **summary,
            "top_k": cache.arrays["topk_ids"].shape[-1],
            "seconds": round(time.perf_counter() - started, 1),
            "device": ranks.device.type,
            "weights_sha256": weights,
            "cache_fingerprint": cache.manifest["fingerprint"],
        },
    )
    print(
        f"agree {args.task}/{args.variant}: KL {summary['kl']:.4f} [{summary['kl_ci_low']:.4f}, "
        f"{summary['kl_ci_high']:.4f}], top-1 {summary['top1']:.3f} (n={summary['n']})"
    )


if __name__ == "__main__":
    main()
