"""Stage `seeking@<task>`: the SEEKING baseline (parameter-space transfer; reads the teacher's weights).

Sensitivities on the attribution split (seed set), top layers and sub-blocks of the teacher, SVD LoRA init
of the student, cross-entropy post-alignment on the training split. Writes the student delta to
data/adapters/<task>/seeking/, the per-layer sensitivity as a plot, and metrics.
"""

import argparse
import gc
import time
from pathlib import Path

import torch

from semalign.baselines.delta import save_delta, target_linears
from semalign.baselines.seeking import (
    SeekingConfig,
    extract_blocks,
    inject,
    layer_totals,
    lora_delta,
    lora_factors,
    select_layers,
    sensitivity,
)
from semalign.config import read_section
from semalign.data import load_split
from semalign.files import write_json
from semalign.models import load_hf_dir
from semalign.student.training import add_lora, step_batches, steps_per_epoch, token_tensors, train
from semalign.teacher.attribution import plot_layer_scores, scores_to_plot_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    args = parser.parse_args()
    config = read_section(SeekingConfig, "seeking")
    started = time.perf_counter()

    # Only the student's shapes are needed before the teacher: load it, read them, free it.
    student, _ = load_hf_dir(Path("data/models/student"))
    student_linears = target_linears(student, config.target_modules)
    shapes = {kind: tuple(m.weight.shape) for (ell, kind), m in student_linears.items() if ell == 1}
    student_depth = max(ell for ell, _ in student_linears)
    del student, student_linears

    seed, _ = load_split(Path("data/tasks") / args.task, "attribution")
    teacher, _ = load_hf_dir(Path("data/models/teacher"))
    scores = sensitivity(teacher, seed.input_ids, seed.attention_mask, seed.labels, config.target_modules)
    totals = layer_totals(scores)
    layers = select_layers(totals, config.num_layers or student_depth)
    blocks = extract_blocks(teacher, scores, layers, shapes)
    del teacher, scores
    gc.collect()

    factors = {site: lora_factors(block.weight, config.lora_r) for site, block in blocks.items()}
    student, _ = load_hf_dir(Path("data/models/student"))
    train_config = config.train_config()
    model = add_lora(student, list(range(1, len(layers) + 1)), train_config)
    inject(model, factors)
    encoded, _ = load_split(Path("data/tasks") / args.task, "training")
    tensors = token_tensors(encoded)

    def epoch_steps(epoch: int):
        return step_batches(tensors, {}, train_config, torch.Generator().manual_seed(config.seed + epoch))

    torch.manual_seed(config.seed)  # LoRA dropout masks follow seeking.seed, not whatever ran before
    result = train(
        model,
        epoch_steps,
        list(range(1, len(layers) + 1)),
        train_config,
        steps_per_epoch(len(encoded.input_ids), train_config),
    )
    out = Path("data/adapters") / args.task / "seeking"
    save_delta(
        lora_delta(model, factors),
        out,
        {
            "method": "seeking",
            "teacher_layers": layers,
            "lora_r": config.lora_r,
            "blocks": {
                f"{j}.{kind}": {"teacher_layer": b.teacher_layer, "row": b.row, "col": b.col}
                for (j, kind), b in blocks.items()
            },
        },
    )
    seconds = time.perf_counter() - started

    total = sum(totals.values())
    shares = [totals[ell] / total for ell in sorted(totals)]
    write_json(Path("plots/seeking") / f"{args.task}.json", scores_to_plot_rows(shares))
    plot_layer_scores(
        shares,
        Path("plots/seeking") / f"{args.task}.png",
        f"SEEKING: teacher layer sensitivity share ({args.task}); kept {len(layers)}",
    )
    write_json(
        Path("metrics/seeking") / f"{args.task}.json",
        {
            "task": args.task,
            "seconds": round(seconds, 1),
            "teacher_layers": layers,
            "layer_sensitivity": {str(ell): v for ell, v in totals.items()},
            "kept_share": sum(totals[ell] for ell in layers) / total,
            # how much of each selected matrix's sensitivity its student-sized block holds, mean over layers
            "block_share_mean": {
                kind: sum(b.share for (_, k), b in blocks.items() if k == kind) / len(layers)
                for kind in shapes
            },
            "steps": len(result.records),
            "first_loss": result.records[0]["loss"] if result.records else None,
            "final_loss": result.records[-1]["loss"] if result.records else None,
        },
    )
    print(
        f"seeking {args.task}: teacher layers {layers}, {len(result.records)} post-alignment steps in "
        f"{seconds:.0f}s"
    )


if __name__ == "__main__":
    main()
