"""Precision of the teacher's layer contributions Δh_ℓ = h_ℓ − h_{ℓ−1} in the cache, on a real teacher.

    python bench/bench_delta_precision.py --teacher data/models/teacher --student data/models/student

Runs the teacher in float32 over the first `--examples` examples of a task's alignment split (built with the
library from params.yaml's data section) and prints, per teacher layer ℓ, ‖h_ℓ‖/‖Δh_ℓ‖ over real tokens
(median and max) and the cosine between the paper's target M Δh/‖Δh‖ (`align.maps: [semantic]`, M folded from
both models' `head` bases) built from the float32 forward and built from
  - "h bf16":  Δh = bf16(h_ℓ) − bf16(h_{ℓ−1}), the layout that stored h;
  - "cache":   what the cache stores now (`write_teacher_cache` into a temporary store, `read_contribution`),
and the cosine between the float32 h_ℓ and h_ℓ stored in bfloat16 or rebuilt from the cache
(`residual_stream`, what Fig. 2 and CKA read). Cosines: mean and min over real tokens. Last, the cache's
bytes per token.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml

from semalign.align.alignment import folded_map, row_cosine
from semalign.align.latent_maps import semantic_map
from semalign.config import build
from semalign.data import DataConfig, encode, split_items
from semalign.models import load_hf_dir, model_info
from semalign.store import StoreWriter, open_store
from semalign.tasks import load_task
from semalign.teacher.activations import residual_states
from semalign.teacher.bases import pinv_rows
from semalign.teacher.cache import (
    CacheConfig,
    cache_arrays,
    kept_layers,
    read_contribution,
    residual_stream,
    write_teacher_cache,
)

ROOT = Path(__file__).resolve().parents[1]


def alignment_examples(params: dict, task: str, examples: int, tokenizer):
    """The first `examples` examples of `task`'s alignment split, tokenised as the data stage does."""
    config = build(DataConfig, {**params["data"], "tasks": {task: params["data"]["tasks"][task]}}, "data")
    split = split_items(load_task(task, config.tasks[task].path).items, config.tasks[task], config.seed)
    return encode(split["alignment"][:examples], tokenizer, config.max_length, config.chat_template)


def semantic_folded(teacher, student_dir: Path) -> torch.Tensor:
    """M = S_S S_Tᵀ `[d_student, d_teacher]` float64 from both LM heads (the `head` bases variant)."""
    student, _ = load_hf_dir(student_dir)
    bases = {
        "student": pinv_rows(student.get_output_embeddings().weight.detach()),
        "teacher": pinv_rows(teacher.get_output_embeddings().weight.detach()),
    }
    del student
    return folded_map(
        lambda a, b: bases["student"][a:b], lambda a, b: bases["teacher"][a:b], len(bases["teacher"])
    )


def cached(model, encoded, config: CacheConfig, directory: Path):
    """The store `write_teacher_cache` writes for `encoded`, opened for reading."""
    layers = kept_layers(config, model_info(model).num_layers)
    arrays = cache_arrays(*encoded.input_ids.shape, model_info(model).d_model, layers, config)
    with StoreWriter(directory / "cache.zarr", arrays, "bench") as writer:
        write_teacher_cache(model, encoded, writer, config, desc="bench cache")
        writer.finalize({})
    return open_store(directory / "cache.zarr")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", type=Path, default=ROOT / "data/models/teacher")
    parser.add_argument("--student", type=Path, default=ROOT / "data/models/student")
    parser.add_argument("--task", default="mmlu")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text())
    config = build(CacheConfig, {**params["cache"], "layers": "all"}, "cache")

    torch.manual_seed(0)
    teacher, tokenizer = load_hf_dir(args.teacher)
    num_layers = model_info(teacher).num_layers
    encoded = alignment_examples(params, args.task, args.examples, tokenizer)
    real = encoded.attention_mask.bool()
    reference = residual_states(
        teacher, encoded.input_ids, encoded.attention_mask, range(num_layers + 1), config.batch_size
    )
    target = semantic_map(semantic_folded(teacher, args.student))
    with tempfile.TemporaryDirectory() as tmp:
        store = cached(teacher, encoded, config, Path(tmp))
        rebuilt = {ell: h[real] for ell, h in residual_stream(store, num_layers, 0, len(real))}
        stored = {ell: read_contribution(store, ell, 0, len(real))[real] for ell in range(1, num_layers + 1)}
        per_token = cache_arrays(1, 1, model_info(teacher).d_model, list(range(num_layers + 1)), config)

    rounded = {ell: h.to(getattr(torch, config.dtype)).float() for ell, h in reference.items()}
    print(
        f"{args.examples} {args.task} alignment examples, {int(real.sum())} tokens; cache.dtype "
        f"{config.dtype}; cosines vs the float32 forward (mean | min over tokens)\n"
    )
    print(
        "| layer | ‖h‖/‖Δh‖ median | ‖h‖/‖Δh‖ max | target cos, h bf16: mean | min "
        "| target cos, cache: mean | min | h cos, bf16 h: min | h cos, rebuilt from cache: min |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    worst = {"h bf16": [], "cache": []}
    for ell in range(1, num_layers + 1):
        delta = reference[ell] - reference[ell - 1]
        ratio = reference[ell].norm(dim=-1) / delta.norm(dim=-1)
        exact = target(delta)
        cosines = {
            "h bf16": row_cosine(target(rounded[ell] - rounded[ell - 1]), exact),
            "cache": row_cosine(target(stored[ell]), exact),
        }
        for name, cos in cosines.items():
            worst[name].append(float(cos.min()))
        cells = [
            str(ell),
            f"{ratio.median():.1f}",
            f"{ratio.max():.0f}",
            *(f"{cos.mean():.6f} | {cos.min():.6f}" for cos in cosines.values()),
            *(f"{row_cosine(h[ell], reference[ell]).min():.6f}" for h in (rounded, rebuilt)),
        ]
        print(f"| {' | '.join(cells)} |")
    kib = sum(spec.nbytes for spec in per_token.values()) / 1024
    print(
        f"\nworst token over all layers: h bf16 {min(worst['h bf16']):.6f}, cache {min(worst['cache']):.6f}; "
        f"cache bytes per token (all {num_layers + 1} layers, top-{config.top_k}): {kib:.1f} KiB"
    )


if __name__ == "__main__":
    main()
