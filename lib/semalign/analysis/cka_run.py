"""The `cka@<task>` run: linear CKA between every teacher layer and every student layer on the task's
alignment split, before and after transfer, on the layers' contributions Δh_ℓ = h_ℓ − h_{ℓ−1} (layer 0: the
embeddings h_0), with the teacher's raw and mapped into student space.

Raw residual streams h are ≈ 1 for almost every layer pair (a few massive-activation dimensions dominate every
h_ℓ), so they are kept only as one contrast panel ("before"). Student-side: the teacher's h_0, Δh come from
the cache, never from its weights. "aligned" maps them with the semantic map of `fold` (M Δh/‖Δh‖, the paper's
targets); "after <objective>" is the student with that objective's adapter merged. A stage body, not in
`semalign.analysis.__all__`: it loads models and stores, which the report stage does not need.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from semalign.align.alignment import decompose_recompose
from semalign.align.pairing import depth_map
from semalign.analysis.cka import (
    CkaConfig,
    best_matches,
    cka_matrix,
    even_rows,
    layer_contributions,
    plot_heatmaps,
)
from semalign.data import load_split
from semalign.files import write_json
from semalign.models import load_hf_dir, merge_adapter, model_info
from semalign.progress import progress
from semalign.store import open_store
from semalign.teacher.activations import residual_states
from semalign.teacher.bases import VocabAlignment
from semalign.teacher.cache import residual_stream


@dataclass(frozen=True)
class CkaPaths:
    """Where `cka@<task>` reads and writes (dvc.yaml names them)."""

    data: Path  # the task's folder (alignment split)
    cache: Path  # the task's teacher cache (alignment.zarr)
    maps: Path  # fold's maps (the semantic map)
    vocab: Path  # fold's vocabulary map
    student: Path  # the student's model directory
    adapters: Path  # the task's adapters, one folder per objective
    metrics: Path
    plot: Path  # without suffix: .json (best matches), .png (heatmaps), _matrices.json


def teacher_states(task: str, paths: CkaPaths, real: torch.Tensor, keep: torch.Tensor):
    """The teacher's cached residual stream `[tokens, d_teacher]` per layer (0: embeddings) at the kept real
    tokens, and its layer count."""
    cache = open_store(paths.cache / "alignment.zarr")
    num_teacher = cache.manifest["teacher"]["num_layers"]
    stream = residual_stream(cache, num_teacher, 0, len(real))
    desc = f"cka {task}: teacher cache"
    residual = [h[real][keep] for _, h in progress(stream, desc=desc, total=num_teacher + 1, unit="layer")]
    return residual, num_teacher


def cka(task: str, config: CkaConfig, objectives: list[str], paths: CkaPaths) -> None:
    """Compute the CKA matrices of `task` and write the metrics (per student layer the best-matching teacher
    layer vs. the §4.1 depth map), the heatmaps and the matrices as JSON."""
    started = time.perf_counter()
    encoded, _ = load_split(paths.data, "alignment")
    real = encoded.attention_mask.bool()
    keep = even_rows(int(real.sum()), config.max_tokens)
    residual, num_teacher = teacher_states(task, paths, real, keep)
    contribution = layer_contributions(residual)
    folded = load_file(paths.maps)["semantic"]
    teacher = {
        "contribution_raw": contribution,
        "contribution_aligned": [decompose_recompose(dh, folded) for dh in contribution],
    }

    # the student reads the same text in its own token ids (teacher ids matched by token string)
    student_ids = VocabAlignment.load(paths.vocab).student_inputs(encoded.input_ids, encoded.attention_mask)
    students = {}
    for when in ["before", *objectives]:
        model, _ = load_hf_dir(paths.student)
        if when != "before":
            model = merge_adapter(model, paths.adapters / when)
        layers = range(model_info(model).num_layers + 1)
        states = residual_states(
            model, student_ids, encoded.attention_mask, layers, desc=f"cka {task}: student {when}"
        )
        students[when] = [states[ell][keep] for ell in layers]
        del model, states
    depth = depth_map(num_teacher, len(students["before"]) - 1)

    def compare(teacher_side: list, student_side: list, name: str) -> torch.Tensor:
        return cka_matrix(teacher_side, student_side, config.debiased, desc=f"cka {task}: {name}")

    matrices = {
        f"{when}_{name}": compare(states, layer_contributions(students[when]), f"{when}_{name}")
        for name, states in teacher.items()
        for when in students
    }
    matrices["before_residual_raw"] = compare(residual, students["before"], "before_residual_raw")
    summaries = {name: best_matches(matrix, depth) for name, matrix in matrices.items()}

    panels = {
        f"Δh, {when if when == 'before' else 'after ' + when}, teacher {side}": matrices[
            f"{when}_contribution_{side}"
        ]
        for side in ("raw", "aligned")
        for when in students
    }
    panels["raw residual stream h, before (contrast)"] = matrices["before_residual_raw"]
    plot_heatmaps(
        panels,
        paths.plot.with_suffix(".png"),
        f"linear CKA{' (debiased)' if config.debiased else ''} of layer contributions Δh_ℓ = h_ℓ − h_ℓ₋₁ "
        f"(layer 0: embeddings), {task}, {len(keep)} tokens",
        depth,
        columns=len(students),
    )
    write_json(
        paths.plot.with_name(f"{paths.plot.name}_matrices.json"),
        {name: [[round(float(v), 5) for v in row] for row in matrix] for name, matrix in matrices.items()},
    )
    write_json(
        paths.plot.with_suffix(".json"),
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
        paths.metrics,
        {
            "task": task,
            "objectives": objectives,
            "tokens": len(keep),
            "debiased": config.debiased,
            "quantity": "layer contributions Δh (layer 0: embeddings h_0); before_residual_raw: raw h",
            "depth_map": depth,
            **summaries,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    print(f"cka {task}: " + ", ".join(f"{name}: mean {s['mean_cka']:.3f}" for name, s in summaries.items()))
