"""CPU roofline of this machine and the attainable rate of each heavy stage's kernel mix, in one run.

Measures (best of `--repeats`, with the 1-minute load average before each section, since the machine may be
shared): fp32 matmul GFLOP/s (square, and the skinny shape of a stage's MLP), memory bandwidth (a large copy
and a sum), then one forward at the real Qwen2.5-Coder shapes (random weights, `real_shape_config`) through
the same library calls the stages make, at the batch sizes they use:

  cache      teacher 1.5B, `teacher_forward` (all hidden states, full logits, top-64), cache.batch_size rows
  mmlu       teacher / student, `next_token_logprobs` (last position only), evaluate.batch_size rows
  decode     teacher / student, one greedy `generate` step with the KV cache, evaluate.batch_size rows
  train      student 0.5B, LoRA on layer 1, forward + backward of cross-entropy, train.micro_batch_size rows

`--layers N` keeps N decoder layers of each model (every layer has the same shape, so the per-layer rate is
that of the full model; FLOPs are counted for the kept layers and the full head). Prints a JSON record;
`bench/RESULTS.md` turns it into the stage-by-stage fraction of roofline.

    nice -n 10 python bench/roofline.py --repeats 3 --layers 4
"""

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from transformers import GenerationConfig, PretrainedConfig

from semalign.evaluation.generation import next_token_logprobs
from semalign.student.training import TrainConfig, add_lora
from semalign.teacher.activations import teacher_forward
from semalign.testing import build_model, real_shape_config

TEACHER, STUDENT = "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"


def load() -> float:
    return os.getloadavg()[0]


def cpu_clock() -> float:
    """This process's CPU seconds per thread: on a shared machine, time while descheduled is not counted
    (an estimate of the unshared rate; OpenMP threads spinning at a barrier still count)."""
    return time.process_time() / torch.get_num_threads()


