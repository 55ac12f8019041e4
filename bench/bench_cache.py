"""Teacher cache throughput vs. its two floors, measured in one run.

Floors: (1) the bare teacher forward (tokens/s), (2) the disk (bytes/s of one large fsynced file) divided by
the bytes stored per token. The cache stage should run at about min(1, 2); the script prints its tokens/s,
the ratio to the bare forward (goal >= 0.9 where compute-bound) and to the roofline, and the store's
compression ratio. Random-initialised weights at the real shape: speed does not depend on their values.

    python bench/bench_cache.py --shape qwen2.5-coder-1.5b --device cuda --examples 64 --length 512
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from semalign.data import Encoded
from semalign.store import StoreWriter
from semalign.teacher.cache import CacheConfig, cache_arrays, kept_layers, write_teacher_cache
from semalign.testing import build_model, real_shape_config, tiny_config


def disk_bytes_per_second(directory: Path, size: int = 1 << 30) -> float:
    """Write one `size`-byte file with fsync, as the store does, and time it."""
    path = directory / "disk-probe.bin"
    block = os.urandom(1 << 24)
    started = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return size / seconds


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="qwen2.5-coder-1.5b", help="real shape name, or 'tiny'")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--dtype", default=None, help="model dtype (default bfloat16 on cuda, float32 on cpu)"
    )
    parser.add_argument("--codec", default="zstd", choices=["zstd", "none"])
    parser.add_argument("--writers", type=int, default=8, help="background writer threads")
    parser.add_argument("--workdir", default=None, help="where the store is written (default: a temp dir)")
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    config = tiny_config("qwen2") if args.shape == "tiny" else real_shape_config(args.shape)
    model = build_model(config).to(args.device, dtype)
    model.requires_grad_(False)
    ids = torch.randint(
        0, config.vocab_size, (args.examples, args.length), generator=torch.Generator().manual_seed(0)
    )
    mask = torch.ones_like(ids)
    encoded = Encoded(ids, mask, mask.bool(), ids.clone())
    tokens = ids.numel()

    with torch.inference_mode():  # warm-up, then the bare forward over the same batches
        model(input_ids=ids[: args.batch_size].to(args.device), use_cache=False)
        synchronize(args.device)
        started = time.perf_counter()
        for start in range(0, args.examples, args.batch_size):
            model(input_ids=ids[start : start + args.batch_size].to(args.device), use_cache=False)
        synchronize(args.device)
    bare = tokens / (time.perf_counter() - started)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-cache-"))
    workdir.mkdir(parents=True, exist_ok=True)
    disk = disk_bytes_per_second(workdir)
    cache_config = CacheConfig(batch_size=args.batch_size, codec=args.codec, writers=args.writers)
    layers = kept_layers(cache_config, config.num_hidden_layers)
    arrays = cache_arrays(args.examples, args.length, config.hidden_size, layers, cache_config)
    stored_per_token = sum(2 * config.hidden_size for _ in layers) + cache_config.top_k * 8 + 4
    store = workdir / "cache.zarr"
    started = time.perf_counter()
    with StoreWriter(store, arrays, "bench", codec=args.codec) as writer:
        write_teacher_cache(model, encoded, writer, cache_config, desc="bench cache")
        writer.finalize({})
    cached = tokens / (time.perf_counter() - started)
    on_disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    shutil.rmtree(workdir, ignore_errors=args.workdir is None)

    roofline = min(bare, disk / stored_per_token)
    print(
        f"device {args.device} "
        f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), "
        f"shape {args.shape}, {args.examples}x{args.length} tokens, model {dtype}, codec {args.codec}, "
        f"{args.writers} writer threads"
    )
    print(f"bare forward          {bare:12.1f} tokens/s")
    print(
        f"disk (fsync)          {disk / 1e9:12.3f} GB/s -> {disk / stored_per_token:.1f} tokens/s at "
        f"{stored_per_token / 1024:.1f} KiB/token"
    )
    print(f"cache stage           {cached:12.1f} tokens/s")
    print(f"ratio cache / bare    {cached / bare:12.3f}")
    print(f"ratio cache / roofline {cached / roofline:11.3f}  (roofline = min(bare, disk / bytes per token))")
    print(f"compression ratio     {stored_per_token * tokens / on_disk:12.2f}")


if __name__ == "__main__":
    main()
