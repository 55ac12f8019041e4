"""Stage `fold`: the linear maps of latent semantic alignment, computed once per model pair.

    semantic             M = S_S S_Tᵀ `[d_student, d_teacher]` with the `align.bases` variant (eq. 1–2 folded)
    self_<role>_<variant> S Sᵀ `[d, d]`: decompose→recompose within one model (Fig. 2's fidelity)
    random_<role>         R Rᵀ for as many random unit vectors as the vocabulary (Fig. 2's control)
    random_<role>_<n>     the same for n vectors, n in align.control_counts (the control's sweep)
All in float64, in one safetensors file; `align@<task>` applies them to cached states.
"""

import time
from pathlib import Path

from safetensors.torch import save_file

from semalign.align.alignment import AlignConfig, folded_map, isotropy, random_self_map
from semalign.config import read_section
from semalign.errors import SemalignError
from semalign.files import write_json
from semalign.store import open_store


def main() -> None:
    config = read_section(AlignConfig, "align")
    stores = {role: open_store(Path("data/bases") / f"{role}.zarr") for role in ("teacher", "student")}
    vocab = {role: store.manifest["vocab_size"] for role, store in stores.items()}
    if vocab["teacher"] != vocab["student"]:
        raise SemalignError(
            f"teacher and student bases have {vocab['teacher']} and {vocab['student']} rows; "
            "semalign needs index-aligned vocabularies (same tokenizer family)"
        )
    variants = stores["student"].manifest["variants"]
    if config.bases not in variants:
        raise SemalignError(
            f"align.bases {config.bases!r} was not computed; add it to bases.variants {variants}"
        )

    def reader(role: str, variant: str):
        return lambda start, stop: stores[role].read_rows(variant, start, stop)

    started = time.perf_counter()
    rows = vocab["teacher"]
    maps = {
        "semantic": folded_map(
            reader("student", config.bases), reader("teacher", config.bases), rows, config.chunk_rows
        )
    }
    for role, store in stores.items():
        for variant in variants:
            maps[f"self_{role}_{variant}"] = folded_map(
                reader(role, variant), reader(role, variant), rows, config.chunk_rows
            )
        maps[f"random_{role}"] = random_self_map(
            rows, store.manifest["d_model"], config.control_seed, config.chunk_rows
        )
        for count in config.control_counts:
            maps[f"random_{role}_{count}"] = random_self_map(
                count, store.manifest["d_model"], config.control_seed, config.chunk_rows
            )
    out = Path("data/maps/maps.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: m.contiguous() for name, m in maps.items()}, str(out))
    write_json(
        "metrics/fold.json",
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
