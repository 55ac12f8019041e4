"""Copy the generated results into README.md between their markers, `python scripts/readme_results.py`
after a run: `<!-- timing -->` results/timing/default.md, `<!-- power -->` and `<!-- verdict -->` the
study's results/study/power.md and verdict.md, `<!-- study-timing -->` the first line of
results/timing/study.md with the study's command named by its script. A block whose source does not exist
yet is left alone. The default's results table stays in report/table.md: the README shows the verdict."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "timing": "results/timing/default.md",
    "power": "results/study/power.md",
    "verdict": "results/study/verdict.md",
    "study-timing": "results/timing/study.md",
}


def with_block(readme: str, name: str, content: str) -> str:
    """`readme` with the text between `<!-- name -->` and `<!-- /name -->` replaced by `content`."""
    block = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
    if not block.search(readme):
        raise SystemExit(f"README.md has no <!-- {name} --> ... <!-- /{name} --> block")
    return block.sub(lambda m: m.group(1) + content.strip() + "\n" + m.group(2), readme)


def study_timing(timing_md: str) -> str:
    """The study timing's first line, its `dvc exp run -S ...` command (a dozen overrides) named by the
    script that runs it."""
    first = timing_md.split("\n", 1)[0]
    return re.sub(r"^`[^`]*` on ", "`python scripts/study.py` on ", first) + "\n"


def generated_blocks(root: Path = ROOT) -> dict[str, str]:
    """Each README block's generated content, for the sources that exist."""
    blocks = {}
    for name, source in SOURCES.items():
        path = root / source
        if path.is_file():
            text = path.read_text()
            blocks[name] = study_timing(text) if name == "study-timing" else text
    return blocks


def synced(readme: str, root: Path = ROOT) -> str:
    for name, content in generated_blocks(root).items():
        readme = with_block(readme, name, content)
    return readme


if __name__ == "__main__":
    readme = ROOT / "README.md"
    readme.write_text(synced(readme.read_text()))
