"""Typed configs from plain mappings, and small output helpers shared by every stage.

The library never reads params.yaml: a stage loads it and hands each section to `build`, which turns
it into the library's dataclass and rejects unknown or missing keys with the section's name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from semalign.errors import SemalignError

C = TypeVar("C")


def build(cls: type[C], mapping: Mapping[str, Any] | None, section: str) -> C:
    """`cls(**mapping)` with errors that name the params.yaml `section` and the offending keys."""
    mapping = dict(mapping or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise SemalignError(f"params.yaml {section}: unknown key(s) {unknown}; known keys are {sorted(fields)}")
    required = [
        name for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in mapping
    ]
    if required:
        raise SemalignError(f"params.yaml {section}: missing key(s) {required}")
    return cls(**mapping)


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename) so a killed stage never leaves half a metrics file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(partial, path)
