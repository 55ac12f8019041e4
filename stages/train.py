"""Stage `train@<task>`: LoRA-train the student from the cache (targets + teacher top-k), objective
`train.objective` (v1 | v2 | sft) on its pairing (v1, sft: the depth map; v2: the v2 selection, one frontier
phase per trained layer, listed under `phases` in the metrics). The teacher's weights are not a dependency
and are never loaded; teacher token ids are read as student ids through fold's vocabulary map.

Writes the adapter to data/adapters/<task>/<objective>/, per-step losses as a DVC plot, and the layer
alignment of the trained layers before and after training on the alignment examples that no latent map was
fitted on (the same held-out examples `align` measures every map on). Under `torchrun` it trains with DDP,
or with the student sharded (FSDP) if `train.parallel` is fsdp, each rank reading only its micro batches'
rows; every rank measures the alignment and takes part in saving (a sharded student's forward passes and
gathers are collectives); rank 0 writes the outputs.
"""

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from semalign.align.pairing import PAIRING_OF, Pairing, read_pairings
from semalign.align.targets import target_name
from semalign.config import read_section
from semalign.data import load_split
from semalign.distributed import Ranks
from semalign.files import write_json
from semalign.plots import plot_curves
from semalign.store import open_store
from semalign.student.training import (
    TERMS,
    StudentIds,
    TrainConfig,
    layer_alignment,
    load_student,
    micro_batches,
    save_adapter,
    step_batches,
    steps_per_epoch,
    token_tensors,
    train,
    training_phases,
)
from semalign.teacher.bases import VocabAlignment

TOPK = ("topk_logprobs", "topk_ids", "rest_logmass")


def training_rows(task: str, specs: list[tuple[int, str]], vocab: VocabAlignment, with_topk: bool):
    """The training split as row sources `[N, T, ...]`: token tensors in memory (student ids); the cached
    top-k (teacher ids read as student ids) and the targets `specs` (student layer, pairing) read from their
    stores on demand, so each process reads only its own micro batches."""
    encoded, _ = load_split(Path("data/tasks") / task, "training")
    tensors = token_tensors(encoded, vocab)
    if with_topk:
        cache = open_store(Path("data/cache") / task / "training.zarr")
        tensors |= {name: cache.rows(name) for name in TOPK}
        tensors["topk_ids"] = StudentIds(tensors["topk_ids"], vocab)
    targets = open_store(Path("data/targets") / task / "training.zarr")
    return tensors, {k: targets.rows(target_name(k, mode)) for k, mode in specs}


def held_out_inputs(task: str, specs: list[tuple[int, str]], vocab: VocabAlignment):
    """In-memory tensors `[N, T]` and targets `[N, T, d]` of the alignment examples no latent map was fitted
    on (the targets manifest's `fit_examples` on: the held-out examples `align` measures every map on)."""
    encoded, _ = load_split(Path("data/tasks") / task, "alignment")
    targets = open_store(Path("data/targets") / task / "alignment.zarr")
    first = targets.manifest["fit_examples"]
    tensors = token_tensors(encoded, vocab)
    return (
        {name: t[first:] for name, t in tensors.items()},
        {k: targets.read(target_name(k, mode))[first:] for k, mode in specs},
    )


def phases(records: list[dict], objective: str, pairing: Pairing) -> list[dict]:
    """Per training phase: its trainable student layers (v2: the frontier), their teacher partners under
    the objective's pairing, and the optimizer steps it took."""
    steps = Counter(r["phase"] for r in records)
    return [
        {
            "phase": phase,
            "student_layers": layers,
            "teacher_layers": [pairing.layers[k - 1].teacher_layer for k in layers],
            "steps": steps[phase],
        }
        for phase, layers in enumerate(training_phases(objective, pairing.trained_student_layers), start=1)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--objective", required=True, help="one of train.objectives: v1 | v2 | sft")
    args = parser.parse_args()
    config = read_section(TrainConfig, "train", drop=("objectives",), objective=args.objective)
    mode = PAIRING_OF[config.objective]
    pairing = read_pairings(json.loads((Path("data/pairs") / f"{args.task}.json").read_text()))[mode]
    layers = pairing.trained_student_layers
    specs = [(k, mode) for k in layers]
    vocab = VocabAlignment.load("data/maps/vocab.safetensors")

    with Ranks() as ranks:
        tensors, targets = training_rows(args.task, specs, vocab, with_topk=config.objective == "v2")
        model = load_student(Path("data/models/student"), layers, config, ranks)
        held_tensors, held_targets = held_out_inputs(args.task, specs, vocab)
        held_out = list(
            micro_batches(
                held_tensors, held_targets, config.micro_batch_size, torch.Generator().manual_seed(0)
            )
        )
        before = layer_alignment(model, held_out, layers)

        def epoch_steps(epoch: int):
            return step_batches(
                tensors, targets, config, torch.Generator().manual_seed(config.seed + epoch), ranks.shard
            )

        torch.manual_seed(config.seed + ranks.rank)  # LoRA dropout: reproducible, and different on each rank
        started = time.perf_counter()
        result = train(
            model, epoch_steps, layers, config, steps_per_epoch(len(tensors["input_ids"]), config), ranks
        )
        seconds = time.perf_counter() - started
        after = layer_alignment(model, held_out, layers)
        save_adapter(model, Path("data/adapters") / args.task / config.objective, ranks)
        if not ranks.is_main:
            return

    write_json(Path("plots/train") / args.task / f"{config.objective}.json", result.records)
    plot_curves(
        {term: [r[term] for r in result.records] for term in TERMS},
        Path("plots/train") / args.task / f"{config.objective}.png",
        f"training loss ({args.task}, {config.objective})",
        "loss",
        first_layer=1,
        xlabel="optimizer step",
    )
    write_json(
        Path("metrics/train") / args.task / f"{config.objective}.json",
        {
            "objective": config.objective,
            "map": open_store(Path("data/targets") / args.task / "training.zarr").manifest["map"],
            "pairing": mode,
            "trained_layers": layers,
            "phases": phases(result.records, config.objective, pairing),
            "steps": len(result.records),
            "processes": ranks.world,
            "final_loss": result.records[-1]["loss"] if result.records else None,
            "seconds": round(seconds, 1),
            "held_out_examples": len(held_tensors["input_ids"]),
            "held_out_alignment": {str(k): {"before": before[k], "after": after[k]} for k in layers},
        },
    )
    print(
        f"train {args.task}/{config.objective}: {len(result.records)} steps in {seconds:.0f}s on "
        f"{ranks.world} "
        f"process(es), layers {layers}"
    )


if __name__ == "__main__":
    main()
