"""Stage `align@<task>`: supervisory targets in student space from the teacher cache (paper §4.2), and
the measurements that say whether the alignment means anything (Fig. 2; student-vs-target before training).

Student-side: reads the cache, the maps of `fold` and the pairing; loads the student (not the teacher)
to measure its own states on the alignment split.
"""

import argparse
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import yaml
from safetensors.torch import load_file

from semalign.activations import residual_states
from semalign.alignment import AlignConfig
from semalign.cache import state_name
from semalign.config import build, write_json
from semalign.data import load_split
from semalign.fidelity import curve_rows, layer_fidelity, mean_cosine, plot_curves
from semalign.models import load_hf_dir, model_info
from semalign.pairing import Pairing
from semalign.store import StoreWriter, open_store
from semalign.targets import target_arrays, teacher_quantity, to_student_space, write_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    args = parser.parse_args()
    config = build(AlignConfig, yaml.safe_load(Path("params.yaml").read_text())["align"], "align")
    pairs_json = json.loads((Path("data/pairs") / f"{args.task}.json").read_text())
    pairing = Pairing.from_json(pairs_json)
    maps = load_file("data/maps/maps.safetensors")
    folded = maps["semantic"]
    interpolate = config.interpolate and pairing.mode == "v1"  # v2 selects exactly one teacher layer
    trained = [p for p in pairing.layers if p.trained]

    for split in ("alignment", "training"):
        cache = open_store(Path("data/cache") / args.task / f"{split}.zarr")
        num_examples, num_tokens, _ = cache.arrays[state_name(0)].shape
        arrays = target_arrays(trained, num_examples, num_tokens, folded.shape[0], cache.arrays[state_name(0)].chunk_rows)
        identity = {"cache": cache.manifest["fingerprint"], "pairs": pairs_json, "align": asdict(config)}
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        with StoreWriter(Path("data/targets") / args.task / f"{split}.zarr", arrays, fingerprint) as writer:
            write_targets(cache, trained, folded, interpolate, writer, desc=f"align {args.task}/{split}")
            writer.finalize({"cache_fingerprint": cache.manifest["fingerprint"], "pairing_mode": pairing.mode,
                             "interpolate": interpolate, "map": f"semantic/{config.bases}",
                             "student_layers": [p.student_layer for p in trained]})

    # Measurements on the alignment split: Fig. 2 for both models, then student vs. target per layer.
    cache = open_store(Path("data/cache") / args.task / "alignment.zarr")
    encoded, _ = load_split(Path("data/tasks") / args.task, "alignment")
    real = encoded.attention_mask.bool()
    teacher_layers = range(pairing.num_teacher_layers + 1)
    teacher_states = {ell: cache.read(state_name(ell)).float()[real] for ell in teacher_layers}
    student, _ = load_hf_dir(Path("data/models/student"))
    student_states = residual_states(student, encoded.input_ids, encoded.attention_mask,
                                     range(model_info(student).num_layers + 1), desc=f"align {args.task}: student")
    fidelity = {}
    for role, states in (("teacher", teacher_states), ("student", student_states)):
        self_maps = {name.removeprefix(f"self_{role}_"): m for name, m in maps.items() if name.startswith(f"self_{role}_")}
        self_maps["random"] = maps[f"random_{role}"]
        fidelity[role] = layer_fidelity(states, self_maps)
        write_json(Path("plots/align") / f"{args.task}_fidelity_{role}.json", curve_rows(fidelity[role]))
        plot_curves(fidelity[role], Path("plots/align") / f"{args.task}_fidelity_{role}.png",
                    f"{role}: cos(h, decompose→recompose(h)) ({args.task})", "mean cosine")
    del teacher_states

    cross = {}
    for pair in pairing.layers:
        target = to_student_space(teacher_quantity(cache, pair, interpolate, 0, len(real)), folded)[real]
        own = student_states[pair.student_layer] - student_states[pair.student_layer - 1]
        cross[pair.student_layer] = mean_cosine(own, target)
    series = {"cos(student Δh_k, aligned teacher target)": list(cross.values())}
    write_json(Path("plots/align") / f"{args.task}_cross.json", curve_rows(series, first_layer=1))
    plot_curves(series, Path("plots/align") / f"{args.task}_cross.png",
                f"student vs aligned target before training ({args.task})", "mean cosine", first_layer=1)
    write_json(Path("metrics/align") / f"{args.task}.json", {
        "map": f"semantic/{config.bases}", "interpolate": interpolate,
        "fidelity_mean_over_layers": {role: {name: round(sum(v) / len(v), 4) for name, v in curves.items()}
                                      for role, curves in fidelity.items()},
        "cross_model_before_training": {"trained_layers": {str(p.student_layer): round(cross[p.student_layer], 4)
                                                           for p in trained},
                                        "mean_all_layers": round(sum(cross.values()) / len(cross), 4)},
    })
    print(f"align {args.task}: targets for student layers {[p.student_layer for p in trained]}")


if __name__ == "__main__":
    main()
