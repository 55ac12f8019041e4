"""Stage `train@<task>`: LoRA-train the student from the cache (targets + teacher top-k), objective
`train.objective` (v1 | v2 | sft). The teacher's weights are not a dependency and are never loaded.

Writes the adapter to data/adapters/<task>/<objective>/, per-step losses as a DVC plot, and the layer
alignment of the trained layers on the held-out alignment split before and after training.
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


def split_inputs(task: str, split: str, layers: list[int], with_topk: bool):
    """In-memory tensors `[N, T, ...]` and targets of one split, from the data, targets and cache stores."""
    encoded, _ = load_split(Path("data/tasks") / task, split)
    tensors = {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask, "labels": encoded.labels}
    if with_topk:
        cache = open_store(Path("data/cache") / task / f"{split}.zarr")
        tensors |= {name: cache.read(name) for name in TOPK}
    targets_store = open_store(Path("data/targets") / task / f"{split}.zarr")
    return tensors, {k: targets_store.read(target_name(k)) for k in layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    args = parser.parse_args()
    config = build(TrainConfig, yaml.safe_load(Path("params.yaml").read_text())["train"], "train")
    layers = Pairing.from_json(json.loads((Path("data/pairs") / f"{args.task}.json").read_text())).trained_student_layers

    tensors, targets = split_inputs(args.task, "training", layers, with_topk=config.objective == "v2")
    held_tensors, held_targets = split_inputs(args.task, "alignment", layers, with_topk=False)
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

    write_json(Path("plots/train") / f"{args.task}.json", result.records)
    plot_curves({term: [r[term] for r in result.records] for term in ("loss", "layer_term", "output_term")},
                Path("plots/train") / f"{args.task}.png", f"training loss ({args.task}, {config.objective})",
                "loss", first_layer=1, xlabel="optimizer step")
    write_json(Path("metrics/train") / f"{args.task}.json", {
        "objective": config.objective, "trained_layers": layers, "steps": len(result.records),
        "final_loss": result.records[-1]["loss"] if result.records else None, "seconds": round(seconds, 1),
        "held_out_alignment": {str(k): {"before": before[k], "after": after[k]} for k in layers},
    })
    print(f"train {args.task}/{config.objective}: {len(result.records)} steps in {seconds:.0f}s, layers {layers}")


if __name__ == "__main__":
    main()
