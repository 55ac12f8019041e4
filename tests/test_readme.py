"""The README stays short, its results are the generated table, and every document it links exists."""

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYNC = runpy.run_path(str(ROOT / "scripts/readme_results.py"))


def test_readme_is_short():
    assert len((ROOT / "README.md").read_bytes()) <= 8192


def test_readme_results_timing_and_verdict_are_the_generated_ones():
    readme = (ROOT / "README.md").read_text()
    assert SYNC["synced"](readme) == readme, "run python scripts/readme_results.py"
    assert {"results", "timing"} <= set(SYNC["generated_blocks"]())


def test_every_block_is_replaced_from_its_source_and_a_missing_marker_stops(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report/table.md").write_text("# T\n\nrows\n\n## more\n")
    (tmp_path / "results/timing").mkdir(parents=True)
    (tmp_path / "results/timing/default.md").write_text("took 20 min\n")
    readme = "a\n<!-- results -->\nold\n<!-- /results -->\n<!-- timing -->\nold\n<!-- /timing -->\nz"
    assert SYNC["synced"](readme, tmp_path) == (
        "a\n<!-- results -->\nrows\n<!-- /results -->\n<!-- timing -->\ntook 20 min\n<!-- /timing -->\nz"
    )
    (tmp_path / "results/timing/study.md").write_text("study took 90 min\n\n| stage family |\n")
    readme += "\n<!-- study-timing -->\nold\n<!-- /study-timing -->"
    assert SYNC["synced"](readme, tmp_path).endswith(
        "<!-- study-timing -->\nstudy took 90 min\n<!-- /study-timing -->"
    )
    (tmp_path / "results/study").mkdir()
    (tmp_path / "results/study/verdict.md").write_text("| claim |\n")
    with pytest.raises(SystemExit, match="no <!-- verdict -->"):
        SYNC["synced"](readme, tmp_path)


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
