"""Stage `cka@<task>`: linear CKA between every teacher layer and every student layer on the task's
alignment split, before and after transfer, with the teacher's states raw and mapped into student space.

Student-side: the teacher's states h_0..h_L come from the cache, never from its weights. "aligned" maps
them with the semantic map of `fold` (row-normalised M h, paper §4.2); "after <objective>" is the student
with that objective's adapter merged, for every objective in `train.objectives`. Writes
metrics/cka/<task>.json (per student layer the best-matching teacher layer vs. the §4.1 depth map),
plots/cka/<task>.png (heatmaps: raw and aligned, before and after each objective) and the matrices as JSON.
"""

import argparse
import time
from pathlib import Path

from safetensors.torch import load_file

from semalign.align.alignment import decompose_recompose
from semalign.align.pairing import depth_map
from semalign.analysis.cka import CkaConfig, best_matches, cka_matrix, even_rows, plot_heatmaps
from semalign.config import params_section, read_section
from semalign.data import load_split
from semalign.files import write_json
from semalign.models import load_hf_dir, merge_adapter, model_info
from semalign.progress import progress
from semalign.store import open_store
from semalign.teacher.activations import residual_states
from semalign.teacher.cache import state_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    args = parser.parse_args()
    config = read_section(CkaConfig, "cka")
    objectives = params_section("train.objectives")
    started = time.perf_counter()

    encoded, _ = load_split(Path("data/tasks") / args.task, "alignment")
    real = encoded.attention_mask.bool()
    keep = even_rows(int(real.sum()), config.max_tokens)
    cache = open_store(Path("data/cache") / args.task / "alignment.zarr")
    num_teacher = cache.manifest["teacher"]["num_layers"]
    teacher_layers = range(num_teacher + 1)
    teacher = [
        cache.read(state_name(ell)).float()[real][keep]
        for ell in progress(teacher_layers, desc=f"cka {args.task}: teacher cache", unit="layer")
    ]
    folded = load_file("data/maps/maps.safetensors")["semantic"]
    aligned = [decompose_recompose(h, folded) for h in teacher]

    students = {}
    for when in ["before", *objectives]:
        model, _ = load_hf_dir(Path("data/models/student"))
        if when != "before":
            model = merge_adapter(model, Path("data/adapters") / args.task / when)
        layers = range(model_info(model).num_layers + 1)
        states = residual_states(
            model, encoded.input_ids, encoded.attention_mask, layers, desc=f"cka {args.task}: student {when}"
        )
        students[when] = [states[ell][keep] for ell in layers]
        del model, states
    depth = depth_map(num_teacher, len(students["before"]) - 1)

    matrices = {
        f"{when}_{side}": cka_matrix(
            teacher_states, students[when], config.debiased, desc=f"cka {args.task}: {when}/{side}"
        )
        for when in students
        for side, teacher_states in (("raw", teacher), ("aligned", aligned))
    }
    summaries = {name: best_matches(matrix, depth) for name, matrix in matrices.items()}

    panels = {
        f"{when if when == 'before' else 'after ' + when}, teacher {side}": matrices[f"{when}_{side}"]
        for side in ("raw", "aligned")
        for when in students
    }
    plot_heatmaps(
        panels,
        Path("plots/cka") / f"{args.task}.png",
        f"linear CKA{' (debiased)' if config.debiased else ''}, {args.task}, {len(keep)} tokens",
        depth,
        columns=len(students),
    )
    write_json(
        Path("plots/cka") / f"{args.task}_matrices.json",
        {name: [[round(float(v), 5) for v in row] for row in matrix] for name, matrix in matrices.items()},
    )
    write_json(
        Path("plots/cka") / f"{args.task}.json",
        [
            {
                "student_layer": k,
                "depth_map": depth[k - 1],
                **{name: s["best_teacher_layer"][k - 1] for name, s in summaries.items()},
            }
            for k in range(1, len(depth) + 1)
        ],
    )
    write_json(
        Path("metrics/cka") / f"{args.task}.json",
        {
            "task": args.task,
            "objectives": objectives,
            "tokens": len(keep),
            "debiased": config.debiased,
            "depth_map": depth,
            **summaries,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(
        f"cka {args.task}: " + ", ".join(f"{name}: mean {s['mean_cka']:.3f}" for name, s in summaries.items())
    )


if __name__ == "__main__":
    main()
