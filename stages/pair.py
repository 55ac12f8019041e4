"""Stage `pair@<task>`: give every student layer its teacher layer (paper §4.1) from the attribution.

Student-side: reads the teacher's attribution metrics and both models' depths, never the teacher weights.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from transformers import AutoConfig

from semalign.config import build, write_json
from semalign.pairing import build_pairing


@dataclass(frozen=True)
class PairConfig:
    """`pair` section: v1 (depth map, §4.1) or v2 (one order-preserving teacher layer per student layer,
    chosen within ±window of the depth map); how many top-attributed teacher layers are critical; and
    which student layers train ("critical": the partners k† of the critical layers; "all")."""

    mode: str = "v1"
    num_critical: int = 1
    window: int = 2
    train_layers: str = "critical"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    args = parser.parse_args()
    config = build(PairConfig, yaml.safe_load(Path("params.yaml").read_text())["pair"], "pair")

    attribution = json.loads((Path("metrics/attribution") / f"{args.task}.json").read_text())
    depth = {role: AutoConfig.from_pretrained(Path("data/models") / role, local_files_only=True).num_hidden_layers
             for role in ("teacher", "student")}
    pairing = build_pairing(depth["teacher"], depth["student"], attribution["scores"], mode=config.mode,
                            num_critical=config.num_critical, window=config.window, train_layers=config.train_layers)
    write_json(Path("data/pairs") / f"{args.task}.json", pairing.to_json())
    write_json(Path("metrics/pair") / f"{args.task}.json", {
        "mode": pairing.mode, "critical_teacher_layers": [c.teacher_layer for c in pairing.critical],
        "trained_student_layers": pairing.trained_student_layers,
        "teacher_layer_per_student_layer": [p.teacher_layer for p in pairing.layers],
    })
    print(f"pair {args.task}: {config.mode}, trained student layers {pairing.trained_student_layers}")


if __name__ == "__main__":
    main()
