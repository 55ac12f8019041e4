"""Cost of store integrity, measured in one run: chunk checksums (xxh3-64) and the NaN/inf check on write,
checksum verification on every read and on resume, against the same operations without them.

Arrays at the real cache's shapes (Qwen2.5-Coder-1.5B teacher states, bf16; 0.5B student targets, float32),
random normal values (verification cost does not depend on them; compression does). Per codec, it prints:
write (with checks) and the checks' share of it, a verified whole-array read vs a raw zarr read of the same
rows, a verified random-row read (how train reads) vs a raw zarr oindex read, and the resume verification
(reopening the finished store, as `dvc repro -f` does) vs writing it.

    python bench/bench_store.py --examples 32 --length 512
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from semalign.store import ArraySpec, StoreWriter, chunk_checksum, non_finite, open_store, to_storage

SHAPES = {"h (bf16, d 1536)": (1536, "bfloat16"), "target (float32, d 896)": (896, "float32")}


def seconds(fn, repeat: int = 3) -> float:
    """Best of `repeat` timed calls of `fn` (best, not mean: the machine is shared)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure(root: Path, codec: str, label: str, examples: int, length: int, chunk_rows: int) -> None:
    """Print one table row: array `label` of SHAPES, `examples` × `length` tokens, stored with `codec`."""
    width, dtype = SHAPES[label]
    generator = torch.Generator().manual_seed(0)
    spec = ArraySpec((examples, length, width), dtype, chunk_rows)
    data = torch.randn(examples, length, width, generator=generator).to(getattr(torch, dtype))
    chunks = [data[slice(*spec.rows(i))] for i in range(spec.num_chunks)]
    path = root / f"{codec}-{dtype}.zarr"

    def write() -> None:
        with StoreWriter(path, {"x": spec}, f"fp-{time.perf_counter()}", codec) as writer:
            for i, chunk in enumerate(chunks):
                writer.write_chunk("x", i, chunk)
            writer.finalize({})

    stored = [to_storage(c) for c in chunks]
    write_s = seconds(write)
    checks_s = seconds(lambda: [(chunk_checksum(a), non_finite(a, dtype)) for a in stored])
    verify_s = seconds(lambda: [chunk_checksum(a) for a in stored])
    store = open_store(path)
    raw = store._group["x"]  # the same rows without verification: the baseline
    read_s, raw_s = seconds(lambda: store.read("x"), repeat=5), seconds(lambda: raw[:], repeat=5)
    rows = torch.randperm(examples, generator=generator)[:8]
    pick_s = seconds(lambda: store.read_selection("x", rows), repeat=5)
    raw_pick_s = seconds(lambda: raw.oindex[np.sort(rows.numpy())], repeat=5)

    def resume() -> None:
        with StoreWriter(path, {"x": spec}, store.manifest["fingerprint"], codec) as writer:
            if writer.pending_chunks("x"):
                raise RuntimeError("a finished store must reopen with no chunk pending")
            writer.finalize({})

    resume_s = seconds(resume, repeat=1)
    gb = spec.nbytes / 1e9
    print(
        f"| {codec} | {label} | {spec.nbytes / 2**20:.0f} MiB | {gb / write_s:.2f} GB/s "
        f"({checks_s / write_s:.0%} checks) | {gb / raw_s:.2f} GB/s | {verify_s / raw_s:.0%} | "
        f"{gb / read_s:.2f} GB/s | {pick_s * 1e3:.1f} vs {raw_pick_s * 1e3:.1f} ms "
        f"({pick_s / raw_pick_s:.2f}×) | {resume_s:.2f} s = {resume_s / write_s:.2f} × write |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--chunk-rows", type=int, default=4, help="examples per chunk (cache.batch_size)")
    args = parser.parse_args()
    logging.getLogger("semalign.store").setLevel(logging.ERROR)  # each timed write recreates its store
    print(
        "| codec | array | size | write (checks' share) | raw zarr read | checksums ÷ raw read | verified "
        "read | 8 random rows verified vs raw | resume verification |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for codec in ("zstd", "none"):
            for label in SHAPES:
                measure(Path(tmp), codec, label, args.examples, args.length, args.chunk_rows)


if __name__ == "__main__":
    main()
