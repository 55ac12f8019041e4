"""Stage `laten@<task>`: the LaTen baseline (parameter-space transfer; reads the teacher's weights).

Static attribution of teacher and student on the attribution split, top layers and neurons, hypernetworks
trained on the same split with the injected student's loss, one injection (lib/semalign/baselines/laten.py).
Writes the student delta, the teacher's layer scores as a plot, and metrics (with the loss per step).
"""

import argparse
import time
from pathlib import Path

from semalign.baselines.delta import save_delta
from semalign.baselines.laten import LatenConfig, run_laten
from semalign.config import read_section
from semalign.files import write_json
from semalign.teacher.attribution import plot_layer_scores, scores_to_plot_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--data", type=Path, required=True, help="the task's folder (attribution split read)")
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's model directory")
    parser.add_argument("--student", type=Path, required=True, help="the student's model directory")
    parser.add_argument("--out", type=Path, required=True, help="folder of the student delta")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True, help="plot path without suffix (.json, .png)")
    args = parser.parse_args()
    config = read_section(LatenConfig, "laten")

    started = time.perf_counter()
    run = run_laten(args.student, args.teacher, args.data, config)
    save_delta(run.delta, args.out, run.description)
    seconds = time.perf_counter() - started

    layers = run.metrics["teacher_layers"]
    write_json(args.plot.with_suffix(".json"), scores_to_plot_rows(run.scores))
    plot_layer_scores(
        run.scores,
        args.plot.with_suffix(".png"),
        f"LaTen: teacher layer answer log-prob gain ({args.task}); kept {len(layers)}",
    )
    write_json(args.metrics, {"task": args.task, "seconds": round(seconds, 1), **run.metrics})
    steps = len(run.metrics["steps"])
    print(f"laten {args.task}: teacher layers {layers}, {steps} alignment steps in {seconds:.0f}s")


if __name__ == "__main__":
    main()
