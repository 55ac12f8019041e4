"""One training step of the student as `train` runs it, in float32 and under bfloat16 autocast, with the LM
head at every position or only where the loss reads it: step time and peak memory, in one run.

sft (cross-entropy on the answer tokens) on rows of `--length` tokens whose last `--answer` positions are
supervised, as an MMLU row is; LoRA on one layer; random-initialised weights at the real shapes (speed
does not depend on their values). "Head everywhere" supervises every position, so the head runs at all of
them, as it did before `train` kept only the read ones. Each mode in its own process.

    python bench/train_precision.py --length 384 --micro-batch 4
"""

import argparse
import json
import resource
import time

import torch

from bench_train import each_in_own_process  # bench/ is on the path of a script run from it
from semalign.student.training import TrainConfig, TrainingBatch, add_lora, batch_losses
from semalign.testing import build_model, real_shape_config

STUDENT, LAYER = "qwen2.5-coder-0.5b", 1
MODES = {  # name: (train.dtype, head at every position)
    "float32, head everywhere": ("float32", True),
    "float32, head where read": ("float32", False),
    "bfloat16, head everywhere": ("bfloat16", True),
    "bfloat16, head where read": ("bfloat16", False),
}


def child(mode: str, args) -> dict:
    dtype, everywhere = MODES[mode]
    config = TrainConfig(
        objective="sft", batch_size=args.micro_batch, micro_batch_size=args.micro_batch, dtype=dtype
    )
    student = add_lora(build_model(real_shape_config(STUDENT)), [LAYER], config)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151936, (args.micro_batch, args.length), generator=g)
    labels = ids.clone() if everywhere else torch.full_like(ids, -100)
    labels[:, -args.answer :] = ids[:, -args.answer :]
    batch = TrainingBatch(ids, torch.ones_like(ids), labels)
    times = []
    for step in range(args.warmup + args.steps):
        started = time.perf_counter()
        batch_losses(student, batch, [LAYER], config)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    return {
        "step_seconds": sorted(times)[len(times) // 2],
        "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--length", type=int, default=384)
    parser.add_argument("--answer", type=int, default=2, help="supervised positions at the end of each row")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    results = each_in_own_process(__file__, MODES)
    print(
        f"cpu, {torch.get_num_threads()} threads; student {STUDENT} (LoRA on layer {LAYER}), sft, "
        f"{args.micro_batch} x {args.length} tokens, {args.answer} supervised per row; median of {args.steps}"
    )
    base = results["float32, head everywhere"]["step_seconds"]
    for mode, r in results.items():
        print(
            f"{mode:27s} step {r['step_seconds']:7.2f} s ({base / r['step_seconds']:4.2f}x)   "
            f"peak memory {r['peak_bytes'] / 2**30:5.2f} GiB"
        )


if __name__ == "__main__":
    main()
