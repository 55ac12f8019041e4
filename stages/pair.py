"""Stage `pair@<task>`: give every student layer its teacher layer (paper §4.1) from the attribution.

Student-side: reads the teacher's attribution metrics and both models' depths, never the teacher weights.
"""

import argparse
import json
from pathlib import Path

from transformers import AutoConfig

from semalign.align.pairing import PairConfig, build_pairing
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
    pairing = build_pairing(
        depth["teacher"],
        depth["student"],
        attribution["scores"],
        mode=config.mode,
        num_critical=config.num_critical,
        window=config.window,
        train_layers=config.train_layers,
    )
    write_json(Path("data/pairs") / f"{args.task}.json", pairing.to_json())
    write_json(
        Path("metrics/pair") / f"{args.task}.json",
        {
            "mode": pairing.mode,
            "critical_teacher_layers": [c.teacher_layer for c in pairing.critical],
            "trained_student_layers": pairing.trained_student_layers,
            "teacher_layer_per_student_layer": [p.teacher_layer for p in pairing.layers],
        },
    )
    print(f"pair {args.task}: {config.mode}, trained student layers {pairing.trained_student_layers}")


if __name__ == "__main__":
    main()
