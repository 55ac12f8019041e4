"""Stage `cache@<task>`: run the teacher once over the alignment and training splits and store its
residual stream and top-k next-token distribution (lib/semalign/teacher/cache.py has the layout), and over the
agreement split its top-k next-token distribution only (lib/semalign/teacher/cache_run.py).

Killed at any point, a rerun resumes: finished chunks are journaled with their checksums and kept if they
still verify, the rest recomputed (so `dvc repro -f cache@<task>` repairs a damaged store).
Data-parallel under `torchrun --nproc-per-node N stages/cache.py <its arguments in dvc.yaml>`: each rank
computes its share of the chunks into the same stores, rank 0 writes the manifests and metrics; the stores are
identical to a single process's.
"""

import argparse
from pathlib import Path

from semalign.config import read_section
from semalign.distributed import Ranks
from semalign.store import StoresConfig
from semalign.teacher.cache import CacheConfig
from semalign.teacher.cache_run import CachePaths, cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's model directory")
    parser.add_argument("--data", type=Path, required=True, help="the task's folder (its splits)")
    parser.add_argument("--out", type=Path, required=True, help="the task's cache folder (<split>.zarr)")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    config = read_section(CacheConfig, "cache")
    stores = read_section(StoresConfig, "stores")
    paths = CachePaths(args.teacher, args.data, args.out, args.metrics)
    with Ranks() as ranks:
        cache(args.task, config, stores, paths, ranks)


if __name__ == "__main__":
    main()
