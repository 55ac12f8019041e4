"""Stage `train@<task>-<variant>`: LoRA-train the student from the cache (targets + teacher top-k), one
variant of `train.objectives`, `<objective>[-<map>][-s<seed>]` (lib/semalign/student/variants.py): objective
v1 | v2 | sft | kd on its pairing (v1, sft, kd: the depth map; v2: the v2 selection, one frontier phase per
trained layer, listed under `phases` in the metrics); v1 and v2 on the targets of latent map <map> (default
semantic, one of align.maps); -s<n> trains with train.seed + n (lib/semalign/student/run.py).

Student-side: the teacher's weights are not a dependency and are never loaded; teacher token ids are read as
student ids through fold's vocabulary map. Writes the adapter, per-step losses as a DVC plot, and the layer
alignment of the trained layers before and after training on the alignment examples that no latent map was
fitted on. Under `torchrun` it trains with DDP, or with the student sharded (FSDP) if `train.parallel` is
fsdp, each rank reading only its micro batches' rows; rank 0 writes the outputs.
"""

import argparse
from pathlib import Path

from semalign.config import read_section
from semalign.distributed import Ranks
from semalign.student.run import TrainPaths, train_student
from semalign.student.training import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument(
        "--objective", required=True, help="a variant of train.objectives, e.g. v1, v1-ridge, kd, sft-s1"
    )
    parser.add_argument("--data", type=Path, required=True, help="the task's folder (training, alignment)")
    parser.add_argument("--cache", type=Path, required=True, help="the task's teacher cache")
    parser.add_argument("--targets", type=Path, required=True, help="the task's targets (align@<task>)")
    parser.add_argument("--pairs", type=Path, required=True, help="the task's pairing, JSON")
    parser.add_argument("--vocab", type=Path, required=True, help="fold's vocabulary map")
    parser.add_argument("--student", type=Path, required=True, help="the student's model directory")
    parser.add_argument("--out", type=Path, required=True, help="folder of the adapter")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True, help="plot path without suffix (.json, .png)")
    args = parser.parse_args()
    config = read_section(TrainConfig, "train", drop=("objectives",), objective=args.objective)
    fields = ("data", "cache", "targets", "pairs", "vocab", "student", "out", "metrics", "plot")
    paths = TrainPaths(**{name: getattr(args, name) for name in fields})
    with Ranks() as ranks:
        train_student(args.task, config, paths, ranks)


if __name__ == "__main__":
    main()
