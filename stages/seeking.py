"""Stage `seeking@<task>`: the SEEKING baseline (parameter-space transfer; reads the teacher's weights).

Sensitivities on the attribution split (seed set), top layers and sub-blocks of the teacher, SVD LoRA init
of the student, cross-entropy post-alignment on the training split (lib/semalign/baselines/seeking.py).
Writes the student delta, the per-layer sensitivity as a plot, and metrics.
"""

import argparse
import time
from pathlib import Path

from semalign.baselines.delta import save_delta
from semalign.baselines.seeking import SeekingConfig, run_seeking
from semalign.config import read_section
from semalign.files import write_json
from semalign.teacher.attribution import plot_layer_scores, scores_to_plot_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--data", type=Path, required=True, help="the task's folder (attribution, training)")
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's model directory")
    parser.add_argument("--student", type=Path, required=True, help="the student's model directory")
    parser.add_argument("--out", type=Path, required=True, help="folder of the student delta")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True, help="plot path without suffix (.json, .png)")
    args = parser.parse_args()
    config = read_section(SeekingConfig, "seeking")

    started = time.perf_counter()
    run = run_seeking(args.student, args.teacher, args.data, config)
    save_delta(run.delta, args.out, run.description)
    seconds = time.perf_counter() - started

    layers = run.metrics["teacher_layers"]
    write_json(args.plot.with_suffix(".json"), scores_to_plot_rows(run.shares))
    plot_layer_scores(
        run.shares,
        args.plot.with_suffix(".png"),
        f"SEEKING: teacher layer sensitivity share ({args.task}); kept {len(layers)}",
    )
    write_json(args.metrics, {"task": args.task, "seconds": round(seconds, 1), **run.metrics})
    steps = run.metrics["steps"]
    print(f"seeking {args.task}: teacher layers {layers}, {steps} post-alignment steps in {seconds:.0f}s")


if __name__ == "__main__":
    main()
