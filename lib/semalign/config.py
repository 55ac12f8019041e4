"""Typed configs from plain mappings, for the stages to hand to the library.

The library never reads params.yaml: a stage loads it and hands each section to `build`, which turns
it into the library's dataclass and rejects unknown or missing keys with the section's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from semalign.errors import SemalignError

C = TypeVar("C")


def build(cls: type[C], mapping: Mapping[str, Any] | None, section: str) -> C:
    """`cls(**mapping)` with errors that name the params.yaml `section` and the offending keys."""
    mapping = dict(mapping or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise SemalignError(
            f"params.yaml {section}: unknown key(s) {unknown}; known keys are {sorted(fields)}"
        )
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and name not in mapping
    ]
    if required:
        raise SemalignError(f"params.yaml {section}: missing key(s) {required}")
    return cls(**mapping)


def params_section(key: str, params_file: str | Path = "params.yaml") -> Any:
    """The value at dotted `key` ("train", "models.teacher") of the stage's params file."""
    value: Any = yaml.safe_load(Path(params_file).read_text())
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise SemalignError(f"{params_file} has no {key!r}; add it (see the README's params section)")
        value = value[part]
    return value


def read_section(
    cls: type[C],
    key: str,
    params_file: str | Path = "params.yaml",
    drop: tuple[str, ...] = (),
    **overrides: Any,
) -> C:
    """The params section at dotted `key` as `cls`, without the keys in `drop` and with `overrides` set."""
    mapping = {
        name: value for name, value in (params_section(key, params_file) or {}).items() if name not in drop
    }
    return build(cls, {**mapping, **overrides}, key)
