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
    parser.add_argument("--attribution", type=Path, required=True, help="metrics of attribute@<task>")
    parser.add_argument("--teacher", type=Path, required=True, help="model directory (config.json read)")
    parser.add_argument("--student", type=Path, required=True, help="model directory (config.json read)")
    parser.add_argument("--out", type=Path, required=True, help="the pairing, JSON")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    config = read_section(PairConfig, "pair")

    depth = {
        role: AutoConfig.from_pretrained(path, local_files_only=True).num_hidden_layers
        for role, path in (("teacher", args.teacher), ("student", args.student))
    }
    attribution = json.loads(args.attribution.read_text())
    pairings = build_pairings(depth["teacher"], depth["student"], attribution["scores"], config)
    write_json(args.out, {mode: p.to_json() for mode, p in pairings.items()})
    write_json(
        args.metrics,
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
    print(f"pair {args.out.stem}: trained student layers {trained}")


if __name__ == "__main__":
    main()
