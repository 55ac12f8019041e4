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

import argparse
import time
from pathlib import Path

from safetensors.torch import save_file

from semalign.align.alignment import AlignConfig, fold_maps, isotropy
from semalign.config import read_section
from semalign.files import write_json
from semalign.store import open_store
from semalign.teacher.bases import match_tokenizers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's bases store")
    parser.add_argument("--student", type=Path, required=True, help="the student's bases store")
    parser.add_argument("--teacher-model", type=Path, required=True, help="model directory (tokenizer read)")
    parser.add_argument("--student-model", type=Path, required=True, help="model directory (tokenizer read)")
    parser.add_argument("--out", type=Path, required=True, help="the maps, safetensors")
    parser.add_argument("--vocab", type=Path, required=True, help="the vocabulary map, safetensors")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    # fold computes what the bases and the random control give; which map makes the targets is align's
    config = read_section(AlignConfig, "align", drop=("maps", "ridge", "fit_fraction", "interpolate"))

    started = time.perf_counter()
    stores = {"teacher": open_store(args.teacher), "student": open_store(args.student)}
    rows = (stores["teacher"].manifest["vocab_size"], stores["student"].manifest["vocab_size"])
    vocab = match_tokenizers(args.teacher_model, args.student_model, *rows, config.min_vocab_overlap)
    maps = fold_maps(stores, vocab, config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: m.contiguous() for name, m in maps.items()}, str(args.out))
    vocab.save(args.vocab)
    write_json(
        args.metrics,
        {
            "bases": config.bases,
            "seconds": round(time.perf_counter() - started, 1),
            "semantic_map_shape": list(maps["semantic"].shape),
            "vocabulary": vocab.summary(),
            "isotropy": {name: round(isotropy(m), 4) for name, m in maps.items() if name != "semantic"},
        },
    )
    print(f"fold: {sorted(maps)} over {vocab.kept} shared tokens ({vocab.share:.2%})")


if __name__ == "__main__":
    main()
