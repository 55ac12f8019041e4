"""Stage `fold`: the linear maps of latent semantic alignment, computed once per model pair.

    semantic             M = S_S S_Tᵀ `[d_student, d_teacher]` with the `align.bases` variant (eq. 1–2 folded)
    self_<role>_<variant> S Sᵀ `[d, d]`: decompose→recompose within one model (Fig. 2's fidelity)
    random_<role>         R Rᵀ for as many random unit vectors as the vocabulary (Fig. 2's control)
    random_<role>_<n>     the same for n vectors, n in align.control_counts (the control's sweep)
All in float64, in one safetensors file; `align@<task>` applies them to cached states.
"""

import argparse
import time
from pathlib import Path

from safetensors.torch import save_file

from semalign.align.alignment import AlignConfig, fold_maps, isotropy
from semalign.config import read_section
from semalign.files import write_json
from semalign.store import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's bases store")
    parser.add_argument("--student", type=Path, required=True, help="the student's bases store")
    parser.add_argument("--out", type=Path, required=True, help="the maps, safetensors")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    # fold computes what the bases and the random control give; which map makes the targets is align's
    config = read_section(AlignConfig, "align", drop=("map", "ridge", "fit_fraction", "interpolate"))

    started = time.perf_counter()
    maps = fold_maps({"teacher": open_store(args.teacher), "student": open_store(args.student)}, config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: m.contiguous() for name, m in maps.items()}, str(args.out))
    write_json(
        args.metrics,
        {
            "bases": config.bases,
            "seconds": round(time.perf_counter() - started, 1),
            "semantic_map_shape": list(maps["semantic"].shape),
            "isotropy": {name: round(isotropy(m), 4) for name, m in maps.items() if name != "semantic"},
        },
    )
    print(f"fold: {sorted(maps)}")


if __name__ == "__main__":
    main()
