"""Stage `train@<task>`: LoRA-train the student from the cache (targets + teacher top-k), objective
`train.objective` (v1 | v2 | sft). The teacher's weights are not a dependency and are never loaded.

Writes the adapter to data/adapters/<task>/<objective>/, per-step losses as a DVC plot, and the layer
alignment of the trained layers before and after training on the alignment examples that no latent map was
fitted on (the same held-out examples `align` measures every map on).
"""

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from semalign.config import build, write_json
from semalign.data import load_split
from semalign.fidelity import plot_curves
from semalign.models import load_hf_dir
from semalign.pairing import Pairing
from semalign.store import open_store
from semalign.targets import target_name
from semalign.training import (
    TrainConfig, add_lora, layer_alignment, micro_batches, save_adapter, steps_per_epoch, train,
)

TOPK = ("topk_logprobs", "topk_ids", "rest_logmass")


def split_inputs(task: str, split: str, layers: list[int], with_topk: bool, held_out_only: bool = False):
    """In-memory tensors `[N, T, ...]` and targets of one split, from the data, targets and cache stores; with
    `held_out_only`, only the examples no latent map was fitted on (the targets manifest's `fit_examples` on)."""
    encoded, _ = load_split(Path("data/tasks") / task, split)
    tensors = {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask, "labels": encoded.labels}
    if with_topk:
        cache = open_store(Path("data/cache") / task / f"{split}.zarr")
        tensors |= {name: cache.read(name) for name in TOPK}
    targets_store = open_store(Path("data/targets") / task / f"{split}.zarr")
    targets = {k: targets_store.read(target_name(k)) for k in layers}
    first = targets_store.manifest["fit_examples"] if held_out_only else 0
    return {name: t[first:] for name, t in tensors.items()}, {k: t[first:] for k, t in targets.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--objective", required=True, help="one of train.objectives: v1 | v2 | sft")
    args = parser.parse_args()
    section = {key: value for key, value in yaml.safe_load(Path("params.yaml").read_text())["train"].items()
               if key != "objectives"}
    config = build(TrainConfig, {**section, "objective": args.objective}, "train")
    layers = Pairing.from_json(json.loads((Path("data/pairs") / f"{args.task}.json").read_text())).trained_student_layers

    tensors, targets = split_inputs(args.task, "training", layers, with_topk=config.objective == "v2")
    held_tensors, held_targets = split_inputs(args.task, "alignment", layers, with_topk=False, held_out_only=True)
    held_out = list(micro_batches(held_tensors, held_targets, config.micro_batch_size, torch.Generator().manual_seed(0)))
    student, _ = load_hf_dir(Path("data/models/student"))
    model = add_lora(student, layers, config)
    before = layer_alignment(model, held_out, layers)

    def epoch_batches(epoch: int):
        return micro_batches(tensors, targets, config.micro_batch_size, torch.Generator().manual_seed(config.seed + epoch))

    started = time.perf_counter()
    result = train(model, epoch_batches, layers, config, steps_per_epoch(len(tensors["input_ids"]), config))
    seconds = time.perf_counter() - started
    after = layer_alignment(model, held_out, layers)
    save_adapter(model, Path("data/adapters") / args.task / config.objective)

    write_json(Path("plots/train") / args.task / f"{config.objective}.json", result.records)
    plot_curves({term: [r[term] for r in result.records] for term in ("loss", "layer_term", "output_term")},
                Path("plots/train") / args.task / f"{config.objective}.png", f"training loss ({args.task}, {config.objective})",
                "loss", first_layer=1, xlabel="optimizer step")
    write_json(Path("metrics/train") / args.task / f"{config.objective}.json", {
        "objective": config.objective, "map": open_store(Path("data/targets") / args.task / "training.zarr").manifest["map"],
        "trained_layers": layers, "steps": len(result.records),
        "final_loss": result.records[-1]["loss"] if result.records else None, "seconds": round(seconds, 1),
        "held_out_examples": len(held_tensors["input_ids"]),
        "held_out_alignment": {str(k): {"before": before[k], "after": after[k]} for k in layers},
    })
    print(f"train {args.task}/{config.objective}: {len(result.records)} steps in {seconds:.0f}s, layers {layers}")


if __name__ == "__main__":
    main()
