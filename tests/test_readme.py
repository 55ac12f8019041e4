"""The README stays short, its results are the generated table, and every document it links exists."""

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYNC = runpy.run_path(str(ROOT / "scripts/readme_results.py"))


def test_readme_is_short():
    assert len((ROOT / "README.md").read_bytes()) <= 8192


def test_readme_results_are_the_generated_table():
    readme = (ROOT / "README.md").read_text()
    table = (ROOT / "report/table.md").read_text()
    assert SYNC["with_results"](readme, table) == readme, "run python scripts/readme_results.py"


def test_results_section_stops_at_the_first_subsection():
    table = "# Results\n\nintro\n\n| a |\n|---|\n| 1 |\n\n## Gap closed\n\n| b |\n"
    assert SYNC["results_section"](table) == "intro\n\n| a |\n|---|\n| 1 |\n"
    block = "x\n<!-- results -->\nold\n<!-- /results -->\ny"
    assert (
        SYNC["with_results"](block, table)
        == "x\n<!-- results -->\nintro\n\n| a |\n|---|\n| 1 |\n<!-- /results -->\ny"
    )
    with pytest.raises(SystemExit, match="no <!-- results -->"):
        SYNC["with_results"]("no markers", table)


def test_linked_documents_exist():
    links = re.findall(r"\]\(([^)#]+\.md)\)", (ROOT / "README.md").read_text())
    assert {"docs/pipeline.md", "docs/findings.md", "docs/measurements.md", "docs/scale-out.md"} <= set(links)
    assert all((ROOT / link).is_file() for link in links)
