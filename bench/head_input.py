"""Next-token scoring of a frozen model, with and without the contiguous head input of `for_inference`
(`semalign.evaluation.variants`).

At `logits_to_keep=1` the head gets the strided slice `hidden[:, -1:]`; for a weight that needs no gradient
torch's matmul then copies the [vocab, d_model] head once per row (bmm on the expanded weight). A merged
LoRA student has frozen weights, so it took that path and scored 3-4x slower than the plain student in the
default run. Real student shapes, random weights, `--layers` decoder layers, evaluate.batch_size rows of
`--tokens` tokens; prints the seconds per batch of each and their ratio, measured in this one run.

    python bench/head_input.py --layers 4 --repeats 3
"""

import argparse
import json
import time

import torch

from semalign.evaluation.generation import next_token_logprobs
from semalign.evaluation.variants import for_inference
from semalign.testing import build_model, real_shape_config


def seconds(model, rows: list[list[int]], repeats: int) -> float:
    """Best wall time of `repeats` next-token scorings of `rows` (after one warm-up)."""
    next_token_logprobs(model, rows, pad_id=0)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        next_token_logprobs(model, rows, pad_id=0)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    args = parser.parse_args()
    config = real_shape_config("qwen2.5-coder-0.5b")
    config.num_hidden_layers = args.layers
    model = build_model(config).to(getattr(torch, args.dtype))
    generator = torch.Generator().manual_seed(0)
    # Ragged rows, as MMLU prompts are: left padding makes the last position a strided slice.
    rows = [
        torch.randint(3, config.vocab_size, (args.tokens - 9 * i,), generator=generator).tolist()
        for i in range(args.batch)
    ]
    frozen = seconds(model.requires_grad_(False), rows, args.repeats)
    contiguous = seconds(for_inference(model), rows, args.repeats)
    print(
        json.dumps(
            {
                "layers": args.layers,
                "batch": args.batch,
                "tokens": args.tokens,
                "dtype": args.dtype,
                "threads": torch.get_num_threads(),
                "frozen_strided_s": round(frozen, 3),
                "for_inference_s": round(contiguous, 3),
                "speedup": round(frozen / contiguous, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
