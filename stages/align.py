"""Stage `align@<task>`: supervisory targets in student space from the teacher cache, and the measurements
that say whether the alignment means anything (lib/semalign/align/run.py).

Student-side: reads the cache, the maps of `fold` and the pairing; loads the student, never the teacher.
Under `torchrun --nproc-per-node N` every rank fits the same maps (deterministic, on the small alignment
split) and writes its share of the target chunks; rank 0 writes the manifests, measurements and plots.
"""

import argparse

from semalign.align.alignment import AlignConfig
from semalign.align.run import align
from semalign.config import read_section
from semalign.distributed import Ranks
from semalign.store import StoresConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    args = parser.parse_args()
    config = read_section(AlignConfig, "align")
    stores = read_section(StoresConfig, "stores")
    with Ranks() as ranks:
        align(args.task, config, stores, ranks)


if __name__ == "__main__":
    main()
