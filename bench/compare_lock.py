"""Compare a fresh `dvc repro`'s dvc.lock with the committed one and say which stage differs first.

    dvc repro && python bench/compare_lock.py                     # fresh ./dvc.lock vs git HEAD:dvc.lock
    python bench/compare_lock.py --stages 'materialize@*,bases@*,data@*,cache@*,fold,align@*'
    python bench/compare_lock.py --reference old.lock --reference-root old/ --fresh dvc.lock --fresh-root .

Stages are visited in topological order (an edge wherever a stage's dep is, or contains, another stage's
out), so the first stage reported is where the runs part; stages after it that differ only through their
upstream deps are marked as downstream of it. Per stage: cmd, params, deps that no stage produces (code,
model files) and outs. Outs are compared by DVC's md5, except JSON metrics and plot data (outs under
metrics/, plots/ or named metrics.json), which are compared value by value: numbers within
|a - b| <= atol + rtol * |b|, timing keys (`seconds`, `*_seconds`, `tokens_per_second`) ignored, since
they measure the machine, not the result. Exit status: 0 when every compared stage matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TIMING_KEYS = ("seconds", "tokens_per_second")


@dataclass
class Source:
    """A dvc.lock and the tree its outs are read from: a directory, or a git revision (`rev`)."""

    lock: dict
    root: Path | None = None
    rev: str | None = None
    label: str = ""

    def read(self, path: str) -> str | None:
        if self.rev is not None:
            shown = subprocess.run(["git", "show", f"{self.rev}:{path}"], capture_output=True, text=True)
            return shown.stdout if shown.returncode == 0 else None
        file = self.root / path
        return file.read_text() if file.is_file() else None


@dataclass
class StageResult:
    name: str
    reasons: list[str] = field(default_factory=list)
    downstream_only: bool = False
    missing: bool = False  # in one lock only: not reproduced (yet), or a stage added or removed


def is_timing(key: str) -> bool:
    return key in TIMING_KEYS or key.endswith("_seconds")


def json_differences(ref, new, rtol: float, atol: float, where: str = "$") -> list[str]:
    """Where JSON values `new` and `ref` differ: numbers beyond tolerance, other values unequal."""
    if isinstance(ref, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(ref) | set(new)):
            if is_timing(key):
                continue
            if key not in ref or key not in new:
                found.append(f"{where}.{key} only in {'fresh' if key in new else 'reference'}")
            else:
                found += json_differences(ref[key], new[key], rtol, atol, f"{where}.{key}")
        return found
    if isinstance(ref, list) and isinstance(new, list):
        if len(ref) != len(new):
            return [f"{where}: {len(ref)} items in the reference, {len(new)} fresh"]
        return [
            d
            for i, (a, b) in enumerate(zip(ref, new))
            for d in json_differences(a, b, rtol, atol, f"{where}[{i}]")
        ]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (ref, new)):
        if math.isclose(new, ref, rel_tol=rtol, abs_tol=atol) or (math.isnan(ref) and math.isnan(new)):
            return []
        return [f"{where}: {ref!r} -> {new!r} (|diff| {abs(new - ref):.3g})"]
    return [] if ref == new else [f"{where}: {ref!r} -> {new!r}"]


def is_data_json(path: str) -> bool:
    return path.endswith(".json") and (
        path.startswith(("metrics/", "plots/")) or Path(path).name == "metrics.json"
    )


def contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def topological(stages: dict) -> list[str]:
    """Stage names in dependency order; ties keep the lock's order."""
    outs = {name: [o["path"] for o in stage.get("outs", [])] for name, stage in stages.items()}
    needs = {
        name: {
            producer
            for dep in stage.get("deps", [])
            for producer, paths in outs.items()
            if producer != name and any(contains(p, dep["path"]) or contains(dep["path"], p) for p in paths)
        }
        for name, stage in stages.items()
    }
    order: list[str] = []
    while len(order) < len(stages):
        ready = [n for n in stages if n not in order and needs[n] <= set(order)]
        if not ready:
            raise SystemExit(f"compare_lock: a dependency cycle among {sorted(set(stages) - set(order))}")
        order.append(ready[0])
    return order


def produced(stages: dict) -> list[str]:
    return [o["path"] for stage in stages.values() for o in stage.get("outs", [])]


def entries(stage: dict, key: str) -> dict[str, str]:
    return {e["path"]: e.get("md5") or e.get("hash", "") for e in stage.get(key, [])}