CLOCKS = {"wall": time.perf_counter, "cpu": cpu_clock}
clock = CLOCKS["wall"]


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` timed calls after one warm-up (allocator, thread pool, lazy inits)."""
    fn()
    times = []
    for _ in range(repeats):
        started = clock()
        fn()
        times.append(clock() - started)
    return min(times)


def linear_macs_per_token(config: PretrainedConfig) -> int:
    """Multiply-accumulates of the decoder layers' projections (q, k, v, o, gate, up, down) per token."""
    d, head_dim = config.hidden_size, config.hidden_size // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * config.intermediate_size
    return per_layer * config.num_hidden_layers


def forward_flops(
    config: PretrainedConfig, batch: int, length: int, head_positions: int, context: float
) -> float:
    """FLOPs (2 per MAC) of one forward over `[batch, length]` new tokens that attend to `context` positions
    on average, with the LM head applied at `head_positions` positions per row."""
    tokens = batch * length
    attention = 2 * context * config.hidden_size * config.num_hidden_layers  # QKᵀ and AV
    head = config.hidden_size * config.vocab_size * head_positions * batch
    return 2.0 * (tokens * (linear_macs_per_token(config) + attention) + head)


def decode_bytes(config: PretrainedConfig) -> int:
    """fp32 bytes of the projection and head weights: what each decode step reads (biases, norms omitted)."""
    return 4 * (linear_macs_per_token(config) + config.hidden_size * config.vocab_size)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads: every weight but the input embedding (only `batch` rows of it are read)."""
    embedding = model.get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not embedding)


def model_at(name: str, layers: int) -> tuple[PretrainedConfig, torch.nn.Module]:
    config = real_shape_config(name)
    if layers:
        config.num_hidden_layers = layers
    return config, build_model(config)


def matmul_section(repeats: int) -> dict:
    out = {"load_before": load()}
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = best_seconds(lambda: torch.mm(a, b), repeats * 3)
    out["square_2048_gflops"] = 2 * n**3 / seconds / 1e9
    # bf16 inputs, for what lower precision would buy (AMX-BF16 where the CPU has it; the stages run fp32).
    a16, b16 = a.bfloat16(), b.bfloat16()
    seconds = best_seconds(lambda: torch.mm(a16, b16), repeats * 3)
    out["square_2048_bf16_gflops"] = 2 * n**3 / seconds / 1e9
    # The shape of a stage's MLP up-projection: 4 rows x ~160 tokens against [1536, 8960].
    x, w = torch.randn(640, 1536), torch.randn(1536, 8960)
    seconds = best_seconds(lambda: torch.mm(x, w), repeats * 3)
    out["mlp_640x1536x8960_gflops"] = 2 * 640 * 1536 * 8960 / seconds / 1e9
    # A decode step's shape: 8 rows against the same weight (memory-bound).
    x8 = torch.randn(8, 1536)
    seconds = best_seconds(lambda: torch.mm(x8, w), repeats * 3)
    out["decode_8x1536x8960_gbps"] = w.numel() * 4 / seconds / 1e9
    return out


def bandwidth_section(repeats: int, mib: int) -> dict:
    out = {"load_before": load()}
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    seconds = best_seconds(lambda: dst.copy_(src), repeats)
    out["copy_gbps"] = 2 * src.numel() * 4 / seconds / 1e9  # read + write
    seconds = best_seconds(lambda: src.sum(), repeats)
    out["sum_gbps"] = src.numel() * 4 / seconds / 1e9
    return out


@torch.no_grad()
def cache_forward(layers: int, batch: int, length: int, repeats: int) -> dict:
    config, model = model_at(TEACHER, layers)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    states = range(config.num_hidden_layers + 1)
    seconds = best_seconds(lambda: teacher_forward(model, ids, mask, states, 64), repeats)
    flops = forward_flops(config, batch, length, length, (length + 1) / 2)
    return {
        "load_before": load(),
        "batch": batch,
        "length": length,
        "seconds": seconds,
        "gflops": flops / seconds / 1e9,
    }


@torch.no_grad()
def scoring_and_decode(name: str, layers: int, batch: int, length: int, repeats: int) -> dict:
    config, model = model_at(name, layers)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, config.vocab_size, (batch, length), generator=generator).tolist()
    out = {"load_before": load(), "batch": batch, "length": length}
    seconds = best_seconds(lambda: next_token_logprobs(model, rows, pad_id=0), repeats)
    flops = forward_flops(config, batch, length, 1, (length + 1) / 2)
    out["mmlu_seconds"], out["mmlu_gflops"] = seconds, flops / seconds / 1e9
    ids = torch.tensor(rows)

    def generate(new_tokens: int) -> None:
        settings = GenerationConfig(
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        )
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=settings)

    steps = 16
    step = (
        best_seconds(lambda: generate(1 + steps), repeats) - best_seconds(lambda: generate(1), repeats)
    ) / steps
    out["decode_step_seconds"] = step
    out["decode_gflops"] = forward_flops(config, batch, 1, 1, length + steps / 2) / step / 1e9
    out["decode_weight_gbps"] = weight_bytes(model) / step / 1e9
    return out


def train_step(layers: int, batch: int, length: int, repeats: int) -> dict:
    config, model = model_at(STUDENT, layers)
    model = add_lora(model, [1], TrainConfig(objective="sft", batch_size=batch, micro_batch_size=batch))
    model.train()
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()

    seconds = best_seconds(step, repeats)
    # Backward through the frozen layers above the adapter computes activation gradients only: ~1 forward.
    flops = 2 * forward_flops(config, batch, length, length, (length + 1) / 2)
    return {
        "load_before": load(),
        "batch": batch,
        "length": length,
        "seconds": seconds,
        "gflops": flops / seconds / 1e9,
    }


def achieved_section(root: Path, peak_gflops: float, bandwidth_gbps: float) -> list[dict]:
    """Each heavy stage's rate in the committed run (its metrics files and params.yaml under `root`) against
    the roofline: matmul peak for forward-bound work, weight bytes / bandwidth per decode step for generation.

    Generation records no token counts, so its steps are the most it can take (every batch to its budget):
    the fraction given is an upper bound."""
    metrics, params = root / "metrics", yaml.safe_load((root / "params.yaml").read_text())
    read = lambda relative: json.loads((metrics / relative).read_text())
    models = {"teacher": real_shape_config(TEACHER), "student": real_shape_config(STUDENT)}
    rows = []

    def compute_row(stage: str, flops: float, seconds: float, work: str) -> None:
        rate = flops / seconds / 1e9
        rows.append(
            {
                "stage": stage,
                "work": work,
                "seconds": seconds,
                "rate": f"{rate:.1f} GFLOP/s",
                "fraction": rate / peak_gflops,
            }
        )

    cache, tasks = read("cache/mmlu.json"), read("data/mmlu.json")["splits"]
    for split, s in cache["splits"].items():
        mean = tasks[split]["tokens"] / tasks[split]["examples"]
        per_token = forward_flops(models["teacher"], 1, 1, 1, mean / 2)
        compute_row(
            f"cache {split} (teacher)", per_token * s["tokens"], s["seconds"], f"{s['tokens']} tokens"
        )
    evaluation = tasks["evaluation"]
    prompt = (evaluation["tokens"] - evaluation["answer_tokens"]) / evaluation["examples"]
    for file in sorted((metrics / "eval/mmlu").glob("*.json")):
        result = json.loads(file.read_text())
        config = models["teacher" if result["variant"] == "teacher" else "student"]
        flops = result["n"] * forward_flops(config, 1, round(prompt), 1, (prompt + 1) / 2)
        compute_row(
            f"MMLU scoring {result['variant']}",
            flops,
            result["seconds"],
            f"{result['n']} × {prompt:.0f} tokens",
        )
    evaluate = params["evaluate"]
    for task in ("asdiv", "humaneval"):
        for role in ("student", "teacher"):
            result = read(f"eval/{task}/{role}.json")
            steps = math.ceil(result["n"] / evaluate["batch_size"]) * evaluate["max_new_tokens"][task]
            step = decode_bytes(models[role]) / bandwidth_gbps / 1e9
            rows.append(
                {
                    "stage": f"generation {task} {role}",
                    "work": f"≤ {steps} decode steps",
                    "seconds": result["seconds"],
                    "rate": f"≥ {result['seconds'] / steps:.2f} s/step",
                    "fraction": steps * step / result["seconds"],
                }
            )
    for file in sorted((metrics / "train/mmlu").glob("*.json")):
        result = read(f"train/mmlu/{file.name}")
        mean = tasks["training"]["tokens"] / tasks["training"]["examples"]
        tokens = result["steps"] * params["train"]["batch_size"] * mean
        flops = 2 * tokens * forward_flops(models["student"], 1, 1, 1, mean / 2)
        compute_row(
            f"train {file.stem} (student)",
            flops,
            result["seconds"],
            f"{result['steps']} steps, {tokens:.0f} tokens",
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers kept per model (0 = all)")
    parser.add_argument("--length", type=int, default=160, help="tokens per row (MMLU rows: ~115-160)")
    parser.add_argument("--bandwidth-mib", type=int, default=1024)
    parser.add_argument("--sections", default="matmul,bandwidth,cache,teacher,student,train")
    parser.add_argument("--json", help="also write the record here")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="cpu: CPU seconds per thread")
    parser.add_argument("--achieved", type=Path, help="a checkout whose metrics/ and params.yaml to rate")
    parser.add_argument(
        "--peak-gflops", type=float, help="matmul peak for --achieved without the matmul section"
    )
    parser.add_argument("--bandwidth-gbps", type=float, help="likewise, the memory bandwidth")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.manual_seed(0)
    record = {
        "clock": args.clock,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    sections = {
        "matmul": lambda: matmul_section(args.repeats),
        "bandwidth": lambda: bandwidth_section(args.repeats, args.bandwidth_mib),
        "cache": lambda: cache_forward(args.layers, 4, args.length, args.repeats),
        "teacher": lambda: scoring_and_decode(TEACHER, args.layers, 8, args.length, args.repeats),
        "student": lambda: scoring_and_decode(STUDENT, args.layers, 8, args.length, args.repeats),
        "train": lambda: train_step(args.layers, 4, args.length, args.repeats),
    }
    for name in filter(None, args.sections.split(",")):
        record[name] = sections[name]()
        print(name, json.dumps(record[name]), flush=True)
        if args.json:  # after every section: a long run cut short keeps what it measured
            Path(args.json).write_text(json.dumps(record, indent=2))
    record["load_after"] = load()
    if args.achieved:
        peak = args.peak_gflops or record["matmul"]["square_2048_gflops"]
        bandwidth = args.bandwidth_gbps or record["bandwidth"]["copy_gbps"]
        record["achieved"] = achieved_section(args.achieved, peak, bandwidth)
        roofline = f"{peak:.0f} GFLOP/s, {bandwidth:.1f} GB/s"
        print(f"| stage | work | seconds | rate | fraction of roofline ({roofline}) |")
        print("|---|---|---|---|---|")
        for row in record["achieved"]:
            cells = [
                row["stage"],
                row["work"],
                f"{row['seconds']:.0f}",
                row["rate"],
                f"{row['fraction']:.2f}",
            ]
            print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
