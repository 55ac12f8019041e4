"""Copy the generated results into README.md between their markers, `python scripts/readme_results.py`
after a run: `<!-- results -->` the table stage's report/table.md up to its first `## ` section,
`<!-- timing -->` results/timing/default.md, `<!-- power -->` and `<!-- verdict -->`
the study's results/study/power.md and verdict.md, `<!-- study-timing -->` the first line of
results/timing/study.md. A block whose source does not exist yet is left alone."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def results_section(table_md: str) -> str:
    """report/table.md without its title line, up to (not including) its first `## ` heading."""
    body = table_md.split("\n", 1)[1] if table_md.startswith("# ") else table_md
    return body.split("\n## ", 1)[0].strip() + "\n"


def with_block(readme: str, name: str, content: str) -> str:
    """`readme` with the text between `<!-- name -->` and `<!-- /name -->` replaced by `content`."""
    block = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
    if not block.search(readme):
        raise SystemExit(f"README.md has no <!-- {name} --> ... <!-- /{name} --> block")
    return block.sub(lambda m: m.group(1) + content.strip() + "\n" + m.group(2), readme)


def with_results(readme: str, table_md: str) -> str:
    return with_block(readme, "results", results_section(table_md))


def generated_blocks(root: Path = ROOT) -> dict[str, str]:
    """Each README block's generated content, for the sources that exist."""
    sources = {
        "results": [root / "report/table.md"],
        "timing": [root / "results/timing/default.md"],
        "power": [root / "results/study/power.md"],
        "verdict": [root / "results/study/verdict.md"],
        "study-timing": [root / "results/timing/study.md"],
    }
    blocks = {}
    for name, paths in sources.items():
        texts = [path.read_text() for path in paths if path.is_file()]
        if texts:
            if name == "results":
                blocks[name] = results_section(texts[0])
            elif name == "study-timing":
                blocks[name] = texts[0].split("\n", 1)[0] + "\n"
            else:
                blocks[name] = "\n".join(texts)
    return blocks


def synced(readme: str, root: Path = ROOT) -> str:
    for name, content in generated_blocks(root).items():
        readme = with_block(readme, name, content)
    return readme


if __name__ == "__main__":
    readme = ROOT / "README.md"
    readme.write_text(synced(readme.read_text()))
