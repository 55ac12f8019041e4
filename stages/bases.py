"""Stage `bases@<role>`: semantic bases of one model (paper §3.1) into data/bases/<role>.zarr.

Output-side bases are the unit-norm rows of pinv(LM head)ᵀ (`head`; `head_normed` folds the final norm
gain in first), input-side ones come from the input embedding (`input`), each `[vocab, d_model]`.
Teacher and student rows are matched by token string later, in `fold`.
"""

import argparse
from pathlib import Path

from semalign.config import read_section
from semalign.files import sha256_of, write_json
from semalign.models import load_hf_dir, model_info
from semalign.teacher.bases import BasesConfig, write_bases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=["teacher", "student"], required=True)
    parser.add_argument("--model", type=Path, required=True, help="this role's model directory")
    parser.add_argument("--out", type=Path, required=True, help="the bases store")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    config = read_section(BasesConfig, "bases")

    model, _ = load_hf_dir(args.model)
    info = model_info(model)
    metrics = {
        "role": args.role,
        "vocab_size": info.vocab_size,
        "d_model": info.d_model,
        "variants": config.variants,
    }
    model_id = f"{info.arch}:{sha256_of(args.model / 'model.safetensors')}"
    seconds = write_bases(model, args.out, model_id, tuple(config.variants), config.chunk_rows, config.codec)
    metrics["seconds"] = {name: round(value, 2) for name, value in seconds.items()}
    write_json(args.metrics, metrics)
    print(
        f"bases {args.role}: {config.variants} [{info.vocab_size}, {info.d_model}] in {seconds['total']:.1f}s"
    )


if __name__ == "__main__":
    main()
