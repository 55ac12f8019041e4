"""Stage `laten@<task>`: the LaTen baseline (parameter-space transfer; reads the teacher's weights).

Static attribution of teacher and student on the attribution split, top layers and neurons, hypernetworks
trained on the same split with the injected student's loss, one injection. Writes the student delta to
data/adapters/<task>/laten/, the teacher's layer scores as a plot, and metrics (with the loss per step).
"""

import argparse
import gc
import time
from pathlib import Path

from semalign.baselines.delta import save_delta, target_linears
from semalign.baselines.laten import (
    Hypernetworks,
    LatenConfig,
    attribute,
    neuron_delta,
    neuron_width,
    plan_transfer,
    train_hypernetworks,
)
from semalign.config import read_section
from semalign.data import load_split
from semalign.files import write_json
from semalign.models import load_hf_dir, model_info
from semalign.teacher.attribution import plot_layer_scores, scores_to_plot_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    args = parser.parse_args()
    config = read_section(LatenConfig, "laten")
    started = time.perf_counter()
    encoded, _ = load_split(Path("data/tasks") / args.task, "attribution")
    examples = (encoded.input_ids, encoded.attention_mask, encoded.labels)

    student, _ = load_hf_dir(Path("data/models/student"))
    student.requires_grad_(False)
    student_scores = attribute(student, *examples)
    widths = {
        kind: neuron_width(m.weight, kind)
        for (ell, kind), m in target_linears(student, config.target_modules).items()
        if ell == 1
    }

    teacher, _ = load_hf_dir(Path("data/models/teacher"))
    teacher.requires_grad_(False)
    teacher_scores = attribute(teacher, *examples)
    plan = plan_transfer(teacher, teacher_scores, student_scores, widths, config)
    d_teacher = model_info(teacher).d_model
    del teacher
    gc.collect()

    hypernets = Hypernetworks(
        config.target_modules, d_teacher, model_info(student).d_model, config.init_std, config.seed
    )
    records = train_hypernetworks(student, hypernets, plan, *examples, config)
    delta = neuron_delta(student, hypernets, plan)
    save_delta(
        delta,
        Path("data/adapters") / args.task / "laten",
        {
            "method": "laten",
            "teacher_layers": plan.teacher_layers,
            "receivers": {f"{j}.{kind}": idx.tolist() for (j, kind), idx in plan.receivers.items()},
        },
    )
    seconds = time.perf_counter() - started
    received = sum(len(idx) for idx in plan.receivers.values()) * model_info(student).d_model

    scores = [teacher_scores.layers[ell] for ell in sorted(teacher_scores.layers)]
    write_json(Path("plots/laten") / f"{args.task}.json", scores_to_plot_rows(scores))
    plot_layer_scores(
        scores,
        Path("plots/laten") / f"{args.task}.png",
        f"LaTen: teacher layer answer log-prob gain ({args.task}); kept {len(plan.teacher_layers)}",
    )
    write_json(
        Path("metrics/laten") / f"{args.task}.json",
        {
            "task": args.task,
            "seconds": round(seconds, 1),
            "teacher_layers": plan.teacher_layers,
            "teacher_layer_gain": {str(ell): v for ell, v in teacher_scores.layers.items()},
            "student_layer_gain": {str(ell): v for ell, v in student_scores.layers.items()},
            "neurons_per_module": {kind: len(plan.receivers[(1, kind)]) for kind in config.target_modules},
            "delta_rms_on_receivers": (sum(float(d.double().pow(2).sum()) for d in delta.values()) / received)
            ** 0.5,
            "steps": records,
        },
    )
    print(
        f"laten {args.task}: teacher layers {plan.teacher_layers}, {len(records)} alignment steps in "
        f"{seconds:.0f}s"
    )


if __name__ == "__main__":
    main()
