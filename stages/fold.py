"""Stage `fold`: the linear maps of latent semantic alignment, computed once per model pair.

    vocab.safetensors      teacher ↔ student rows of the same token string (`VocabAlignment`)
    maps.safetensors:
    semantic               M = S_S S_Tᵀ `[d_student, d_teacher]` with the `align.bases` variant (eq. 1–2
                           folded), summed over the shared tokens: teacher row of a token with the student
                           row of the same token
    self_<role>_<variant>  S Sᵀ `[d, d]` over the shared tokens: decompose→recompose within one model (Fig. 2)
    random_<role>          R Rᵀ for as many random unit vectors as shared tokens (Fig. 2's control)
    random_<role>_<n>      the same for n vectors, n in align.control_counts (the control's sweep)
All in float64; `align@<task>` applies them to cached states, `train` maps the cached top-k ids by token.
Stops when the shared tokens are fewer than `align.min_vocab_overlap` of the larger vocabulary.
"""

import time
from pathlib import Path

from safetensors.torch import save_file

from semalign.align.alignment import AlignConfig, folded_map, isotropy, random_self_map, shared_row_reader
from semalign.config import read_section
from semalign.errors import SemalignError
from semalign.files import write_json
from semalign.models import load_tokenizer
from semalign.store import open_store
from semalign.teacher.bases import align_vocabularies, vocabulary_tokens


def main() -> None:
    config = read_section(AlignConfig, "align")
    stores = {role: open_store(Path("data/bases") / f"{role}.zarr") for role in ("teacher", "student")}
    vocab = align_vocabularies(
        *(
            vocabulary_tokens(load_tokenizer(Path("data/models") / role), stores[role].manifest["vocab_size"])
            for role in ("teacher", "student")
        ),
        min_overlap=config.min_vocab_overlap,
    )
    variants = stores["student"].manifest["variants"]
    if config.bases not in variants:
        raise SemalignError(
            f"align.bases {config.bases!r} was not computed; add it to bases.variants {variants}"
        )
    index = {
        role: None if vocab.identical else getattr(vocab, f"{role}_index") for role in ("teacher", "student")
    }

    def reader(role: str, variant: str):
        return shared_row_reader(stores[role], variant, index[role])

    started = time.perf_counter()
    rows = vocab.kept
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
    out = Path("data/maps")
    out.mkdir(parents=True, exist_ok=True)
    save_file({name: m.contiguous() for name, m in maps.items()}, str(out / "maps.safetensors"))
    vocab.save(out / "vocab.safetensors")
    write_json(
        "metrics/fold.json",
        {
            "bases": config.bases,
            "seconds": round(time.perf_counter() - started, 1),
            "semantic_map_shape": list(maps["semantic"].shape),
            "vocabulary": {
                "teacher_rows": vocab.teacher_size,
                "student_rows": vocab.student_size,
                "shared": vocab.kept,
                "share": round(vocab.share, 6),
                "identical": vocab.identical,
            },
            "isotropy": {name: round(isotropy(m), 4) for name, m in maps.items() if name != "semantic"},
        },
    )
    print(f"fold: {sorted(maps)} over {vocab.kept} shared tokens ({vocab.share:.2%})")


if __name__ == "__main__":
    main()
