"""Copy the results table the `table` stage generated (report/table.md, up to its first `## ` section) into
README.md between the `<!-- results -->` markers: `python scripts/readme_results.py` after a run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- results -->\n).*?(<!-- /results -->)", re.S)


def results_section(table_md: str) -> str:
    """report/table.md without its title line, up to (not including) its first `## ` heading."""
    body = table_md.split("\n", 1)[1] if table_md.startswith("# ") else table_md
    return body.split("\n## ", 1)[0].strip() + "\n"


def with_results(readme: str, table_md: str) -> str:
    if not BLOCK.search(readme):
        raise SystemExit("README.md has no <!-- results --> ... <!-- /results --> block")
    return BLOCK.sub(lambda m: m.group(1) + results_section(table_md) + m.group(2), readme)


if __name__ == "__main__":
    readme = ROOT / "README.md"
    readme.write_text(with_results(readme.read_text(), (ROOT / "report/table.md").read_text()))
