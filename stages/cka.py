"""Stage `cka@<task>`: linear CKA between every teacher layer and every student layer on the task's
alignment split, before and after every objective in `train.objectives`, on the layers' contributions Δh
(lib/semalign/analysis/cka_run.py).

Student-side: the teacher's states come from the cache, never from its weights. Writes the metrics (per
student layer the best-matching teacher layer vs. the §4.1 depth map), the heatmaps and the matrices as JSON.
"""

import argparse
from pathlib import Path

from semalign.analysis.cka import CkaConfig
from semalign.analysis.cka_run import CkaPaths, cka
from semalign.config import params_section, read_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--data", type=Path, required=True, help="the task's folder (alignment split)")
    parser.add_argument("--cache", type=Path, required=True, help="the task's teacher cache")
    parser.add_argument("--maps", type=Path, required=True, help="fold's maps (the semantic map)")
    parser.add_argument("--vocab", type=Path, required=True, help="fold's vocabulary map")
    parser.add_argument("--student", type=Path, required=True, help="the student's model directory")
    parser.add_argument("--adapters", type=Path, required=True, help="the task's adapters, one per objective")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True, help="plot path without suffix (.json, .png)")
    args = parser.parse_args()
    config = read_section(CkaConfig, "cka")
    fields = ("data", "cache", "maps", "vocab", "student", "adapters", "metrics", "plot")
    paths = CkaPaths(**{name: getattr(args, name) for name in fields})
    cka(args.task, config, params_section("train.objectives"), paths)


if __name__ == "__main__":
    main()