def compare_stage(ref: dict, new: dict, sources: tuple[Source, Source], tol: tuple[float, float]):
    """Reasons why a stage's reference entry `ref` and fresh entry `new` differ: ([its own], [through the
    deps that other stages produce])."""
    own: list[str] = []
    upstream: list[str] = []
    if ref.get("cmd") != new.get("cmd"):
        own.append(f"cmd {ref.get('cmd')!r} -> {new.get('cmd')!r}")
    for file in sorted(set(ref.get("params", {})) | set(new.get("params", {}))):
        a, b = ref.get("params", {}).get(file, {}), new.get("params", {}).get(file, {})
        own += [
            f"param {key}: {a.get(key)!r} -> {b.get(key)!r}"
            for key in sorted(set(a) | set(b))
            if a.get(key) != b.get(key)
        ]
    outputs = produced(sources[0].lock.get("stages", {}))
    ref_deps, new_deps = entries(ref, "deps"), entries(new, "deps")
    for path in sorted(set(ref_deps) | set(new_deps)):
        if ref_deps.get(path) != new_deps.get(path):
            line = f"dep {path}: {ref_deps.get(path)} -> {new_deps.get(path)}"
            (upstream if any(contains(p, path) or contains(path, p) for p in outputs) else own).append(line)
    ref_outs, new_outs = entries(ref, "outs"), entries(new, "outs")
    for path in sorted(set(ref_outs) | set(new_outs)):
        if ref_outs.get(path) == new_outs.get(path):
            continue
        if is_data_json(path) and path in ref_outs and path in new_outs:
            texts = [source.read(path) for source in sources]
            if None not in texts:
                found = json_differences(json.loads(texts[0]), json.loads(texts[1]), *tol)
                own += [f"out {path}: {d}" for d in found[:5]] + (
                    [f"out {path}: ...{len(found) - 5} more"] if len(found) > 5 else []
                )
                continue
            missing = "reference" if texts[0] is None else "fresh"
            own.append(f"out {path}: md5 differs and the {missing} file is missing")
            continue
        own.append(f"out {path}: {ref_outs.get(path)} -> {new_outs.get(path)}")
    return own, upstream


def compare(
    reference: Source, fresh: Source, patterns: list[str], rtol: float, atol: float
) -> list[StageResult]:
    """Every selected stage of the reference lock (and any only in the fresh one) in topological order."""
    ref_stages, new_stages = reference.lock.get("stages", {}), fresh.lock.get("stages", {})
    selected = lambda name: not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)
    results = []
    for name in topological(ref_stages) + [n for n in new_stages if n not in ref_stages]:
        if not selected(name):
            continue
        result = StageResult(name)
        if name not in new_stages or name not in ref_stages:
            result.missing = True
            result.reasons.append(
                "not in the fresh lock (not reproduced)"
                if name not in new_stages
                else "not in the reference lock"
            )
        else:
            own, upstream = compare_stage(
                ref_stages[name], new_stages[name], (reference, fresh), (rtol, atol)
            )
            result.reasons = own or upstream
            result.downstream_only = not own and bool(upstream)
        results.append(result)
    return results


def report(results: list[StageResult]) -> tuple[str, int]:
    lines = []
    for r in results:
        status = "same" if not r.reasons else ("downstream" if r.downstream_only else "DIFFERS")
        lines.append(f"  {status:<10} {r.name}")
        lines += [f"               {reason}" for reason in r.reasons]
    # Where the two runs part: a stage that ran in both and differs, before stages one run lacks.
    ranked = [r for r in results if r.reasons and not r.downstream_only and not r.missing]
    ranked += [r for r in results if r.missing] + [r for r in results if r.downstream_only]
    first = ranked[0] if ranked else None
    if first is None:
        lines.append(f"no difference in {len(results)} stages")
        return "\n".join(lines), 0
    lines.append(f"first difference: {first.name} ({first.reasons[0]})")
    return "\n".join(lines), 1


def load_source(lock: str | None, root: str | None, rev: str) -> Source:
    if lock is None:
        shown = subprocess.run(["git", "show", f"{rev}:dvc.lock"], capture_output=True, text=True)
        if shown.returncode:
            raise SystemExit(
                f"compare_lock: cannot read {rev}:dvc.lock ({shown.stderr.strip()}); pass --reference"
            )
        return Source(yaml.safe_load(shown.stdout), rev=rev, label=f"git {rev}:dvc.lock")
    path = Path(lock)
    if not path.is_file():
        raise SystemExit(f"compare_lock: {lock} does not exist; run dvc repro or pass the lock file's path")
    return Source(yaml.safe_load(path.read_text()), root=Path(root) if root else path.parent, label=lock)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", help="committed lock file (default: git REV:dvc.lock)")
    parser.add_argument(
        "--reference-root", help="where the reference's metrics are (default: beside its lock)"
    )
    parser.add_argument("--rev", default="HEAD", help="git revision of the default reference")
    parser.add_argument("--fresh", default="dvc.lock")
    parser.add_argument("--fresh-root", help="where the fresh metrics are (default: beside the fresh lock)")
    parser.add_argument("--stages", default="", help="comma-separated stage globs to compare (default: all)")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-8)
    args = parser.parse_args()
    reference = load_source(args.reference, args.reference_root, args.rev)
    fresh = load_source(args.fresh, args.fresh_root, args.rev)
    patterns = [p for p in args.stages.split(",") if p]
    print(
        f"reference {reference.label}, fresh {fresh.label}; JSON metrics: numbers within rtol "
        f"{args.rtol:g}, atol {args.atol:g}, timing keys ignored"
    )
    text, status = report(compare(reference, fresh, patterns, args.rtol, args.atol))
    print(text)
    sys.exit(status)


if __name__ == "__main__":
    main()
