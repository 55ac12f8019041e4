"""Training step from the cache vs. with a live teacher forward, in one run: step time and peak memory.

Modes (each in its own process, so peak memory is its own):
  sft     student-only LoRA step (cross-entropy): the memory baseline
  cache   v2 step with targets and top-k read from memory (what `train` does)
  live    the same step, but the teacher runs forward each step to produce them (no cache)
Prints the speed-up of `cache` over `live` and both modes' peak memory relative to `sft`.
Random-initialised weights at the real shapes (speed does not depend on their values).

    python bench/bench_train.py --device cuda --length 512 --micro-batch 4
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from semalign.align.latent_maps import semantic_map
from semalign.align.targets import to_student_space
from semalign.student.training import TrainConfig, TrainingBatch, add_lora, batch_losses
from semalign.teacher.activations import TeacherBatch, teacher_forward
from semalign.testing import build_model, real_shape_config

TEACHER, STUDENT, LAYER, TEACHER_LAYER, TOP_K = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", 12, 14, 64


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(mode: str, args) -> dict:
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    config = TrainConfig(
        objective="sft" if mode == "sft" else "v2",
        batch_size=args.micro_batch,
        micro_batch_size=args.micro_batch,
        lora_dropout=0.0,
    )
    student = add_lora(build_model(real_shape_config(STUDENT)).to(args.device, dtype), [LAYER], config)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151936, (args.micro_batch, args.length), generator=g).to(args.device)
    mask = torch.ones_like(ids)
    d_teacher, d_student = real_shape_config(TEACHER).hidden_size, real_shape_config(STUDENT).hidden_size
    aligned = semantic_map(torch.randn(d_student, d_teacher, generator=g).to(args.device))
    teacher = build_model(real_shape_config(TEACHER)).to(args.device, dtype) if mode == "live" else None
    if mode == "cache":  # what the cache holds, read into memory; values do not affect speed
        shape = (args.micro_batch, args.length)
        logprobs = torch.log_softmax(torch.randn(*shape, 151936, generator=g), -1).topk(TOP_K, -1)
        cached = TeacherBatch(
            {
                ell: torch.randn(*shape, d_teacher, generator=g).to(args.device, dtype)
                for ell in (TEACHER_LAYER - 1, TEACHER_LAYER)
            },
            logprobs.values.to(args.device),
            logprobs.indices.int().to(args.device),
            torch.log1p(-logprobs.values.exp().sum(-1)).to(args.device),
        )

    def batch() -> TrainingBatch:
        if mode == "sft":
            return TrainingBatch(ids, mask, ids)
        out = (
            cached
            if mode == "cache"
            else teacher_forward(teacher, ids, mask, [TEACHER_LAYER - 1, TEACHER_LAYER], TOP_K)
        )
        delta = (out.hidden[TEACHER_LAYER] - out.hidden[TEACHER_LAYER - 1]).float()
        return TrainingBatch(
            ids,
            mask,
            ids,
            {LAYER: to_student_space(delta, aligned)},
            out.topk_logprobs,
            out.topk_ids,
            out.rest_logmass,
        )

    times = []
    for step in range(args.warmup + args.steps):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        losses = batch_losses(student, batch(), [LAYER], config)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    return {
        "mode": mode,
        "step_seconds": sorted(times)[len(times) // 2],
        "peak_bytes": peak_bytes(args.device),
    }


def each_in_own_process(script: str, modes) -> dict[str, dict]:
    """{mode: the JSON its last output line holds} from `script --child <mode> <this run's arguments>`, one
    process per mode, so that each mode's peak memory is its own."""
    results = {}
    for mode in modes:
        done = subprocess.run(
            [sys.executable, script, "--child", mode, *sys.argv[1:]],
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", choices=["sft", "cache", "live"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    results = each_in_own_process(__file__, ("sft", "cache", "live"))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"device {args.device} ({name}); student {STUDENT} (LoRA on layer {LAYER}), teacher {TEACHER}; "
        f"{args.micro_batch} x {args.length} tokens per step; median of {args.steps} steps"
    )
    for mode, r in results.items():
        print(f"{mode:6s} step {r['step_seconds']:8.3f} s   peak memory {r['peak_bytes'] / 2**30:7.2f} GiB")
    print(
        f"speed-up of training from the cache over a live teacher: "
        f"{results['live']['step_seconds'] / results['cache']['step_seconds']:.2f}x"
    )
    print(
        f"peak memory vs student-only: cache "
        f"{results['cache']['peak_bytes'] / results['sft']['peak_bytes']:.2f}x, "
        f"live {results['live']['peak_bytes'] / results['sft']['peak_bytes']:.2f}x"
    )


if __name__ == "__main__":
    main()
