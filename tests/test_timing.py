"""scripts/timed_repro.py: stage times from DVC's own output, and the README's table of them."""

import runpy
from pathlib import Path

TIMED = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts/timed_repro.py"))


def test_each_stage_lasts_until_the_next_and_families_are_summed():
    log = [
        "Running stage 'materialize@teacher':",
        "Stage 'bases@student' didn't change, skipping",
        "Running stage 'evaluate@mmlu-teacher':",
        "Running stage 'evaluate@mmlu-student':",
    ]
    events = [
        (
            t,
            *(
                ("run", m.group(1))
                if (m := TIMED["RUNNING"].search(line))
                else ("skip", TIMED["SKIPPED"].search(line).group(1))
            ),
        )
        for t, line in zip((5.0, 80.0, 81.0, 200.0), log)
    ]
    rows = TIMED["stage_times"](events, 260.0, {"evaluate@mmlu-teacher": 3 * 2**30})
    assert [(r["stage"], r["ran"], r["seconds"]) for r in rows] == [
        ("materialize@teacher", True, 75.0),
        ("bases@student", False, 1.0),
        ("evaluate@mmlu-teacher", True, 119.0),
        ("evaluate@mmlu-student", True, 60.0),
    ]
    record = {
        "command": "dvc repro",
        "date": "d",
        "machine": "m",
        "total_s": 260.0,
        "peak_rss_gib": 3.0,
        "stages": rows,
    }
    table = TIMED["markdown"](record)
    assert "**4.3 min** wall" in table and "**3.0 GiB**" in table
    assert table.index("| evaluate | 2 | 179 | evaluate@mmlu-teacher (119) | 3.0 |") < table.index(
        "| materialize | 1 | 75 |"
    )
    assert "Skipped by DVC (unchanged): 1 stages." in table
