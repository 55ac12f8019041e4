"""Stage `attribute@<task>`: score every teacher layer on the attribution split (Captum, paper §4.1).

Teacher-side: depends on the teacher and the data only, so student experiments never rerun it.
"""

import argparse
from pathlib import Path

import torch

from semalign.config import read_section
from semalign.data import load_split
from semalign.files import write_json
from semalign.models import load_hf_dir
from semalign.teacher.attribution import AttributeConfig, layer_scores, plot_layer_scores, scores_to_plot_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    args = parser.parse_args()
    config = read_section(AttributeConfig, "attribute")

    encoded, _ = load_split(Path("data/tasks") / args.task, "attribution")
    model, _ = load_hf_dir(Path("data/models/teacher"))
    model.requires_grad_(
        False
    )  # only activation gradients are used; parameter gradients would double the cost
    result = layer_scores(
        model,
        encoded.input_ids,
        encoded.attention_mask,
        encoded.labels,
        batch_size=config.batch_size,
        target=config.target,
    )

    write_json(
        Path("metrics/attribution") / f"{args.task}.json",
        {
            "task": args.task,
            "target": result.target,
            "aggregation": result.aggregation,
            "num_examples": result.num_examples,
            "num_layers": len(result.scores),
            "top_layer": int(torch.tensor(result.scores).argmax()) + 1,
            "scores": result.scores,
            "raw": result.raw,
        },
    )
    write_json(Path("plots/attribution") / f"{args.task}.json", scores_to_plot_rows(result.scores))
    plot_layer_scores(
        result.scores,
        Path("plots/attribution") / f"{args.task}.png",
        f"teacher layer attribution ({args.task}, {result.target})",
    )
    print(
        f"attribute {args.task}: top layer {int(torch.tensor(result.scores).argmax()) + 1} of "
        f"{len(result.scores)}"
    )


if __name__ == "__main__":
    main()
