"""The `cache@<task>` run: the teacher once over the alignment and training splits, storing its residual
stream and top-k next-token distribution (semalign.teacher.cache has the layout), and over the agreement
split its top-k next-token distribution only (what the `agree` stages compare every variant with).

Killed at any point, a rerun resumes: finished chunks are journaled with their checksums and kept if they
still verify, the rest recomputed. Under torchrun each rank computes its share of the chunks into the same
stores and rank 0 writes the manifests and metrics; the stores are identical to a single process's. A stage
body, not in `semalign.teacher.__all__`: it loads the teacher and writes the pipeline's stores.
"""

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from semalign.data import data_fingerprint, load_split
from semalign.distributed import Ranks, finish_store, shared_writer
from semalign.files import sha256_of, write_json
from semalign.models import MODEL_DTYPES, load_hf_dir, model_info
from semalign.store import StoresConfig
from semalign.teacher.cache import CacheConfig, cache_arrays, kept_layers, write_teacher_cache

# split -> whether its residual states are stored (the agreement split needs only the next-token distribution)
SPLITS = {"alignment": True, "training": True, "agreement": False}


@dataclass(frozen=True)
class CachePaths:
    """Where `cache@<task>` reads and writes (dvc.yaml names them)."""

    teacher: Path  # the teacher's model directory
    data: Path  # the task's folder (alignment, training, agreement splits)
    out: Path  # the task's cache folder: <split>.zarr
    metrics: Path


def cache(task: str, config: CacheConfig, stores: StoresConfig, paths: CachePaths, ranks: Ranks) -> None:
    """Cache the splits of `task` and, on rank 0, write the metrics."""
    metrics = write_caches(task, config, stores, paths, ranks)
    if ranks.is_main:
        write_json(paths.metrics, metrics)
        print(
            f"cache {task}: " + ", ".join(f"{s} {m['tokens']} tokens" for s, m in metrics["splits"].items())
        )


def write_caches(
    task: str, config: CacheConfig, stores: StoresConfig, paths: CachePaths, ranks: Ranks
) -> dict:
    """Cache the splits of `task` (this rank's share of their chunks) where `stores` says; the metrics of
    the run."""
    teacher_dir = paths.teacher
    model, _ = load_hf_dir(teacher_dir, dtype=MODEL_DTYPES[config.forward_dtype], device=ranks.device)
    info = model_info(model)
    layers = kept_layers(config, info.num_layers)
    weights = sha256_of(teacher_dir / "model.safetensors")
    metrics = {"task": task, "layers": layers, "dtype": config.dtype, "top_k": config.top_k, "splits": {}}
    for split, with_states in SPLITS.items():
        encoded, _ = load_split(paths.data, split)
        stored_layers = layers if with_states else []
        data_hash = data_fingerprint(encoded.tensors())
        identity = {
            "teacher_weights_sha256": weights,
            "data_fingerprint": data_hash,
            "config": asdict(config),
        }
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        arrays = cache_arrays(*encoded.input_ids.shape, info.d_model, stored_layers, config)
        local = paths.out / f"{split}.zarr"
        started = time.perf_counter()
        rebuild = f"dvc repro -f cache@{task}"
        with shared_writer(ranks, local, arrays, fingerprint, config.codec, stores.url, rebuild) as writer:
            computed = write_teacher_cache(
                model, encoded, writer, config, desc=ranks.tag(f"cache {task}/{split}"), shard=ranks.shard
            )
            finish_store(
                ranks,
                writer,
                {
                    "teacher": {
                        "arch": info.arch,
                        "num_layers": info.num_layers,
                        "d_model": info.d_model,
                        "vocab_size": info.vocab_size,
                        "weights_sha256": weights,
                    },
                    "data_fingerprint": data_hash,
                    "layers": stored_layers,
                    "config": asdict(config),
                },
                local,
            )
            seconds = time.perf_counter() - started
            computed = ranks.sum(computed)
        tokens = int(encoded.attention_mask.sum())
        stored, files = writer.location.size()
        logical = sum(spec.nbytes for spec in arrays.values())
        metrics["splits"][split] = {
            "examples": int(encoded.input_ids.shape[0]),
            "tokens": tokens,
            "chunks_computed": computed,
            "seconds": round(seconds, 1),
            "tokens_per_second": round(tokens / seconds, 1) if computed else None,
            "store_bytes": stored,
            "compression_ratio": round(logical / stored, 2),
            "files": files,
        }
    return metrics
