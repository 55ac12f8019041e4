"""Stage `cache@<task>`: run the teacher once over the alignment and training splits and store its
residual stream and top-k next-token distribution (lib/semalign/cache.py has the layout).

Killed at any point, a rerun resumes: finished chunks are journaled and kept, the rest recomputed.
"""

import argparse
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from semalign.cache import CacheConfig, cache_arrays, kept_layers, write_teacher_cache
from semalign.config import build, write_json
from semalign.data import data_fingerprint, load_split
from semalign.embedded import sha256_of
from semalign.models import load_hf_dir, model_info
from semalign.store import StoreWriter

SPLITS = ("alignment", "training")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    args = parser.parse_args()
    config = build(CacheConfig, yaml.safe_load(Path("params.yaml").read_text())["cache"], "cache")

    teacher_dir = Path("data/models/teacher")
    model, _ = load_hf_dir(teacher_dir)
    info = model_info(model)
    layers = kept_layers(config, info.num_layers)
    weights = sha256_of(teacher_dir / "model.safetensors")
    metrics = {"task": args.task, "layers": layers, "dtype": config.dtype, "top_k": config.top_k, "splits": {}}
    for split in SPLITS:
        encoded, _ = load_split(Path("data/tasks") / args.task, split)
        data_hash = data_fingerprint(encoded.tensors())
        identity = {"teacher_weights_sha256": weights, "data_fingerprint": data_hash, "config": asdict(config)}
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        arrays = cache_arrays(*encoded.input_ids.shape, info.d_model, layers, config)
        path = Path("data/cache") / args.task / f"{split}.zarr"
        started = time.perf_counter()
        with StoreWriter(path, arrays, fingerprint, codec=config.codec) as writer:
            computed = write_teacher_cache(model, encoded, writer, config, desc=f"cache {args.task}/{split}")
            seconds = time.perf_counter() - started
            writer.finalize({"teacher": {"arch": info.arch, "num_layers": info.num_layers, "d_model": info.d_model,
                                         "vocab_size": info.vocab_size, "weights_sha256": weights},
                             "data_fingerprint": data_hash, "layers": layers, "config": asdict(config)})
        tokens = int(encoded.attention_mask.sum())
        stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        logical = sum(spec_bytes(spec) for spec in arrays.values())
        metrics["splits"][split] = {
            "examples": int(encoded.input_ids.shape[0]), "tokens": tokens, "chunks_computed": computed,
            "seconds": round(seconds, 1), "tokens_per_second": round(tokens / seconds, 1) if computed else None,
            "store_bytes": stored, "compression_ratio": round(logical / stored, 2),
            "files": sum(1 for f in path.rglob("*") if f.is_file()),
        }
    write_json(Path("metrics/cache") / f"{args.task}.json", metrics)
    print(f"cache {args.task}: " + ", ".join(f"{s} {m['tokens']} tokens" for s, m in metrics["splits"].items()))


def spec_bytes(spec) -> int:
    """Bytes the array would take uncompressed, padding included."""
    itemsize = {"bfloat16": 2, "float16": 2, "float32": 4, "int32": 4, "int64": 8, "uint8": 1, "bool": 1}[spec.dtype]
    count = 1
    for n in spec.shape:
        count *= n
    return count * itemsize


if __name__ == "__main__":
    main()
