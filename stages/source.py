"""Stage `source@<role>`: the content hash of the configured model (it lies outside the repository, where
DVC does not look), rerun on every `dvc repro` so that a model replaced in place at the same path reruns
`materialize@<role>` and everything after it, and an unchanged one reruns nothing.
"""

import argparse
from pathlib import Path

from semalign.config import read_section
from semalign.files import write_json
from semalign.sources import ModelSource, source_sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=["teacher", "student"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the source's content hash")
    args = parser.parse_args()
    source = read_section(ModelSource, f"models.{args.role}")
    write_json(args.out, {"source": source.source, "sha256": source_sha256(source)})
    print(f"source {args.role}: {source.source} {source.name or source.path}")


if __name__ == "__main__":
    main()
