"""Stage `materialize@<role>`: turn the configured model into a local safetensors directory, once.

Later stages load data/models/<role>/ in seconds instead of converting a GGUF file for minutes.
"""

import argparse
from pathlib import Path

from semalign.config import read_section
from semalign.files import write_json
from semalign.models import materialize
from semalign.sources import ModelSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=["teacher", "student"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="the safetensors directory to write")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    source = read_section(ModelSource, f"models.{args.role}")
    metrics = materialize(source, args.out)
    write_json(args.metrics, metrics)
    print(
        f"materialize {args.role}: {metrics['arch']}, {metrics['num_layers']} layers, "
        f"d={metrics['d_model']}, vocab={metrics['vocab_size']}"
    )


if __name__ == "__main__":
    main()
