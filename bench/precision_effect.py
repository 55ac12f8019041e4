"""What bfloat16 forward passes change on the real models, and how much faster they are on this machine:
MMLU scoring of the first N items (lm_eval protocol) by the student in float32 and bfloat16 (predicted
letter agreement, letter log-prob differences, time), and the teacher cache forward on the first training
rows (Δh cosine to float32 per layer, top-1 next-token agreement, time). Needs the materialized models and
the mmlu data split of a run (data/models, data/tasks/mmlu).

    python bench/precision_effect.py --items 48 --rows 8
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from semalign.data import load_split
from semalign.evaluation.runner import score_mmlu
from semalign.models import load_hf_dir
from semalign.tasks import load_task
from semalign.teacher.activations import teacher_forward

DTYPES = (torch.bfloat16, torch.float32)


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def mmlu(items: int) -> None:
    model, tokenizer = load_hf_dir(Path("data/models/student"))
    questions = load_task("mmlu").items[:items]
    runs = {}
    for dtype in DTYPES:
        model.to(dtype)
        runs[dtype] = timed(lambda: score_mmlu(model, tokenizer, questions, "lm_eval", 8))
    (t16, bf16), (t32, fp32) = runs[torch.bfloat16], runs[torch.float32]
    same = sum(a.prediction == b.prediction for a, b in zip(bf16, fp32))
    diffs = [
        abs(a.detail["logprobs"][k] - b.detail["logprobs"][k]) for a, b in zip(bf16, fp32) for k in "ABCD"
    ]
    gold = [
        a.detail["logprobs"][a.detail["gold"]] - b.detail["logprobs"][b.detail["gold"]]
        for a, b in zip(bf16, fp32)
    ]
    print(
        f"MMLU student, {items} items: float32 {t32:.1f} s, bfloat16 {t16:.1f} s ({t32 / t16:.2f}x); "
        f"same letter {same}/{items}; |Δ letter log-prob| mean {np.mean(diffs):.4f} max {np.max(diffs):.4f}; "
        f"gold log-prob Δ mean {np.mean(gold):+.4f} sd {np.std(gold):.4f}; "
        f"accuracy float32 {sum(r.correct for r in fp32)}/{items}, "
        f"bfloat16 {sum(r.correct for r in bf16)}/{items}"
    )


def cache(rows: int) -> None:
    model, _ = load_hf_dir(Path("data/models/teacher"))
    encoded, _ = load_split("data/tasks/mmlu", "training")
    mask = encoded.attention_mask[:rows]
    used = int(mask.sum(1).max())
    ids, mask = encoded.input_ids[:rows, :used], mask[:, :used]
    layers = range(model.config.num_hidden_layers + 1)
    runs = {}
    for dtype in DTYPES:
        model.to(dtype)
        runs[dtype] = timed(lambda: teacher_forward(model, ids, mask, layers, 64))
    (t16, bf16), (t32, fp32) = runs[torch.bfloat16], runs[torch.float32]
    real = mask.bool()
    cosines = []
    for ell in layers[1:]:
        a = (bf16.hidden[ell].float() - bf16.hidden[ell - 1].float())[real]
        b = (fp32.hidden[ell].float() - fp32.hidden[ell - 1].float())[real]
        cosines.append(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item())
    top1 = (bf16.topk_ids[..., 0] == fp32.topk_ids[..., 0])[real].float().mean().item()
    print(
        f"teacher cache forward, {rows} rows ({int(real.sum())} tokens): float32 {t32:.1f} s, "
        f"bfloat16 {t16:.1f} s ({t32 / t16:.2f}x); Δh cosine to float32 per layer "
        f"min {min(cosines):.4f} mean {np.mean(cosines):.4f}; "
        f"top-1 next token agreement {top1:.3f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args()
    mmlu(args.items)
    cache(args.rows)
