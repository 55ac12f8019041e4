"""Stage `materialize@<role>`: turn the configured model into a local safetensors directory, once.

Later stages load data/models/<role>/ in seconds instead of converting a GGUF file for minutes.
"""

import argparse
import time
from pathlib import Path

from semalign.config import read_section
from semalign.files import write_json
from semalign.models import ModelSource, load_source, model_info, save_hf_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=["teacher", "student"], required=True)
    args = parser.parse_args()
    source = read_section(ModelSource, f"models.{args.role}")

    started = time.perf_counter()
    model, tokenizer = load_source(source)
    loaded = time.perf_counter()
    save_hf_dir(model, tokenizer, Path("data/models") / args.role)
    info = model_info(model)
    write_json(
        Path("metrics/materialize") / f"{args.role}.json",
        {
            "source": source.source,
            "name": source.name or source.path,
            "arch": info.arch,
            "num_layers": info.num_layers,
            "d_model": info.d_model,
            "vocab_size": info.vocab_size,
            "num_params": info.num_params,
            "tied_head": info.tied_head,
            "load_seconds": round(loaded - started, 1),
            "save_seconds": round(time.perf_counter() - loaded, 1),
        },
    )
    print(
        f"materialize {args.role}: {info.arch}, {info.num_layers} layers, d={info.d_model}, "
        f"vocab={info.vocab_size}"
    )


if __name__ == "__main__":
    main()
