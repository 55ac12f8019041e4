"""The `train@<task>-<variant>` run: LoRA-train the student from the cache (targets + teacher top-k) with one
variant (`semalign.student.variants`: objective, latent map of its targets, seed) on its pairing, and measure
the trained layers' alignment before and after on the held-out alignment examples. A stage body, not in
`semalign.student.__all__`: it reads the pipeline's stores and writes its outputs, which the package's pure
modules (and the stages importing only them) do not need.
"""

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from semalign.align.pairing import PAIRING_OF, Pairing, read_pairings
from semalign.align.targets import target_name
from semalign.data import load_split
from semalign.distributed import Ranks
from semalign.errors import SemalignError
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
    uses_targets,
    uses_topk,
)
from semalign.student.variants import parse_variant
from semalign.teacher.bases import VocabAlignment

TOPK = ("topk_logprobs", "topk_ids", "rest_logmass")


@dataclass(frozen=True)
class TrainPaths:
    """Where `train@<task>` reads and writes (dvc.yaml names them)."""

    data: Path  # the task's folder (training, alignment splits)
    cache: Path  # the task's teacher cache (training.zarr: top-k)
    targets: Path  # the task's targets (training.zarr, alignment.zarr)
    pairs: Path  # the task's pairing, JSON
    vocab: Path  # fold's vocabulary map
    student: Path  # the student's model directory
    out: Path  # the adapter's folder
    metrics: Path
    plot: Path  # without suffix: .json (per-step losses) and .png


def training_rows(
    paths: TrainPaths, specs: list[tuple[int, str, str]], vocab: VocabAlignment, with_topk: bool
):
    """The training split as row sources `[N, T, ...]`: token tensors in memory (student ids); the cached
    top-k (teacher ids read as student ids) and the targets `specs` (student layer, pairing, latent map) read
    from their stores on demand, so each process reads only its own micro batches."""
    encoded, _ = load_split(paths.data, "training")
    tensors = token_tensors(encoded, vocab)
    if with_topk:
        cache = open_store(paths.cache / "training.zarr")
        tensors |= {name: cache.rows(name) for name in TOPK}
        tensors["topk_ids"] = StudentIds(tensors["topk_ids"], vocab)
    targets = open_store(paths.targets / "training.zarr")
    return tensors, {k: targets.rows(target_name(k, mode, name)) for k, mode, name in specs}


def held_out_inputs(paths: TrainPaths, specs: list[tuple[int, str, str]], vocab: VocabAlignment):
    """In-memory tensors `[N, T]` and targets `[N, T, d]` of the alignment examples no latent map was fitted
    on (the targets manifest's `fit_examples` on: the held-out examples `align` measures every map on)."""
    encoded, _ = load_split(paths.data, "alignment")
    targets = open_store(paths.targets / "alignment.zarr")
    first = targets.manifest["fit_examples"]
    tensors = token_tensors(encoded, vocab)
    return (
        {name: t[first:] for name, t in tensors.items()},
        {k: targets.read(target_name(k, mode, name))[first:] for k, mode, name in specs},
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


def train_student(task: str, config: TrainConfig, paths: TrainPaths, ranks: Ranks) -> None:
    """Train the adapter of `task` with the variant `config.objective` (every rank takes part: DDP or FSDP as
    `ranks` and `config.parallel` say) and, on rank 0, write the adapter's losses, plot and metrics.

    v1 and v2 train on the targets of their map, which `align` must have made (align.maps); sft and kd read no
    targets, and their held-out alignment is measured against the targets of the first map align made."""
    manifest = open_store(paths.targets / "training.zarr").manifest
    if "maps" not in manifest:
        raise SemalignError(
            f"targets {paths.targets} do not say which latent maps made them (made before align.maps); "
            "rerun `dvc repro align`"
        )
    maps = manifest["maps"]
    variant = parse_variant(config.objective, maps)
    measured_map = variant.map or maps[0]
    mode = PAIRING_OF[variant.objective]
    pairing = read_pairings(json.loads(paths.pairs.read_text()))[mode]
    layers = pairing.trained_student_layers
    specs = [(k, mode, measured_map) for k in layers]
    vocab = VocabAlignment.load(paths.vocab)

    tensors, targets = training_rows(paths, specs if uses_targets(config) else [], vocab, uses_topk(config))
    model = load_student(paths.student, layers, config, ranks)
    held_tensors, held_targets = held_out_inputs(paths, specs, vocab)
    held_out = list(
        micro_batches(held_tensors, held_targets, config.micro_batch_size, torch.Generator().manual_seed(0))
    )
    before = layer_alignment(model, held_out, layers)

    def epoch_steps(epoch: int):
        return step_batches(
            tensors, targets, config, torch.Generator().manual_seed(config.run_seed + epoch), ranks.shard
        )

    torch.manual_seed(config.run_seed + ranks.rank)  # LoRA dropout: reproducible, and different on each rank
    started = time.perf_counter()
    result = train(
        model, epoch_steps, layers, config, steps_per_epoch(len(tensors["input_ids"]), config), ranks
    )
    seconds = time.perf_counter() - started
    after = layer_alignment(model, held_out, layers)
    save_adapter(model, paths.out, ranks)  # a collective under FSDP: every rank takes part
    if not ranks.is_main:
        return

    write_json(paths.plot.with_suffix(".json"), result.records)
    plot_curves(
        {term: [r[term] for r in result.records] for term in TERMS},
        paths.plot.with_suffix(".png"),
        f"training loss ({task}, {config.objective})",
        "loss",
        first_layer=1,
        xlabel="optimizer step",
    )
    write_json(
        paths.metrics,
        {
            "objective": config.objective,
            "kind": variant.objective,
            "map": variant.map,  # the targets it trained on (None: sft, kd)
            "seed": config.run_seed,
            "pairing": mode,
            "trained_layers": layers,
            "phases": phases(result.records, variant.objective, pairing),
            "steps": len(result.records),
            "processes": ranks.world,
            "final_loss": result.records[-1]["loss"] if result.records else None,
            "seconds": round(seconds, 1),
            "held_out_examples": len(held_tensors["input_ids"]),
            "held_out_map": measured_map,
            "held_out_alignment": {str(k): {"before": before[k], "after": after[k]} for k in layers},
        },
    )
    print(
        f"train {task}/{config.objective}: {len(result.records)} steps in {seconds:.0f}s on {ranks.world} "
        f"process(es), layers {layers}"
    )
