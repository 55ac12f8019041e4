"""Start-up of every stage process (Python, imports, argument parsing: `python stages/<stage>.py --help`), in
this tree and in a reference commit checked out beside it, in one run: the best of `--repeats` per stage, the
ratio, and the seconds a `dvc repro` of the default saves (each stage weighted by how many stage processes
of it the default runs, read from dvc.lock).

    python bench/stage_startup.py --reference 78a2f9f
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def startup_seconds(tree: Path, stage: str, repeats: int) -> float:
    """The fastest of `repeats` runs of `python stages/<stage>.py --help` with `tree`'s library first."""
    env = os.environ | {"PYTHONPATH": str(tree / "lib")}
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, f"stages/{stage}.py", "--help"],
            cwd=tree,
            env=env,
            check=True,
            capture_output=True,
        )
        best = min(best, time.perf_counter() - started)
    return best


def processes_per_stage() -> dict[str, int]:
    """{stage script: how many stage processes of it the committed dvc.lock ran}."""
    stages = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    scripts = [re.search(r"stages/(\w+)\.py", stage["cmd"]).group(1) for stage in stages.values()]
    return {script: scripts.count(script) for script in sorted(set(scripts))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", required=True, help="a commit to compare with, e.g. the last release")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    counts = processes_per_stage()
    print(f"stage start-up (`--help`, best of {args.repeats}), {args.reference} vs this tree")
    print("| stage | processes in the default | before s | now s | ratio |")
    print("|---|---|---|---|---|", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        reference = Path(scratch) / "reference"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(reference), args.reference], cwd=ROOT, check=True
        )
        try:
            for stage in sorted(counts):
                before = startup_seconds(reference, stage, args.repeats)
                now = startup_seconds(ROOT, stage, args.repeats)
                print(
                    f"| {stage} | {counts[stage]} | {before:.2f} | {now:.2f} | {before / now:.2f}x |",
                    flush=True,
                )
                rows.append((stage, before, now))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(reference)], cwd=ROOT, check=True)
    saved = sum(counts[stage] * (before - now) for stage, before, now in rows)
    print(f"start-up saved over the default's {sum(counts.values())} stage processes: {saved:.0f} s")


if __name__ == "__main__":
    main()
