"""Teacher-cache sizes, computed from the store layout (`semalign.teacher.cache.cache_arrays`) and
params.yaml.

    python bench/cache_sizes.py              # the markdown table in the README's "Several GPUs" section

For the embedded default at its own sizes and at the paper's (Tables 4-5: 128 alignment and 1,000
training examples), and for the paper's Llama-2-13B teacher: bytes per token and per split, uncompressed,
with rows padded to data.max_length as the stores hold them (zstd shrinks the zero padding to almost
nothing: 3.9-4.8x on the default, see metrics/cache). The cache section of params.yaml (dtype, top_k,
layers) and data.max_length are read from the file; `--params` points at another one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from semalign.config import build
from semalign.teacher.cache import CacheConfig, cache_arrays, kept_layers

GB = 1e9
PAPER_SIZES = {"alignment": 128, "training": 1000}
# (teacher, layers, d_model): the embedded default's teacher and the paper's Llama-2 teacher.
TEACHERS = {"Qwen2.5-Coder-1.5B": (28, 1536), "Llama-2-13B": (40, 5120)}


def split_bytes(num_layers: int, d_model: int, examples: int, max_length: int, config: CacheConfig) -> int:
    """Bytes of one split's store before compression: `[examples, max_length, ...]` for every array."""
    arrays = cache_arrays(examples, max_length, d_model, kept_layers(config, num_layers), config)
    return sum(spec.nbytes for spec in arrays.values())


def size_table(params: dict) -> str:
    """The markdown table of cache sizes under `params` (a loaded params.yaml)."""
    config = build(CacheConfig, params["cache"], "cache")
    max_length = params["data"]["max_length"]
    default = {split: params["data"]["tasks"]["mmlu"][split] for split in PAPER_SIZES}
    runs = [
        ("Qwen2.5-Coder-1.5B", "embedded default", default),
        ("Qwen2.5-Coder-1.5B", "paper sizes", PAPER_SIZES),
        ("Llama-2-13B", "paper sizes", PAPER_SIZES),
    ]
    lines = [
        "| teacher | examples (alignment + training) | KiB / token | alignment GB | training GB | total GB |",
        "|---|---|---|---|---|---|",
    ]
    for teacher, label, sizes in runs:
        layers, width = TEACHERS[teacher]
        per_split = {split: split_bytes(layers, width, n, max_length, config) for split, n in sizes.items()}
        per_token = split_bytes(layers, width, 1, 1, config) / 1024
        lines.append(
            f"| {teacher} ({layers} layers, d {width}) | {sizes['alignment']} + {sizes['training']} "
            f"({label}) | {per_token:.0f} | {per_split['alignment'] / GB:.2f} | "
            f"{per_split['training'] / GB:.2f} | {sum(per_split.values()) / GB:.2f} |"
        )
    kept = "all layers" if config.layers == "all" else f"layers {config.layers}"
    lines.append("")
    lines.append(
        f"(cache.dtype {config.dtype}, {kept}, top-{config.top_k} log-probs, rows padded to "
        f"data.max_length {max_length}; uncompressed)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    args = parser.parse_args()
    print(size_table(yaml.safe_load(args.params.read_text())))


if __name__ == "__main__":
    main()
