"""Stage `pair@<task>`: give every student layer its teacher layer from the attribution, twice: the v1
depth map (paper §4.1; objectives v1 and sft) and the v2 order-preserving selection (objective v2).

Student-side: reads the teacher's attribution metrics and both models' depths, never the teacher weights.
"""

import argparse
import json
from pathlib import Path

from transformers import AutoConfig

from semalign.align.pairing import PairConfig, build_pairings
from semalign.config import read_section
from semalign.files import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    args = parser.parse_args()
    config = read_section(PairConfig, "pair")

    attribution = json.loads((Path("metrics/attribution") / f"{args.task}.json").read_text())
    depth = {
        role: AutoConfig.from_pretrained(Path("data/models") / role, local_files_only=True).num_hidden_layers
        for role in ("teacher", "student")
    }
    pairings = build_pairings(depth["teacher"], depth["student"], attribution["scores"], config)
    write_json(Path("data/pairs") / f"{args.task}.json", {mode: p.to_json() for mode, p in pairings.items()})
    write_json(
        Path("metrics/pair") / f"{args.task}.json",
        {
            mode: {
                "critical_teacher_layers": [c.teacher_layer for c in pairing.critical],
                "trained_student_layers": pairing.trained_student_layers,
                "teacher_layer_per_student_layer": [p.teacher_layer for p in pairing.layers],
            }
            for mode, pairing in pairings.items()
        },
    )
    trained = {mode: p.trained_student_layers for mode, p in pairings.items()}
    print(f"pair {args.task}: trained student layers {trained}")


if __name__ == "__main__":
    main()
