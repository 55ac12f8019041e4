"""The `align@<task>` run: supervisory targets in student space from the teacher cache, and the
measurements that say whether the alignment means anything, over the pipeline's layout (data/,
plots/align/, metrics/align/).

Targets: for each latent map of `align.maps` and each trained student layer of each pairing (v1, v2), the
teacher quantity mapped by that map. Measurements: Fig. 2 for both models with the random-basis control and
its sweep; every latent map on the held-out alignment examples, per student layer. A stage body, not in
`semalign.align.__all__`: it loads models and stores, which the package's pure modules (and the stages
importing only them) do not need.
"""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from semalign.align.alignment import AlignConfig, random_control_cosine
from semalign.align.fidelity import compare_maps, curve_rows, fit_examples, layer_fidelity
from semalign.align.pairing import read_pairings
from semalign.align.targets import TargetSpec, target_arrays, teacher_quantity, write_targets
from semalign.data import load_split
from semalign.distributed import Ranks, finish_store, shared_writer
from semalign.files import write_json
from semalign.models import load_hf_dir, model_info
from semalign.plots import plot_curves
from semalign.progress import progress
from semalign.store import StoresConfig, open_store
from semalign.teacher.activations import residual_states
from semalign.teacher.bases import VocabAlignment
from semalign.teacher.cache import residual_stream, state_name


def fig2(
    task: str,
    role: str,
    states: dict[int, torch.Tensor],
    maps: dict[str, torch.Tensor],
    counts: tuple[int, ...],
    vocab: int,
) -> dict:
    """Fig. 2 curves for one model (written as plot data and PNG) and the random control's sweep over vector
    counts (`counts` and `vocab`, the shared tokens that `fold`'s control matches): mean over layers per
    count."""
    self_maps = {
        name.removeprefix(f"self_{role}_"): m for name, m in maps.items() if name.startswith(f"self_{role}_")
    }
    curves = layer_fidelity(states, self_maps | {"random": maps[f"random_{role}"]})
    write_json(Path("plots/align") / f"{task}_fidelity_{role}.json", curve_rows(curves))
    plot_curves(
        curves,
        Path("plots/align") / f"{task}_fidelity_{role}.png",
        f"{role}: cos(h, decompose→recompose(h)) ({task})",
        "mean cosine",
    )
    sweep = layer_fidelity(states, {n: maps[f"random_{role}_{n}"] for n in counts}) | {
        vocab: curves["random"]
    }
    return {"curves": curves, "sweep": {n: sum(values) / len(values) for n, values in sorted(sweep.items())}}


