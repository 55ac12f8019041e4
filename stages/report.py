"""Stage `report`: report/index.html (self-contained: every plot embedded) and report/README.md (the same
content, images by relative path) from the run's params, metrics/, plots/ and the stores under data/."""

import time
from pathlib import Path

from semalign.analysis.report import build_sections, render_html, render_markdown
from semalign.config import read_params
from semalign.files import write_json

TITLE = "semalign: run report"


def main() -> None:
    started = time.perf_counter()
    params = read_params()
    sections = build_sections(Path("."), params)
    out = Path("report")
    out.mkdir(exist_ok=True)
    (out / "index.html").write_text(render_html(TITLE, sections, Path(".")), encoding="utf-8")
    (out / "README.md").write_text(render_markdown(TITLE, sections, image_prefix="../"), encoding="utf-8")
    images = sum(bool(block.image) for section in sections for block in section.blocks)
    # Not under metrics/: that folder is this stage's input.
    write_json(
        out / "metrics.json",
        {"sections": len(sections), "images": images, "seconds": round(time.perf_counter() - started, 1)},
    )
    print(f"report: {len(sections)} sections, {images} plots embedded -> {out}/index.html, {out}/README.md")


if __name__ == "__main__":
    main()
