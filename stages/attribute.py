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
    parser.add_argument("--data", type=Path, required=True, help="the task's folder (attribution split read)")
    parser.add_argument("--model", type=Path, required=True, help="the teacher's model directory")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True, help="plot path without suffix (.json, .png)")
    args = parser.parse_args()
    config = read_section(AttributeConfig, "attribute")

    encoded, _ = load_split(args.data, "attribution")
    model, _ = load_hf_dir(args.model)
    model.requires_grad_(False)  # only activation gradients are used; parameter ones would double the cost
    result = layer_scores(
        model,
        encoded.input_ids,
        encoded.attention_mask,
        encoded.labels,
        batch_size=config.batch_size,
        target=config.target,
    )

    top_layer = int(torch.tensor(result.scores).argmax()) + 1
    write_json(
        args.metrics,
        {
            "task": args.task,
            "target": result.target,
            "aggregation": result.aggregation,
            "num_examples": result.num_examples,
            "num_layers": len(result.scores),
            "top_layer": top_layer,
            "scores": result.scores,
            "raw": result.raw,
        },
    )
    write_json(args.plot.with_suffix(".json"), scores_to_plot_rows(result.scores))
    title = f"teacher layer attribution ({args.task}, {result.target})"
    plot_layer_scores(result.scores, args.plot.with_suffix(".png"), title)
    print(f"attribute {args.task}: top layer {top_layer} of {len(result.scores)}")


if __name__ == "__main__":
    main()