def align(task: str, config: AlignConfig, stores: StoresConfig, ranks: Ranks) -> None:
    """Targets of `task` (this rank's share of the chunks, stored where `stores` says) and, on rank 0, the
    measurements."""
    pairs_json = json.loads((Path("data/pairs") / f"{task}.json").read_text())
    pairings = read_pairings(pairs_json)
    pairing = pairings["v1"]  # every student layer of the depth map is measured
    maps = load_file("data/maps/maps.safetensors")
    vocabulary = VocabAlignment.load("data/maps/vocab.safetensors")
    # v2 selects exactly one teacher layer per student layer: nothing to interpolate
    interpolate = {"v1": config.interpolate, "v2": False}

    # Every student layer's own Δh_k and its teacher quantity on the alignment split; maps are fitted on the
    # first `fitted` examples and measured on the rest.
    cache = open_store(Path("data/cache") / task / "alignment.zarr")
    encoded, _ = load_split(Path("data/tasks") / task, "alignment")
    real = encoded.attention_mask.bool()
    fitted = fit_examples(len(real), config.fit_fraction)
    student, _ = load_hf_dir(Path("data/models/student"), device=ranks.device)
    student_states = residual_states(
        student,
        vocabulary.student_inputs(encoded.input_ids, encoded.attention_mask),
        encoded.attention_mask,
        range(model_info(student).num_layers + 1),
        desc=f"align {task}: student",
    )
    chosen, measured = {}, {}
    jobs = [("v1", p) for p in pairing.layers] + [("v2", p) for p in pairings["v2"].layers if p.trained]
    for mode, pair in progress(jobs, desc=f"align {task}: fit and measure maps", unit="layer"):
        own = torch.zeros(*real.shape, student_states[0].shape[-1])
        own[real] = student_states[pair.student_layer] - student_states[pair.student_layer - 1]
        teacher = teacher_quantity(cache, pair, interpolate[mode], 0, len(real))
        layer_maps, measured[mode, pair.student_layer] = compare_maps(
            teacher, own, real, fitted, maps["semantic"], config.ridge, config.control_seed
        )
        chosen[mode, pair.student_layer] = {name: layer_maps[name] for name in config.maps}
    held_out = {p.student_layer: measured["v1", p.student_layer] for p in pairing.layers}

    specs = [
        TargetSpec(mode, p, chosen[mode, p.student_layer][name], interpolate[mode], name)
        for name in config.maps
        for mode, paired in pairings.items()
        for p in paired.layers
        if p.trained
    ]
    trained = [p for p in pairing.layers if p.trained]
    for split in ("alignment", "training"):
        split_cache = open_store(Path("data/cache") / task / f"{split}.zarr")
        num_examples, num_tokens, _ = split_cache.arrays[state_name(0)].shape
        arrays = target_arrays(
            specs,
            num_examples,
            num_tokens,
            student_states[0].shape[-1],
            split_cache.arrays[state_name(0)].chunk_rows,
        )
        identity = {
            "cache": split_cache.manifest["fingerprint"],
            "pairs": pairs_json,
            "align": asdict(config),
        }
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        local = Path("data/targets") / task / f"{split}.zarr"
        rebuild = f"dvc repro -f align@{task}"
        with shared_writer(ranks, local, arrays, fingerprint, url=stores.url, rebuild=rebuild) as writer:
            write_targets(
                split_cache,
                specs,
                writer,
                desc=ranks.tag(f"align {task}/{split}"),
                shard=ranks.shard,
            )
            finish_store(
                ranks,
                writer,
                {
                    "cache_fingerprint": split_cache.manifest["fingerprint"],
                    "interpolate": interpolate["v1"],
                    "maps": list(config.maps),
                    "bases": config.bases,
                    "fit_examples": fitted,
                    "targets": [spec.name for spec in specs],
                },
                local,
            )
    if not ranks.is_main:
        return

    teacher_states = {
        ell: h[real] for ell, h in residual_stream(cache, pairing.num_teacher_layers, 0, len(real))
    }
    fidelity = {
        role: fig2(task, role, states, maps, config.control_counts, vocabulary.kept)
        for role, states in (("teacher", teacher_states), ("student", student_states))
    }
    widths = {"teacher": teacher_states[0].shape[-1], "student": student_states[0].shape[-1]}
    counts = list(fidelity["teacher"]["sweep"])
    sweep = {
        f"{role}_{kind}": [
            fidelity[role]["sweep"][n] if kind == "random" else random_control_cosine(n, widths[role])
            for n in counts
        ]
        for role in fidelity
        for kind in ("random", "closed_form")
    }
    write_json(
        Path("plots/align") / f"{task}_control_sweep.json",
        [{"count": n, **{name: values[i] for name, values in sweep.items()}} for i, n in enumerate(counts)],
    )
    plot_curves(
        sweep,
        Path("plots/align") / f"{task}_control_sweep.png",
        f"Fig. 2 random control: mean cos(h, R Rᵀ h) over layers ({task})",
        "mean cosine",
        xlabel="random unit vectors",
        x=counts,
    )

    names = list(next(iter(held_out.values())))
    series = {name: [held_out[p.student_layer][name]["cosine"] for p in pairing.layers] for name in names}
    write_json(Path("plots/align") / f"{task}_heldout.json", curve_rows(series, first_layer=1))
    plot_curves(
        series,
        Path("plots/align") / f"{task}_heldout.png",
        f"held-out cos(student Δh_k, mapped teacher quantity) ({task})",
        "mean cosine",
        first_layer=1,
    )

    def mean(name: str, measure: str) -> float:
        return round(sum(h[name][measure] for h in held_out.values()) / len(held_out), 4)

    write_json(
        Path("metrics/align") / f"{task}.json",
        {
            "maps": list(config.maps),
            "bases": config.bases,
            "interpolate": interpolate["v1"],
            "fidelity_mean_over_layers": {
                role: {name: round(sum(v) / len(v), 4) for name, v in f["curves"].items()}
                for role, f in fidelity.items()
            },
            "random_control_sweep": {
                role: {str(n): round(v, 4) for n, v in f["sweep"].items()} for role, f in fidelity.items()
            },
            "held_out": {
                "fit_examples": fitted,
                "held_out_examples": len(real) - fitted,
                "trained_layers": {
                    str(p.student_layer): {
                        name: {m: round(v, 4) for m, v in held_out[p.student_layer][name].items()}
                        for name in names
                    }
                    for p in trained
                },
                "v2_trained_layers": {
                    str(k): {
                        name: {m: round(v, 4) for m, v in measured[mode, k][name].items()} for name in names
                    }
                    for mode, k in measured
                    if mode == "v2"
                },
                "mean_all_layers": {
                    name: {m: mean(name, m) for m in ("cosine", "relation")} for name in names
                },
            },
        },
    )
    print(f"align {task}: targets of maps {list(config.maps)}: {[spec.name for spec in specs]}")
