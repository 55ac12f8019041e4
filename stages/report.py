"""Stage `report`: report/index.html (self-contained: every plot embedded) and report/README.md (the same
content, images by relative path) from the run's params, metrics/, plots/ and the stores under data/."""

import argparse
import time
from pathlib import Path

from semalign.analysis.report import build_sections, render_html, render_markdown
from semalign.config import read_params
from semalign.files import write_json

TITLE = "semalign: run report"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("."), help="the project: metrics/, plots/, data/")
    parser.add_argument("--out", type=Path, required=True, help="folder of index.html, README.md and metrics")
    args = parser.parse_args()
    started = time.perf_counter()
    sections = build_sections(args.root, read_params())
    args.out.mkdir(exist_ok=True)
    (args.out / "index.html").write_text(render_html(TITLE, sections, args.root), encoding="utf-8")
    (args.out / "README.md").write_text(
        render_markdown(TITLE, sections, image_prefix="../"), encoding="utf-8"
    )
    images = sum(bool(block.image) for section in sections for block in section.blocks)
    # Not under metrics/: that folder is this stage's input.
    write_json(
        args.out / "metrics.json",
        {"sections": len(sections), "images": images, "seconds": round(time.perf_counter() - started, 1)},
    )
    print(f"report: {len(sections)} sections, {images} plots embedded -> {args.out}/index.html, README.md")


if __name__ == "__main__":
    main()
