"""Run the transfer study: the DVC experiment `study` (study.yaml's overrides as `dvc exp run -S`), timed
stage by stage, then its tables, agreement, metrics, plots, report, params and dvc.lock copied to
results/study/ beside the exact command, and the workspace returned to the committed default.

    python scripts/power.py                 # first: the power statement, from the default run
    python scripts/study.py                 # the study (all teacher work the default did is reused)
    python scripts/verdict.py               # results/study/verdict.md, then scripts/readme_results.py

Refuses a workspace with uncommitted changes outside results/: they would be mixed into the experiment.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results/study"
# What the study's run leaves in the workspace that a reader needs without running it.
KEPT = ("params.yaml", "dvc.lock", "metrics", "plots", "report", "data/agreement", "data/eval/mmlu")


def overrides(path: Path) -> list[str]:
    """study.yaml's overrides as `-S key=value` arguments (values in YAML flow style, as -S parses them)."""
    entries = yaml.safe_load(path.read_text())["overrides"]
    args = []
    for key, value in entries.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        args += ["-S", f"{key}={text.removesuffix('...').strip()}"]
    return args


def unscored_protocols() -> list[str]:
    """MMLU protocols the default scores and the study does not (study.yaml's evaluate.protocol.mmlu)."""
    study = yaml.safe_load((ROOT / "study.yaml").read_text())["overrides"].get("evaluate.protocol.mmlu")
    # the committed params.yaml: the workspace's holds the experiment's overrides by now
    committed = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    default = yaml.safe_load(committed)["evaluate"]["protocol"]["mmlu"]
    return [] if study is None else sorted(set(default) - set(study))


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def main() -> None:
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", ".", ":!results"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    if dirty.strip():
        raise SystemExit(f"uncommitted changes would enter the study; commit or stash them first:\n{dirty}")
    command = ["dvc", "exp", "run", "--name", "study", *overrides(ROOT / "study.yaml")]
    run([sys.executable, "scripts/timed_repro.py", "--name", "study", "--", *command])
    if OUT.exists():
        for name in KEPT:
            shutil.rmtree(OUT / name, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    # DVC's .gitignore files would keep the copied rows out of git; results files of protocols the study
    # did not score (persisted from the default) are not the study's.
    skipped = shutil.ignore_patterns(".gitignore", *(f"{p}.jsonl" for p in unscored_protocols()))
    for name in KEPT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, OUT / name, dirs_exist_ok=True, ignore=skipped)
        elif source.exists():
            shutil.copy2(source, OUT / name)
    (OUT / "COMMAND.md").write_text(
        "The study was produced by `python scripts/study.py`, which ran\n\n```bash\n"
        + " ".join(f"'{a}'" if any(c in a for c in "[] ,") else a for a in command)
        + "\n```\n\nfrom the commit whose `dvc.lock` is `dvc.lock` here; "
        "stage times: results/timing/study.md.\n"
    )
    # Back to the committed default: its params, lock, metrics and outs.
    run(["git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock", "metrics", "plots", "report"])
    # The study's extra variants left metrics and plots the default has none of.
    run(["git", "clean", "-fdq", "--", "metrics", "plots"])
    run(["dvc", "checkout", "--quiet"])
    print(f"study -> {OUT.relative_to(ROOT)}/; next: python scripts/verdict.py")


if __name__ == "__main__":
    main()
