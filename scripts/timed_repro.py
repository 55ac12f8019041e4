"""Run a DVC command (default `dvc repro`) and record what a user feels: the wall time of every stage as
DVC runs it (Python start-up, model loading and hashing included), which stages DVC skipped, the total,
and the peak resident memory of the process tree (sampled each second; the largest single process from
the kernel's own count as a check). Writes results/timing/<name>.json and .md; the README's timing block
is generated from them (scripts/readme_results.py).

    python scripts/timed_repro.py --name default          # dvc repro
    python scripts/timed_repro.py --name student-only -- \
        dvc exp run -S 'train.objectives=[v1]' -S train.lr=1e-4
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RUNNING = re.compile(r"Running stage '([^']+)'")
SHOWN = 10  # stage families with a row of their own; the others share one
SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")


def stage_times(events: list[tuple[float, str, str]], end: float, peaks: dict[str, int]) -> list[dict]:
    """Stages in the order DVC met them, from (time, kind, stage) events: a stage lasts until the next event
    (DVC runs stages one after another; a skipped one takes only its check), with its sampled peak memory."""
    rows = []
    for i, (at, kind, stage) in enumerate(events):
        following = events[i + 1][0] if i + 1 < len(events) else end
        rows.append(
            {
                "stage": stage,
                "ran": kind == "run",
                "seconds": round(following - at, 1),
                "peak_rss_gib": round(peaks.get(stage, 0) / 2**30, 2),
            }
        )
    return rows


def markdown(record: dict) -> str:
    """The run as the README shows it: total and peak, then one row per stage family (the name before
    `@`: evaluate@mmlu-teacher is evaluate), slowest first, with its stages and their peak memory."""
    families: dict[str, list[dict]] = {}
    for row in record["stages"]:
        if row["ran"]:
            families.setdefault(row["stage"].split("@")[0], []).append(row)
    skipped = [row["stage"] for row in record["stages"] if not row["ran"]]
    lines = [
        f"`{record['command']}` on {record['date']}, {record['machine']}: "
        f"**{record['total_s'] / 60:.1f} min** wall, peak resident memory "
        f"**{record['peak_rss_gib']:.1f} GiB** (process tree).",
        "",
        "| stage family | stages run | s | slowest stage (s) | peak GiB |",
        "|---|---|---|---|---|",
    ]
    ordered = sorted(families.items(), key=lambda kv: -sum(r["seconds"] for r in kv[1]))
    for family, rows in ordered[:SHOWN]:
        slowest = max(rows, key=lambda r: r["seconds"])
        lines.append(
            f"| {family} | {len(rows)} | {sum(r['seconds'] for r in rows):.0f} | "
            f"{slowest['stage']} ({slowest['seconds']:.0f}) | {max(r['peak_rss_gib'] for r in rows):.1f} |"
        )
    rest = [row for _, rows in ordered[SHOWN:] for row in rows]
    if rest:
        families_left = ", ".join(family for family, _ in ordered[SHOWN:])
        lines.append(
            f"| the rest: {families_left} | {len(rest)} | {sum(r['seconds'] for r in rest):.0f} | | "
            f"{max(r['peak_rss_gib'] for r in rest):.1f} |"
        )
    if skipped:
        lines += ["", f"Skipped by DVC (unchanged): {len(skipped)} stages."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="results/timing/<name>.json and .md")
    parser.add_argument("command", nargs="*", default=["dvc", "repro"])
    args = parser.parse_args()
    command = args.command or ["dvc", "repro"]
    events: list[tuple[float, str, str]] = []
    peaks: dict[str, int] = {}  # stage -> peak resident bytes of the process tree while it ran
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(process.pid)
        while not done.wait(1.0):
            try:
                tree = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree if p.is_running())
            except psutil.Error:
                continue
            stage = events[-1][2] if events else "(start)"
            peaks[stage] = max(peaks.get(stage, 0), rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in process.stdout:
        sys.stdout.write(line)
        now = time.perf_counter() - started
        if match := RUNNING.search(line):
            events.append((now, "run", match.group(1)))
        elif match := SKIPPED.search(line):
            events.append((now, "skip", match.group(1)))
    code = process.wait()
    total = time.perf_counter() - started
    done.set()
    sampler.join()
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    memory = psutil.virtual_memory().total / 2**30
    record = {
        "command": " ".join(command),
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {memory:.0f} GiB, {platform.processor() or platform.machine()}",
        "exit_code": code,
        "total_s": round(total, 1),
        "peak_rss_gib": round(max(peaks.values(), default=0) / 2**30, 2),
        "largest_process_rss_gib": round(largest, 2),
        "stages": stage_times(events, total, peaks),
    }
    out = ROOT / "results/timing"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(markdown(record))
    print(f"{args.name}: {total / 60:.1f} min, peak {record['peak_rss_gib']} GiB -> results/timing/")
    if code:
        raise SystemExit(f"{record['command']} exited with {code}; the timing recorded covers what ran")


if __name__ == "__main__":
    main()
