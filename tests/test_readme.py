"""The README stays short, its results are the generated table, and every document it links exists."""

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYNC = runpy.run_path(str(ROOT / "scripts/readme_results.py"))


def test_readme_is_short():
    assert len((ROOT / "README.md").read_bytes()) <= 8192


def test_readme_timing_power_and_verdict_are_the_generated_ones():
    readme = (ROOT / "README.md").read_text()
    assert SYNC["synced"](readme) == readme, "run python scripts/readme_results.py"
    assert set(SYNC["generated_blocks"]()) == {"timing", "power", "verdict", "study-timing"}


def test_every_block_is_replaced_from_its_source_and_a_missing_marker_stops(tmp_path):
    (tmp_path / "results/timing").mkdir(parents=True)
    (tmp_path / "results/timing/default.md").write_text("took 20 min\n")
    readme = "a\n<!-- timing -->\nold\n<!-- /timing -->\nz"
    assert SYNC["synced"](readme, tmp_path) == "a\n<!-- timing -->\ntook 20 min\n<!-- /timing -->\nz"
    (tmp_path / "results/timing/study.md").write_text(
        "`dvc exp run --name study -S a=[1, 2]` on 2026-11-30: **90 min** wall\n\n| stage family |\n"
    )
    readme += "\n<!-- study-timing -->\nold\n<!-- /study-timing -->"
    assert SYNC["synced"](readme, tmp_path).endswith(
        "<!-- study-timing -->\n`python scripts/study.py` on 2026-11-30: **90 min** wall\n"
        "<!-- /study-timing -->"
    )
    (tmp_path / "results/study").mkdir()
    (tmp_path / "results/study/verdict.md").write_text("| claim |\n")
    with pytest.raises(SystemExit, match="no <!-- verdict -->"):
        SYNC["synced"](readme, tmp_path)


def test_linked_documents_exist():
    links = re.findall(r"\]\(([^)#]+\.md)\)", (ROOT / "README.md").read_text())
    assert {"docs/pipeline.md", "docs/findings.md", "docs/measurements.md", "docs/scale-out.md"} <= set(links)
    assert all((ROOT / link).is_file() for link in links)
